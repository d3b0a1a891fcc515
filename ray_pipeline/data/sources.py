"""Find and open raw data: local paths, globs and pyarrow-filesystem URIs; CSV, Parquet, JSON lines."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_pipeline.config import SourceConfig
from ray_pipeline.data.validate import ORDER, ROW, SOURCE
from ray_pipeline.errors import UserError

# Row numbers within a file fit in 40 bits; the file index goes above them in ORDER.
_ROW_BITS = 40

# Rows per read piece: enough to amortise a task, small enough to stream and spread over workers.
PIECE_ROWS = 250_000
CSV_BLOCK_BYTES = 16 << 20

EXTENSIONS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
}


class IngestError(RuntimeError):
    """The run cannot go on: a missing file, an unreadable format, a missing required column."""


@dataclass(frozen=True)
class SourceFiles:
    """The concrete files a source location stands for."""

    location: str
    filesystem: pafs.FileSystem
    files: list[str]
    format: str

    def display(self, path: str) -> str:
        """A file as the user would write it (URI scheme kept)."""
        if "://" in self.location:
            return self.location.split("://", 1)[0] + "://" + path.lstrip("/")
        return path


def _split(location: str) -> tuple[pafs.FileSystem, str]:
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise IngestError(f"{location}: cannot open this URI: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _is_hidden(path: str) -> bool:
    # Writers leave _SUCCESS, .crc and similar files beside data; they are not rows.
    return os.path.basename(path).startswith(("_", "."))


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return EXTENSIONS[ext]
    return None


def _shared_storage_hint(location: str) -> str:
    """On a multi-node Ray cluster, why a local path may be missing: it is on another machine."""
    import socket

    import ray

    if "://" in location or not ray.is_initialized() or sum(n["Alive"] for n in ray.nodes()) < 2:
        return ""
    return (f" on {socket.gethostname()}, where this job runs: on a Ray cluster, inputs must be on storage every "
            "node shares (an s3:// or gs:// URI, or a filesystem mounted at the same path on every node)")  # fmt: skip


def resolve_source(source: SourceConfig, location: str) -> SourceFiles:
    """List the files behind `location` (file, directory or glob) and settle their format."""
    fs, path = _split(location)
    if any(ch in path for ch in "*?["):
        base = path
        while any(ch in base for ch in "*?["):
            base = os.path.dirname(base)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
        if not files:
            raise IngestError(f"{location}: no files match this pattern")
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise IngestError(f"{location}: source not found (no such file or directory){_shared_storage_hint(location)}")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not _is_hidden(i.path))
            if not files:
                raise IngestError(f"{location}: directory holds no data files")
        else:
            files = [path]

    if source.format is not None:
        fmt = source.format
    else:
        found = {_format_of(f) for f in files}
        if None in found or len(found) != 1:
            raise IngestError(
                f"{location}: cannot infer the format from the file names "
                f"(extensions {sorted({os.path.splitext(f)[1] for f in files})}); "
                "set data.source.format to csv, parquet or json"
            )
        fmt = found.pop()
    return SourceFiles(location, fs, files, fmt)


def csv_convert_options(source: SourceConfig, text_columns: list[str]) -> pacsv.ConvertOptions:
    """pyarrow CSV conversion: schema columns read as text so one bad value cannot fail a block."""
    return pacsv.ConvertOptions(
        column_types={c: pa.string() for c in text_columns},
        null_values=source.null_values,
        strings_can_be_null=True,
    )


def file_columns(src: SourceFiles, path: str, source: SourceConfig) -> list[str]:
    """Column names of one file, read cheaply (Parquet footer, CSV header, first JSON line)."""
    shown = src.display(path)
    try:
        if src.format == "parquet":
            return pq.read_schema(path, filesystem=src.filesystem).names
        with src.filesystem.open_input_stream(path, compression="detect") as stream:
            if src.format == "csv":
                reader = pacsv.open_csv(
                    stream,
                    # a ragged row in the first block must not stop the header read
                    parse_options=pacsv.ParseOptions(delimiter=source.csv_delimiter, invalid_row_handler=_skip),
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                )
                return reader.schema.names
            head = stream.read(1 << 20)
            first = next((line for line in head.splitlines() if line.strip()), b"")
            if not first:
                return []
            record = json.loads(first)
            if not isinstance(record, dict):
                raise UserError("first line is not a JSON object")
            return list(record)
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise IngestError(f"{shown}: cannot read as {src.format}: {exc}") from None


def check_columns(src: SourceFiles, source: SourceConfig, required: list[str]) -> dict[str, list[str]]:
    """Stop with an error naming the file and column when a required column is absent."""
    columns_by_file = {}
    for path in src.files:
        names = file_columns(src, path, source)
        if src.format == "json":
            # JSON lines may omit keys per record; such rows are quarantined, not the run stopped.
            columns_by_file[path] = names
            continue
        missing = [c for c in required if c not in names]
        if missing:
            raise IngestError(f"{src.display(path)}: missing required column(s) {missing}; found {names}")
        columns_by_file[path] = names
    return columns_by_file


def read_pieces(src: SourceFiles) -> list[dict[str, Any]]:
    """Units of parallel reading: Parquet row-group ranges of about PIECE_ROWS (with their row count
    from the footer), else whole files (rows unknown until read)."""
    pieces: list[dict[str, Any]] = []
    for index, path in enumerate(src.files):
        if src.format != "parquet":
            pieces.append({"path": path, "file_index": index, "first_row": 0, "row_groups": None, "rows": None})
            continue
        try:
            meta = pq.read_metadata(path, filesystem=src.filesystem)
        except (pa.ArrowException, OSError) as exc:
            raise IngestError(f"{src.display(path)}: cannot read as parquet: {exc}") from None
        group: list[int] = []
        first = rows = 0
        for i in range(meta.num_row_groups):
            group.append(i)
            rows += meta.row_group(i).num_rows
            if rows - first >= PIECE_ROWS or i == meta.num_row_groups - 1:
                pieces.append(
                    {"path": path, "file_index": index, "first_row": first, "row_groups": group, "rows": rows - first}
                )
                group, first = [], rows
        if meta.num_row_groups == 0:
            pieces.append({"path": path, "file_index": index, "first_row": 0, "row_groups": [], "rows": 0})
    return pieces


def _skip(row: Any) -> str:
    return "skip"


def _tag(table: pa.Table, shown: str, file_index: int, first_row: int, rows: np.ndarray | None = None) -> pa.Table:
    """Add the file name, 1-based row numbers (consecutive from `first_row` + 1 unless given) and
    the global order to rows read from a file."""
    n = table.num_rows
    if rows is None:
        rows = np.arange(first_row + 1, first_row + n + 1, dtype=np.int64)
    return (
        # Dictionary-encoded: one copy of the name per block, not one per row.
        table.append_column(SOURCE, pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [shown]))
        .append_column(ROW, pa.array(rows))
        .append_column(ORDER, pa.array((np.int64(file_index) << _ROW_BITS) + rows))
    )


def _json_lines(stream: Any, chunk_bytes: int) -> Iterator[pa.Table]:
    """Lines of a JSON-lines stream as tables of raw text, never the whole file in memory."""
    rest = b""
    while True:
        chunk = stream.read(chunk_bytes)
        data = rest + chunk
        if not chunk:
            lines, rest = data.splitlines(), b""
        else:
            cut = data.rfind(b"\n")
            lines, rest = (data[:cut].splitlines(), data[cut + 1 :]) if cut >= 0 else ([], data)
        texts = [line.decode("utf-8", errors="replace") for line in lines if line.strip()]
        if texts:
            yield pa.table({"text": pa.array(texts, pa.string())})
        if not chunk:
            return


def _file_tables(src: SourceFiles, piece: dict[str, Any], columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet piece's row groups, or a JSON-lines file's raw lines (CSV: `_csv_tables`)."""
    path = piece["path"]
    if src.format == "parquet":
        pfile = pq.ParquetFile(path, filesystem=src.filesystem)
        groups = list(piece["row_groups"])
        if not groups:  # a file without row groups: keep its (empty) schema
            schema = pfile.schema_arrow
            yield schema.empty_table().select(columns) if columns else schema.empty_table()
            return
        for rb in pfile.iter_batches(row_groups=groups, batch_size=PIECE_ROWS, columns=columns):
            yield pa.Table.from_batches([rb])
        return
    with src.filesystem.open_input_stream(path, compression="detect") as stream:  # JSON lines
        yield from _json_lines(stream, CSV_BLOCK_BYTES)


