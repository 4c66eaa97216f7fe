"""Keys and budgets across the stack: every interval, pull from each other region's gateway the key, team and user
records changed since the last pull and its spend totals, merge the records into the local store (the newest
version wins) and raise the local budget counters to local ledger spend plus every peer's spend.

Nothing here is on the request path: the key cache and the Redis counters it feeds are what requests read. A
peer that is down, slow or answers garbage is reported once per change of state (event and metric); the others
are still pulled, and its last known totals keep counting, so a region that cannot be reached never makes a
budget look less spent than it last was. The overshoot this allows is stated in gateway/README.md ("Several
regions: keys and budgets across the stack") and measured by tests/gateway/test_peer_budgets.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.governance import PeerSettings
from gateway.governance.budget_sync import BudgetSync
from gateway.governance.keys import KeyCache
from gateway.governance.peer_wire import MAX_ANSWER_BYTES, PeerAnswerError, SpendKey, parse_changes, parse_spend
from gateway.governance.store.documents import key_from_doc
from gateway.governance.store.protocol import LedgerStore, StoreError
from gateway.governance.store.replication import PAGE, PeerRecord
from gateway.tasks import cancel

CHANGES = "/peer/v1/changes"
SPEND = "/peer/v1/spend"
OVERLAP = 5.0  # s a pull reaches back before the newest change seen: a write committed late is not missed
MAX_PAGES = 50  # pages of changes per peer per pull; the rest waits for the next pull


class PeerUnavailable(Exception):
    """A peer could not be reached, or did not answer 200 in time."""


@dataclass
class Peer:
    url: str
    label: str  # the metric label and the events' name of the peer: its host
    cursor: float = 0.0  # the newest `changed_at` taken from it
    totals: dict[SpendKey, float] = field(default_factory=dict)  # its last known spend per budget window
    up: bool | None = None  # None until the first pull
    last_pull: float = 0.0  # when a pull last completed (records and totals both)


class PeerSync:
    """The pulling side; the answering side is gateway.http.peer."""

    def __init__(self, settings: PeerSettings, key: str, store: LedgerStore, cache: KeyCache, budgets: BudgetSync,
                 on_event: Callable[..., None], registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.budgets = budgets
        self._headers = {"Authorization": f"Bearer {key}"}
        self._event = on_event
        self.peers = [Peer(url, urlsplit(url).netloc) for url in settings.urls]
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.pulls = 0  # completed rounds (tests wait on it)
        self.round_seconds = 0.0  # how long the last round took (the README's bound adds it to the interval)
        self.longest_round = 0.0
        self._raise_failing = False
        self._store_failing = False
        registry = registry or CollectorRegistry()
        self.failures = Counter("llmp_gateway_peer_pull_failures", "Pulls from a peer gateway that failed",
                                ["peer", "reason"], registry=registry)
        self.up_gauge = Gauge("llmp_gateway_peer_up", "1 when the last pull from this peer gateway succeeded",
                              ["peer"], registry=registry)
        self.last_success = Gauge("llmp_gateway_peer_last_pull_timestamp_seconds",
                                  "When a pull from this peer gateway last succeeded", ["peer"], registry=registry)
        budgets.peer_spend = self.peer_spend

    def peer_spend(self, column: str, ident: str, seconds: int, since: float) -> float:
        """What every peer last said this key, team or user spent in the window starting at `since`."""
        return sum(p.totals.get((column, ident, seconds, since), 0.0) for p in self.peers)

    async def pull_once(self) -> None:
        """One round: every peer at once, then the budget counters raised with what they said."""
        started = time.monotonic()
        results = await asyncio.gather(*(self._pull(p) for p in self.peers))
        if any(results):
            try:
                await self.cache.refresh(force=True)  # a key made or revoked elsewhere works / is refused here now
            except Exception as exc:  # noqa: BLE001 - the cache's own refresh keeps trying and reports the store
                self._event("peer_records_not_loaded", error=f"{type(exc).__name__}: {exc}"[:300])
        try:
            await self.budgets.run_once()
        except Exception as exc:  # noqa: BLE001 - the store or Redis is down: counters keep what they have
            if not self._raise_failing:
                self._event("peer_budget_raise_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            self._raise_failing = True
        else:
            if self._raise_failing:
                self._event("peer_budget_raise_recovered")
            self._raise_failing = False
        self.round_seconds = time.monotonic() - started
        self.longest_round = max(self.longest_round, self.round_seconds)
        self.pulls += 1

    async def _pull(self, peer: Peer) -> int:
        """Records merged from `peer` (its totals are replaced when it answered); 0 when it failed."""
        merged = 0
        try:
            # Pages stop being fetched after one timeout (the cursor keeps the place): a round waits on a peer for
            # at most one page in flight past that, and its spend totals.
            async with asyncio.timeout(self.settings.timeout * 3):
                merged = await self._pull_records(peer)
                peer.totals = parse_spend(await self._get(peer, SPEND, {}))
        except PeerAnswerError as exc:
            self._down(peer, "bad_answer", str(exc))
            return merged
        except (PeerUnavailable, TimeoutError) as exc:
            self._down(peer, "unreachable", f"{type(exc).__name__}: {exc}")
            return merged
        except Exception as exc:  # noqa: BLE001 - one peer's surprise must not stop the others being pulled
            self._down(peer, "error", f"{type(exc).__name__}: {exc}")
            return merged
        peer.last_pull = time.time()
        self.last_success.labels(peer.label).set(peer.last_pull)
        self.up_gauge.labels(peer.label).set(1)
        if peer.up is not True:
            self._event("peer_up" if peer.up is None else "peer_recovered", peer=peer.label,
                        scopes_with_spend=len(peer.totals))
        peer.up = True
        return merged

    async def _pull_records(self, peer: Peer) -> int:
        merged = 0
        since = max(peer.cursor - OVERLAP, 0.0)
        started = time.monotonic()
        for _ in range(MAX_PAGES):
            records, more = parse_changes(await self._get(peer, CHANGES, {"since": repr(since), "limit": str(PAGE)}),
                                          time.time())
            if records:
                newest = max(r.changed_at for r in records)
                stored = await self._store(records)
                if stored is not None:
                    merged += stored
                    peer.cursor = max(peer.cursor, newest)  # else pulled again until the store takes them
                if newest <= since:
                    break  # a page of one instant: nothing newer can follow from this cursor
                since = newest
            if not more or time.monotonic() - started > self.settings.timeout:
                break
        return merged

    async def _store(self, records: list[PeerRecord]) -> int | None:
        """Merge into the local store (how many were newer there); while it is down, hold the keys' revocations and
        new keys in memory (None)."""
        try:
            stored = await self.store.merge_records(records)
        except StoreError as exc:
            held = self.cache.hold_peer_keys([(key_from_doc(r.doc), r.revoked) for r in records if r.kind == "key"])
            if not self._store_failing:
                self._event("peer_records_held_in_memory", error=str(exc)[:300], keys_changed=held)
            self._store_failing = True
            return None
        if self._store_failing:
            self._event("peer_records_stored")
        self._store_failing = False
        return stored

    async def _get(self, peer: Peer, path: str, params: dict[str, str]) -> bytes:
        assert self._session is not None
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with self._session.get(peer.url + path, params=params, headers=self._headers,
                                             allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise PeerUnavailable(f"{path} answered {resp.status}")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(2**16):
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise PeerAnswerError(f"{path}: answer over {MAX_ANSWER_BYTES} bytes")
                    return bytes(body)
        except aiohttp.ClientError as exc:
            raise PeerUnavailable(f"{path}: {type(exc).__name__}: {exc}"[:300]) from None

    def _down(self, peer: Peer, reason: str, error: str) -> None:
        self.failures.labels(peer.label, reason).inc()
        self.up_gauge.labels(peer.label).set(0)
        if peer.up is not False:
            # Once per outage: its last known totals keep counting in every budget here.
            self._event("peer_unavailable", peer=peer.label, reason=reason, error=error[:300],
                        keeping_totals=len(peer.totals))
        peer.up = False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            await self.pull_once()

    async def start(self) -> None:
        """One round before returning (before the port opens: keys made elsewhere work from the first call)."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit_per_host=4))
        try:
            # Bounded, since the port waits for it: a peer that is slow to answer is pulled again in the loop.
            async with asyncio.timeout(self.settings.timeout * 4):
                await self.pull_once()
        except TimeoutError:
            self._event("peer_first_pull_slow", seconds=self.settings.timeout * 4)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
