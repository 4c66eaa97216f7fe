"""Serving a ladder alias: its rungs tried cheapest first, escalating on failures and failed checks.

Each rung is served as a call to its own alias (`Endpoints._serve`): admitted through the gate (model access,
limits, budget reserved per rung), proxied, its answer stamped with the rung's name. What a rung did is its
outcome in the `x-llmp-route` header and the call log's `route`: `error`, `timeout`, `circuit_open`,
`invalid_json`, `length`, `empty` (escalated), `skipped:<rule>` / `skipped:not_allowed` / `skipped:model_cap` /
`skipped:residency` (never tried), `pinned` / `answered` (the answer sent). A rung that was tried and escalated
from is accounted as a call of its own (log line, metrics, spend row under `<request id>:rung<N>`, N counting the
rungs tried from 1); the answering rung is the call itself, under the client's request id.

Not escalated: what the caller caused or owns (a 400/413/422 about its request, its budget or rate limits, a
residency mismatch): another rung would be refused the same. What is the rung's is escalated or skipped: its
upstream refusing the prompt as over its context window (`error`: a larger rung may hold it); a request over the
rung's `max_request_bytes` or its refused `max_tokens` (`over_max_tokens: refuse`) skips it (`skipped:model_cap`),
as does having no deployment in the zone the caller is pinned to (`skipped:residency`), while a rung above can
take the request; the last rung that may is called, and refuses as it would.

A stream escalates only before its first byte, unless the request asks for JSON (`response_format`): then each
rung's stream but the last is buffered, checked and replayed (`; buffered` in the header), since the check needs
the whole answer; the last rung, whose answer is sent whatever it is, streams as it comes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

from gateway.config.ladders import Ladder
from gateway.config.native import Model
from gateway.governance.gate import model_not_allowed
from gateway.governance.model_access import may_use
from gateway.http.errors import GatewayError, bad_request
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request
from gateway.protocols.tokens import estimate_tokens
from gateway.routing.checks import ANY, Wanted, checked, failed_check, streamed_answer, whole_answer
from gateway.routing.replay import Buffer, replay

ROUTE = "x-llmp-route"
ENDPOINTS = ("chat", "completions")  # answers the checks can read; other endpoints name a model, not a ladder
# A rung's failure that another rung would meet the same way: the caller's to see, never escalated.
CALLERS_STATUS = frozenset({400, 413, 422})
CALLERS_KINDS = frozenset({"budget_exceeded", "rate_limit_error", "permission_error"})
OFF_LOOP_BYTES = 256 * 1024  # an answer larger than this is checked in a worker thread
perf = time.perf_counter

# Endpoints._serve: one alias's call, from routing to the response (`into`: a buffer for a stream to check).
Serve = Callable[[web.Request, Any, Request, CallRecord, dict[str, str], float, "Buffer | None"],
                 Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Plan:
    rungs: list[str]  # to try, in order
    route: list[str]  # outcomes already known (rungs skipped by a rule)
    pinned: bool = False


def escalation(error: GatewayError, record: CallRecord) -> str | None:
    """The outcome a rung's error is, or None when it is the caller's (sent to the client as it is)."""
    if error.kind.endswith("_model_access_denied"):
        return "not_allowed"
    if error.code == "residency_unavailable":
        # The rung has no deployment in the zone the caller is pinned to (governance/gate.py `_pinned`): the rung's
        # gap, not the caller's; refused before any attempt or limiter ticket, so the rung is skipped, not tried.
        return "skipped:residency"
    if error.code == "context_length_exceeded" and record.attempts:
        # The rung's upstream refused the prompt as longer than its context window (upstream/refusals.py): a larger
        # rung's window may hold it, as LiteLLM's context_window_fallbacks assume. An `error`: it was tried.
        return "error"
    if error.status in CALLERS_STATUS or error.kind in CALLERS_KINDS:
        return None
    if error.status in (408, 504):
        return "timeout"
    if error.status == 429 and record.attempts == 0:
        return "circuit_open"  # no attempt made: every replica's circuit open (or at its quota: outcomes.py)
    return "error"


def adopt(call: CallRecord, rung: CallRecord) -> None:
    """The call's record becomes the answering rung's (its request id kept): one log line, one spend row."""
    for item in fields(CallRecord):
        if item.name != "request_id":
            setattr(call, item.name, getattr(rung, item.name))


class Ladders:
    """The config's ladders, served through `serve` (Endpoints._serve); `finish` accounts a rung escalated from."""

    def __init__(self, ladders: list[Ladder], metrics: GatewayMetrics, finish: Callable[[CallRecord], None],
                 before_eof: Callable[[CallRecord], None], buffer_bytes: int, models: list[Model] | None = None
                 ) -> None:
        self.ladders = {ladder.alias: ladder for ladder in ladders}
        # Each rung's caps that refuse a request (http/handlers.py `_refuse_over_model_cap`, governance/gate.py
        # `admit`): the refused max_tokens cap and max_request_bytes.
        self.caps = {m.alias: (m.max_tokens if m.over_max_tokens == "refuse" else None, m.max_request_bytes)
                     for m in models or ()}
        self.escalate_on = {ladder.alias: frozenset(ladder.escalate_on) for ladder in ladders}
        self.metrics = metrics
        self.finish = finish
        self.before_eof = before_eof
        self.buffer_bytes = buffer_bytes

    def get(self, alias: str) -> Ladder | None:
        return self.ladders.get(alias)

    def plan(self, ladder: Ladder, request: Request, principal: Any) -> Plan:
        """Pins first (a key's over its team's), then the first rule that matches, else every rung."""
        key = getattr(principal, "key", None)
        if key is not None:
            pin = (ladder.pins.keys.get(key.key_alias) if key.key_alias else None) or \
                (ladder.pins.teams.get(key.team_id) if key.team_id else None)
            if pin is not None:
                return Plan([pin], [], pinned=True)
        for rule in ladder.rules:
            if _matches(rule.prompt_tokens_over, rule.tools, request):
                start = ladder.rungs.index(rule.start_at)
                for rung in ladder.rungs[:start]:
                    self.metrics.ladder_escalations.labels(ladder.alias, rung, f"skipped:{rule.name}").inc()
                return Plan(ladder.rungs[start:], [f"{rung}=skipped:{rule.name}" for rung in ladder.rungs[:start]])
        return Plan(list(ladder.rungs), [])

    async def serve(self, ladder: Ladder, serve: Serve, http: web.Request, principal: Any, request: Request,
                    record: CallRecord, headers: dict[str, str], started: float) -> web.StreamResponse:
        if request.endpoint not in ENDPOINTS:
            raise bad_request(f"`{ladder.alias}` is a ladder of models: it serves /v1/chat/completions and "
                              f"/v1/completions; call one of its rungs ({', '.join(ladder.rungs)}) here.", "model")
        refused_by = _refused_by(principal, ladder.alias)
        if refused_by is not None:
            raise model_not_allowed(ladder.alias, refused_by)
        escalate_on = self.escalate_on[ladder.alias]
        want = await checked(request.body) if "invalid_json" in escalate_on else ANY
        plan = self.plan(ladder, request, principal)
        check_stream = request.stream and want.json
        buffered = False  # whether a rung's stream was held to be checked (the last rung's never is: not checked)
        route = list(plan.route)
        # Rungs this caller may not use are skipped, not tried (the gate would refuse them): the last rung it may
        # use is the one whose answer is sent whatever its checks say.
        allowed = [rung for rung in plan.rungs if _refused_by(principal, rung) is None]
        # Rungs whose own caps refuse this request are skipped while one above takes it; else the last is called.
        fits = [rung for rung in allowed if not self._over_cap(rung, request)] or allowed[-1:]
        tried = 0
        first_rung = perf()
        for rung in plan.rungs:
            if rung not in fits:
                skipped = "skipped:not_allowed" if rung not in allowed else "skipped:model_cap"
                route.append(f"{rung}={skipped}")
                self.metrics.ladder_escalations.labels(ladder.alias, rung, skipped).inc()
                continue
            last = rung == fits[-1]
            call = CallRecord(record.request_id, key_id=record.key_id, endpoint=record.endpoint, alias=rung,
                              stream=request.stream)
            answered = f"{rung}={'pinned' if plan.pinned else 'answered'}"
            buffer = Buffer(self.buffer_bytes) if check_stream and not last else None
            rung_headers = dict(headers)
            rung_headers[ROUTE] = call.route = _header([*route, answered], buffered or buffer is not None)
            rung_started = perf()
            # Overhead and time to first token count from this rung's start: earlier rungs' upstream time is not the
            # gateway's overhead (the call's latency still counts from its start).
            shifted = started + (rung_started - first_rung)
            try:
                response = await serve(http, principal, _as_rung(request, rung), call, rung_headers, shifted, buffer)
            except GatewayError as error:
                outcome = escalation(error, call)
                if outcome is not None:
                    route.append(f"{rung}={outcome}")
                if outcome is not None and outcome.startswith("skipped:") and not last:
                    self.metrics.ladder_escalations.labels(ladder.alias, rung, outcome).inc()
                    continue
                if outcome is None or outcome == "not_allowed" or last or "error" not in escalate_on:
                    adopt(record, call)
                    # A caller's refusal (budget, limits, its request) adds nothing: it is not the rung's doing.
                    record.route = _header(route, buffered) if route else ""
                    if route:
                        headers[ROUTE] = record.route
                    raise
                tried += 1
                call.status, call.error = error.status, error.detail or error.message
                self._escalated(ladder, call, tried, outcome, route, buffered, rung_started)
                continue
            except BaseException:
                adopt(record, call)
                raise
            # A rung refused or failed before its first byte held nothing: only a stream that came is "buffered".
            buffered = buffered or buffer is not None
            try:
                failed = None
                if not last:
                    check = functools.partial(_failed, response, buffer, call, request, want, escalate_on)
                    # Validating a large answer against a schema is pure Python: off the event loop.
                    failed = await asyncio.to_thread(check) if _size(response, buffer) > OFF_LOOP_BYTES else check()
            except BaseException:
                adopt(record, call)  # the rung's answer is paid for and its limiter ticket settled, whatever failed
                raise
            if failed is not None:
                tried += 1
                route.append(f"{rung}={failed[0]}")
                call.error = f"{failed[0]}: {failed[1]}"
                self._escalated(ladder, call, tried, failed[0], route, buffered, rung_started)
                continue
            adopt(record, call)
            self.metrics.ladder_answers.labels(ladder.alias, rung).inc()
            if buffer is not None:
                assert buffer is response
                # The client's first byte is the replay's: the held stream's first chunk came to the buffer, not it.
                record.ttft_ms = (perf() - shifted) * 1000
                return await replay(http, buffer, rung_headers, record, self.before_eof)
            return response
        # Every rung skipped: this caller may use none of them.
        headers[ROUTE] = record.route = _header(route, buffered)
        raise model_not_allowed(ladder.alias)

    def _over_cap(self, rung: str, request: Request) -> bool:
        max_tokens, max_bytes = self.caps.get(rung, (None, None))
        if max_bytes is not None and len(request.raw) > max_bytes:
            return True
        field = "max_completion_tokens" if "max_completion_tokens" in request.body else "max_tokens"
        asked = request.body.get(field)
        return max_tokens is not None and isinstance(asked, int) and asked > max_tokens

    def _escalated(self, ladder: Ladder, call: CallRecord, tried: int, outcome: str, route: list[str],
                   buffered: bool, started: float) -> None:
        """Account a rung escalated from as a call of its own (`<request id>:rung<N>`), then move on."""
        call.request_id = f"{call.request_id}:rung{tried}"
        call.route = _header(route, buffered)
        call.latency_ms = (perf() - started) * 1000
        self.metrics.ladder_escalations.labels(ladder.alias, call.alias, outcome).inc()
        self.finish(call)


