"""`Check`: one verify result (PASS/FAIL and why), and the two ways they are printed (lines by group, JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["PASS", "FAIL"]


@dataclass(frozen=True)
class Check:
    group: str  # a region's name, or "zones" / "global" for checks through the shared names
    name: str  # what was checked, in the user's words: "NodePool h100", "chat via eu.api.example.com"
    status: Status
    reason: str


def passed(group: str, name: str, reason: str) -> Check:
    return Check(group, name, "PASS", reason)


def failed(group: str, name: str, reason: str) -> Check:
    return Check(group, name, "FAIL", reason)


def to_text(checks: list[Check]) -> str:
    """One line per check, grouped under its region (or zones / global), in the order they ran."""
    lines: list[str] = []
    groups = list(dict.fromkeys(c.group for c in checks))
    for group in groups:
        lines.append(f"{group}:")
        lines += [f"  {c.status} {c.name}: {c.reason}" for c in checks if c.group == group]
    fails = sum(c.status == "FAIL" for c in checks)
    lines.append(f"{len(checks) - fails} passed, {fails} failed")
    return "\n".join(lines) + "\n"


def to_json(stack: str, checks: list[Check]) -> str:
    ok = all(c.status == "PASS" for c in checks)
    return json.dumps({"stack": stack, "ok": ok, "checks": [asdict(c) for c in checks]}, indent=2) + "\n"