class _RaggedRows:
    """CSV rows with the wrong number of fields, kept (not skipped) with their row numbers.

    pyarrow hands each such row to `invalid_row_handler` with its record number (header = 1;
    known only when the reader runs single-threaded). The good rows around them get the numbers
    the bad ones leave free, so every row keeps its place in the file.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int | None, str]] = []
        self.next_row = 1

    def __call__(self, row: Any) -> str:
        number = row.number - 1 if row.number is not None else None
        why = f"row has {row.actual_columns} fields, expected {row.expected_columns}: {row.text[:200]!r}"
        self.pending.append((number, why))
        return "skip"

    def number_good(self, n: int) -> np.ndarray:
        """Row numbers of the next `n` good rows."""
        bad = {b for b, _ in self.pending if b is not None and b >= self.next_row}
        candidates = np.arange(self.next_row, self.next_row + n + len(bad), dtype=np.int64)
        rows = candidates[~np.isin(candidates, list(bad))][:n] if bad else candidates[:n]
        if n:
            self.next_row = int(rows[-1]) + 1
        return rows

    def take(self, schema: pa.Schema, final: bool) -> tuple[pa.Table, np.ndarray] | None:
        """The bad rows placed so far (all of them when `final`) as null rows with their reason."""
        ready = [(b, w) for b, w in self.pending if final or (b is not None and b < self.next_row)]
        if not ready:
            return None
        self.pending = [p for p in self.pending if p not in ready]
        numbers = []
        for b, _ in ready:  # an unknown number goes after every row read (the reason still names the row)
            numbers.append(b if b is not None else self.next_row)
            self.next_row = max(self.next_row, numbers[-1] + 1)
        n = len(ready)
        table = pa.table({f.name: pa.nulls(n, f.type) for f in schema})
        table = table.append_column("_unparseable", pa.array([w for _, w in ready], pa.string()))
        return table, np.asarray(numbers, dtype=np.int64)


def _csv_tables(
    src: SourceFiles, path: str, source: SourceConfig, text_columns: list[str]
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """A CSV file's rows with their row numbers; ragged rows come out flagged `_unparseable`."""
    ragged = _RaggedRows()
    parse = pacsv.ParseOptions(delimiter=source.csv_delimiter, invalid_row_handler=ragged)
    with src.filesystem.open_input_stream(path, compression="detect") as stream:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
            parse_options=parse,
            convert_options=csv_convert_options(source, text_columns),
        )
        for rb in reader:
            table = pa.Table.from_batches([rb])
            table = table.append_column("_unparseable", pa.nulls(table.num_rows, pa.string()))
            yield table, ragged.number_good(table.num_rows)
            bad = ragged.take(reader.schema, final=False)
            if bad:
                yield bad
        bad = ragged.take(reader.schema, final=True)
        if bad:
            yield bad


