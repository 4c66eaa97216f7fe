"""Keys and teams as the JSON documents the store keeps, and the random revision each write stamps."""

from __future__ import annotations

import dataclasses
import secrets

import orjson

from gateway.governance.keys import Limits, Team, VirtualKey


def new_rev() -> int:
    # A random revision per write: the cache's fingerprint (count, sum of revisions) changes on every write.
    return secrets.randbits(31)


def key_doc(key: VirtualKey) -> bytes:
    return orjson.dumps(dataclasses.asdict(key))


def key_from_doc(doc: str | bytes) -> VirtualKey:
    d = orjson.loads(doc)
    d["limits"] = Limits(**d.get("limits") or {})
    d["models"] = tuple(d.get("models") or ())
    return VirtualKey(**d)


def team_doc(team: Team) -> bytes:
    return orjson.dumps(dataclasses.asdict(team))


def team_from_doc(doc: str | bytes) -> Team:
    d = orjson.loads(doc)
    d["limits"] = Limits(**d.get("limits") or {})
    d["models"] = tuple(d.get("models") or ())
    return Team(**d)
