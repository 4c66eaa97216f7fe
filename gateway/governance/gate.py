"""Governance on the request path: model access, residency, caps, limits on the way in;
ledger and settlement on the way out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config.governance import parse_duration
from gateway.config.model_names import ModelGroups
from gateway.config.native import GatewayConfig
from gateway.governance.bounds import MAX_COST, MAX_RESERVED_TOKENS, MAX_TOKENS
from gateway.governance.budget_sync import BudgetSync
from gateway.governance.keys import KeyCache, Limits, Team, User, VirtualKey, VirtualKeyAuth
from gateway.governance.ledger.prices import Prices
from gateway.governance.ledger.spend import SpendLedger, spend_row
from gateway.governance.limits.scopes import (
    NO_LIMIT,
    RateLimiter,
    Scope,
    key_scope,
    reserve_tokens,
    team_scope,
    user_scope,
)
from gateway.governance.model_access import may_use
from gateway.governance.peers import PeerSync
from gateway.governance.store.migrations import SchemaTooNew
from gateway.governance.store.protocol import LedgerStore
from gateway.http.errors import GatewayError, bad_request
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request
from gateway.upstream.fallbacks import MAX_BODY_FALLBACKS
from gateway.upstream.routing import ModelRoute

MASTER_TOKEN = "master"


def forbidden(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(403, message, "permission_error", param, code)


# LiteLLM answers budget refusals with `litellm.budget_exceeded_status_code` (422 since the default moved
# from 429: litellm/__init__.py@v1.106.2), type "budget_exceeded", param null, code the status as a string
# (proxy/auth/auth_exception_handler.py@v1.106.2 `_as_proxy_exception`). The status is the config's
# (gateway.budget_exceeded_status, LiteLLM's litellm_settings.budget_exceeded_status_code); this is its default.
BUDGET_STATUS = 422


def model_not_allowed(alias: str, scope: str = "key") -> GatewayError:
    """A key (or its team or user) asking for a model it may not use, as LiteLLM answers it: 403, type
    `key_model_access_denied` / `team_model_access_denied`, param "model", code "403", and the same message
    (proxy/auth/auth_checks.py@v1.106.2 `_can_object_call_model`, proxy/auth/model_access_denied.py)."""
    kind = f"{scope}_model_access_denied"  # key, team or user
    return GatewayError(403, f"The requested model '{alias}' is not available for this API key, or the model name "
                        "is invalid. Check the models available to you and try again.", kind, "model", "403")


def budget_exceeded(refusal: GatewayError, status: int = BUDGET_STATUS) -> GatewayError:
    """The limiter's budget refusal in LiteLLM's shape; its message keeps LiteLLM's opening words."""
    return GatewayError(status, f"Budget has been exceeded! {refusal.message}", "budget_exceeded", None,
                        str(status), refusal.headers)


def _limit(value: int | None) -> int:
    return NO_LIMIT if value is None else int(value)


def _scope(name: str, label: str, limits: Limits, rpm: int | None = None, tpm: int | None = None) -> Scope:
    return Scope(
        name, label,
        rpm=_limit(rpm if rpm is not None else limits.rpm_limit),
        tpm=_limit(tpm if tpm is not None else limits.tpm_limit),
        budget=NO_LIMIT if limits.max_budget is None else float(limits.max_budget),
        budget_seconds=parse_duration(limits.budget_duration) if limits.budget_duration else 0,
        parallel=_limit(limits.max_parallel_requests),
    )


