"""OpenAI's Batch API on the gateway, with the official openai client against a gateway process and a SQLite ledger:
every custom_id answered exactly once and charged once at the batch price, also across a SIGKILL mid-batch."""

from __future__ import annotations

import asyncio
import io
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import openai
import orjson
import pytest

from gateway.sim import SimServer
from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import GatewayProcess, PostgresServer, new_database

BATCH_MODEL = "sim-batch"
PRICE_IN, PRICE_OUT = 0.001, 0.002


def batch_config(sim: SimServer, tmp_path: Path, **batch: Any) -> dict[str, Any]:
    config = gateway_config(models=[
        {"alias": MODEL, "deployments": [deployment("sim-interactive", sim.base_url)],
         "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT},
        {"alias": BATCH_MODEL, "tier": "batch", "deployments": [deployment("sim-spot", sim.base_url)],
         "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT},
        {"alias": "sim-unbatched", "deployments": [deployment("sim-other", sim.base_url)]},
    ])
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.2}
    config["batch"] = {"files": {"local_dir": str(tmp_path / "files")}, "price_fraction": 0.5, "concurrency": 8,
                       "yield_to_interactive": 0, "lease_seconds": 1, "models": {MODEL: BATCH_MODEL}, **batch}
    return config


def jsonl(n: int, model: str = MODEL, prefix: str = "req") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}],
                                           "max_tokens": 4}}) + b"\n" for i in range(n))


def client(gw: GatewayProcess, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


def submit(oai: openai.OpenAI, data: bytes) -> str:
    uploaded = oai.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                               metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    return batch.id


def wait_for(oai: openai.OpenAI, batch_id: str, done: Any, timeout: float = 90) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = oai.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.1)


def final(batch: openai.types.Batch) -> bool:
    return batch.status in ("completed", "failed", "cancelled", "expired")


def lines_of(oai: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [orjson.loads(x) for x in oai.files.content(file_id).content.splitlines()]


SPEND = "SELECT request_id, cost, prompt_tokens, completion_tokens, model FROM llmp_spend WHERE request_id LIKE "


def spend_rows(tmp_path: Path, batch_id: str, dsn: str | None = None) -> list[tuple[Any, ...]]:
    """The batch's spend rows, read from the store (written with each line's result: no spool between)."""
    if dsn is not None:
        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                return [tuple(r) for r in await conn.fetch(SPEND + "$1", batch_id + ":%")]
            finally:
                await conn.close()
        return asyncio.run(fetch())
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        return db.execute(SPEND + "?", (batch_id + ":%",)).fetchall()
    finally:
        db.close()


def check_exactly_once(oai: openai.OpenAI, batch: openai.types.Batch, tmp_path: Path, n: int,
                       dsn: str | None = None) -> None:
    assert batch.status == "completed" and batch.completed_at and batch.finalizing_at and batch.in_progress_at
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (n, n, 0)
    out = lines_of(oai, batch.output_file_id)
    assert batch.error_file_id is None
    ids = Counter(line["custom_id"] for line in out)
    assert ids == Counter(f"req-{i}" for i in range(n))  # every custom_id, each exactly once
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["model"] == BATCH_MODEL
    rows = spend_rows(tmp_path, batch.id, dsn)
    assert Counter(r[0] for r in rows) == Counter(f"{batch.id}:req-{i}" for i in range(n))  # charged once each
    for _, cost, prompt, completion, model in rows:
        assert model == BATCH_MODEL
        assert cost == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) * 0.5)  # the batch price


