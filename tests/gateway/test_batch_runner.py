"""The batch runner in the test's process: it yields its deployments to interactive calls, runs at most `concurrency`
lines, counts in the metrics, bounds uploads, and runs again a line whose result the store could not take."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.batch import line_call
from gateway.batch import lines as lines_module
from gateway.batch import runner as runner_module
from gateway.batch.files import LocalFileStore
from gateway.batch.s3_files import FileStoreError
from gateway.batch.service import BATCH
from gateway.governance.keys import hash_key
from gateway.governance.limits.scopes import key_scope
from gateway.governance.store.protocol import StoreError
from tests.gateway.conftest import KEY
from tests.gateway.test_batch import BATCH_MODEL, batch_config, jsonl, spend_rows
from tests.gateway.test_keys_admin import admin


async def start_batch(oai: Any, n: int) -> str:
    uploaded = await oai.files.create(file=("in.jsonl", io.BytesIO(jsonl(n))), purpose="batch")
    batch = await oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    return str(batch.id)


async def completed(oai: Any, batch_id: str) -> int:
    batch = await oai.batches.retrieve(batch_id)
    return int(batch.request_counts.completed)


async def test_a_batch_pauses_while_interactive_calls_are_in_flight_on_its_deployments(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot", ttft=0.2)
    gw = await gateway_factory(batch_config(sim, tmp_path, yield_to_interactive=1, concurrency=4))
    oai = gw.client()
    stop = asyncio.Event()

    async def interactive(delay: float) -> None:  # six callers a sixth of a call apart: some are always in flight
        await asyncio.sleep(delay)
        while not stop.is_set():
            await oai.chat.completions.create(model=BATCH_MODEL, messages=[{"role": "user", "content": "now"}],
                                              max_tokens=4)

    callers = [asyncio.create_task(interactive(d)) for d in (0.0, 0.035, 0.07, 0.105, 0.14, 0.175)]
    await asyncio.sleep(0.3)
    batch_id = await start_batch(oai, 20)
    await asyncio.sleep(1.5)
    during = await completed(oai, batch_id)
    assert not any(c.done() for c in callers), [c.exception() for c in callers if c.done()]
    stop.set()
    await asyncio.gather(*callers)
    # Unpaused, the batch would be done by now (20 lines, 4 at a time, 0.2 s each). On a loaded machine the callers'
    # gaps between calls may line up for a moment: at most one round of `concurrency` lines slips in then.
    assert during <= 4, "batch lines ran while interactive calls were in flight on its deployment"
    for _ in range(100):
        if (await oai.batches.retrieve(batch_id)).status == "completed":
            break
        await asyncio.sleep(0.1)
    assert await completed(oai, batch_id) == 20  # once the interactive calls ended, the batch ran
    yielded = [line for line in gw.log_buffer.getvalue().splitlines() if b'"batch_yielded"' in line]
    assert yielded and b'"paused_s"' in yielded[0]


async def test_a_batch_runs_at_most_its_concurrency_upstream_at_once(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot", ttft=0.05)
    gw = await gateway_factory(batch_config(sim, tmp_path, concurrency=3))
    oai = gw.client(api_key=KEY)
    batch_id = await start_batch(oai, 30)
    peak = 0
    while (await oai.batches.retrieve(batch_id)).status != "completed":
        peak = max(peak, sim.stats.in_flight)
        await asyncio.sleep(0.005)
    assert 2 <= peak <= 3  # the sim's own count of requests in progress: never over the batch's concurrency


async def test_an_embeddings_batch_runs_and_counts_in_the_batch_metrics(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path))
    oai = gw.client()
    data = b"".join(orjson.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                  "body": {"model": BATCH_MODEL, "input": f"text {i}"}}) + b"\n" for i in range(5))
    uploaded = await oai.files.create(file=("e.jsonl", io.BytesIO(data)), purpose="batch")
    batch = await oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    for _ in range(100):
        batch = await oai.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and batch.request_counts.completed == 5
    out = [orjson.loads(x) for x in (await oai.files.content(batch.output_file_id)).content.splitlines()]
    assert {x["response"]["body"]["object"] for x in out} == {"list"}
    metrics = gw.state.metrics.render().decode()
    assert f'llmp_batch_lines_total{{model="{BATCH_MODEL}",result="completed"}} 5.0' in metrics


async def test_an_upload_may_exceed_the_request_body_cap_but_not_max_file_bytes(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot")
    config = batch_config(sim, tmp_path, max_file_bytes=300_000)
    config["gateway"]["front_door"] = {"body_bytes": 100_000}
    gw = await gateway_factory(config)
    oai = gw.client()
    fits = jsonl(2000)[:250_000]
    uploaded = await oai.files.create(file=("big.jsonl", io.BytesIO(fits)), purpose="batch")
    assert uploaded.bytes == len(fits)
    assert (await oai.files.content(uploaded.id)).content == fits
    with pytest.raises(openai.APIStatusError) as refused:
        await oai.files.create(file=("huge.jsonl", io.BytesIO(jsonl(4000))), purpose="batch")
    assert refused.value.status_code == 413 and "batch.max_file_bytes" in refused.value.message


async def test_a_line_the_store_could_not_take_is_run_again_and_answered_once(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path))
    monkeypatch.setattr(line_call, "STORE_TRIES", 1)
    rows = gw.app[BATCH].runner.calls.rows
    finish = rows.finish_line
    refused: list[str] = []

    async def flaky(batch_id: str, custom_id: str, *args: Any) -> bool:
        if custom_id == "req-3" and not refused:
            refused.append(custom_id)
            raise StoreError("sqlite: database is locked")
        return bool(await finish(batch_id, custom_id, *args))

    monkeypatch.setattr(rows, "finish_line", flaky)
    oai = gw.client()
    batch_id = await start_batch(oai, 10)
    for _ in range(100):
        batch = await oai.batches.retrieve(batch_id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and refused == ["req-3"]
    out = [orjson.loads(x)["custom_id"] for x in (await oai.files.content(batch.output_file_id)).content.splitlines()]
    assert sorted(out) == sorted(f"req-{i}" for i in range(10))
    assert sim.stats.requests == 11  # req-3 ran again; nothing else did
    assert b'"batch_lines_unwritten"' in gw.log_buffer.getvalue()


async def test_a_line_run_twice_is_charged_to_the_budget_once(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget counters only rise (governance/budget_sync.py): a line whose first run's result the store refused, and
    which ran again, must add its cost once, as the ledger holds it."""
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path))
    monkeypatch.setattr(line_call, "STORE_TRIES", 1)
    rows = gw.app[BATCH].runner.calls.rows
    finish = rows.finish_line
    refused: list[str] = []

    async def flaky(batch_id: str, custom_id: str, *args: Any) -> bool:
        if custom_id in ("req-2", "req-5") and custom_id not in refused:
            refused.append(custom_id)
            raise StoreError("sqlite: database is locked")
        return bool(await finish(batch_id, custom_id, *args))

    monkeypatch.setattr(rows, "finish_line", flaky)
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 100.0})
    oai = gw.client(api_key=made["key"])
    batch_id = await start_batch(oai, 10)
    for _ in range(100):
        batch = await oai.batches.retrieve(batch_id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and sorted(refused) == ["req-2", "req-5"] and sim.stats.requests == 12
    ledger = sum(r[1] for r in spend_rows(tmp_path, batch_id))
    counters = gw.state.gate.limiter._scopes[key_scope(hash_key(made["key"]))]
    assert ledger > 0 and sum(counters.spend.values()) == pytest.approx(ledger)


async def test_a_line_over_the_model_cap_fails_as_its_call_would_and_the_rest_run(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot")
    config = batch_config(sim, tmp_path)
    config["models"][1].update(max_tokens=8, over_max_tokens="refuse")
    gw = await gateway_factory(config)
    oai = gw.client()
    data = b"".join(orjson.dumps({"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": BATCH_MODEL, "messages": [{"role": "user", "content": "hi"}],
                                           "max_tokens": n}}) + b"\n" for n in (4, 100))
    uploaded = await oai.files.create(file=("c.jsonl", io.BytesIO(data)), purpose="batch")
    batch = await oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    for _ in range(100):
        batch = await oai.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    [failed] = [orjson.loads(x) for x in (await oai.files.content(batch.error_file_id)).content.splitlines()]
    assert failed["custom_id"] == "c100" and failed["response"]["status_code"] == 400
    assert "over the model cap" in failed["error"]["message"]
    assert sim.stats.requests == 1


async def test_a_key_revoked_mid_batch_fails_the_lines_left_and_every_custom_id_is_answered_once(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(name="spot", ttft=0.05)
    gw = await gateway_factory(batch_config(sim, tmp_path, concurrency=2))
    _, made = await admin(gw, "POST", "/key/generate", {})
    batch_id = await start_batch(gw.client(api_key=made["key"]), 60)
    master = gw.client()
    for _ in range(500):
        if await completed(master, batch_id) >= 5:
            break
        await asyncio.sleep(0.02)
    assert (await admin(gw, "POST", "/key/delete", {"keys": [made["key"]]}))[0] == 200
    for _ in range(200):
        batch = await master.batches.retrieve(batch_id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    counts = batch.request_counts
    assert batch.status == "completed" and counts.completed >= 5 and counts.failed >= 1
    assert counts.completed + counts.failed == 60
    errors = [orjson.loads(x) for x in (await master.files.content(batch.error_file_id)).content.splitlines()]
    out = [orjson.loads(x) for x in (await master.files.content(batch.output_file_id)).content.splitlines()]
    assert {(e["response"]["status_code"], e["error"]["code"]) for e in errors} == {(401, "invalid_api_key")}
    assert sorted(x["custom_id"] for x in errors + out) == sorted(f"req-{i}" for i in range(60))
    assert sim.stats.requests == len(out)  # no line of the revoked key reached the upstream


async def test_input_files_are_checked_off_the_event_loop(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """150 MB of lines take over a second to check (measured: 1.2 s for 50,000 lines of 3 KB): on the event loop,
    every interactive call of the process would wait that long, twice (validation, then the run's read)."""
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path))
    checked_on: list[bool] = []

    def read_lines(*args: Any) -> Any:
        checked_on.append(threading.current_thread() is threading.main_thread())
        return lines_module.read_lines(*args)

    monkeypatch.setattr(runner_module, "read_lines", read_lines)
    oai = gw.client()
    batch_id = await start_batch(oai, 5)
    for _ in range(100):
        if (await oai.batches.retrieve(batch_id)).status == "completed":
            break
        await asyncio.sleep(0.05)
    assert await completed(oai, batch_id) == 5
    assert checked_on == [False, False], "an input file was checked on the event loop's thread"


async def test_a_line_waiting_for_admission_hides_no_interactive_call_from_the_governor(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The governor counts interactive calls as the deployments' calls in flight less this gateway's batch lines in
    flight: a line counted while it waits for admission (a Redis round trip) is subtracted from calls it is not
    part of, and an interactive call in flight goes unseen."""
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path, concurrency=1))
    runner = gw.app[BATCH].runner
    gate = runner.calls.gate
    admit = gate.admit
    counted_while_admitted: list[int] = []

    async def slow_admit(principal: Any, request: Any, route: Any, record: Any) -> Any:
        if record.request_id.startswith("batch_"):
            await asyncio.sleep(0.05)  # the limiter's round trip
            counted_while_admitted.append(runner.in_flight[BATCH_MODEL])
        return await admit(principal, request, route, record)

    monkeypatch.setattr(gate, "admit", slow_admit)
    oai = gw.client()
    batch_id = await start_batch(oai, 3)
    for _ in range(100):
        if (await oai.batches.retrieve(batch_id)).status == "completed":
            break
        await asyncio.sleep(0.05)
    assert await completed(oai, batch_id) == 3
    assert counted_while_admitted == [0, 0, 0]


async def test_a_file_store_that_refuses_answers_503_naming_it_not_a_traceback(
        sim_factory: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await sim_factory(name="spot")
    gw = await gateway_factory(batch_config(sim, tmp_path))
    oai = gw.client()
    kept = await oai.files.create(file=("in.jsonl", io.BytesIO(jsonl(1))), purpose="batch")

    async def refused(*args: Any) -> None:
        raise FileStoreError("s3://bucket/files/file-x: put refused: AccessDenied")

    monkeypatch.setattr(LocalFileStore, "put_file", refused)
    monkeypatch.setattr(LocalFileStore, "path", lambda self, name: (_ for _ in ()).throw(
        FileStoreError("s3://bucket/files/file-x: get refused: SlowDown")))
    for call in (lambda: oai.files.create(file=("in.jsonl", io.BytesIO(jsonl(1))), purpose="batch"),
                 lambda: oai.files.content(kept.id)):
        with pytest.raises(openai.APIStatusError) as failed:
            await call()
        assert failed.value.status_code == 503 and "file store" in failed.value.message
    assert b'"batch_file_store_unavailable"' in gw.log_buffer.getvalue()
