"""The model versions one replica serves: the champion alias, plus a challenger alias that answers a
share of requests (canary) or scores every request unseen by the caller (shadow).

Ray Serve has no traffic split of its own; doing it inside the replica keeps one hop per request and
lets one dynamic batch hold requests for both versions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ray_pipeline.errors import UserError
from ray_pipeline.registry.handoff import LoadedModel, load
from ray_pipeline.registry.store import Registry
from ray_pipeline.registry.traffic import current_traffic

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


class ModelSet:
    """Champion (always) and challenger (canary/shadow, when its alias is set); follows alias moves."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        champion_alias: str,
        mode: str = "off",
        challenger_alias: str = "challenger",
        canary_share: float = 0.0,
        on_load: Callable[[int, str, float], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.registry, self.name, self.mode, self.canary_share = registry, name, mode, canary_share
        self.aliases = {CHAMPION: champion_alias, CHALLENGER: challenger_alias}
        self._use_registry_traffic()
        self._on_load = on_load
        self._rng = random.Random(seed)
        self.models: dict[str, LoadedModel | None] = {role: None for role in self.aliases}
        self.loaded_at: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # role -> why its wanted version is not loaded
        self._failed: dict[str, int] = {}  # role -> version that failed to load (artifacts never change)
        self.models[CHAMPION] = self._load(CHAMPION, self._wanted(CHAMPION))
        if self.models[CHAMPION] is None:
            raise UserError(f"models:/{name}@{champion_alias} is not set: nothing to serve")
        if self.mode != "off":
            self.refresh()  # a broken challenger is reported, never a reason not to serve the champion

    def _wanted(self, role: str) -> int | None:
        return self.registry.aliases(self.name).get(self.aliases[role])

    def _load(self, role: str, version: int | None) -> LoadedModel | None:
        if version is None:
            return None
        started = time.perf_counter()
        loaded = load(self.registry, f"models:/{self.name}/{version}")
        self.loaded_at[role] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self._on_load:
            self._on_load(version, role, time.perf_counter() - started)
        return loaded

    def refresh(self) -> list[str]:
        """Load versions whose alias moved, then swap each in with one assignment; returns what changed.

        A version that fails to load (tampered artifact, missing file) leaves the role on what it
        had; the failure is reported once and kept in `errors`. Registered artifacts never change,
        so that version is not retried until the alias points elsewhere.
        """
        changes = self._use_registry_traffic()
        for role in self.aliases:
            if role == CHALLENGER and self.mode == "off":
                continue  # no traffic for it: not loaded
            wanted, current = self._wanted(role), self.models[role]
            have = current.version.version if current else None
            if wanted == have or (role == CHAMPION and wanted is None):
                self.errors.pop(role, None)
                self._failed.pop(role, None)
                continue  # a deleted champion alias keeps the last version serving rather than failing
            if role in self._failed and self._failed[role] == wanted:
                continue  # (a deleted alias, wanted None, is a move, not a known failure)
            try:
                self.models[role] = self._load(role, wanted)
            except Exception as exc:
                self._failed[role] = wanted
                self.errors[role] = f"v{wanted}: {exc}"
                changes.append(f"{role}: v{wanted} failed to load, still v{have}: {exc}")
                continue
            self.errors.pop(role, None)
            self._failed.pop(role, None)
            changes.append(f"{role}: v{have} -> v{wanted}")
        return changes

    def _use_registry_traffic(self) -> list[str]:
        """Take the traffic split an operator set in the registry (registry/traffic.py), if any."""
        setting = current_traffic(self.registry, self.name)
        if setting is None or (setting.mode, setting.canary_share) == (self.mode, self.canary_share):
            return []
        before = f"{self.mode} {self.canary_share:g}"
        self.mode, self.canary_share = setting.mode, setting.canary_share
        return [f"traffic: {before} -> {self.mode} {self.canary_share:g}"]

    def pick(self) -> tuple[str, LoadedModel]:
        """The variant that answers the next request and the version serving it now.

        The caller validates the request against this version's inputs and has it scored by this
        same version, even if an alias moves in between.
        """
        models = self.models  # refresh() swaps entries in place: read each one once
        challenger = models.get(CHALLENGER)
        if self.mode == "canary" and challenger and self._rng.random() < self.canary_share:
            return CHALLENGER, challenger
        return CHAMPION, self.pick_champion()

    def pick_champion(self) -> LoadedModel:
        """The champion version serving now."""
        champion = self.models[CHAMPION]
        assert champion is not None  # set in __init__ and never unset
        return champion

    def shadow(self) -> LoadedModel | None:
        """The model that scores every request in shadow mode (None when off or unset)."""
        return self.models.get(CHALLENGER) if self.mode == "shadow" else None

    def info(self) -> dict[str, Any]:
        """Name, version, spec hash and load time per variant, the traffic mode, and any load failures."""
        champion = self.models[CHAMPION]
        assert champion is not None
        out = {**_describe(champion, self.loaded_at[CHAMPION]), "traffic": {"mode": self.mode}}
        if self.mode != "off":
            challenger = self.models[CHALLENGER]
            out["traffic"].update(
                challenger_alias=self.aliases[CHALLENGER],
                challenger=_describe(challenger, self.loaded_at[CHALLENGER]) if challenger else None,
            )
            if self.mode == "canary":
                out["traffic"]["canary_share"] = self.canary_share
        if self.errors:
            out["load_errors"] = dict(self.errors)  # versions an alias points at that could not be loaded
        return out


def _describe(model: LoadedModel, loaded_at: str) -> dict[str, Any]:
    v = model.version
    label = model.spec.label  # what the output means in the data's own terms: task, classes, 1, units
    return {"name": v.name, "version": v.version, "uri": v.uri, "kind": v.kind,
            "feature_spec_hash": model.spec.content_hash(), "loaded_at": loaded_at,
            "inputs": model.spec.input_columns,
            "label": {"task": label.task, **label.model_dump(exclude_defaults=True)} if label is not None else None}  # fmt: skip
