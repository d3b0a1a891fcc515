"""Serving refuses what ingest refuses: records drawn from a data schema are checked by ingest's
validation and by the /predict contract, and both accept and refuse the same ones (no Ray needed:
the contract's parsing is the replica's own code)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_pipeline.config import parse_config
from ray_pipeline.data.validate import REASON, validate_batch
from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec
from ray_pipeline.serve.api import FLAGGED, contract, parse_predict, rules_of

SCHEMA = parse_config({
    "data": {"source": {"path": "unused"}, "output": {"root": "unused"},
             "schema": {"label": "y", "features": {
                 "day": {"type": "int", "min": 1, "max": 31, "nullable": False},
                 "distance": {"type": "float", "min": 0},
                 "carrier": {"type": "category", "categories": ["AA", "UA", "DL"]},
                 "fare": {"type": "float"}}}},
}).data.schema_  # fmt: skip

SPEC = FeatureSpec(
    rows=100,
    numeric=[NumericSpec(name=n, log1p=False, clip=None, fill=1.0, missing_indicator=False, mean=1.0, std=1.0,
                         count=100, missing=0) for n in ("day", "distance", "fare")],
    categorical=[CategoricalSpec(name="carrier", encoding="frequency", frequencies={"AA": 0.5, "UA": 0.3, "DL": 0.2},
                                 missing_value=0.0, unseen_value=0.0, rare_frequency=0.0)],
    required=["day"],
)  # fmt: skip

NUMBERS = st.one_of(st.integers(-40, 40), st.floats(-40, 40, allow_nan=False),
                    st.sampled_from([0, 1, 31, 32, 1.5, 3.0]))
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "day": st.one_of(st.none(), NUMBERS),
        "distance": st.one_of(st.none(), NUMBERS),
        "carrier": st.one_of(st.none(), st.sampled_from(["AA", "UA", "DL", "ZZ", " AA ", "aa", ""])),
        "fare": st.one_of(st.none(), NUMBERS),
    },
)


def ingested(record: dict) -> str | None:
    """Ingest's verdict on one record with a label: None (accepted) or its quarantine reason."""
    columns = {name: [record.get(name)] for name in SCHEMA.features}
    types = {"carrier": pa.string()}
    batch = pa.table({**{n: pa.array(v, types.get(n, pa.float64())) for n, v in columns.items()}, "y": [1]})
    return validate_batch(batch, SCHEMA)[REASON][0].as_py()


def served(record: dict, on_invalid: str) -> str:
    """The contract's verdict on the same record: refused, or the status it is answered with."""
    terms = contract(SPEC, 10, False, rules_of(SCHEMA.features), on_invalid)
    try:
        parsed = parse_predict(json.dumps({"records": [record]}).encode(), terms, 10, None, {})
    except RequestValidationError:
        return "refused"
    return parsed.statuses[0]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(RECORDS)
def test_ingest_and_serving_accept_and_refuse_the_same_records(record):
    reason = ingested(record)
    assert (served(record, "refuse") == "ok") == (reason is None), (record, reason)
    flagged = served(record, "flag")
    assert (flagged == "ok") == (reason is None), (record, reason, flagged)
    if flagged in FLAGGED:  # answered with the very rule ingest quarantines it for
        assert reason == flagged, (record, reason, flagged)


@pytest.mark.parametrize(
    ("record", "on_invalid", "verdict"),
    [
        ({"day": 1.5}, "flag", "refused"),  # an integer input: 1.5 is refused whatever on_invalid says
        ({"day": 3.0}, "refuse", "ok"),  # 3.0 is an integer, as ingest reads it
        ({"day": 32}, "flag", "out_of_range"),
        ({"day": 32}, "refuse", "refused"),
        ({"day": 2, "carrier": "ZZ"}, "flag", "unknown_category"),
        ({"day": 2, "carrier": " UA "}, "refuse", "ok"),  # ingest trims it too
        ({"day": 2, "distance": -1.0}, "flag", "out_of_range"),
    ],
)
def test_a_broken_rule_is_refused_naming_field_and_rule_or_flagged(record, on_invalid, verdict):
    assert served(record, on_invalid) == verdict
    if verdict == "refused":
        terms = contract(SPEC, 10, False, rules_of(SCHEMA.features), on_invalid)
        with pytest.raises(RequestValidationError) as refused:
            parse_predict(json.dumps({"records": [{"day": 5}, record]}).encode(), terms, 10, None, {})
        (error,) = refused.value.errors()
        assert error["loc"] == ("body", "records", 1, "day") and error["type"] in ("invalid_type", "out_of_range")
        assert "day" in error["msg"], error


def test_the_openapi_says_which_rules_hold_and_what_breaking_them_means():
    refuse = contract(SPEC, 10, False, rules_of(SCHEMA.features), "refuse").request.model_json_schema()
    record = refuse["$defs"]["Record"]["properties"]
    assert record["day"]["type"] == "integer" and (record["day"]["minimum"], record["day"]["maximum"]) == (1, 31)
    carrier = next(b for b in record["carrier"]["anyOf"] if b.get("type") == "string")
    assert carrier["enum"] == ["AA", "UA", "DL"] and {"type": "null"} in record["carrier"]["anyOf"]
    assert "minimum" not in json.dumps(record["fare"])  # no rule, nothing said
    flag = contract(SPEC, 10, False, rules_of(SCHEMA.features), "flag").request.model_json_schema()
    carrier = flag["$defs"]["Record"]["properties"]["carrier"]
    assert "enum" not in json.dumps(carrier) and "answered with status unknown_category" in carrier["description"]
    assert "answered with status out_of_range" in flag["$defs"]["Record"]["properties"]["distance"]["description"]
