"""A ladder end to end in processes: `python -m gateway` with a `ladders:` config and a SQLite ledger in front of
`python -m gateway.sim --misbehave`, called with the official openai client; a bad `ladders:` section stops the
gateway with one line naming the field."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import orjson
import pytest
import yaml

from gateway.exit_codes import EXIT_USAGE
from tests.gateway.conftest import KEY
from tests.gateway.servers import GatewayProcess, SimProcess
from tests.gateway.test_gateway_cli import run_gateway
from tests.gateway.test_ladder import AS_SCHEMA, BIG, BIG_PRICE, CHEAP, CHEAP_PRICE, MESSAGES, SCHEMA, price
from tests.ports import free_port

SMALL_UPSTREAM, LARGE_UPSTREAM = "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"


def config(sim: SimProcess, tmp_path: Path) -> dict[str, object]:
    def model(alias: str, upstream: str, prices: tuple[float, float]) -> dict[str, object]:
        return {"alias": alias, "input_cost_per_token": prices[0], "output_cost_per_token": prices[1],
                "deployments": [{"name": f"{alias}-pool", "model": upstream, "api_base": sim.base_url}]}

    return {"version": 1, "gateway": {"master_key": KEY, "retries": {"attempts": 0}},
            "models": [model(CHEAP, SMALL_UPSTREAM, CHEAP_PRICE), model(BIG, LARGE_UPSTREAM, BIG_PRICE)],
            "ladders": [{"alias": "auto", "rungs": [CHEAP, BIG]}],
            "ledger": {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                       "flush_interval": 0.05}}


def spend(tmp_path: Path, rows: int) -> dict[str, tuple[str, float]]:
    deadline = time.monotonic() + 10
    while True:
        try:
            with sqlite3.connect(tmp_path / "ledger.db") as db:
                found = {r[0]: (r[1], r[2]) for r in db.execute("SELECT request_id, model, cost FROM llmp_spend")}
        except sqlite3.OperationalError:  # the table is made when the gateway starts
            found = {}
        if len(found) >= rows or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[GatewayProcess]:
    sim = SimProcess(tmp_path, "sim", "127.0.0.1", free_port(), "--misbehave", f"{SMALL_UPSTREAM}=bad-json")
    gw = GatewayProcess(config(sim, tmp_path), tmp_path)
    try:
        yield gw.start()
    finally:
        gw.kill()
        sim.stop()


def test_the_cheap_rung_answers_and_a_failed_schema_escalates(processes: GatewayProcess, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=processes.url + "/v1", api_key=KEY, max_retries=0, timeout=15)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES,
                                                           extra_headers={"x-request-id": "p-1"})
    cheap = raw.parse()
    assert raw.headers["x-llmp-route"] == f"{CHEAP}=answered" and cheap.model == CHEAP
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(price(cheap.usage, CHEAP_PRICE))
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, response_format=AS_SCHEMA, extra_headers={"x-request-id": "p-2"})
    reply = raw.parse()
    assert raw.headers["x-llmp-route"] == f"{CHEAP}=invalid_json,{BIG}=answered" and reply.model == BIG
    jsonschema.validate(orjson.loads(reply.choices[0].message.content), SCHEMA)
    rows = spend(tmp_path, 3)
    assert rows["p-1"] == (CHEAP, pytest.approx(price(cheap.usage, CHEAP_PRICE)))
    assert rows["p-2:rung1"][0] == CHEAP and rows["p-2"] == (BIG, pytest.approx(price(reply.usage, BIG_PRICE)))
    assert [m.id for m in client.models.list().data] == [CHEAP, BIG, "auto"]


def test_a_bad_ladder_stops_the_gateway_naming_the_field(tmp_path: Path) -> None:
    doc = {"version": 1, "gateway": {"master_key": KEY},
           "models": [{"alias": CHEAP, "deployments": [{"name": "d", "model": "m", "api_base": "http://x/v1"}]}],
           "ladders": [{"alias": "auto", "rungs": [CHEAP, "gpt-5"]}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_gateway("--config", str(path), "--host", "127.0.0.1", "--port", str(free_port()))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "ladders[auto].rungs: 'gpt-5' is not a model alias" in result.stderr
    assert "Traceback" not in result.stderr
