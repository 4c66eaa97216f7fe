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
from gateway.governance.store.replication import PAGE, START, Cursor, decode_cursor
from gateway.http.errors import GatewayError, bad_request, unauthorized, unavailable


class PeerApi:
    def __init__(self, peer_key: str, store: LedgerStore, budgets: BudgetSync, overlap: float,
                 spend_max_age: float) -> None:
        self._expected = ("Bearer " + peer_key).encode()
        self.store = store
        self.budgets = budgets
        # How far a puller's round reaches back (`back=1`): as late as a write here can commit after the time it was
        # stamped with (gateway.governance.peers.overlap).
        self.overlap = overlap
        # Spend answers reuse totals computed less than this long ago (the ledger's flush interval: a ledger is never
        # fresher than that anyway); gateway/README.md's bound counts it.
        self.spend_max_age = spend_max_age

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
            limit = int(_number(http, "limit", 1, PAGE, PAGE))
            after, given = self._after(http)
            try:
                records, more, cursor = await self.store.changed_since(after, limit)
                if not more and given is not None:
                    # The last page after reaching back: the cursor never ends before the one sent (else, with nothing
                    # past it, each round would move it back by the overlap).
                    cursor = max(cursor, given)
            except StoreError as exc:
                raise unavailable(f"The key store cannot be read here: {str(exc)[:200]}") from None
        except GatewayError as exc:
            return exc.response()
        return web.Response(body=changes_answer(records, more, cursor), content_type="application/json")

    def _after(self, http: web.Request) -> tuple[Cursor, Cursor | None]:
        """Where to list from: the cursor a previous answer carried (`after`; with `back=1`, reaching back by the
        overlap from it, and it too), or a time (`since`, as gateways before cursors asked)."""
        text = http.query.get("after")
        if text is None:
            return (_number(http, "since", 0.0, MAX_TIMESTAMP, 0.0), "", ""), None
        try:
            after = decode_cursor(text[:4096])
        except ValueError:
            raise bad_request("after: not a cursor this gateway answered", "after") from None
        if http.query.get("back") == "1":
            return (max(after[0] - self.overlap, 0.0), *START[1:]), after
        return after, None

    async def spend(self, http: web.Request) -> web.Response:
        try:
            self._check(http)
            now = time.time()
            try:
                rows = await self.budgets.recent_spend(now, self.spend_max_age)
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
