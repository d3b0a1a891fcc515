"""A version's files: copied under `artifact_root` (a directory or an object-store URI) with a
sha256 manifest, and checked against it whenever a version is loaded (`checkout`)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.versions import ModelVersion
from ray_pipeline.storage import (
    copy_tree,
    delete_tree,
    describe,
    file_sha256,
    filesystem,
    is_local,
    join,
    list_files,
    read_bytes,
    write_text,
)

MANIFEST = "MANIFEST.json"


def write_manifest(directory: str | Path) -> str:
    """Record sha256 and size of every file (path or URI); returns the manifest's own sha256."""
    files = {rel: size for rel, size in list_files(directory).items() if rel != MANIFEST}
    body = {rel: {"sha256": file_sha256(join(directory, rel)), "bytes": size} for rel, size in files.items()}
    text = json.dumps(body, indent=2, sort_keys=True)
    write_text(join(directory, MANIFEST), text)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_manifest(directory: str | Path, expected_sha256: str) -> None:
    """Refuse an artifact whose files differ from what was registered."""
    present = list_files(directory)
    if MANIFEST not in present:
        raise RegistryError(f"{directory}: {MANIFEST} is missing")
    manifest = read_bytes(join(directory, MANIFEST))
    if hashlib.sha256(manifest).hexdigest() != expected_sha256:
        raise RegistryError(f"{directory}: {MANIFEST} was modified after registration")
    body = json.loads(manifest)
    extra = sorted(set(present) - set(body) - {MANIFEST})
    if extra:
        raise RegistryError(f"{directory}: files not in the manifest: {extra}")
    for rel, info in body.items():
        if rel not in present:
            raise RegistryError(f"{directory}: {rel} is missing")
        if present[rel] != info["bytes"] or file_sha256(join(directory, rel)) != info["sha256"]:
            raise RegistryError(f"{directory}: {rel} does not match its checksum (tampered or truncated)")


@contextmanager
def store_errors(root: str) -> Iterator[None]:
    """Artifact-store failures (unreachable endpoint, missing bucket, no permission) as a
    RegistryError naming the store `root`; a missing file keeps its own FileNotFoundError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryError(f"registry artifact store {describe(root)}: {reason}") from exc


def checkout(record: ModelVersion, root: str) -> Path:
    """A local directory holding the version's files, checked against its manifest: the version's
    own folder on a local store, a cached download from an object store."""
    with store_errors(root):
        if is_local(record.path):
            local = Path(filesystem(record.path)[1])
            verify_manifest(local, record.manifest_sha256)
            return local
        local = cache_root() / record.name / f"{record.version}-{record.manifest_sha256[:16]}"
        if local.exists():
            try:
                verify_manifest(local, record.manifest_sha256)
                return local
            except RegistryError:
                delete_tree(local)  # a damaged cached copy: fetch it again
        tmp = local.with_name(f".{local.name}-{uuid.uuid4().hex}")
        copy_tree(record.path, tmp)
        try:
            verify_manifest(tmp, record.manifest_sha256)
        except RegistryError as exc:
            delete_tree(tmp)
            raise RegistryError(f"{record.uri} stored at {describe(record.path)}: {exc}") from None
        try:
            os.replace(tmp, local)
        except OSError:  # another process put the same version there first
            delete_tree(tmp)
        return local


def cache_root() -> Path:
    """Where versions downloaded from an object store are kept (XDG cache directory)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ray-pipeline" / "models"
