"""A gateway pod's rollout, as its process sees it: SIGTERM under load flushes the spool to the store before the
process exits; with the store unreachable the records stay in the spool, and the replacement pod, started on the
same spool volume (the StatefulSet's claim), replays them once the store is back. Every accepted call is in the
ledger exactly once, counted by request id.

test_ledger_durability.py proves the same for SIGKILL (a crash, the OOM killer) and a store down from the start;
these are the paths of a rollout or an eviction, where the kubelet sends SIGTERM and waits
terminationGracePeriodSeconds (charts/gateway: preStop + shutdown_grace + drain.marginSeconds) before SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import asyncpg
import yaml

from infra.chart_values import GATEWAY_CHART
from tests.gateway.servers import GatewayProcess, PostgresServer
from tests.gateway.test_ledger_durability import Forwarder, Load, ledger_config

# The chart's default drain.marginSeconds: what the pod has after shutdown_grace for the ledger's last flush.
MARGIN_SECONDS = 10
GRACE_SECONDS = 5


class CuttableStore(Forwarder):
    """The store behind a forwarder that can fail at once: `cut` closes the listener and every open connection,
    as a failover or a network partition does to the gateway's pool."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await super()._pipe(reader, writer)

    async def cut(self) -> None:
        await self.down()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


def rollout_config(sim: object, tmp_path: Path, store: str) -> dict[str, object]:
    config = ledger_config(sim, tmp_path, store)
    # A flush interval longer than the test: rows reach the store only through SIGTERM's last flush or a replay.
    config["ledger"].update(flush_interval=300, store_timeout=1)  # type: ignore[union-attr]
    config["gateway"]["front_door"] = {"shutdown_grace": GRACE_SECONDS}  # type: ignore[index]
    return config


async def ledger_rows(url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [r[0] for r in await conn.fetch("SELECT request_id FROM llmp_spend WHERE request_id LIKE $1",
                                               f"{prefix}-%")]
    finally:
        await conn.close()


def sigterm_timed(gw: GatewayProcess) -> float:
    """SIGTERM, then how long the process took to exit."""
    started = time.monotonic()
    gw.kill(signal.SIGTERM)
    assert gw.proc is not None and gw.proc.returncode is not None
    return time.monotonic() - started


def exactly_once(load: Load, rows: list[str]) -> None:
    counts = Counter(rows)
    assert len(load.accepted) > 50, "the load must be real"
    doubled = [rid for rid, n in counts.items() if n > 1]
    missing = [rid for rid in load.accepted if rid not in counts]
    assert not doubled, f"{len(doubled)} records in the ledger twice, e.g. {doubled[:3]}"
    assert not missing, f"{len(missing)} accepted calls missing from the ledger, e.g. {missing[:3]}"
    assert set(counts) <= set(load.sent)


def test_the_pods_margin_is_the_one_these_tests_hold_the_last_flush_to() -> None:
    values = yaml.safe_load((GATEWAY_CHART / "values.yaml").read_text())
    assert values["drain"]["marginSeconds"] == MARGIN_SECONDS


async def test_sigterm_under_load_puts_every_accepted_call_in_the_store_before_the_process_exits(
        sim, tmp_path, postgres_server: PostgresServer) -> None:
    gw = GatewayProcess(rollout_config(sim, tmp_path, postgres_server.url), tmp_path)
    load = Load(gw.url, "term")
    took = 0.0
    try:
        await asyncio.to_thread(gw.start)
        await asyncio.sleep(0.3)  # the start-up replay has run: nothing of this test reached the store before
        assert await ledger_rows(postgres_server.url, "term") == []

        def terminate() -> None:
            nonlocal took
            took = sigterm_timed(gw)

        await load.run_then(terminate, 1.0, workers=8)
    finally:
        gw.kill()
    # Read once the process is gone: nothing else could have written them.
    exactly_once(load, await ledger_rows(postgres_server.url, "term"))
    assert not list((tmp_path / "spool").glob("*.spool")), "the spool is empty: nothing waits for a replacement"
    assert took < GRACE_SECONDS + MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM, past the pod's grace period"


async def test_sigterm_with_the_store_down_leaves_the_records_for_the_replacement_pod_to_replay(
        sim, tmp_path, postgres_server: PostgresServer) -> None:
    store = CuttableStore(postgres_server.port)
    await store.up()
    url = f"postgresql://postgres@127.0.0.1:{store.port}/postgres"
    config = rollout_config(sim, tmp_path, url)
    old = GatewayProcess(config, tmp_path, "old")
    load = Load(old.url, "moved")
    took = 0.0
    try:
        await asyncio.to_thread(old.start)  # the store is up: schema checked, keys readable

        def store_down_then_terminate() -> None:
            nonlocal took
            asyncio.run_coroutine_threadsafe(store.cut(), loop).result(10)
            took = sigterm_timed(old)

        loop = asyncio.get_running_loop()
        await load.run_then(store_down_then_terminate, 1.0, workers=8)
    finally:
        old.kill()
    assert took < GRACE_SECONDS + MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM, past the pod's grace period"
    assert "ledger_store_unavailable" in old.log()
    assert await ledger_rows(postgres_server.url, "moved") == [], "nothing reached the store while it was down"
    spooled = sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "spool").glob("*.spool"))
    assert spooled >= len(load.accepted), "every accepted call waits in the pod's spool volume"

    # The replacement: same config, same spool directory (the StatefulSet gives the new pod the old one's claim).
    await store.up()
    new = GatewayProcess(config, tmp_path, "new")
    try:
        await asyncio.to_thread(new.start)  # replays the spool before it listens
        rows = await ledger_rows(postgres_server.url, "moved")
        exactly_once(load, rows)
        # A second replacement finds nothing left to replay: the replayed segments were deleted, not kept.
        new.kill(signal.SIGTERM)
        await asyncio.to_thread(new.start)
        assert Counter(await ledger_rows(postgres_server.url, "moved")) == Counter(rows)
    finally:
        new.kill(signal.SIGTERM)
        await store.cut()
    assert not list((tmp_path / "spool").glob("*.spool"))


async def test_a_spool_volume_holding_another_databases_records_says_so_and_keeps_them(sim, tmp_path) -> None:
    """The volume outlives the pod, and the store URL may change under it (a database moved or renamed): the old
    database's segments are never replayed into the new one, and the gateway reports them at start."""
    spool = tmp_path / "spool"
    spool.mkdir()
    other = spool / "spend-s0123456789abcdef-1795600000000000000-7-1.spool"
    other.write_bytes(b'{"id":"old-1","ts":1.0,"day":"2026-11-25","request_id":"old-req","key_token":"master"}\n')
    store = tmp_path / "ledger.db"
    gw = GatewayProcess(rollout_config(sim, tmp_path, f"sqlite:///{store}"), tmp_path)
    try:
        await asyncio.to_thread(gw.start)
    finally:
        gw.kill(signal.SIGTERM)
    assert '"event":"spool_other_store_segments","segments":1' in gw.log().replace(" ", "")
    assert other.exists(), "kept for a gateway of that database"
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM llmp_spend").fetchone()[0] == 0
