"""Ingestion on a real local Ray: bad rows land in quarantine with the right reason, none is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_pipeline.config import PipelineConfig, SyntheticConfig, parse_config
from ray_pipeline.data.ingest import ingest
from ray_pipeline.data.sources import IngestError
from ray_pipeline.synthetic.transactions import generate, generate_chunk

HEADER = "rid,user_id,ts,y,amount,count,color,city"
# rid -> (CSV line after rid, expected reason, expected field); reason None means accepted.
ROWS: dict[int, tuple[str, str | None, str | None]] = {
    1: ("10,2024-01-01T00:00:00Z,0,12.5,3,red,Paris", None, None),
    2: ("11,2024-01-02 10:00:00,1,,4,green,Rome", None, None),
    3: ("12,2024-01-01T00:00:00Z,0,abc,3,red,Paris", "invalid_type", "amount"),
    4: ("13,2024-01-01T00:00:00Z,0,-4.0,3,red,Paris", "out_of_range", "amount"),
    5: ("14,2024-01-01T00:00:00Z,0,1.0,3,purple,Paris", "unknown_category", "color"),
    6: ("15,2024-01-01T00:00:00Z,,1.0,3,red,Paris", "missing_label", "y"),
    7: ("16,2024-01-01T00:00:00Z,2,1.0,3,red,Paris", "invalid_label", "y"),
    8: ("17,yesterday,0,1.0,3,red,Paris", "bad_timestamp", "ts"),
    9: ("18,,0,1.0,3,red,Paris", "missing_timestamp", "ts"),
    10: (",2024-01-01T00:00:00Z,0,1.0,3,red,Paris", "missing_entity", "user_id"),
    11: ("10,2024-01-01T00:00:00Z,0,12.5,3,red,Paris", "duplicate", "*"),
    12: ("19,2024-01-01T00:00:00Z,0,1.0,3.5,red,Paris", "invalid_type", "count"),
    13: ("20,2024-01-01T00:00:00Z,0,inf,3,red,Paris", "out_of_range", "amount"),
    14: ("21,2024-01-01T00:00:00Z,0,1.0,3,red,", "null_value", "city"),
    15: ("22,2024-01-01T00:00:00Z,1,1.0,101,blue,Oslo", "out_of_range", "count"),
    16: ("u7,2024-01-01T00:00:00Z,1,1.0,1,blue,Oslo", "invalid_type", "user_id"),
    17: ("23,2024-01-03T01:00:00+02:00,1,7,0,blue,Oslo", None, None),
    18: ("24,2024-01-01T00:00:00Z,0,-1,3,purple,Paris", "out_of_range", "amount"),
}
ACCEPTED = {rid for rid, (_, reason, _) in ROWS.items() if reason is None}


def _config(source: str, out: Path, **validation) -> PipelineConfig:
    return parse_config(
        {
            "data": {
                "source": {"path": source},
                "schema": {
                    "entity_key": "user_id",
                    "event_timestamp": "ts",
                    "label": "y",
                    "features": {
                        "amount": {"type": "float", "min": 0},
                        "count": {"type": "int", "min": 0, "max": 100},
                        "color": {"type": "category", "categories": ["red", "green", "blue"]},
                        "city": {"type": "category", "nullable": False},
                    },
                },
                "validation": {"duplicates": {"enabled": True}, **validation},
                "output": {"root": str(out)},
            }
        }
    )


def _csv_text() -> str:
    return "\n".join([HEADER, *(f"{rid},{line}" for rid, (line, _, _) in ROWS.items())]) + "\n"


def _json_lines() -> list[str]:
    """The same rows as JSON objects; numbers stay numbers where the CSV text is numeric."""
    lines = []
    for rid, (line, _, _) in ROWS.items():
        record = {}
        for name, text in zip(HEADER.split(","), [str(rid), *line.split(",")]):
            if text == "":
                record[name] = None
                continue
            try:
                number = float(text)
                record[name] = int(number) if number.is_integer() and "." not in text else number
            except ValueError:
                record[name] = text
            if name in ("ts", "color", "city") or text in ("inf",):
                record[name] = text
        lines.append(json.dumps(record))
    return lines


def _check_outcome(result, out: Path, expected: dict[int, tuple[str | None, str | None]]) -> pd.DataFrame:
    assert result.read == len(expected)
    assert result.accepted + result.quarantined == result.read
    accepted = pd.read_parquet(out / "accepted")
    quarantine = pd.read_parquet(out / "quarantine")
    assert len(accepted) == result.accepted and len(quarantine) == result.quarantined
    assert set(accepted["rid"].astype(int)) == {r for r, (reason, _) in expected.items() if reason is None}
    got = {int(r): (reason, fld) for r, reason, fld in quarantine[["rid", "_reason", "_field"]].itertuples(index=False)}
    want = {r: rf for r, rf in expected.items() if rf[0] is not None}
    assert got == want
    by_reason: dict[str, int] = {}
    for reason, _ in want.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    assert result.by_reason == by_reason
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read"] == result.read and summary["by_reason"] == by_reason
    return quarantine


def test_csv_with_bad_rows(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text(_csv_text())
    out = tmp_path / "out"
    result = ingest(_config(str(source), out))
    quarantine = _check_outcome(result, out, {r: (reason, f) for r, (_, reason, f) in ROWS.items()})

    # Originals are kept as written, and details name the field and the value.
    q = quarantine.set_index(quarantine["rid"].astype(int))
    assert q.loc[3, "amount"] == "abc" and "amount: not a number: 'abc'" in q.loc[3, "_detail"]
    assert q.loc[8, "ts"] == "yesterday"
    assert q.loc[13, "amount"] == "inf"
    assert q.loc[4, "_detail"] == "amount: below min 0.0: '-4.0'"
    assert q.loc[18, "color"] == "purple"  # second problem of the row is still visible in its values
    assert q["_source_file"].eq(str(source)).all()

    accepted = pd.read_parquet(out / "accepted")
    assert list(accepted.columns) == ["user_id", "ts", "y", "amount", "count", "color", "city", "rid"]
    accepted = accepted.set_index(accepted["rid"].astype(int))
    assert accepted.loc[17, "ts"] == pd.Timestamp("2024-01-02T23:00:00Z")
    assert pd.isna(accepted.loc[2, "amount"])
    assert accepted["user_id"].dtype == "int64" and accepted.loc[1, "user_id"] == 10
    assert str(accepted["y"].dtype) == "int8"


def test_json_lines_with_an_unparseable_line(ray_session, tmp_path):
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join([*_json_lines(), "{not json", "[1, 2]"]) + "\n")
    out = tmp_path / "out"
    result = ingest(_config(str(source), out))
    assert result.format == "json"
    expected = {r: (reason, f) for r, (_, reason, f) in ROWS.items()}
    assert result.read == len(ROWS) + 2
    assert result.by_reason["unparseable_row"] == 2
    quarantine = pd.read_parquet(out / "quarantine")
    parsed = quarantine[quarantine["_reason"] != "unparseable_row"]
    got = {int(r): (reason, fld) for r, reason, fld in parsed[["rid", "_reason", "_field"]].itertuples(index=False)}
    assert got == {r: rf for r, rf in expected.items() if rf[0] is not None}
    assert "{not json" in " ".join(quarantine["_detail"])


def test_parquet_with_text_columns_glob_and_uri(ray_session, tmp_path):
    frame = pd.read_csv(pd.io.common.StringIO(_csv_text()), dtype=str, keep_default_na=False)
    frame = frame.replace({"": None})
    (tmp_path / "in").mkdir()
    half = len(frame) // 2
    pq.write_table(pa.Table.from_pandas(frame.iloc[:half], preserve_index=False), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[half:], preserve_index=False), tmp_path / "in" / "b.parquet")
    (tmp_path / "in" / "_SUCCESS").write_text("")
    expected = {r: (reason, f) for r, (_, reason, f) in ROWS.items()}

    out = tmp_path / "out_glob"
    result = ingest(_config(str(tmp_path / "in" / "*.parquet"), out))
    assert result.files == 2
    _check_outcome(result, out, expected)

    out = tmp_path / "out_uri"
    result = ingest(_config(f"file://{tmp_path / 'in'}", out))
    assert result.files == 2  # the _SUCCESS marker is not data
    _check_outcome(result, out, expected)


def test_rerun_replaces_outputs(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text(_csv_text())
    out = tmp_path / "out"
    cfg = _config(str(source), out)
    ingest(cfg)
    again = ingest(cfg)
    assert len(pd.read_parquet(out / "accepted")) == again.accepted == len(ACCEPTED)
    assert len(pd.read_parquet(out / "quarantine")) == again.quarantined


def test_duplicates_off_accepts_repeated_rows(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text(_csv_text())
    result = ingest(_config(str(source), tmp_path / "out", duplicates={"enabled": False}))
    assert "duplicate" not in result.by_reason
    assert result.accepted == len(ACCEPTED) + 1


def test_duplicate_keys_subset(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    rows = ["1,5,2024-01-01,0,1,1,red,A", "2,5,2024-01-01,1,2,2,blue,B", "3,6,2024-01-01,0,1,1,red,A"]
    source.write_text("\n".join([HEADER, *rows]) + "\n")
    result = ingest(_config(str(source), tmp_path / "out", duplicates={"enabled": True, "keys": ["user_id", "ts"]}))
    assert result.by_field == {"duplicate:user_id,ts": 1}
    q = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert q["rid"].tolist() == ["2"] or q["rid"].tolist() == ["1"]


# ---------------------------------------------------------------------------------------------
# errors that stop the run: they name the file or column
# ---------------------------------------------------------------------------------------------


def test_missing_file_is_named(ray_session, tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(IngestError, match=f"{missing}: source not found"):
        ingest(_config(str(missing), tmp_path / "out"))


def test_glob_without_match_is_named(ray_session, tmp_path):
    with pytest.raises(IngestError, match=r"\*\.csv: no files match"):
        ingest(_config(str(tmp_path / "*.csv"), tmp_path / "out"))


def test_missing_required_column_names_file_and_column(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text("rid,user_id,ts,y,amount,count,color\n1,10,2024-01-01,0,1,1,red\n")
    with pytest.raises(IngestError) as err:
        ingest(_config(str(source), tmp_path / "out"))
    assert str(source) in str(err.value) and "['city']" in str(err.value)


def test_unreadable_file_is_named(ray_session, tmp_path):
    source = tmp_path / "broken.parquet"
    source.write_text("this is not parquet\n")
    with pytest.raises(IngestError, match=f"{source}: cannot read as parquet"):
        ingest(_config(str(source), tmp_path / "out"))


def test_unknown_format_asks_for_config(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.txt").write_text("a,b\n")
    with pytest.raises(IngestError, match="set data.source.format"):
        ingest(_config(str(tmp_path / "in"), tmp_path / "out"))


def test_extra_columns_reject(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text(_csv_text())
    with pytest.raises(IngestError, match=r"columns not in the schema: \['rid'\]"):
        ingest(_config(str(source), tmp_path / "out", extra_columns="reject"))


def test_ragged_csv_rows_go_to_quarantine_with_their_row_numbers(ray_session, tmp_path):
    source = tmp_path / "raw.csv"
    good = "1,10,2024-01-01,0,1,1,red,Paris"
    lines = [good, "2,11,2024-01-01", good.replace("1,10", "3,12", 1), "4,13,2024-01-01,0,1,1,red,Paris,extra", good.replace("1,10", "5,14", 1)]
    source.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    result = ingest(_config(str(source), tmp_path / "out"))
    assert (result.read, result.accepted, result.quarantined) == (5, 3, 2)
    bad = pd.read_parquet(result.quarantine_path).sort_values("_row")
    assert bad["_row"].tolist() == [2, 4]
    assert set(bad["_reason"]) == {"unparseable_row"}
    assert "row has 3 fields, expected 8" in bad["_detail"].iloc[0] and "2,11,2024-01-01" in bad["_detail"].iloc[0]
    assert "row has 9 fields, expected 8" in bad["_detail"].iloc[1]
    assert (bad["_source_file"] == str(source)).all()
    # the good rows around them keep their own values
    assert sorted(pd.read_parquet(result.accepted_path)["user_id"].tolist()) == [10, 12, 14]


# ---------------------------------------------------------------------------------------------
# generated data against the demo schema
# ---------------------------------------------------------------------------------------------


def _demo_config(demo_config_dict: dict, raw: Path, out: Path) -> PipelineConfig:
    demo_config_dict["data"]["source"]["path"] = str(raw)
    demo_config_dict["data"]["output"]["root"] = str(out)
    return parse_config(demo_config_dict)


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_clean_generated_data_passes_the_demo_schema(ray_session, tmp_path, demo_config_dict):
    generate(SyntheticConfig(rows=20_000, chunk_rows=5_000, seed=1), str(tmp_path / "raw"))
    result = ingest(_demo_config(demo_config_dict, tmp_path / "raw", tmp_path / "out"))
    assert (result.read, result.accepted, result.quarantined) == (20_000, 20_000, 0)


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
def test_corrupted_generated_data_is_quarantined_by_kind(ray_session, tmp_path, demo_config_dict):
    spec = SyntheticConfig(rows=20_000, chunk_rows=5_000, seed=1, corruption_rate=0.02)
    generate(spec, str(tmp_path / "raw"))
    result = ingest(_demo_config(demo_config_dict, tmp_path / "raw", tmp_path / "out"))
    assert result.read == 20_000 and result.accepted + result.quarantined == 20_000
    assert set(result.by_field) == {
        "out_of_range:amount",
        "out_of_range:credit_score",
        "missing_label:label",
        "unknown_category:channel",
        "missing_timestamp:event_ts",
        "missing_entity:customer_id",
        "duplicate:*",
    }
    assert 0.015 * 20_000 < result.quarantined < 0.025 * 20_000
    # Exactly the corrupted rows are quarantined: compare with the same seed, uncorrupted.
    clean_spec = spec.model_copy(update={"corruption_rate": 0.0})
    chunks = range(4)
    clean = pd.concat([generate_chunk(clean_spec, i).to_pandas() for i in chunks], ignore_index=True)
    dirty = pd.concat([generate_chunk(spec, i).to_pandas() for i in chunks], ignore_index=True)
    changed = ~((clean == dirty) | (clean.isna() & dirty.isna())).all(axis=1)
    assert result.quarantined == changed.sum()
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine")
    not_dup = quarantine[quarantine["_reason"] != "duplicate"]
    assert set(not_dup["event_id"].astype(int)) == set(dirty.loc[changed, "event_id"]) - set(
        dirty.loc[changed & dirty.duplicated(keep=False), "event_id"]
    )


def test_timestamp_inputs_are_typed_and_bad_ones_quarantined(ray_session, tmp_path):
    """A timestamp feature beside the event time: ISO 8601 dates and times (any offset) are read as
    UTC times; text that is no time is quarantined naming the field, and so is a missing value in a
    non-nullable one; a nullable one may be blank."""
    source = tmp_path / "raw.csv"
    source.write_text("rid,y,opened,closed\n"
                      "1,0,2024-01-31,2024-02-03T10:30:00+02:00\n"
                      "2,1,2023-12-01T23:00:00Z,\n"
                      "3,0,soon,2024-01-01\n"
                      "4,1,,2024-01-01\n")  # fmt: skip
    out = tmp_path / "out"
    features = {"opened": {"type": "timestamp", "nullable": False}, "closed": {"type": "timestamp"}}
    cfg = parse_config({"data": {"source": {"path": str(source)}, "output": {"root": str(out)},
                                 "schema": {"label": "y", "features": features}}})  # fmt: skip
    result = ingest(cfg)
    assert (result.accepted, result.quarantined) == (2, 2)
    quarantine = pd.read_parquet(out / "quarantine")
    quarantine = quarantine.set_index(quarantine["rid"].astype(int))
    assert quarantine.loc[3, "_reason"] == "bad_timestamp" and quarantine.loc[3, "_field"] == "opened"
    assert "'soon'" in quarantine.loc[3, "_detail"]
    assert quarantine.loc[4, "_reason"] == "null_value" and quarantine.loc[4, "_field"] == "opened"
    accepted = pq.read_table(out / "accepted").sort_by("rid")
    assert accepted.schema.field("opened").type == pa.timestamp("us", tz="UTC")
    assert accepted["opened"].to_pylist() == [pd.Timestamp("2024-01-31", tz="UTC"), pd.Timestamp("2023-12-01T23:00Z")]
    assert accepted["closed"].to_pylist() == [pd.Timestamp("2024-02-03T08:30Z"), None]