def read_piece(
    batch: dict[str, Any], src: SourceFiles, source: SourceConfig, text_columns: list[str]
) -> Iterator[pa.Table]:
    """Read pieces (a Ray Data UDF): yields tables tagged with file name, row number and order."""
    for i in range(len(batch["path"])):
        piece = {k: batch[k][i] for k in batch}
        shown = src.display(str(piece["path"]))
        row = int(piece["first_row"])
        try:
            if src.format == "csv":
                for table, rows in _csv_tables(src, str(piece["path"]), source, text_columns):
                    yield _tag(table, shown, int(piece["file_index"]), 0, rows)
                continue
            for table in _file_tables(src, piece):
                yield _tag(table, shown, int(piece["file_index"]), row)
                row += table.num_rows
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{shown}: cannot read as {src.format}: {exc}") from None


def _read_parquet_piece(batch: dict[str, Any], src: SourceFiles, columns: list[str] | None) -> Iterator[pa.Table]:
    for i in range(len(batch["path"])):
        piece = {k: batch[k][i] for k in batch}
        yield from _file_tables(src, piece, columns)


def read_parquet(location: str, columns: list[str] | None = None):
    """A Parquet file, directory, glob or URI as a Ray Dataset, one read task per ~PIECE_ROWS rows.

    Used for the platform's own Parquet outputs instead of `ray.data.read_parquet`, whose file
    listing step costs several seconds per read on a 2-core machine (measured with ray 2.60).
    """
    import ray.data

    src = resolve_source(SourceConfig(path=location, format="parquet"), location)
    pieces = read_pieces(src)
    return ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        _read_parquet_piece, batch_size=1, fn_kwargs={"src": src, "columns": columns}
    )
