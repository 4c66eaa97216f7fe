"""A batch taken over by another replica, or run again by a gateway with another config, still answers and charges
every custom_id exactly once: a paused replica that resumes writes nothing, a replica whose clock runs ahead takes no
live lease, and a line the new config cannot run fails as its own error instead of vanishing."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from gateway.batch import runner as runner_module
from gateway.batch.service import BATCH
from gateway.sim import SimServer
from tests.gateway.servers import GatewayProcess
from tests.gateway.test_batch import batch_config, client, final, jsonl, lines_of, spend_rows, submit, wait_for


def line_rows(tmp_path: Path, batch_id: str) -> int:
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM llmp_batch_lines WHERE batch_id = ?", (batch_id,)).fetchone()[0])
    finally:
        db.close()


async def test_a_paused_replica_that_resumes_after_a_takeover_writes_nothing(sim: SimServer, tmp_path: Path) -> None:
    sim.settings.ttft = 0.05  # 8 lines in flight at every moment: the pause catches some mid-call
    config = batch_config(sim, tmp_path)
    one = GatewayProcess(config, tmp_path, name="one").start()
    two = GatewayProcess({**config, "ledger": {**config["ledger"], "spool_dir": str(tmp_path / "spool2")}},
                         tmp_path, name="two").start()
    paused: GatewayProcess | None = None
    try:
        oai = client(one)
        batch_id = await asyncio.to_thread(submit, oai, jsonl(400))
        await asyncio.to_thread(wait_for, oai, batch_id,
                                lambda b: b.request_counts is not None and b.request_counts.completed >= 40)
        [paused] = [gw for gw in (one, two) if f'"batch_claimed","batch":"{batch_id}"' in gw.log()]
        survivor = two if paused is one else one
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)  # its lines in flight get their answers while it is stopped
        other = client(survivor)
        await asyncio.to_thread(other.batches.cancel, batch_id)
        batch = await asyncio.to_thread(wait_for, other, batch_id, final)  # the survivor took over and finalized
        assert batch.status == "cancelled"
        paused.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(3)  # time for the resumed replica to write what it had in flight, were it allowed to
        out = await asyncio.to_thread(lines_of, other, batch.output_file_id)
        rest = await asyncio.to_thread(lines_of, other, batch.error_file_id)  # `batch_cancelled`: not run
        assert line_rows(tmp_path, batch_id) == len(out) + len(rest), "a line landed after the batch was finalized"
        assert Counter(r[0] for r in spend_rows(tmp_path, batch_id)) == Counter(f"{batch_id}:{x['custom_id']}"
                                                                                for x in out)
        assert sorted(x["custom_id"] for x in out + rest) == sorted(f"req-{i}" for i in range(400))
        assert '"batch_lease_lost"' in paused.log()
    finally:
        if paused is not None and paused.proc is not None and paused.proc.poll() is None:
            paused.proc.send_signal(signal.SIGCONT)
        one.kill(signal.SIGTERM)
        two.kill(signal.SIGTERM)


async def test_a_replica_whose_clock_runs_ahead_takes_no_live_lease(
        sim: SimServer, gateway_factory: Any, tmp_path: Path, monkeypatch: Any) -> None:
    # This replica's wall clock an hour ahead of the store's (NTP broken on its node).
    ahead = SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic)
    monkeypatch.setattr(runner_module, "time", ahead)
    gw = await gateway_factory(batch_config(sim, tmp_path))
    rows = gw.app[BATCH].runner.rows
    now = time.time()
    doc = {"id": "batch_live", "status": "in_progress", "endpoint": "/v1/chat/completions", "input_file_id": "file-0",
           "expires_at": now + 86_400}
    await rows.insert_batch({"id": "batch_live", "key_token": "k", "team_id": None, "status": "in_progress",
                             "created_at": now, "doc": orjson.dumps(doc).decode()})
    assert await rows.claim("batch_live", "another-replica", now, now + 30)  # held, renewed by a live replica
    gw.app[BATCH].runner.poke()
    await asyncio.sleep(1.5)  # more than a poll of the runner
    assert (await rows.get_batch("batch_live"))["lease_owner"] == "another-replica"


async def test_a_batch_resumed_under_a_config_that_cannot_run_its_lines_fails_them_by_custom_id(
        sim: SimServer, tmp_path: Path) -> None:
    sim.settings.ttft = 0.02
    config = batch_config(sim, tmp_path)
    first = GatewayProcess(config, tmp_path, name="first").start()
    # The next release: the interactive model no longer maps to a batch model, and batches are capped lower.
    second = GatewayProcess({**config, "batch": {**config["batch"], "models": {}, "max_lines": 10}}, tmp_path,
                            name="second")
    try:
        oai = client(first)
        batch_id = await asyncio.to_thread(submit, oai, jsonl(300))
        await asyncio.to_thread(wait_for, oai, batch_id,
                                lambda b: b.request_counts is not None and b.request_counts.completed >= 30)
        first.kill(signal.SIGKILL)
        await asyncio.to_thread(second.start)
        oai = client(second)
        batch = await asyncio.to_thread(wait_for, oai, batch_id, final)
        assert batch.status == "completed" and batch.request_counts is not None
        counts = batch.request_counts
        assert counts.total == 300 and counts.completed >= 30 and counts.completed + counts.failed == 300
        out = await asyncio.to_thread(lines_of, oai, batch.output_file_id)
        errors = await asyncio.to_thread(lines_of, oai, batch.error_file_id)
        assert Counter(x["custom_id"] for x in out + errors) == Counter(f"req-{i}" for i in range(300))
        assert {e["error"]["code"] for e in errors} == {"model_not_batch_capable"}
        assert errors[0]["response"]["status_code"] == 400 and "batch.models" in errors[0]["error"]["message"]
    finally:
        first.kill(signal.SIGTERM)
        second.kill(signal.SIGTERM)


async def test_a_batch_killed_while_finalizing_completes_though_its_input_file_was_deleted_since(
        sim: SimServer, gateway_factory: Any, tmp_path: Path) -> None:
    """Every line was done and the batch `finalizing` when its replica died; the owner deleted the input file, as
    it may once the lines ran. The batch taken over writes its output and completes (not `cancelled`)."""
    gw = await gateway_factory(batch_config(sim, tmp_path))
    rows = gw.app[BATCH].runner.rows
    now = time.time()
    doc = {"id": "batch_fin", "object": "batch", "status": "finalizing", "endpoint": "/v1/chat/completions",
           "input_file_id": "file-deleted", "expires_at": now + 86_400, "created_at": int(now), "total": 2,
           "finalizing_at": int(now)}
    await rows.insert_batch({"id": "batch_fin", "key_token": "k", "team_id": None, "status": "finalizing",
                             "created_at": now, "doc": orjson.dumps(doc).decode()})
    assert await rows.claim("batch_fin", "dead-replica", now, now + 30)
    for n in (1, 2):
        await rows.finish_line("batch_fin", f"c{n}", n, True, orjson.dumps({"custom_id": f"c{n}"}).decode(), None,
                               "dead-replica")
    assert await rows.claim("batch_fin", "dead-replica", now, now - 30)  # then it died: its lease ran out
    gw.app[BATCH].runner.poke()
    for _ in range(100):
        row = await rows.get_batch("batch_fin")
        if row["status"] not in ("finalizing",):
            break
        await asyncio.sleep(0.05)
    assert row["status"] == "completed"
    assert orjson.loads(row["doc"])["output_file_id"] is not None