async def test_a_thousand_line_batch_answers_every_custom_id_once_at_the_batch_price(
        sim: SimServer, tmp_path: Path) -> None:
    gw = GatewayProcess(batch_config(sim, tmp_path), tmp_path).start()
    try:
        oai = client(gw)
        batch_id = await asyncio.to_thread(submit, oai, jsonl(1000))
        batch = await asyncio.to_thread(wait_for, oai, batch_id, final)
        await asyncio.to_thread(check_exactly_once, oai, batch, tmp_path, 1000)
        assert sim.stats.requests == 1000
    finally:
        gw.kill(signal.SIGTERM)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_batch_killed_mid_way_resumes_and_runs_no_line_twice(sim: SimServer, tmp_path: Path, store: str,
                                                                      request: pytest.FixtureRequest) -> None:
    sim.settings.ttft = 0.01  # about 1.3 s of lines at concurrency 8: the kill lands mid-batch
    config = batch_config(sim, tmp_path)
    dsn = None
    if store == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = await new_database(server, "batchkill")
        config["ledger"]["store"] = dsn
    gw = GatewayProcess(config, tmp_path).start()
    try:
        oai = client(gw)
        batch_id = await asyncio.to_thread(submit, oai, jsonl(1000))
        mid = await asyncio.to_thread(wait_for, oai, batch_id,
                                      lambda b: b.request_counts is not None and b.request_counts.completed >= 200)
        assert mid.status == "in_progress"
        gw.kill(signal.SIGKILL)
        await asyncio.to_thread(gw.start)  # takes the batch over once the dead process's lease expires (1 s)
        batch = await asyncio.to_thread(wait_for, oai, batch_id, final)
        await asyncio.to_thread(check_exactly_once, oai, batch, tmp_path, 1000, dsn)
        assert "batch_claimed" in gw.log().split("batch_completed")[0]
        # Lines in flight at the kill ran twice upstream (their answers were lost with the process), no others.
        assert 1000 <= sim.stats.requests <= 1000 + 8
    finally:
        gw.kill(signal.SIGTERM)


async def test_two_replicas_share_a_batch_by_lease_and_the_survivor_takes_over_a_dead_ones(
        sim: SimServer, tmp_path: Path) -> None:
    sim.settings.ttft = 0.02  # about 1.5 s of lines: the kill lands mid-batch
    config = batch_config(sim, tmp_path)
    one = GatewayProcess(config, tmp_path, name="one").start()
    two = GatewayProcess({**config, "ledger": {**config["ledger"], "spool_dir": str(tmp_path / "spool2")}},
                         tmp_path, name="two").start()
    try:
        oai = client(one)
        batch_id = await asyncio.to_thread(submit, oai, jsonl(600))
        await asyncio.to_thread(wait_for, oai, batch_id,
                                lambda b: b.request_counts is not None and b.request_counts.completed >= 100)
        holders = [gw for gw in (one, two) if f'"batch_claimed","batch":"{batch_id}"' in gw.log()]
        assert len(holders) == 1, "one replica runs the batch at a time"
        holders[0].kill(signal.SIGKILL)
        survivor = two if holders[0] is one else one
        batch = await asyncio.to_thread(wait_for, client(survivor), batch_id, final)
        await asyncio.to_thread(check_exactly_once, client(survivor), batch, tmp_path, 600)
        assert f'"batch_claimed","batch":"{batch_id}"' in survivor.log()  # after the dead one's lease expired
    finally:
        one.kill(signal.SIGTERM)
        two.kill(signal.SIGTERM)


async def test_a_batch_past_its_window_expires_with_the_rest_as_batch_expired_errors(
        sim: SimServer, tmp_path: Path) -> None:
    sim.settings.ttft = 0.05
    gw = GatewayProcess(batch_config(sim, tmp_path, concurrency=1, completion_window_seconds=2), tmp_path).start()
    try:
        oai = client(gw)
        batch = await asyncio.to_thread(wait_for, oai, await asyncio.to_thread(submit, oai, jsonl(200)), final)
        assert batch.status == "expired" and batch.expired_at and batch.request_counts is not None
        done, failed = batch.request_counts.completed, batch.request_counts.failed
        assert done >= 1 and failed >= 1 and done + failed == 200
        expired = await asyncio.to_thread(lines_of, oai, batch.error_file_id)
        assert {e["error"]["code"] for e in expired} == {"batch_expired"} and len(expired) == failed
        assert len(await asyncio.to_thread(lines_of, oai, batch.output_file_id)) == done
    finally:
        gw.kill(signal.SIGTERM)
