"""The preview reaper: finds ephemeral pr-<n> stacks past their expiry and destroys them with the Pulumi CLI."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from infra.config import NAMESPACE, PR_STACK

Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class Verdict:
    stack: str
    expires_at: datetime | None
    expired: bool
    reason: str
    failed: bool = False  # expired, but destroying it failed: the reaper exits non-zero


def judge(stack: str, preview_value: dict | None, now: datetime) -> Verdict:
    """Whether one pr-<n> stack is due. A stack with no readable expiry is kept and reported:
    deleting something nobody can date is worse than a late clean-up."""
    raw = (preview_value or {}).get("expires_at")
    if not raw:
        return Verdict(stack, None, False, "no llm-platform:preview.expires_at; kept, check it by hand")
    try:
        expires = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return Verdict(stack, None, False, f"unreadable expiry {raw!r}; kept, check it by hand")
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires <= now:
        return Verdict(stack, expires, True, f"expired {now - expires} ago")
    return Verdict(stack, expires, False, f"expires in {expires - now}")


def pulumi(args: list[str]) -> str:
    return subprocess.run(["pulumi", *args, "--non-interactive"], check=True, capture_output=True,
                          text=True).stdout


def preview_stacks(run: Runner) -> list[str]:
    """pr-<n> stacks of this project, from `pulumi stack ls --json`."""
    try:
        stacks = json.loads(run(["stack", "ls", "--json"]) or "[]")
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"`pulumi stack ls --json` did not print JSON: {exc}") from None
    names = [s["name"].rsplit("/", 1)[-1] for s in stacks]
    return sorted(n for n in names if PR_STACK.match(n))


def preview_value(stack: str, run: Runner) -> dict | None:
    try:
        out = json.loads(run(["config", "get", f"{NAMESPACE}:preview", "--stack", stack, "--json"]))
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        return None
    value = out.get("objectValue") or out.get("value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def reap(now: datetime, dry_run: bool, run: Runner = pulumi) -> list[Verdict]:
    """Judge every pr-* stack and destroy the expired ones; one failure does not stop the others."""
    verdicts = [judge(s, preview_value(s, run), now) for s in preview_stacks(run)]
    if dry_run:
        return verdicts
    done = []
    for v in verdicts:
        if v.expired:
            try:
                run(["destroy", "--yes", "--stack", v.stack])
                run(["stack", "rm", "--yes", "--stack", v.stack])
            except subprocess.CalledProcessError as exc:
                detail = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
                v = Verdict(v.stack, v.expires_at, False, f"destroy failed: {detail[0][:200]}", failed=True)
        done.append(v)
    return done


def summary(verdicts: list[Verdict], dry_run: bool) -> str:
    removed = [v for v in verdicts if v.expired]
    verb = "would remove" if dry_run else "removed"
    lines = [f"### Preview reaper: {verb} {len(removed)} of {len(verdicts)} pr-* stack(s)", "",
             "| stack | expires at | action |", "|---|---|---|"]
    for v in verdicts:
        when = v.expires_at.isoformat() if v.expires_at else "–"
        action = (verb if v.expired else "FAILED" if v.failed else "kept") + f" ({v.reason})"
        lines.append(f"| {v.stack} | {when} | {action} |")
    return "\n".join(lines) + "\n"
