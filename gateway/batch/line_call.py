"""One batch line run as the batch owner's call: the same admission (gate.admit) and upstream path (proxy.open) as
an interactive call, priced at `batch.price_fraction`, its result and spend row written in one store transaction."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from typing import Any

import orjson

from gateway.batch.lines import ENDPOINTS, Line, new_id
from gateway.governance.gate import MASTER_TOKEN, Governance
from gateway.governance.keys import KeyPrincipal
from gateway.governance.ledger.spend import spend_row
from gateway.governance.store.batches import BatchRows
from gateway.governance.store.protocol import StoreError
from gateway.http.errors import GatewayError, bad_request, model_not_found, unauthorized
from gateway.observability.usage import CallRecord
from gateway.protocols.anthropic_upstream import BadShape
from gateway.protocols.request import Request

STORE_TRIES = 5  # a line's result is written again after a store error, then left for a re-run


def owner_principal(gate: Governance, key_token: str) -> KeyPrincipal:
    """The batch owner as the gate admits it now: a key revoked, blocked or expired since the batch was made fails
    its lines (401), as its interactive calls would."""
    if key_token == MASTER_TOKEN:
        return KeyPrincipal("master")
    key = gate.cache.by_hash.get(key_token)
    if key is None or key.blocked:
        raise unauthorized("The key that created this batch is revoked or blocked.")
    if key.expires is not None and key.expires <= time.time():
        raise unauthorized("The key that created this batch has expired.")
    team = gate.cache.teams.get(key.team_id) if key.team_id is not None else None
    if team is not None and team.blocked:
        raise GatewayError(403, f"Team `{key.team_id}` is blocked.", "permission_error", None, "team_blocked")
    user = gate.cache.users.get(key.user_id) if key.user_id is not None else None
    return KeyPrincipal(key.key_id, key, team, user)


def spend_id(batch_id: str, custom_id: str) -> str:
    """The line's spend row id: the same on every run of the line, so the ledger can hold it once."""
    return "batch-" + hashlib.blake2b(f"{batch_id}\x00{custom_id}".encode(), digest_size=16).hexdigest()


