"""A stream is charged for what it streamed, whether or not the client stayed for the usage chunk."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway.conftest import MODEL, RunningGateway, deployment, gateway_config
from tests.gateway.test_keys_admin import admin

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "tell me a long story about the gateway"}],
        "stream": True}


def governed(sim: Any, tmp_path: Path) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    return config


async def hang_up_after_some_chunks(gw: RunningGateway, key: str, rid: str) -> int:
    """Stream, read a few events, hang up; the status the gateway answered with."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/v1/chat/completions", json=BODY,
                               headers={"Authorization": f"Bearer {key}", "x-request-id": rid})
        if resp.status == 200:
            for _ in range(3):
                await resp.content.readline()
        status = resp.status
        resp.close()
    return status


async def test_a_key_with_budget_for_one_call_cannot_stream_twenty_by_hanging_up(sim, gateway_factory,
                                                                                   tmp_path) -> None:
    sim.settings.tokens_per_s = 20  # a long, slow answer: the usage chunk would come after 10 s
    sim.settings.output_tokens = 200
    gw = await gateway_factory(governed(sim, tmp_path))
    # A whole call costs about 0.42 (200 completion tokens at 0.002, a prompt of ~25 at 0.001).
    _, made = await admin(gw, "POST", "/key/generate", {"max_budget": 0.42})
    charged: list[str] = []
    refused = None
    for i in range(20):
        status = await hang_up_after_some_chunks(gw, made["key"], f"hangup-{i}")
        if status != 200:
            refused = status
            break
        charged.append(f"hangup-{i}")
        await gw.logged_calls(len(charged))  # settled before the next call is admitted
    assert refused == 422, f"still streaming after {len(charged)} hang-ups"
    assert 2 <= len(charged) < 20
    calls = {c["request_id"]: c for c in await gw.logged_calls(len(charged) + 1)}
    for rid in charged:
        assert calls[rid]["status"] == 499 and calls[rid]["prompt_tokens"] > 0 and calls[rid]["completion_tokens"] > 0
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # the ledger's own flush loop may still be inserting the last rows when ours returns
        await gw.state.governance.ledger.flush()
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            rows = {r[0]: r[1:] for r in db.execute(
                "SELECT request_id, status, prompt_tokens, completion_tokens, cost FROM llmp_spend")}
        if set(charged) <= set(rows) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    for rid in charged:
        status, prompt, completion, cost = rows[rid]
        assert status == 499 and prompt > 0 and completion > 0 and cost > 0, rows[rid]
    assert sum(r[3] for r in rows.values()) >= 0.42
