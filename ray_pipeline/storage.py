"""Small file operations on local paths and pyarrow-filesystem URIs (s3://, gs://, file://)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path within it."""
    path = str(path)
    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def read_text(path: str) -> str | None:
    """A small text file's content, or None if it does not exist."""
    try:
        return read_bytes(path).decode()
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    """Write a small text file whole (see `write_bytes`)."""
    write_bytes(path, text.encode())


# A write's temp file: hidden (readers skip dot-names), named after its file and its writer's pid.
TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
# A temp file lives for one write of one buffer: one this old was left by a writer that died mid-write.
STALE_TEMP_S = 300.0
_swept: set[str] = set()  # folders this process has swept (once each: a sweep lists the folder)


def sweep_temp_files(folder: str, older_than_s: float = STALE_TEMP_S) -> list[str]:
    """Delete the temp files writers killed mid-write left in local `folder`: older than
    `older_than_s` and their writer's process gone (never a live writer's); the paths deleted."""
    gone, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return gone
    for entry in entries:
        m = TEMP_FILE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False) or _alive(int(m.group(1))):
            continue
        try:
            if now - entry.stat().st_mtime > older_than_s:
                os.unlink(entry.path)
                gone.append(entry.path)
        except FileNotFoundError:  # another process swept it first
            continue
    return gone


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (a writer elsewhere counts as gone: the age
    limit alone keeps its live writes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file whole, creating its directory: a reader sees the old content or the new, never
    half (local: a temp file renamed over it; object stores: one upload, visible when complete).
    The first write into a folder also sweeps the temp files of writers that died there."""
    fs, p = filesystem(path)
    if isinstance(fs, pafs.LocalFileSystem):
        folder, name = os.path.split(p)
        os.makedirs(folder or ".", exist_ok=True)
        if folder not in _swept:
            _swept.add(folder)
            sweep_temp_files(folder or ".")
        tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # hidden from readers
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write a (small) table as one Parquet file, whole (see `write_bytes`)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(path, sink.getvalue().to_pybytes())


def reset_dir(path: str) -> None:
    """Empty (or create) a directory so a run never mixes its output with an earlier one's."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir_contents(p)
    else:
        fs.create_dir(p, recursive=True)


def file_sha256(path: str) -> str:
    """sha256 of one file's bytes (local path or URI)."""
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_sha256(path: str) -> str:
    """A content digest of a file or directory: sha256 over each data file's relative path and
    sha256, in path order (hidden and `_`-prefixed files skipped, as data readers skip them)."""
    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return file_sha256(path)
    files = sorted(
        i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))
    )  # fmt: skip
    digest = hashlib.sha256()
    for f in files:
        rel = f[len(root.rstrip("/")) + 1 :]
        with fs.open_input_stream(f) as stream:
            digest.update(f"{rel}\0{hashlib.file_digest(stream, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def is_local(path: str | Path) -> bool:
    """True for a local path or file:// URI (where rename is atomic and files can be opened in place)."""
    return isinstance(filesystem(path)[0], pafs.LocalFileSystem)


def join(root: str | Path, *parts: str) -> str:
    """`root/part/...` for a local path or a URI alike."""
    return "/".join([str(root).rstrip("/"), *parts])


def exists(path: str | Path) -> bool:
    """Whether a file or directory exists."""
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; FileNotFoundError names the path."""
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def list_files(path: str | Path) -> dict[str, int]:
    """Every file under a directory, recursively: relative path -> size in bytes."""
    fs, root = filesystem(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {}
    prefix = root.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return {i.path[len(prefix) :]: i.size for i in infos if i.type == pafs.FileType.File}


def matching_files(directory: str | Path, pattern: str = "*") -> list[str]:
    """Files under `directory` (recursively) whose name matches the glob `pattern`, as paths or
    URIs in sorted order; hidden names (temp files being written) are left out."""
    return [join(directory, rel) for rel in sorted(list_files(directory))
            if not (name := rel.rsplit("/", 1)[-1]).startswith(".") and fnmatch.fnmatch(name, pattern)]  # fmt: skip


def copy_tree(source: str | Path, dest: str | Path) -> None:
    """Copy a directory's files to another directory, across filesystems (local <-> s3 <-> gs)."""
    src_fs, src = filesystem(source)
    dst_fs, dst = filesystem(dest)
    if src_fs.get_file_info(src).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{source}: no such directory")
    dst_fs.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=True)


def delete_tree(path: str | Path) -> None:
    """Remove a directory and everything under it, if it exists."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


@contextmanager
def local_dir(path: str | Path) -> Iterator[Path]:
    """A local directory to write `path`'s files in: `path` itself when local; otherwise a temp
    directory uploaded to `path` when the block ends without an error (libraries that only
    write local files, such as XGBoost and matplotlib, write there)."""
    if is_local(path):
        local = Path(filesystem(path)[1])
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="rp-upload-") as tmp:
        yield Path(tmp)
        copy_tree(tmp, path)


def describe(path: str | Path) -> str:
    """A path or URI as shown in messages: query parameters (which may hold credentials) removed."""
    return str(path).split("?", 1)[0]
