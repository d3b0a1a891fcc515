"""FeatureSpec: every statistic a transform needs, as versioned, content-hashed, readable JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_pipeline.errors import UserError

SPEC_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericSpec(_Frozen):
    """Fitted state of one numeric column. Transform: log1p -> clip -> impute -> standardize."""

    name: str
    log1p: bool
    clip: tuple[float, float] | None = Field(description="Clip bounds (after log1p), or none.")
    fill: float = Field(description="Value given to missing inputs (after log1p and clip).")
    missing_indicator: bool
    mean: float = Field(description="Training mean after log1p, used to standardize.")
    std: float = Field(description="Training std after log1p (1.0 when not standardizing or constant).")
    count: int = Field(description="Present training values.")
    missing: int = Field(description="Missing training values.")
    cyclic: float | None = Field(default=None, description="Period of a calendar input: sin and cos of its "
                                 "angle instead of log1p -> clip -> impute -> standardize.")

    @property
    def outputs(self) -> list[str]:
        """Names of the column's entries in the output vector."""
        names = [f"{self.name}__sin", f"{self.name}__cos"] if self.cyclic else [self.name]
        return names + ([f"{self.name}__missing"] if self.missing_indicator else [])


class CategoricalSpec(_Frozen):
    """Fitted state of one categorical column."""

    name: str
    encoding: Literal["frequency", "onehot", "native", "target"]
    frequencies: dict[str, float] = Field(description="Kept categories -> training frequency (count / rows).")
    missing_value: float = Field(description="Encoded value for null or empty input.")
    unseen_value: float = Field(description="Encoded value for categories not kept (unseen or rare).")
    rare_frequency: float = Field(description="Share of training rows in categories below min_count.")
    onehot: list[str] = Field(default_factory=list, description="One-hot categories, in output order.")
    codes: list[str] = Field(default_factory=list, description="native: the categories a tree model splits on, "
                             "by code (0, 1, ...); unseen, rare and missing values are missing.")
    targets: dict[str, list[float]] = Field(default_factory=dict, description="target: each kept category's "
                                            "smoothed mean target (one per class for multiclass).")
    target_prior: list[float] = Field(default_factory=list, description="target: the train split's mean target, "
                                      "for missing and unseen categories.")

    @property
    def outputs(self) -> list[str]:
        """Names of this column's entries in the feature vector."""
        if self.encoding == "onehot":
            return [f"{self.name}={value}" for value in self.onehot]
        if self.encoding == "native":
            return [f"{self.name}__code"]
        if self.encoding == "target":
            k = len(self.target_prior)
            return [f"{self.name}__freq"] + [f"{self.name}__target" + (f"_{j}" if k > 1 else "") for j in range(k)]
        return [f"{self.name}__freq"]


# Parts of the event time a model may take as inputs, and each one's period (sin and cos of its angle).
TIME_PARTS: dict[str, float] = {"hour": 24.0, "weekday": 7.0, "day_of_year": 365.25, "month": 12.0}
TimePart = Literal["hour", "weekday", "day_of_year", "month"]


class DateSpec(_Frozen):
    """Fitted state of one timestamp input (a date column beside the event time): its days since
    1970 standardized (the trend: age, recency), and calendar parts as sin and cos."""

    name: str
    mean: float = Field(description="Training mean of the days since 1970-01-01 (UTC), also the missing fill.")
    std: float = Field(description="Training std of those days (1.0 when constant).")
    parts: list[TimePart] = Field(description="Calendar parts given to the model, each as sin and cos.")
    missing_indicator: bool = Field(description="A 0/1 entry marks a missing time (training had some).")
    count: int = Field(description="Present training values.")
    missing: int = Field(description="Missing training values.")

    @property
    def outputs(self) -> list[str]:
        """Names of the column's entries in the output vector."""
        names = [f"{self.name}__days"] + [f"{self.name}__{p}__{f}" for p in self.parts for f in ("sin", "cos")]
        return names + ([f"{self.name}__missing"] if self.missing_indicator else [])


class LabelSpec(_Frozen):
    """The target as the data schema said (recorded with every model version): the task, what label
    1 means (binary), the classes in order (multiclass), the target transform (regression)."""

    column: str
    task: Literal["binary", "multiclass", "regression"] = "binary"
    classes: list[str] | None = Field(default=None, description="multiclass: the label values, in class order.")
    transform: Literal["none", "log1p"] = Field(default="none", description="regression: the fitted target's transform.")
    metric: Literal["rmse", "mae"] = Field(default="rmse", description="regression: the error choices minimize.")
    positive: list[str] | None = Field(default=None, description="Values meaning 1 (unset: the column is 0/1).")
    negative: list[str] | None = Field(default=None, description="Values meaning 0 (unset: all others).")
    threshold: float | None = Field(default=None, description="Numeric label: 1 when greater.")

    @property
    def outputs(self) -> int:
        """Model outputs per row: one per class for multiclass, else one."""
        return len(self.classes) if self.task == "multiclass" and self.classes else 1

    @property
    def loss(self) -> str:
        """The metric every choice on validation minimizes: log_loss for classes, else `metric`."""
        return self.metric if self.task == "regression" else "log_loss"


