"""`llmp keys ...` drives a running gateway's admin API: generate, list, info, update, revoke, spend."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from gateway import keys_cli
from tests.gateway.conftest import KEY, MODEL
from tests.gateway.test_keys_admin import MESSAGES, governed


async def llmp_keys(capsys, gw, *argv: str, master: str = KEY) -> tuple[int, str, str]:
    code = await asyncio.to_thread(keys_cli.main, [*argv, "--url", gw.url, "--master-key", master])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_generate_use_update_spend_and_revoke(gateway_factory, sim, tmp_path, capsys) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    code, out, _ = await llmp_keys(capsys, gw, "team-new", "research", "--max-budget", "5")
    assert code == 0 and json.loads(out)["max_budget"] == 5
    code, out, _ = await llmp_keys(capsys, gw, "generate", "--alias", "nightly", "--team", "research", "--rpm", "10",
                                   "--budget-duration", "30d", "--max-budget", "1", "--json")
    made = json.loads(out)
    assert code == 0 and made["rpm_limit"] == 10 and made["team_id"] == "research"
    await gw.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gw.state.governance.ledger.flush()
    code, out, _ = await llmp_keys(capsys, gw, "list")
    assert code == 0 and "nightly" in out and made["key"] not in out, "lists never show keys"
    code, out, _ = await llmp_keys(capsys, gw, "update", made["token_id"], "--rpm", "none")
    assert code == 0 and json.loads(out)["rpm_limit"] is None
    code, out, _ = await llmp_keys(capsys, gw, "spend", "--by", "team")
    assert code == 0 and "research" in out and "total spend" in out
    code, out, _ = await llmp_keys(capsys, gw, "revoke", "--alias", "nightly")
    assert code == 0 and made["token_id"] in out
    with pytest.raises(openai.AuthenticationError):
        await gw.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_errors_are_one_clear_line(gateway_factory, sim, tmp_path, capsys) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    code, _, err = await llmp_keys(capsys, gw, "generate", "--budget-duration", "monthly")
    assert code == 1 and err.startswith("llmp keys: 400: budget_duration:")
    code, _, err = await llmp_keys(capsys, gw, "list", master="sk-wrong-0000000000000000")
    assert code == 1 and "401" in err and "Traceback" not in err
    code, _, err = await llmp_keys(capsys, gw, "info", "sk-nope-nope-nope-nope")
    assert code == 1 and "404" in err
