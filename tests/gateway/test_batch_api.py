"""The Batch API's checks, tenancy, cancel and budgets, with the official openai client against a gateway process.

Each test body runs in a thread: the simulator serves on the test's event loop."""

from __future__ import annotations

import asyncio
import io
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.sim import SimServer
from tests.gateway.servers import GatewayProcess
from tests.gateway.test_batch import BATCH_MODEL, batch_config, client, final, jsonl, lines_of, submit, wait_for

MODEL = "sim-model"


def line(custom_id: Any, model: str = MODEL, **overrides: Any) -> bytes:
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}, **overrides}
    return orjson.dumps(item) + b"\n"


@pytest.fixture
def gw(sim: SimServer, tmp_path: Path) -> Any:
    process = GatewayProcess(batch_config(sim, tmp_path, concurrency=2), tmp_path).start()
    yield process
    process.kill(signal.SIGTERM)


async def test_a_batch_with_bad_lines_fails_validation_naming_each_line_and_runs_none(gw: GatewayProcess,
                                                                                sim: SimServer) -> None:
    await asyncio.to_thread(_a_batch_with_bad_lines_fails_validation_naming_each_line_and_runs_none, gw, sim)


def _a_batch_with_bad_lines_fails_validation_naming_each_line_and_runs_none(gw: GatewayProcess,
                                                                                sim: SimServer) -> None:
    data = (line("ok-1") + b"{not json\n" + line("") + line("ok-1") + line("u", url="/v1/embeddings")
            + line("m", method="GET") + line("x", model="sim-unbatched") + line("i", model=BATCH_MODEL))
    oai = client(gw)
    batch = wait_for(oai, submit(oai, data), final)
    assert batch.status == "failed" and batch.failed_at and batch.errors is not None
    found = {(e.line, e.code) for e in batch.errors.data or []}
    assert found == {(2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "duplicate_custom_id"),
                     (5, "mismatched_endpoint"), (6, "invalid_method"), (7, "model_not_batch_capable")}
    unbatched = next(e for e in batch.errors.data or [] if e.line == 7)
    assert "tier: batch" in (unbatched.message or "") and unbatched.param == "body.model"
    assert sim.stats.requests == 0


async def test_create_refuses_a_wrong_endpoint_window_or_file_by_name(gw: GatewayProcess) -> None:
    await asyncio.to_thread(_create_refuses_a_wrong_endpoint_window_or_file_by_name, gw)