class Governance:
    """The gate (`admit`) and the usage hook (`record`) of the app when governance is configured."""

    def __init__(self, config: GatewayConfig, auth: VirtualKeyAuth, cache: KeyCache, limiter: RateLimiter,
                 ledger: SpendLedger, store: LedgerStore, on_event: Callable[..., None],
                 budgets: BudgetSync | None = None,
                 on_charge: Callable[[str, str | None, float], None] | None = None) -> None:
        self.config = config
        self.auth = auth
        self.cache = cache
        self.limiter = limiter
        self.ledger = ledger
        self.store = store
        self.budgets = budgets
        self.on_charge = on_charge  # the spend metric (GatewayMetrics.charge): alias, team, USD
        self.prices = Prices(config)
        self.groups = ModelGroups((m.alias for m in config.models),
                                  {name: a.model for name, a in config.model_aliases.items()})
        self.budget_status = config.gateway.budget_exceeded_status
        self.residency = config.gateway.residency
        self.region = config.gateway.region or ""
        self.deadline_s = config.gateway.timeouts.total + 60  # a parallel slot outlives any call
        self.model_bytes = {m.alias: m.max_request_bytes for m in config.models}
        self._event = on_event
        self._scopes: dict[tuple[str, str], tuple[Scope, ...]] = {}
        self._scopes_generation = -1
        self._zone_routes: dict[tuple[str, str], ModelRoute] = {}
        self.unreadable_store: str | None = None  # why this replica must not be ready, when it must not
        self.peers: PeerSync | None = None  # the stack's other regions (governance/peers.py), when configured

    # ---- on the way in --------------------------------------------------------------------------

    async def admit(self, principal: Any, request: Request, route: ModelRoute, record: CallRecord) -> ModelRoute:
        """Refuse with a clear 400/403/429, or count the call in every scope it falls under; the route to use."""
        alias = request.alias
        # Per-model caps and limits belong to the model group the name resolved to (a model_aliases name, a name
        # a wildcard serves), as LiteLLM's parallel_request_limiter_v3.py@v1.106.2 reads them
        # (`get_key_model_rpm_limit(..., model_name=model.group)`): another name for a model is not a way around.
        group = route.alias
        size = len(request.raw)
        model_cap = self.model_bytes.get(group)
        if model_cap is not None and size > model_cap:
            raise bad_request(f"Request body is {size} bytes, over the model cap: models[{group}].max_request_bytes "
                              f"is {model_cap}.", "messages")
        key: VirtualKey | None = getattr(principal, "key", None)
        if key is None:
            record.key_token = MASTER_TOKEN
            # Passed on by another region's gateway (with the zone's master key): that gateway records the call in
            # its ledger under the caller's key, so it is not recorded here too (README: "Calls between regions").
            record.passed_on = request.hopped
            return route
        team: Team | None = getattr(principal, "team", None)
        record.key_token = key.token
        record.key_alias = key.key_alias
        record.team_id = key.team_id
        user: User | None = getattr(principal, "user", None)
        refused_by = self._refused_by(key, team, user, alias, route.alias)
        if refused_by is not None:
            raise model_not_allowed(alias, refused_by)
        zone = key.residency or (team.residency if team is not None else None)
        if zone is not None and self.residency is not None and zone != self.residency:
            raise forbidden(f"This key is pinned to residency zone `{zone}`; this gateway serves `{self.residency}`. "
                            f"Call the `{zone}` endpoint.", "residency_mismatch")
        if zone is not None and self.residency is None:
            route = self._pinned(route, zone)
        if key.max_request_bytes is not None and size > key.max_request_bytes:
            raise bad_request(f"Request body is {size} bytes, over the key cap: max_request_bytes is "
                              f"{key.max_request_bytes}.", "messages")
        body = request.body
        asked_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = body.get(asked_field)
        if isinstance(asked, bool) or not isinstance(asked, int):
            asked = None  # not a count: the upstream answers for it; the reservation uses the caps alone
        elif not 1 <= asked <= MAX_TOKENS:
            # The reservation is counted in Redis: an absurd one must be refused here, never sent there.
            raise bad_request(f"`{asked_field}` is {asked}: it must be a whole number from 1 to {MAX_TOKENS}.",
                              asked_field)
        if key.max_tokens is not None and asked is not None and asked > key.max_tokens:
            raise bad_request(f"`{asked_field}` is {asked}, over the key cap: max_tokens is {key.max_tokens}.",
                                  asked_field)
        completion_cap = asked
        for cap in (route.max_tokens, key.max_tokens):
            if cap is not None:
                completion_cap = cap if completion_cap is None else min(completion_cap, cap)
        scopes = self._scopes_for(key, team, group, user)
        if not scopes:
            return route
        tokens = min(reserve_tokens(size, completion_cap if request.endpoint != "embeddings" else 0),
                     MAX_RESERVED_TOKENS)
        inp, out = self._ceiling(alias, request.body.get("fallbacks"))
        cost = min(reserve_tokens(size, 0) * inp + (completion_cap or 0) * out + self._images(request, group, scopes),
                   MAX_COST)
        try:
            record.ticket = await self.limiter.admit(record.request_id, scopes, tokens, cost, self.deadline_s)
        except GatewayError as refusal:
            if refusal.kind == "budget_exceeded":
                raise budget_exceeded(refusal, self.budget_status) from None
            raise
        return route

    def _images(self, request: Request, group: str, scopes: tuple[Scope, ...]) -> float:
        """What the images a call asks for may cost. Images without usage in the answer (dall-e-2/3) are priced
        per image; a model without that price would let a budget be spent without bound, so a key, team or user
        with a budget is refused it."""
        if request.endpoint != "images":
            return 0.0
        price = self.prices.image_ceiling(group)
        fallbacks = request.body.get("fallbacks")
        for name in fallbacks[:MAX_BODY_FALLBACKS] if isinstance(fallbacks, list) else ():
            more = self.prices.image_ceiling(name) if isinstance(name, str) else None
            price = None if more is None or price is None else max(price, more)
        if price is None:
            if any(s.budget != NO_LIMIT for s in scopes):
                raise bad_request(f"Images from `{group}` cannot be metered: it has no per-image price "
                                  f"(models[{group}].output_cost_per_image), and this key has a budget.", "model")
            return 0.0
        n = request.body.get("n", 1)
        return price * (n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10 else 10)

    def _ceiling(self, alias: str, body_fallbacks: Any) -> tuple[float, float]:
        """Per-token prices to reserve: the alias's ceiling, and the ceilings of the fallbacks its request body
        names (they replace the configured ones, upstream/fallbacks.py), so a budget holds whichever answers."""
        prices = [self.prices.ceiling(alias)]
        if isinstance(body_fallbacks, list):
            prices += [self.prices.ceiling(n) for n in body_fallbacks[:MAX_BODY_FALLBACKS] if isinstance(n, str)]
        return max(p[0] for p in prices), max(p[1] for p in prices)

    @staticmethod
    def _refused_by(key: VirtualKey, team: Team | None, user: User | None, name: str, group: str) -> str | None:
        """Which of key, team, user may not call `name` (served by the model alias `group`), or None: each list as
        LiteLLM reads it (governance/model_access.py)."""
        if not may_use(key.models, name, group, in_team=key.team_id is not None):
            return "key"
        if team is not None and not may_use(team.models, name, group):
            return "team"
        if user is not None and not may_use(user.models, name, group):
            return "user"
        return None

    def may_call(self, record: CallRecord, name: str) -> bool:
        """May the virtual key of this admitted call use `name` as a fallback named in its request body? The same
        lists as `admit`; a key pinned to a zone on a gateway serving every zone may name none, since a fallback's
        deployments are not filtered to its zone (see `_pinned`)."""
        key = self.cache.by_hash.get(record.key_token or "")
        if key is None:
            return False
        team = self.cache.teams.get(key.team_id) if key.team_id is not None else None
        user = self.cache.users.get(key.user_id) if key.user_id is not None else None
        if (key.residency or (team.residency if team is not None else None)) is not None and self.residency is None:
            return False
        return self._refused_by(key, team, user, name, self.groups.of(name) or name) is None

    def _pinned(self, route: ModelRoute, zone: str) -> ModelRoute:
        """On a gateway serving every zone, a pinned key's call uses only its zone's deployments."""
        pinned = self._zone_routes.get((route.alias, zone))
        if pinned is None:
            # No fallback aliases: their deployments are not filtered by the proxy, and could leave the zone.
            pinned = ModelRoute(route.alias, route.max_tokens, [],
                                [d for d in route.deployments if d.config.residency == zone])
            self._zone_routes[(route.alias, zone)] = pinned
        if not pinned.deployments:
            raise forbidden(f"Model `{route.alias}` has no deployment in residency zone `{zone}`, "
                            f"to which this key is pinned.", "residency_unavailable", "model")
        return pinned

    def _scopes_for(self, key: VirtualKey, team: Team | None, alias: str,
                    user: User | None = None) -> tuple[Scope, ...]:
        # Cached per key and model until the key cache reloads (any key or team changed): new limits apply at once.
        if self._scopes_generation != self.cache.generation:
            self._scopes.clear()
            self._scopes_generation = self.cache.generation
        cache_key = (key.token, alias)
        scopes = self._scopes.get(cache_key)
        if scopes is None:
            if len(self._scopes) > 50_000:
                self._scopes.clear()
            found = [_scope(key_scope(key.token), "this key", key.limits)]
            if team is not None:
                found.append(_scope(team_scope(team.team_id), f"team `{team.team_id}`", team.limits))
            if user is not None:  # LiteLLM: a user's budget spans all its keys
                found.append(_scope(user_scope(user.user_id), f"user `{user.user_id}`", user.limits))
            if alias in key.model_rpm_limit or alias in key.model_tpm_limit:
                found.append(_scope(f"km:{key.token[:24]}:{alias}", f"this key on model `{alias}`", Limits(),
                                    key.model_rpm_limit.get(alias), key.model_tpm_limit.get(alias)))
            scopes = self._scopes[cache_key] = tuple(s for s in found if s.any())
        return scopes

    # ---- on the way out -------------------------------------------------------------------------

    def record(self, call: CallRecord) -> None:
        """Once per call (the stream relay may call it before its last byte; later calls do nothing)."""
        if call.accounted:
            return
        call.accounted = True
        tokens = call.prompt_tokens + call.completion_tokens
        cost = 0.0
        if tokens or call.images:
            cost = self.prices.cost(call.alias, call.deployment, call.prompt_tokens, call.completion_tokens,
                                    call.images)
        ticket = call.ticket
        if ticket is not None:
            self.limiter.settle(ticket, tokens, cost)
        if (call.status == 200 or tokens) and not call.passed_on:
            self.ledger.write(spend_row(
                self.ledger.next_id(), call.request_id, call.key_token or MASTER_TOKEN, call.key_alias, call.team_id,
                call.alias, call.deployment, call.region or self.region, call.status, call.prompt_tokens,
                call.completion_tokens, cost, user_id=self._user_of(call.key_token)))
            if self.on_charge is not None:
                self.on_charge(call.alias, call.team_id, cost)

    def _user_of(self, token: str | None) -> str | None:
        key = self.cache.by_hash.get(token) if token else None
        return key.user_id if key is not None else None

    # ---- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        store_up = True
        try:
            await self.store.open()
            await self.cache.refresh(force=True)
        except SchemaTooNew as exc:
            # Serving with no keys would answer every virtual key 401: report not ready instead (health.py), so a
            # rollout stops here and the replicas that can read the store keep serving.
            store_up = False
            why = "the ledger store's schema is newer than this gateway can read"
            self.unreadable_store = self.auth.unreadable = why
            self._event("key_store_unreadable", error=str(exc)[:300], ready=False)
        except Exception as exc:  # noqa: BLE001 - start anyway: the master key works, the refresh keeps trying
            store_up = False
            self._event("key_store_unavailable", error=f"{type(exc).__name__}: {exc}"[:300], serving_cached_keys=0)
        self.ledger.open()
        await self.ledger.start()
        await self.limiter.start()
        if self.budgets is not None:
            await self.budgets.start(sync_now=store_up)
        if self.peers is not None:
            await self.peers.start()
        self.cache.start()
        self._event("governance", limits=self.limiter.description, keys=len(self.cache.by_hash),
                    teams=len(self.cache.teams), key_refresh_seconds=self.cache.refresh_seconds)
        for alias in self.prices.unpriced():
            # A call to it costs $0, so no budget binds on it: say so once, at start (README, "Prices").
            self._event("model_unpriced", model=alias, hint="set input_cost_per_token / output_cost_per_token; "
                        "calls to this model cost $0 and never reach a budget")

    async def stop(self, flush_within: float = 5.0) -> None:
        """Stop the background parts, then the ledger's final flush (given `flush_within` seconds: what is left of
        the shutdown grace), then the store. A part that fails to stop is reported and never keeps the final flush
        from running: the records of calls already answered are what must not wait for the next start."""
        try:
            for name, part in (("peers", self.peers), ("budget_sync", self.budgets), ("key_cache", self.cache),
                               ("limiter", self.limiter)):
                if part is None:
                    continue
                try:
                    await part.stop()
                except Exception as exc:  # noqa: BLE001 - reported; the ledger still flushes
                    self._event("stop_failed", part=name, error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            try:
                await self.ledger.stop(flush_within)
            finally:
                await self.store.close()
