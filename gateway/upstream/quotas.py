"""Deployment quotas: `deployments[].rpm` / `tpm` (LiteLLM's per-deployment limits, e.g. a provider's quota).

A deployment at its quota is skipped like an unhealthy one: the call goes to the next
candidate or fallback, and gets a 503 naming the quota only when nothing else can take it.
The counters are the governance limiter's, so with `redis` they hold across replicas (with
the bounds gateway/README.md gives); without it they are in-process, per replica.
"""

from __future__ import annotations

from gateway.config.native import GatewayConfig
from gateway.governance.limits.in_process import LocalLimiter
from gateway.governance.limits.scopes import NO_LIMIT, RateLimiter, Scope, Ticket, reserve_tokens
from gateway.http.errors import GatewayError
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request


class DeploymentQuotas:
    def __init__(self, scopes: dict[str, tuple[Scope, ...]], limiter: RateLimiter, deadline_s: float) -> None:
        self.scopes = scopes
        self.limiter = limiter
        self.deadline_s = deadline_s  # as governance's: the limiter keeps one heartbeat length

    @classmethod
    def for_config(cls, config: GatewayConfig, limiter: RateLimiter | None) -> DeploymentQuotas | None:
        """None when no deployment has a quota (nothing to do on the request path)."""
        scopes: dict[str, tuple[Scope, ...]] = {
            d.name: (Scope(f"d:{d.name}", f"deployment `{d.name}`", rpm=NO_LIMIT if d.rpm is None else d.rpm,
                           tpm=NO_LIMIT if d.tpm is None else d.tpm),)
            for m in config.models for d in m.deployments if d.rpm is not None or d.tpm is not None
        }
        if not scopes:
            return None
        return cls(scopes, limiter or LocalLimiter(), config.gateway.timeouts.total + 60)

    async def take(self, deployment: str, request: Request, record: CallRecord) -> bool:
        """Count one attempt on `deployment`; False when it is at its quota (or its counter cannot be reached)."""
        scopes = self.scopes.get(deployment)
        if scopes is None:
            return True
        asked = request.body.get("max_completion_tokens", request.body.get("max_tokens"))
        tokens = reserve_tokens(len(request.raw), asked if isinstance(asked, int) else 0)
        try:
            ticket = await self.limiter.admit(record.request_id, scopes, tokens, 0.0, self.deadline_s)
        except GatewayError:
            return False
        record.quota_tickets.append((deployment, ticket))
        return True

    def settle(self, record: CallRecord) -> None:
        """After the call: the deployment that answered used its tokens; the attempts that failed used none."""
        tickets: list[tuple[str, Ticket]] = record.quota_tickets
        for deployment, ticket in tickets:
            used = record.prompt_tokens + record.completion_tokens if deployment == record.deployment else 0
            self.limiter.settle(ticket, used, 0.0)
        tickets.clear()
