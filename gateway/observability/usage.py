"""What one call consumed (`CallRecord`) and the hook that accounts for it after the answer is sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class CallRecord:
    """Facts about one call, filled in along the request path; never holds the prompt or the key."""

    request_id: str
    key_id: str = ""
    endpoint: str = ""
    alias: str = ""
    deployment: str = ""
    replica: str = ""
    region: str = ""
    status: int = 0
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0  # images in an answer that reported no usage: priced per image (ledger/prices.py)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    overhead_ms: float = 0.0
    attempts: int = 0
    prompt_hash: str = ""
    error: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    route: str = ""  # a ladder's rungs and their outcomes, as the x-llmp-route header (routing/ladder.py)
    # Governance: who pays (the key's hash, never the key), the limiter's ticket, and whether it was accounted.
    key_token: str = ""
    key_alias: str | None = None
    team_id: str | None = None
    ticket: Any = None
    accounted: bool = False
    passed_on: bool = False  # a master-key call another region's gateway passed on: its ledger has the call
    quota_tickets: list[Any] = field(default_factory=list)  # (deployment, ticket) per attempt on a quota


class UsageHook(Protocol):
    """Called once per finished call, off the client's critical path.

    The governance layer (spend ledger, token limits) implements this; it must
    not block: queue the record and persist it elsewhere.
    """

    def record(self, call: CallRecord) -> None: ...


class NoUsageAccounting:
    """Default hook: nothing to account for until governance is configured."""

    def record(self, call: CallRecord) -> None:
        return None