class FeatureSpec(_Frozen):
    """Everything `transform` needs; stored with every model version."""

    version: int = SPEC_VERSION
    rows: int = Field(description="Training rows the statistics come from.")
    numeric: list[NumericSpec]
    categorical: list[CategoricalSpec]
    passthrough: list[str] = Field(default_factory=list, description="Columns copied unchanged (key, time, label).")
    entity_key: str | None = Field(default=None, description="The data's entity key column, if it has one.")
    event_timestamp: str | None = Field(default=None, description="The data's event time column, if it has one.")
    label: LabelSpec | None = None
    required: list[str] = Field(
        default_factory=list, description="Inputs the schema marks non-nullable: a request must give a value."
    )
    time_parts: list[TimePart] = Field(
        default_factory=list, description="Parts of the event time given to the model, each as sin and cos."
    )
    dates: list[DateSpec] = Field(default_factory=list, description="Timestamp inputs beside the event time.")

    @property
    def input_columns(self) -> list[str]:
        """Raw columns transform reads (once each: an ensemble's spec encodes a column several ways)."""
        names = [c.name for c in self.numeric] + [c.name for c in self.categorical] + [d.name for d in self.dates]
        return list(dict.fromkeys(names))

    @property
    def feature_names(self) -> list[str]:
        """Names of the output vector's entries, in order."""
        names: list[str] = []
        for col in self.numeric:
            names.extend(col.outputs)
        for cat in self.categorical:
            names.extend(cat.outputs)
        for date in self.dates:
            names.extend(date.outputs)
        for part in self.time_parts:
            names += [f"{self.event_timestamp}__{part}__sin", f"{self.event_timestamp}__{part}__cos"]
        return names

    @property
    def sources(self) -> list[str]:
        """The raw input column behind each entry of the output vector (`feature_names` order):
        a missing indicator and every one-hot entry belong to their column."""
        out: list[str] = []
        for col in self.numeric:
            out += [col.name] * len(col.outputs)
        for cat in self.categorical:
            out += [cat.name] * len(cat.outputs)
        for date in self.dates:
            out += [date.name] * len(date.outputs)
        out += [str(self.event_timestamp)] * (2 * len(self.time_parts))
        return out

    @property
    def feature_types(self) -> list[str]:
        """XGBoost's type per output entry: "c" for a native category code, "q" for a number."""
        native = {f"{c.name}__code" for c in self.categorical if c.encoding == "native"}
        return ["c" if name in native else "q" for name in self.feature_names]

    @property
    def task(self) -> str:
        """binary, multiclass or regression (binary for specs without a label)."""
        return self.label.task if self.label is not None else "binary"

    @property
    def loss(self) -> str:
        """The validation metric choices minimize: log_loss, or the regression's rmse or mae."""
        return self.label.loss if self.label is not None else "log_loss"

    def _body(self) -> dict:
        # `required`, `time_parts`, `dates`, `cyclic` and the label's task fields came later: left out at their
        # defaults, so specs written before them keep their hash
        unset = {k for k in ("required", "time_parts", "dates") if not getattr(self, k)}
        body = self.model_dump(mode="json", exclude=unset or None)
        for col in body["numeric"]:  # likewise a non-cyclic column's `cyclic`
            if col.get("cyclic") is None:
                col.pop("cyclic", None)
        for cat in body["categorical"]:  # and a non-native column's `codes`, a non-target one's targets
            for key in ("codes", "targets", "target_prior"):
                if not cat.get(key):
                    cat.pop(key, None)
        if body.get("label"):
            defaults = {"task": "binary", "classes": None, "transform": "none", "metric": "rmse"}
            body["label"] = {k: v for k, v in body["label"].items() if k not in defaults or v != defaults[k]}
        return body

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: equal hashes mean identical transforms."""
        payload = json.dumps(self._body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> str:
        """Readable JSON with the content hash alongside (not part of what it hashes)."""
        body = self._body()
        return json.dumps({"content_hash": self.content_hash(), **body}, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        """Parse, and refuse a spec whose stated hash does not match its content."""
        data = json.loads(text)
        stated = data.pop("content_hash", None)
        if data.get("version") != SPEC_VERSION:
            raise UserError(f"FeatureSpec version {data.get('version')} is not supported (expected {SPEC_VERSION})")
        spec = cls.model_validate(data)
        if stated is not None and stated != spec.content_hash():
            raise UserError("FeatureSpec content does not match its content_hash: the file was changed")
        return spec

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSpec":
        """Read a spec written by `save`."""
        return cls.from_json(Path(path).read_text())


def native_spec(spec: FeatureSpec) -> FeatureSpec:
    """`spec` with every categorical column as native codes (a tree model splits on the categories
    themselves): the kept categories, most frequent first, are codes 0, 1, ...; numbers unchanged."""
    cats = [c.model_copy(update={"encoding": "native", "codes": list(c.frequencies), "onehot": [], "targets": {},
                                 "target_prior": []})
            for c in spec.categorical]  # fmt: skip
    return spec.model_copy(update={"categorical": cats})
