"""The traffic split of a served model (off, canary with a share, shadow) as registry state, so an
operator can change it without a redeploy: replicas read it on every alias poll. Until someone sets
it, the `serving.traffic` section of the config holds. Every change is a row (its history)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Column, Float, Integer, String, Table, Text, insert, select

from ray_pipeline.registry.database import METADATA, HasDatabase, RegistryError, actor_name

MODES = ("off", "canary", "shadow")

# append-only: the newest row of a model holds
TRAFFIC = Table(
    "traffic_settings", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("name", String(255), nullable=False),
    Column("mode", String(16), nullable=False), Column("canary_share", Float, nullable=False),
    Column("at", String(40), nullable=False), Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False),
)  # fmt: skip


@dataclass(frozen=True)
class TrafficSetting:
    """One traffic-split setting."""

    name: str
    mode: str
    canary_share: float
    at: str
    actor: str
    reason: str


def set_traffic(registry: HasDatabase, name: str, mode: str, canary_share: float, actor: str = "",
                reason: str = "") -> TrafficSetting:  # fmt: skip
    """Record a new traffic split for `name` (checked: a known mode, a share in [0, 1])."""
    if mode not in MODES:
        raise RegistryError(f"traffic mode {mode!r}: expected one of {MODES}")
    if not 0.0 <= canary_share <= 1.0:
        raise RegistryError(f"canary share {canary_share}: expected a number from 0 to 1")
    setting = TrafficSetting(name, mode, float(canary_share), datetime.now(timezone.utc).isoformat(), actor_name(actor),
                             reason)  # fmt: skip
    with registry.database.transaction(f"model:{name}") as db:
        db.execute(insert(TRAFFIC).values(name=name, mode=mode, canary_share=setting.canary_share, at=setting.at,
                                          actor=setting.actor, reason=reason))  # fmt: skip
    return setting


def traffic_history(registry: HasDatabase, name: str, limit: int = 50) -> list[TrafficSetting]:
    """The newest settings of `name`, newest first (the first is the one in force)."""
    t = TRAFFIC.c
    query = select(t.name, t.mode, t.canary_share, t.at, t.actor, t.reason).where(t.name == name)
    with registry.database.read() as db:
        return [TrafficSetting(*r) for r in db.execute(query.order_by(t.id.desc()).limit(limit))]


def current_traffic(registry: HasDatabase, name: str) -> TrafficSetting | None:
    """The setting in force, or None when nobody set one (the config's `serving.traffic` holds)."""
    newest = traffic_history(registry, name, limit=1)
    return newest[0] if newest else None