def _failed(response: web.StreamResponse, buffer: Buffer | None, call: CallRecord, request: Request, want: Wanted,
            escalate_on: frozenset[str]) -> tuple[str, str] | None:
    """Why a rung's answer (not the last rung's) is not sent, as (outcome, why); None when it passes."""
    if buffer is not None:
        if buffer.overflow:  # a stream cut short by the buffer's bound cannot be checked, nor sent
            return "error", "stream larger than upstream_limits.body_bytes"
        if call.status != 200:
            return ("error", call.error or "stream failed") if "error" in escalate_on else None
        return failed_check(streamed_answer(bytes(buffer.data)), want, escalate_on)
    if request.stream:
        return None  # bytes were sent: the call stays on this rung
    assert isinstance(response, web.Response)
    return failed_check(whole_answer(response.body if isinstance(response.body, bytes) else b""), want, escalate_on)


def _size(response: web.StreamResponse, buffer: Buffer | None) -> int:
    if buffer is not None:
        return len(buffer.data)
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, bytes) else 0


def _header(route: list[str], buffered: bool) -> str:
    return ",".join(route) + ("; buffered" if buffered else "")


def _as_rung(request: Request, rung: str) -> Request:
    # The rung's alias is the name the call is made under: routed, admitted, priced and stamped on the answer.
    return Request(request.endpoint, request.raw, request.body, rung, request.stream, request.wants_usage,
                   request.hopped)


def _matches(tokens_over: int | None, tools: bool | None, request: Request) -> bool:
    if tokens_over is not None:
        # The gateway's one estimate of a request's tokens (bytes / 4, as the limiter reserves: protocols/tokens.py).
        return estimate_tokens(len(request.raw)) > tokens_over
    body = request.body
    return bool(tools) and bool(body.get("tools") or body.get("functions"))


def _refused_by(principal: Any, name: str) -> str | None:
    """Which of the caller's lists (key, team, user) refuses `name`, as the gate reads them (governance/gate.py,
    model_access.py), or None. The ladder alias must be allowed; each rung is checked too, so a key given `auto` and
    only its cheap rung has the others skipped (`skipped:not_allowed`)."""
    key = getattr(principal, "key", None)
    if key is None:
        return None  # the master key
    if not may_use(key.models, name, None, in_team=key.team_id is not None):
        return "key"
    team = getattr(principal, "team", None)
    if team is not None and not may_use(team.models, name):
        return "team"
    user = getattr(principal, "user", None)
    if user is not None and not may_use(user.models, name):
        return "user"
    return None
