"""The endpoints other regions' gateways pull from (gateway.governance.peers): records changed since a cursor and
spend totals of the current budget windows, answered only to the stack's peer key.

The peer key is the only credential here: the master key and virtual keys are refused like any other (401), and
the peer key opens nothing else (it is not an Authenticator of the app). It is compared in constant time.
"""

from __future__ import annotations

import hmac
import math
import time

from aiohttp import web

from gateway.governance.bounds import MAX_TIMESTAMP
from gateway.governance.budget_sync import BudgetSync
from gateway.governance.peer_wire import changes_answer, spend_answer
from gateway.governance.peers import CHANGES, SPEND
from gateway.governance.store.protocol import LedgerStore, StoreError
from gateway.governance.store.replication import PAGE
from gateway.http.errors import GatewayError, bad_request, unauthorized, unavailable


class PeerApi:
    def __init__(self, peer_key: str, store: LedgerStore, budgets: BudgetSync) -> None:
        self._expected = ("Bearer " + peer_key).encode()
        self.store = store
        self.budgets = budgets

    def routes(self) -> list[web.RouteDef]:
        return [web.get(CHANGES, self.changes), web.get(SPEND, self.spend)]

    def _check(self, http: web.Request) -> None:
        given = http.headers.get("Authorization", "")
        # surrogateescape: header bytes that are not UTF-8 compare unequal instead of failing to encode.
        if not given or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._expected):
            raise unauthorized("This endpoint answers the stack's peer gateways only (the peer key).")

    async def changes(self, http: web.Request) -> web.Response:
        try:
            self._check(http)
            since = _number(http, "since", 0.0, MAX_TIMESTAMP, 0.0)
            limit = int(_number(http, "limit", 1, PAGE, PAGE))
            try:
                records, more = await self.store.changed_since(since, limit)
            except StoreError as exc:
                raise unavailable(f"The key store cannot be read here: {str(exc)[:200]}") from None
        except GatewayError as exc:
            return exc.response()
        return web.Response(body=changes_answer(records, more), content_type="application/json")

    async def spend(self, http: web.Request) -> web.Response:
        try:
            self._check(http)
            now = time.time()
            try:
                rows = await self.budgets.ledger_spend(now)
            except StoreError as exc:
                raise unavailable(f"The spend ledger cannot be read here: {str(exc)[:200]}") from None
        except GatewayError as exc:
            return exc.response()
        return web.Response(body=spend_answer(now, rows), content_type="application/json")


def _number(http: web.Request, name: str, low: float, high: float, default: float) -> float:
    text = http.query.get(name)
    if text is None:
        return default
    try:
        value = float(text[:40])
    except ValueError:
        raise bad_request(f"{name}: not a number", name) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise bad_request(f"{name}: must be between {low:g} and {high:g}", name)
    return value