class LineCall:
    def __init__(self, state: Any, gate: Governance, rows: BatchRows, price_fraction: float,
                 in_flight: Counter[str], metrics: Any, owner: str) -> None:
        self.owner = owner  # this replica's lease name: a line is written only while it holds the batch's lease
        self.state = state
        self.gate = gate
        self.rows = rows
        self.price_fraction = price_fraction
        self.in_flight = in_flight  # per model alias: batch lines in the upstream path (the governor reads it)
        self.metrics = metrics

    async def run(self, batch: dict[str, Any], line: Line) -> None:
        """Run the line and write its result; LeaseLost (from the store) if another replica holds the batch by then:
        nothing is written, the holder runs the line."""
        batch_id = batch["id"]
        if line.refused is not None:  # this config cannot run it any more (lines.read_lines, rerun)
            refusal = GatewayError(400, line.refused["message"], "invalid_request_error", line.refused["param"],
                                   line.refused["code"])
            await self._finish(batch_id, line, 400, refusal.body(), None)
            return
        endpoint = ENDPOINTS[batch["endpoint"]]
        record = CallRecord(f"{batch_id}:{line.custom_id}", endpoint=endpoint)
        body = {**line.body(), "model": line.alias}
        body.pop("stream", None)
        body.pop("stream_options", None)
        request = Request(endpoint, orjson.dumps(body), body, line.alias, False, False, False)
        status, answer, spend = 500, None, None
        tokens, cost, written = 0, 0.0, False
        try:
            try:
                route = self.state.router.route(line.alias)
                if route is None:
                    raise model_not_found(line.alias, batch["endpoint"])
                _refuse_over_cap(body, route)
                route = await self.gate.admit(owner_principal(self.gate, batch["key_token"]), request, route, record)
                # Counted around the upstream path only, as the deployments count their calls: a line waiting for
                # admission (a Redis round trip, a slow limiter) must not hide an interactive call from the governor.
                self.in_flight[line.alias] += 1
                try:
                    opened = await self.state.proxy.open(request, route, record,
                                                         lambda: b"b:" + line.custom_id.encode())
                finally:
                    self.in_flight[line.alias] -= 1
                tokens = opened.prompt_tokens + opened.completion_tokens
                status, answer = 200, orjson.loads(opened.body)
                cost = self.gate.prices.cost(line.alias, opened.deployment.name, opened.prompt_tokens,
                                             opened.completion_tokens) * self.price_fraction
                spend = spend_row(spend_id(batch_id, line.custom_id), record.request_id,
                                  record.key_token or MASTER_TOKEN, record.key_alias, record.team_id, line.alias,
                                  opened.deployment.name, opened.deployment.region or self.gate.region, 200,
                                  opened.prompt_tokens, opened.completion_tokens, cost,
                                  user_id=self.gate._user_of(record.key_token))
            except GatewayError as exc:  # refused (budget, limits, access) or no upstream answered: this line fails
                status, answer = exc.status, exc.body()
            except BadShape as exc:  # a body that cannot be converted for its upstream: the line's mistake
                status, answer = 400, bad_request(str(exc), exc.param).body()
            except orjson.JSONDecodeError:
                status, answer = 502, GatewayError(502, "The upstream answer was not JSON.", "api_error").body()
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this line fails (every custom_id gets an answer)
                self.state.log.event("batch_line_error", batch=batch_id, error=f"{type(exc).__name__}: {exc}"[:300])
                status, answer = 500, GatewayError(500, f"Internal gateway error (request {record.request_id}).",
                                                   "server_error").body()
            written = await self._finish(batch_id, line, status, answer, spend)
        finally:
            # The budget pays for a line once, as the ledger does: only the run whose result was written. A run
            # after a crash, on a replica that lost the lease, or whose write the store refused (the line runs
            # again) counts its tokens, never its cost: budget counters only ever rise (budget_sync.py).
            if record.ticket is not None:
                self.gate.limiter.settle(record.ticket, tokens, cost if written else 0.0)

    async def _finish(self, batch_id: str, line: Line, status: int, answer: Any,
                      spend: dict[str, Any] | None) -> bool:
        """Write the line's result (and spend row); whether this run's was the one written."""
        ok = status == 200
        # OpenAI's per-line output object (openapi.yaml `BatchRequestOutput`,
        # https://platform.openai.com/docs/api-reference/batch/request-output): a failed line keeps the answer it
        # got in `response` and says why in `error` ({code, message}).
        failure: dict[str, Any] = {}
        if not ok and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            failure = answer["error"]
        result = {"id": new_id("batch_req_"), "custom_id": line.custom_id,
                  "response": {"status_code": status, "request_id": f"{batch_id}:{line.custom_id}", "body": answer},
                  "error": None if ok else {"code": _code(failure), "message": failure.get("message")}}
        text = orjson.dumps(result).decode()
        spend_bytes = orjson.dumps(spend) if spend is not None else None
        for attempt in range(STORE_TRIES):
            try:
                new = await self.rows.finish_line(batch_id, line.custom_id, line.number, ok, text, spend_bytes,
                                                  self.owner)
                break
            except StoreError as exc:
                self.state.log.event("batch_line_write_failed", batch=batch_id, error=str(exc)[:300],
                                     attempt=attempt + 1)
                await asyncio.sleep(0.2 * 2 ** attempt)
        else:
            return False  # left undone: the batch's next run runs it again
        if new:
            self.metrics.batch_line(line.alias, "completed" if ok else "failed")
            if spend is not None and self.gate.on_charge is not None:
                self.gate.on_charge(line.alias, spend["team_id"], spend["cost"])
        return new


def _code(failure: dict[str, Any]) -> Any:
    """The error's code, or its type where the code is only the status again (LiteLLM's budget refusal: "422")."""
    code = failure.get("code")
    return failure.get("type") if code is None or (isinstance(code, str) and code.isdigit()) else code


def _refuse_over_cap(body: dict[str, Any], route: Any) -> None:
    """A model with `over_max_tokens: refuse` refuses a line asking for more, as it refuses such a call."""
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(field)
    if route.refuse_over_cap and route.max_tokens is not None and isinstance(asked, int) and asked > route.max_tokens:
        raise bad_request(f"`{field}` is {asked}, over the model cap: models[{route.alias}].max_tokens is "
                          f"{route.max_tokens}.", field)
