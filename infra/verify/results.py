"""`Check`: one verify result (PASS, FAIL or NOT JUDGED, and why), and its two printings (lines by group, JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

# NOT JUDGED: the stack as it stands cannot show the property (one replica cannot show session affinity); not a
# pass, and not a failure of the stack either: said apart in the summary.
Status = Literal["PASS", "FAIL", "NOT JUDGED"]


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


def not_judged(group: str, name: str, reason: str) -> Check:
    return Check(group, name, "NOT JUDGED", reason)


def to_text(checks: list[Check]) -> str:
    """One line per check, grouped under its region (or zones / global), in the order they ran."""
    lines: list[str] = []
    groups = list(dict.fromkeys(c.group for c in checks))
    for group in groups:
        lines.append(f"{group}:")
        lines += [f"  {c.status} {c.name}: {c.reason}" for c in checks if c.group == group]
    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "NOT JUDGED")}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed"
                 + (f", {counts['NOT JUDGED']} not judged" if counts["NOT JUDGED"] else ""))
    return "\n".join(lines) + "\n"


def to_json(stack: str, checks: list[Check]) -> str:
    ok = not any(c.status == "FAIL" for c in checks)
    return json.dumps({"stack": stack, "ok": ok, "checks": [asdict(c) for c in checks]}, indent=2) + "\n"
