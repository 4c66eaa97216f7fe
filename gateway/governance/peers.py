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
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config.governance import PeerSettings
from gateway.governance.budget_sync import BudgetSync
from gateway.governance.keys import KeyCache
from gateway.governance.peer_wire import (
    MAX_ANSWER_BYTES,
    MAX_SPEND_BYTES,
    PeerAnswerError,
    SpendKey,
    parse_changes,
    parse_spend,
)
from gateway.governance.store.documents import key_from_doc
from gateway.governance.store.protocol import LedgerStore, StoreError
from gateway.governance.store.replication import PAGE, PeerRecord
from gateway.tasks import cancel

T = TypeVar("T")

CHANGES = "/peer/v1/changes"
SPEND = "/peer/v1/spend"
# A round reaches back from the last cursor by how late a write can commit after the time it was stamped with: the
# store stamps inside the statement (replication.stamp), so by the statement's run (at most the store timeout, which
# bounds every call) plus this margin for the commit itself. The answering gateway applies its own (`back=1`).
OVERLAP_MARGIN = 5.0
MAX_PAGES = 50  # pages of changes per peer per pull; the rest waits for the next pull
READING = 4  # answers read and parsed at once, whatever the number of peers: what a round holds in memory


class PeerUnavailable(Exception):
    """A peer could not be reached, or did not answer 200 in time."""


@dataclass
class Peer:
    url: str
    label: str  # the metric label and the events' name of the peer: its host
    cursor: str | None = None  # where its last answer taken ended (opaque: its own); None: from the start
    totals: dict[SpendKey, float] = field(default_factory=dict)  # its last known spend per budget window
    up: bool | None = None  # None until the first pull
    last_pull: float = 0.0  # when a pull last completed (records and totals both)


class PeerSync:
    """The pulling side; the answering side is gateway.http.peer."""

    def __init__(self, settings: PeerSettings, key: str, store: LedgerStore, cache: KeyCache, budgets: BudgetSync,
                 on_event: Callable[..., None], registry: CollectorRegistry | None = None,
                 overlap: float = 10.0 + OVERLAP_MARGIN) -> None:
        self.settings = settings
        self.overlap = overlap  # how far a peer's round reaches back here (gateway.http.peer)
        self.store = store
        self.cache = cache
        self.budgets = budgets
        self._headers = {"Authorization": f"Bearer {key}"}
        self._event = on_event
        self.peers = [Peer(url, urlsplit(url).netloc) for url in settings.urls]
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = asyncio.Semaphore(READING)
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
        self.refused = Counter("llmp_gateway_peer_records_refused", "Records from a peer gateway skipped as invalid",
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
        if any(received for _, received in results):
            try:
                # A key made or revoked elsewhere works / is refused here now. Where another replica of this region
                # merged them first (nothing newer here), the fingerprint check still finds its writes.
                await self.cache.refresh(force=any(merged for merged, _ in results))
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

    async def _pull(self, peer: Peer) -> tuple[int, int]:
        """(merged, received): records from `peer` newer here, and all it sent (its totals are replaced when it
        answered)."""
        counts = [0, 0]
        try:
            # Pages stop being fetched after one timeout (the cursor keeps the place): a round waits on a peer for
            # at most one page in flight past that, and its spend totals.
            async with asyncio.timeout(self.settings.timeout * 3):
                await self._pull_records(peer, counts)
                peer.totals = await self._get(peer, SPEND, {}, MAX_SPEND_BYTES,
                                              lambda body: parse_spend(body, self._known))
        except PeerAnswerError as exc:
            self._down(peer, "bad_answer", str(exc))
            return counts[0], counts[1]
        except (PeerUnavailable, TimeoutError) as exc:
            self._down(peer, "unreachable", f"{type(exc).__name__}: {exc}")
            return counts[0], counts[1]
        except Exception as exc:  # noqa: BLE001 - one peer's surprise must not stop the others being pulled
            self._down(peer, "error", f"{type(exc).__name__}: {exc}")
            return counts[0], counts[1]
        peer.last_pull = time.time()
        self.last_success.labels(peer.label).set(peer.last_pull)
        self.up_gauge.labels(peer.label).set(1)
        if peer.up is not True:
            self._event("peer_up" if peer.up is None else "peer_recovered", peer=peer.label,
                        scopes_with_spend=len(peer.totals))
        peer.up = True
        return counts[0], counts[1]

    def _known(self, column: str, ident: str) -> bool:
        cache = self.cache
        return ident in (cache.by_hash if column == "key_token" else cache.teams if column == "team_id"
                         else cache.users)

    async def _pull_records(self, peer: Peer, counts: list[int]) -> None:
        """Page through what `peer` changed since its cursor; `counts`: [merged, received], kept up to date (a
        round cut short by its timeout still reports what it took)."""
        # Each round first reaches back from the cursor (the peer's overlap): a write committed late is not missed.
        params = {"limit": str(PAGE)}
        if peer.cursor is not None:
            params.update(after=peer.cursor, back="1")
        started = time.monotonic()
        for _ in range(MAX_PAGES):
            records, refused, more, cursor = await self._get(peer, CHANGES, params, MAX_ANSWER_BYTES,
                                                             lambda body: parse_changes(body, time.time()))
            if refused:
                self.refused.labels(peer.label).inc(len(refused))
                self._event("peer_records_refused", peer=peer.label, count=len(refused), first=refused[0][:300])
            stored = await self._store(records)
            if stored is None:
                break  # pulled again from the same cursor until the store takes them (memory holds the keys)
            counts[0] += stored
            counts[1] += len(records)
            if cursor is None:
                break  # a gateway that predates cursors: the next round asks again from its start
            peer.cursor = cursor
            params = {"after": cursor, "limit": str(PAGE)}
            if not more or time.monotonic() - started > self.settings.timeout:
                break

    async def _store(self, records: list[PeerRecord]) -> int | None:
        """Merge into the local store (how many were newer there); while it is down, hold the keys' revocations and
        new keys in memory (None)."""
        if not records:
            return 0
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

    async def _get(self, peer: Peer, path: str, params: dict[str, str], cap: int, parse: Callable[[bytes], T]) -> T:
        """An answer of at most `cap` bytes, parsed; READING answers at once at most, from however many peers."""
        assert self._session is not None
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with self._session.get(peer.url + path, params=params, headers=self._headers,
                                             allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise PeerUnavailable(f"{path} answered {resp.status}")
                    if (resp.content_length or 0) > cap:
                        raise PeerAnswerError(f"{path}: answer over {cap} bytes")
                    async with self._reading:
                        body = bytearray()
                        async for chunk in resp.content.iter_chunked(2**16):
                            body += chunk
                            if len(body) > cap:
                                raise PeerAnswerError(f"{path}: answer over {cap} bytes")
                        return parse(bytes(body))
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
        """One round before returning (before the gateway serves: the port is already bound, and calls wait in its
        backlog), so keys made elsewhere work from the first call."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit_per_host=4))
        try:
            # Bounded, since the first call waits for it: a peer that is slow to answer is pulled again in the loop.
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
