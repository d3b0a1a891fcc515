"""The `data` section: source, schema (label mapping included), validation and output."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from ray_pipeline.config.base import StrictModel, join
from ray_pipeline.errors import UserError

FileFormat = Literal["csv", "parquet", "json"]
DEFAULT_NULL_VALUES = ["", "null", "NULL", "None", "NaN", "nan"]


class SourceConfig(StrictModel):
    """Where raw data comes from."""

    path: str = Field(description="Local file or directory, glob, or pyarrow-filesystem URI.")
    format: FileFormat | None = Field(
        default=None, description="csv, parquet or json (JSON lines); inferred from extensions if unset."
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NULL_VALUES),
        description="Text values read as missing in CSV files.",
    )
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)


class FeatureColumn(StrictModel):
    """One typed feature column with its allowed values."""

    type: Literal["float", "int", "category", "timestamp"] = Field(
        description="float, int, category, or timestamp: a date or time beside the event time (ISO 8601; naive is "
        "UTC), given to models as its days since 1970 and its calendar parts."
    )
    min: float | None = Field(default=None, description="Smallest allowed value (numeric only).")
    max: float | None = Field(default=None, description="Largest allowed value (numeric only).")
    categories: list[str] | None = Field(
        default=None, description="Allowed values (category only); unset allows any value."
    )
    nullable: bool = Field(default=True, description="Missing values allowed (imputed later).")
    seasonal: bool = Field(
        default=False,
        description="A calendar or seasonal input (month, weekday, hour, year, a temperature, ...): its drift "
        "is reported but no rule without a feature fires on it (a month outside the training range is the "
        "calendar moving on, not a fault).",
    )
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> "FeatureColumn":
        if self.type in ("category", "timestamp") and (self.min is not None or self.max is not None):
            raise UserError(f"min/max apply to numeric columns, not to type '{self.type}'")
        if self.type != "category" and self.categories is not None:
            raise UserError(f"categories apply to type 'category', not to type '{self.type}'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise UserError(f"min ({self.min}) is greater than max ({self.max})")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise UserError("categories has repeated values")
        return self


LabelValue = str | int | float | bool


Task = Literal["binary", "multiclass", "regression"]
TargetTransform = Literal["none", "log1p", "auto"]
RegressionMetric = Literal["rmse", "mae"]


class LabelMapping(StrictModel):
    """How the label column becomes the target, per task.

    binary (the default): plain `label: COLUMN` means the column already holds 0/1 (or
    true/false); `positive` lists the values that count as 1 (`negative` the ones that count as
    0; unset: every other value); `threshold` makes a numeric column positive when it is greater
    than the threshold. multiclass: `classes` lists the values in order (class i is the i-th).
    regression: the column is a number; `transform: log1p` fits log(1 + y) and inverts it on the
    way out; `auto` fits each model both ways and keeps the one with the lower validation error in
    the label's units; `metric` names that error (rmse or mae), which every choice on validation uses.
    A value that fits none of these goes to the quarantine.
    """

    column: str
    task: Task = Field(default="binary", description="binary, multiclass or regression.")
    positive: list[LabelValue] | None = Field(default=None, min_length=1, description="Values that mean label 1.")
    negative: list[LabelValue] | None = Field(
        default=None, min_length=1, description="Values that mean label 0; unset: every value not positive."
    )
    threshold: float | None = Field(default=None, description="Numeric label: 1 when the value is greater.")
    classes: list[LabelValue] | None = Field(
        default=None, min_length=2, description="multiclass: the label values, in class order."
    )
    transform: TargetTransform = Field(
        default="none",
        description="regression: none; log1p for a skewed target above -1; auto: each model fitted both ways, the "
        "lower validation error (`metric`, in the label's units) kept.",
    )
    metric: RegressionMetric = Field(
        default="rmse",
        description="regression: the error every choice on validation minimizes (target scale, search, blend, the "
        "order models reach the gates, the gates' counterpart of log_loss, whether log1p predictions are smeared). "
        "mae also fits XGBoost on absolute error (a median, which is what mae rewards).",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> "LabelMapping":
        binary_only = {"positive": self.positive, "negative": self.negative, "threshold": self.threshold}
        if self.task != "binary" and any(v is not None for v in binary_only.values()):
            given = [k for k, v in binary_only.items() if v is not None]
            raise UserError(f"label: {given} apply to a binary task, not {self.task}")
        if (self.classes is None) == (self.task == "multiclass"):
            raise UserError("label: a multiclass task needs `classes` (and only it takes them)")
        if self.transform != "none" and self.task != "regression":
            raise UserError(f"label: transform {self.transform} applies to regression only")
        if self.metric != "rmse" and self.task != "regression":
            raise UserError(f"label: metric {self.metric} applies to regression only (classes are chosen by log_loss)")
        if self.classes is not None and len(set(self.classes_text)) != len(self.classes):
            raise UserError(f"label: classes repeat a value: {self.classes_text}")
        if self.positive is not None and self.threshold is not None:
            raise UserError("give positive (values) or threshold (numeric), not both")
        if self.negative is not None and self.positive is None:
            raise UserError("negative needs positive")
        both = set(map(str, self.positive or [])) & set(map(str, self.negative or []))
        if both:
            raise UserError(f"values listed as both positive and negative: {sorted(both)}")
        return self

    @property
    def positive_text(self) -> list[str]:
        """Positive values as the text they are compared as."""
        return [_label_text(x) for x in self.positive or []]

    @property
    def negative_text(self) -> list[str] | None:
        """Negative values as text, or None when every other value is negative."""
        return None if self.negative is None else [_label_text(x) for x in self.negative]

    @property
    def classes_text(self) -> list[str]:
        """multiclass: the classes as the text they are compared as, in class order."""
        return [_label_text(x) for x in self.classes or []]

    def describe(self) -> str:
        """One line for people: what the target is."""
        if self.task == "multiclass":
            return f"{self.column}: one of {self.classes_text}"
        if self.task == "regression":
            how = {"log1p": ", fitted as log1p", "auto": ", fitted raw or as log1p by validation"}.get(self.transform, "")
            return f"{self.column} (a number{how}{', by mae' if self.metric == 'mae' else ''})"
        if self.threshold is not None:
            return f"{self.column} > {self.threshold:g}"
        if self.positive is not None:
            return f"{self.column} in {self.positive_text}"
        return f"{self.column} == 1"


def _label_text(value: LabelValue) -> str:
    # YAML reads yes/true as booleans and 1 as an int; the data's text is what gets compared.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class SchemaConfig(StrictModel):
    """The columns a dataset must have: a label (binary, multiclass or regression) and features; an
    entity key, event time and split column when the table has them."""

    entity_key: str | None = Field(
        default=None, description="Entity id column; needed for feature views and online lookups."
    )
    entity_type: Literal["int", "str"] = "int"
    event_timestamp: str | None = Field(
        default=None, description="Event time column; the split is by time when set, random otherwise."
    )
    split_column: str | None = Field(
        default=None, description="Column holding train / valid / test: the split is taken from it."
    )
    label_mapping: LabelMapping = Field(alias="label")
    features: dict[str, FeatureColumn] = Field(min_length=1)

    @field_validator("label_mapping", mode="before")
    @classmethod
    def _plain_label(cls, value: Any) -> Any:
        return {"column": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_names(self) -> "SchemaConfig":
        special = [c for c in (self.entity_key, self.event_timestamp, self.label, self.split_column) if c]
        if len(set(special)) != len(special):
            raise UserError("entity_key, event_timestamp, label and split_column must be different columns")
        clash = sorted(set(special) & set(self.features))
        if clash:
            raise UserError(f"features repeat a key/timestamp/label/split column: {clash}")
        bad = sorted(name for name in self.features if name.startswith("_"))
        if bad:
            raise UserError(f"feature names may not start with '_' (reserved): {bad}")
        return self

    @property
    def label(self) -> str:
        """The label column's name (holding 0/1 after ingest)."""
        return self.label_mapping.column

    @property
    def keys(self) -> list[str]:
        """The entity key and event time columns that are set, in that order."""
        return [c for c in (self.entity_key, self.event_timestamp) if c]

    @property
    def columns(self) -> list[str]:
        """Every schema column in a fixed order: key, timestamp, label, split, features."""
        return [*self.keys, self.label, *([self.split_column] if self.split_column else []), *self.features]


