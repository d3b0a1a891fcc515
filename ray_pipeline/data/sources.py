"""Find and open raw data: local paths, globs and pyarrow-filesystem URIs; CSV, Parquet, JSON lines."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_pipeline.config import SourceConfig

SOURCE_PATH_COLUMN = "_path"  # Ray Data's include_paths column, renamed out of the user's way

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


def resolve_source(source: SourceConfig, location: str) -> SourceFiles:
    """List the files behind `location` (file, directory or glob) and settle their format."""
    fs, path = _split(location)
    if any(ch in path for ch in "*?["):
        base = path
        while any(ch in base for ch in "*?["):
            base = os.path.dirname(base)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(
            i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)
        )
        if not files:
            raise IngestError(f"{location}: no files match this pattern")
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise IngestError(f"{location}: source not found (no such file or directory)")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted(
                i.path for i in infos if i.type == pafs.FileType.File and not _is_hidden(i.path)
            )
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


def csv_read_options(source: SourceConfig, text_columns: list[str]) -> dict:
    """pyarrow CSV options: schema columns read as text so one bad value cannot fail a block."""
    return {
        "parse_options": pacsv.ParseOptions(delimiter=source.csv_delimiter),
        "convert_options": pacsv.ConvertOptions(
            column_types={c: pa.string() for c in text_columns},
            null_values=source.null_values,
            strings_can_be_null=True,
        ),
    }


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
                    parse_options=pacsv.ParseOptions(delimiter=source.csv_delimiter),
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                )
                return reader.schema.names
            head = stream.read(1 << 20)
            first = next((line for line in head.splitlines() if line.strip()), b"")
            if not first:
                return []
            record = json.loads(first)
            if not isinstance(record, dict):
                raise ValueError("first line is not a JSON object")
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
            raise IngestError(
                f"{src.display(path)}: missing required column(s) {missing}; found {names}"
            )
        columns_by_file[path] = names
    return columns_by_file
