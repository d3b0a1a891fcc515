"""The console's actions: the registry's own operations, recorded like a CLI action (the alias
history, the promotion attempts, the traffic settings), with the console and the client as actor."""

from __future__ import annotations

from dataclasses import dataclass

from ray_pipeline.console.state import ConsoleState
from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.gates import PromotionRefused, promote
from ray_pipeline.registry.traffic import set_traffic


@dataclass(frozen=True)
class Outcome:
    """What an action did, for the page: HTTP status, a kind (ok / refused / error) and the text."""

    status: int
    kind: str
    text: str


def promote_version(st: ConsoleState, name: str, version: int, alias: str, actor: str) -> Outcome:
    """Offer a version to an alias through the configured gates: a refusal changes nothing."""
    try:
        change, report = promote(st.registry, name, version, alias, st.cfg.registry.gates, actor=actor,
                                 reason="console")  # fmt: skip
    except PromotionRefused as refused:
        return Outcome(409, "refused", str(refused))
    except RegistryError as exc:
        return Outcome(400, "error", str(exc))
    return Outcome(200, "ok", f"@{alias}: v{change.from_version} -> v{change.to_version}\n{report}")


def rollback_alias(st: ConsoleState, name: str, alias: str, actor: str) -> Outcome:
    """Move an alias back to the version it held before its latest change."""
    try:
        change = st.registry.rollback(name, alias, actor=actor)
    except RegistryError as exc:
        return Outcome(400, "error", str(exc))
    return Outcome(200, "ok", f"@{alias} rolled back: v{change.from_version} -> v{change.to_version}")


def set_challenger(st: ConsoleState, name: str, version: int, actor: str) -> Outcome:
    """Point the challenger alias (canary / shadow traffic) at a version."""
    alias = st.cfg.serving.traffic.challenger_alias
    try:
        change = st.registry.set_alias(name, alias, version, reason="set as challenger in the console", actor=actor)
    except RegistryError as exc:
        return Outcome(400, "error", str(exc))
    return Outcome(200, "ok", f"@{alias}: v{change.from_version} -> v{change.to_version}")


def change_traffic(st: ConsoleState, name: str, mode: str, share: str, actor: str) -> Outcome:
    """Set the traffic split (off / canary with a share / shadow); replicas pick it up on their next poll."""
    try:
        value = float(share) if share.strip() else 0.0
    except ValueError:
        return Outcome(400, "error", f"canary share {share!r}: expected a number from 0 to 1")
    try:
        s = set_traffic(st.registry, name, mode, value, actor, "console")
    except RegistryError as exc:
        return Outcome(400, "error", str(exc))
    return Outcome(200, "ok", f"traffic: {s.mode}" + (f", canary share {s.canary_share:.0%}" if s.mode == "canary" else ""))