class DuplicatesConfig(StrictModel):
    """Duplicate-row detection: later copies go to quarantine."""

    enabled: bool = False
    keys: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Columns that identify a row (schema or extra columns); unset means every schema column.",
    )


class ValidationConfig(StrictModel):
    """Row-level checks beyond the schema's types, ranges and categories."""

    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    extra_columns: Literal["keep", "drop", "reject"] = Field(
        default="keep", description="Columns not in the schema: pass through, drop, or stop the run."
    )


class OutputConfig(StrictModel):
    """Where ingestion writes accepted rows, quarantined rows and its summary."""

    root: str = Field(description="Directory or URI; accepted/, quarantine/ and summary.json go here.")

    @property
    def accepted(self) -> str:
        """Accepted rows (Parquet), read by the feature stage."""
        return join(self.root, "accepted")

    @property
    def quarantine(self) -> str:
        """Rejected rows with their original values and a reason (Parquet)."""
        return join(self.root, "quarantine")

    @property
    def summary(self) -> str:
        """Counts of the last ingest run (JSON)."""
        return join(self.root, "summary.json")

    @property
    def feedback(self) -> str:
        """Labeled traffic the feedback loop turned into accepted rows (kept across ingest runs)."""
        return join(self.root, "feedback")


class DataConfig(StrictModel):
    """The data section: source, schema, validation, output."""

    source: SourceConfig
    schema_: SchemaConfig = Field(alias="schema")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    output: OutputConfig
    max_quarantine_share: float = Field(
        default=0.1, ge=0, le=1, description="`run` stops before training when ingest quarantines more than this "
        "share of the rows read (rows only waiting for their label do not count), naming the top reasons and a "
        "sample of rows: a table read wrongly must not train in silence on what is left.",
    )