def _create_refuses_a_wrong_endpoint_window_or_file_by_name(gw: GatewayProcess) -> None:
    oai = client(gw)
    uploaded = oai.files.create(file=("in.jsonl", io.BytesIO(line("a"))), purpose="batch")
    for kwargs, param in (({"endpoint": "/v1/images/generations"}, "endpoint"),
                          ({"completion_window": "1h"}, "completion_window")):
        args: dict[str, Any] = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions",
                                "completion_window": "24h", **kwargs}
        with pytest.raises(openai.BadRequestError) as refused:
            oai.batches.create(**args)
        assert refused.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.batches.create(input_file_id="file-0000", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        oai.files.create(file=("in.jsonl", io.BytesIO(line("a"))), purpose="fine-tune")


async def test_files_and_batches_are_seen_by_their_team_and_are_404_to_another(gw: GatewayProcess) -> None:
    await asyncio.to_thread(_files_and_batches_are_seen_by_their_team_and_are_404_to_another, gw)


def _files_and_batches_are_seen_by_their_team_and_are_404_to_another(gw: GatewayProcess) -> None:
    for team in ("search", "ads"):
        assert gw.admin("POST", "/team/new", {"team_id": team}, KEY_MASTER)[0] == 200
    a1, a2, b1 = (gw.admin("POST", "/key/generate", {"team_id": t}, KEY_MASTER)[1]["key"]
                  for t in ("search", "search", "ads"))
    owner, teammate, stranger = client(gw, a1), client(gw, a2), client(gw, b1)
    batch_id = submit(owner, jsonl(3))
    batch = wait_for(owner, batch_id, final)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 3
    assert teammate.batches.retrieve(batch_id).id == batch_id
    assert teammate.files.retrieve(batch.input_file_id).id == batch.input_file_id
    assert len(lines_of(teammate, batch.output_file_id)) == 3
    for call in (lambda: stranger.batches.retrieve(batch_id), lambda: stranger.batches.cancel(batch_id),
                 lambda: stranger.files.retrieve(batch.input_file_id),
                 lambda: stranger.files.content(batch.output_file_id or ""),
                 lambda: stranger.files.delete(batch.input_file_id),
                 lambda: stranger.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                                                 completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [b.id for b in stranger.batches.list()] == []
    assert {f.id for f in stranger.files.list()} == set()
    # Lists page newest first with `after` and `limit`, as the client's auto-pagination reads them.
    second = submit(owner, jsonl(2, prefix="second"))
    page = owner.batches.list(limit=1)
    assert [b.id for b in page.data] == [second] and page.has_more
    assert [b.id for b in owner.batches.list()] == [second, batch_id]
    assert [b.id for b in owner.batches.list(limit=1)] == [second, batch_id]  # auto-paginated over `after`
    assert {f.purpose for f in owner.files.list()} == {"batch", "batch_output"}
    # Files list as OpenAI's: `limit` up to 10,000, `order` asc or desc by creation.
    newest = [f.id for f in owner.files.list(limit=10_000).data]
    assert [f.id for f in owner.files.list(limit=10_000, order="asc").data] == newest[::-1]
    assert [f.id for f in owner.files.list(limit=1, order="asc")] == newest[::-1]  # auto-paginated, oldest first
    with pytest.raises(openai.BadRequestError):
        owner.batches.list(limit=101)
    assert owner.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        owner.files.retrieve(batch.input_file_id)
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong").batches.list()


async def test_cancel_stops_new_lines_and_keeps_the_partial_output(sim: SimServer, gw: GatewayProcess) -> None:
    await asyncio.to_thread(_cancel_stops_new_lines_and_keeps_the_partial_output, sim, gw)


def _cancel_stops_new_lines_and_keeps_the_partial_output(sim: SimServer, gw: GatewayProcess) -> None:
    sim.settings.ttft = 0.05
    oai = client(gw)
    batch_id = submit(oai, jsonl(200))
    wait_for(oai, batch_id, lambda b: b.request_counts is not None and b.request_counts.completed >= 10)
    cancelling = oai.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait_for(oai, batch_id, final)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts is not None and 10 <= batch.request_counts.completed < 200
    out = lines_of(oai, batch.output_file_id)
    assert len(out) == batch.request_counts.completed and len({x["custom_id"] for x in out}) == len(out)
    assert sim.stats.requests == len(out)  # lines in flight at the cancel finished; none started after
    # As OpenAI's: every line not run is in the error file as `batch_cancelled`; each custom_id answered once.
    rest = lines_of(oai, batch.error_file_id)
    assert {(x["response"], x["error"]["code"]) for x in rest} == {(None, "batch_cancelled")}
    assert (batch.request_counts.total, batch.request_counts.failed) == (200, len(rest))
    assert sorted(x["custom_id"] for x in out + rest) == sorted(f"req-{i}" for i in range(200))
    with pytest.raises(openai.ConflictError):
        done = submit(oai, jsonl(1, prefix="done"))
        wait_for(oai, done, final)
        oai.batches.cancel(done)


async def test_a_budget_spent_mid_batch_fails_the_rest_as_line_errors(gw: GatewayProcess) -> None:
    await asyncio.to_thread(_a_budget_spent_mid_batch_fails_the_rest_as_line_errors, gw)


def _a_budget_spent_mid_batch_fails_the_rest_as_line_errors(gw: GatewayProcess) -> None:
    _, made = gw.admin("POST", "/key/generate", {"max_budget": 0.05}, KEY_MASTER)
    oai = client(gw, made["key"])
    batch = wait_for(oai, submit(oai, jsonl(60)), final)
    assert batch.status == "completed" and batch.request_counts is not None
    counts = batch.request_counts
    assert counts.completed >= 1 and counts.failed >= 1 and counts.completed + counts.failed == 60
    errors = lines_of(oai, batch.error_file_id)
    assert Counter(e["error"]["code"] for e in errors) == {"budget_exceeded": counts.failed}
    assert errors[0]["response"]["status_code"] == 422 and "Budget has been exceeded" in errors[0]["error"]["message"]
    every = [x["custom_id"] for x in errors + lines_of(oai, batch.output_file_id)]
    assert sorted(every) == sorted(f"req-{i}" for i in range(60))


KEY_MASTER = "sk-llmp-test-0123456789abcdef0123456789abcdef"
