"""Small file operations on local paths and pyarrow-filesystem URIs (s3://, gs://, file://)."""

from __future__ import annotations

import hashlib

import pyarrow.fs as pafs


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path within it."""
    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def read_text(path: str) -> str | None:
    """A small text file's content, or None if it does not exist."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    """Write a small text file, creating its directory."""
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


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
