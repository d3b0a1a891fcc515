"""The model registry's front door: `Registry`, a thin facade over the registry's parts.

- `database.py`: the SQL database (a SQLite file, or PostgreSQL for several nodes), its locked
  write transactions and read connections;
- `versions.py`: the immutable versions and their models:/ URIs; `aliases.py`: aliases and their
  history; `locks.py`: named locks; `artifacts.py`: each version's files and manifest;
- `attempts.py`, `traffic.py`, `runs.py`: promotion attempts, traffic splits, the run index.

Registration copies into a unique staging prefix first and makes the version visible in one
transaction: on a local disk that transaction also renames the folder to `NAME/VERSION/`; an
object store has no atomic rename, so there the unique prefix stays where the version lives and
the committed row is what makes it visible. Either way a crash never leaves a half-registered
version visible, and files are checked against the manifest whenever a version is loaded.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from ray_pipeline.registry import aliases, artifacts, locks, versions
from ray_pipeline.registry.aliases import ALIASES, HISTORY, AliasChange, AliasCheck
from ray_pipeline.registry.attempts import ATTEMPTS
from ray_pipeline.registry.database import Database, RegistryError, db_url, now
from ray_pipeline.registry.locks import LOCKS
from ray_pipeline.registry.runs import RUN_METRICS, RUNS
from ray_pipeline.registry.traffic import TRAFFIC
from ray_pipeline.registry.versions import URI, VERSIONS, ModelVersion, get_version, insert_version, next_version
from ray_pipeline.storage import copy_tree, delete_tree, filesystem, is_local, join

TABLES = [VERSIONS, ALIASES, HISTORY, LOCKS, ATTEMPTS, TRAFFIC, RUNS, RUN_METRICS]


class Registry:
    """Registered models, immutable versions, aliases with history."""

    def __init__(self, db: str | Path, artifact_root: str | Path) -> None:
        self.db = db_url(db)
        self.root = str(artifact_root)  # a directory or an object-store URI
        with artifacts.store_errors(self.root):
            fs, root = filesystem(self.root)
            fs.create_dir(root, recursive=True)
        self.database = Database(self.db, TABLES)

    def __getstate__(self) -> dict[str, Any]:
        # Engines hold connections and locks: a copy in another process builds its own.
        return {"db": self.db, "root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["db"], state["root"])  # type: ignore[misc]

    # ----------------------------------------------------------------------------------- write

    def register(
        self,
        name: str,
        source_dir: str | Path,
        kind: str,
        metrics: dict[str, Any],
        params: dict[str, Any],
        signature: dict[str, Any],
        lineage: dict[str, Any],
    ) -> ModelVersion:
        """Copy `source_dir` in as version N+1 of `name` (N+1 visible only once complete)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise RegistryError(f"model name {name!r}: use letters, digits, '.', '_' or '-'")
        local = is_local(self.root)
        # On a local disk a hidden staging folder renamed at commit; on an object store the unique
        # prefix is where the version stays (no atomic rename), made visible by the committed row.
        staging = join(self.root, name, f".staging-{uuid.uuid4().hex}" if local else uuid.uuid4().hex)
        committed = False
        try:
            with artifacts.store_errors(self.root):
                copy_tree(source_dir, staging)
                manifest_sha = artifacts.write_manifest(staging)
            # One registrar per model at a time: numbers are distinct and gap-free.
            with self.database.transaction(f"model:{name}") as db:
                version = next_version(db, name)
                final = staging
                if local:
                    final = join(self.root, name, str(version))
                    delete_tree(final)  # debris of a crash between rename and commit: never registered
                    os.replace(filesystem(staging)[1], filesystem(final)[1])
                record = ModelVersion(name, version, now(), kind, final, manifest_sha, metrics, params, signature,
                                      lineage)  # fmt: skip
                insert_version(db, record)
                self._before_commit(version)
            committed = True
            return record
        finally:
            if not committed or local:  # a local staging folder is gone once renamed
                try:
                    delete_tree(staging)
                except OSError:
                    pass  # the store is what failed: nothing refers to these files

    def _before_commit(self, version: int) -> None:
        """Hook for crash tests; does nothing."""

    def set_alias(self, name: str, alias: str, version: int, reason: str = "", actor: str = "",
                  check: AliasCheck | None = None) -> AliasChange:  # fmt: skip
        """Point `alias` at `version` (atomically, with a history entry).

        `check(candidate, current_holder)` runs inside the same transaction, against the holder
        this move replaces; it returns the reason to record, or raises to leave the alias as is.
        """
        return aliases.move_alias(self, name, alias, version, reason, actor, check)

    def delete_alias(self, name: str, alias: str, reason: str = "", actor: str = "") -> AliasChange:
        """Remove `alias` (recorded in its history)."""
        return aliases.remove_alias(self, name, alias, reason, actor)

    def rollback(self, name: str, alias: str, actor: str = "") -> AliasChange:
        """Move `alias` back to the version it held before its latest change."""
        history = self.history(name, alias)
        if not history:
            raise RegistryError(f"models:/{name}@{alias} has no history to roll back")
        last = history[-1]
        if last.from_version is None:
            return self.delete_alias(name, alias, f"rollback of change at {last.at}", actor)
        return self.set_alias(name, alias, last.from_version, f"rollback of change at {last.at}", actor)

    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> str | None:
        """Take the named lock for `ttl_s` seconds; returns None, or who holds it when taken."""
        return locks.acquire_lock(self, name, holder, ttl_s)

    def release_lock(self, name: str, holder: str) -> None:
        """Give the lock back (only its holder can)."""
        locks.release_lock(self, name, holder)

    # ------------------------------------------------------------------------------------ read

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`), oldest first."""
        return versions.all_versions(self, name)

    def get(self, name: str, version: int) -> ModelVersion:
        """One version's record."""
        with self.database.read() as db:
            return get_version(db, name, version)

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for `name`."""
        return aliases.aliases_of(self, name)

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """Alias changes, oldest first."""
        return aliases.alias_history(self, name, alias)

    def resolve(self, uri: str) -> ModelVersion:
        """models:/NAME/VERSION or models:/NAME@ALIAS to its version record."""
        match = URI.match(uri)
        if match is None:
            raise RegistryError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        name = match["name"]
        if match["version"]:
            return self.get(name, int(match["version"]))
        version = self.aliases(name).get(match["alias"])
        if version is None:
            raise RegistryError(f"{uri}: alias {match['alias']!r} is not set")
        return self.get(name, version)

    def checkout(self, record: ModelVersion) -> Path:
        """A local directory holding the version's files, checked against its manifest: the
        version's own folder on a local store, a cached download from an object store."""
        return artifacts.checkout(record, self.root)
