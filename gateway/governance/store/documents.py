"""Keys and teams as the JSON documents the store keeps, read back within bounds, and the revision each write stamps.

A document the admin API would not accept today (an older version wrote it, or a hand edit) is never an error
for everyone who lists keys, nor a limit silently dropped: it reads back as a blocked key or team carrying the
reason in `metadata.llmp_unreadable`, which the request path refuses and the admin API shows, updates and deletes.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from gateway.config.governance import parse_duration
from gateway.governance.bounds import (
    MAX_BUDGET,
    MAX_LIMIT,
    MAX_PARALLEL,
    MAX_REQUEST_BYTES,
    MAX_TIMESTAMP,
    MAX_TOKENS,
)
from gateway.governance.keys import Limits, Team, User, VirtualKey

UNREADABLE = "llmp_unreadable"
OnBad = Callable[[str, str, str], None]  # (kind, id, reason)


def new_rev() -> int:
    # A random revision per write: the cache's fingerprint (count, sum of revisions) changes on every write.
    return secrets.randbits(31)


def key_doc(key: VirtualKey) -> bytes:
    return orjson.dumps(dataclasses.asdict(key))


def team_doc(team: Team) -> bytes:
    return orjson.dumps(dataclasses.asdict(team))


def user_doc(user: User) -> bytes:
    return orjson.dumps(dataclasses.asdict(user))


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        raise ValueError(f"{name}: {str(value)[:40]} is not a whole number in [{low}, {high}]")


def _time(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP):
        raise ValueError(f"{name}: {str(value)[:40]} is not a time between 1970 and 9999")


def check_limits(limits: Limits) -> None:
    """ValueError naming the field when a limit is out of the bounds the admin API accepts."""
    budget = limits.max_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or not 0 <= budget <= MAX_BUDGET):
        raise ValueError(f"max_budget: {str(budget)[:40]} is not an amount in [0, {MAX_BUDGET:g}]")
    if limits.budget_duration is not None:
        parse_duration(limits.budget_duration)
    _whole("rpm_limit", limits.rpm_limit, 0, MAX_LIMIT)
    _whole("tpm_limit", limits.tpm_limit, 0, MAX_LIMIT)
    _whole("max_parallel_requests", limits.max_parallel_requests, 0, MAX_PARALLEL)


def check_key(key: VirtualKey) -> None:
    check_limits(key.limits)
    for name in ("token", "key_name", "key_alias", "team_id", "residency", "user_id"):
        if getattr(key, name) is not None and not isinstance(getattr(key, name), str):
            raise ValueError(f"{name}: not a string")
    if not all(isinstance(m, str) for m in key.models):
        raise ValueError("models: not a list of names")
    for name, per_model in (("model_rpm_limit", key.model_rpm_limit), ("model_tpm_limit", key.model_tpm_limit)):
        if not isinstance(per_model, dict):
            raise ValueError(f"{name}: not a mapping")
        for model, value in per_model.items():
            _whole(f"{name}.{model}", value, 0, MAX_LIMIT)
    _whole("max_tokens", key.max_tokens, 1, MAX_TOKENS)
    _whole("max_request_bytes", key.max_request_bytes, 1, MAX_REQUEST_BYTES)
    _time("expires", key.expires)
    _time("created_at", key.created_at)
    if not isinstance(key.metadata, dict):
        raise ValueError("metadata: not a mapping")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def key_from_doc(doc: str | bytes, on_bad: OnBad | None = None) -> VirtualKey:
    d: Any = None
    try:
        d = orjson.loads(doc)
        d["limits"] = Limits(**d.get("limits") or {})
        d["models"] = tuple(d.get("models") or ())
        key = VirtualKey(**d)
        check_key(key)
        return key
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:300]
    d = d if isinstance(d, dict) else {}
    token = _text(d.get("token")) or ""
    if on_bad is not None:
        on_bad("key", token, reason)
    return VirtualKey(token=token, key_name=_text(d.get("key_name")) or "(unreadable)",
                      key_alias=_text(d.get("key_alias")), team_id=_text(d.get("team_id")), blocked=True,
                      metadata={UNREADABLE: reason})


def team_from_doc(doc: str | bytes, on_bad: OnBad | None = None) -> Team:
    d: Any = None
    try:
        d = orjson.loads(doc)
        d["limits"] = Limits(**d.get("limits") or {})
        d["models"] = tuple(d.get("models") or ())
        team = Team(**d)
        check_limits(team.limits)
        _time("created_at", team.created_at)
        if not isinstance(team.team_id, str) or not isinstance(team.metadata, dict):
            raise ValueError("team_id or metadata: wrong type")
        return team
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:300]
    d = d if isinstance(d, dict) else {}
    team_id = _text(d.get("team_id")) or ""
    if on_bad is not None:
        on_bad("team", team_id, reason)
    return Team(team_id=team_id, team_alias=_text(d.get("team_alias")), blocked=True, metadata={UNREADABLE: reason})


def user_from_doc(doc: str | bytes, on_bad: OnBad | None = None) -> User:
    """A user; one whose document cannot be read keeps no limit it had: its budget reads as 0 (nothing admitted),
    the reason in `metadata.llmp_unreadable`, so the request path refuses its keys instead of dropping a budget."""
    d: Any = None
    try:
        d = orjson.loads(doc)
        d["limits"] = Limits(**d.get("limits") or {})
        d["models"] = tuple(d.get("models") or ())
        user = User(**d)
        check_limits(user.limits)
        _time("created_at", user.created_at)
        _time("updated_at", user.updated_at)
        if not isinstance(user.user_id, str) or not isinstance(user.metadata, dict):
            raise ValueError("user_id or metadata: wrong type")
        return user
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:300]
    d = d if isinstance(d, dict) else {}
    user_id = _text(d.get("user_id")) or ""
    if on_bad is not None:
        on_bad("user", user_id, reason)
    return User(user_id=user_id, user_email=_text(d.get("user_email")), limits=Limits(max_budget=0.0),
                metadata={UNREADABLE: reason})
