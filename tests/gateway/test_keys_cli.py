"""`llmp keys ...` drives a running gateway's admin API: generate, list, info, update, revoke, spend."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from gateway import keys_cli
from gateway.demo import DEMO_KEY
from gateway.demo import banner as demo_banner
from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import ROOT, free_port, wait_port
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


async def test_generate_prints_a_dash_for_what_is_not_set_never_none(gateway_factory, sim, tmp_path, capsys) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    code, out, _ = await llmp_keys(capsys, gw, "generate")
    assert code == 0 and "None" not in out
    assert "alias: -\nteam: -\nexpires: -" in out
    code, out, _ = await llmp_keys(capsys, gw, "list")
    assert code == 0 and "None" not in out and " - " in out


def test_a_bad_number_is_named_in_words_not_by_a_python_function(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        keys_cli.main(["generate", "--rpm", "ten", "--master-key", KEY])
    err = capsys.readouterr().err
    assert exit_.value.code == keys_cli.EXIT_USAGE
    assert "argument --rpm: 'ten' is not a whole number (or `none` to clear it)" in err
    assert "_nullable" not in err and "[--rpm N]" in err


@pytest.mark.parametrize("command", ["generate", "list", "info", "update", "revoke", "team-new", "spend"])
def test_every_command_documents_its_options_and_exit_codes(command, capsys) -> None:
    with pytest.raises(SystemExit):
        keys_cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "3  the gateway cannot be reached" in text
    for option in ("--url", "--master-key"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(option))
        assert len(line.split()) > 2, f"{option} has no help text"


async def test_exit_codes_tell_refused_from_usage_from_unreachable(gateway_factory, sim, tmp_path, capsys,
                                                                   monkeypatch) -> None:
    gw = await gateway_factory(governed(sim, tmp_path))
    code, _, _ = await llmp_keys(capsys, gw, "list", master="sk-wrong-0000000000000000")
    assert code == keys_cli.EXIT_REFUSED == 1
    monkeypatch.delenv("LLMP_MASTER_KEY", raising=False)
    assert keys_cli.main(["list", "--url", gw.url]) == keys_cli.EXIT_USAGE == 2
    assert "no master key" in capsys.readouterr().err
    assert keys_cli.main(["list", "--url", "http://127.0.0.1:9", "--master-key", KEY]) == keys_cli.EXIT_UNREACHABLE
    assert "cannot reach the gateway at http://127.0.0.1:9" in capsys.readouterr().err


async def test_keys_against_a_gateway_without_governance_say_how_to_turn_it_on(gateway_factory, sim,
                                                                                 capsys) -> None:
    gw = await gateway_factory(gateway_config([deployment("d", sim.base_url)]))
    code, _, err = await llmp_keys(capsys, gw, "list")
    assert code == 1 and err.startswith("llmp keys: 501: GET /key/list needs governance")
    assert "add a `ledger:` section" in err


def test_keys_work_against_the_demo_as_its_banner_shows(capsys) -> None:
    # `llmp gateway --demo`, then the two `llmp keys` lines it prints: virtual keys are on, in a SQLite ledger
    # in a temporary directory that the banner names and the demo removes when it stops.
    port = free_port()
    # The demo's own key: a LLMP_MASTER_KEY in the caller's environment would replace it (as the user's key).
    env = {k: v for k, v in os.environ.items() if k != "LLMP_MASTER_KEY"}
    demo = subprocess.Popen([sys.executable, "-m", "gateway", "--demo", "--port", str(port)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port, 30, demo)
        url = f"http://127.0.0.1:{port}"
        assert keys_cli.main(["generate", "--alias", "me", "--rpm", "60", "--url", url, "--master-key",
                              DEMO_KEY]) == 0
        assert keys_cli.main(["list", "--url", url, "--master-key", DEMO_KEY]) == 0
        assert " me " in capsys.readouterr().out
    finally:
        demo.send_signal(signal.SIGINT)
        _, banner = demo.communicate(timeout=60)
    ledger = re.search(r"virtual keys on: SQLite ledger in (\S+) \(removed when the demo stops\)", banner)
    assert ledger is not None, banner
    assert f"llmp keys list --url {url}" in banner
    assert f"export LLMP_MASTER_KEY={DEMO_KEY}" in banner
    assert not Path(ledger.group(1)).exists()


def test_the_demo_banner_does_not_export_a_key_of_your_own() -> None:
    # The user's key came from LLMP_MASTER_KEY: `export LLMP_MASTER_KEY=$LLMP_MASTER_KEY` would be noise.
    own = demo_banner("127.0.0.1", 4000, ["http://127.0.0.1:1"], Path("/tmp/x"), "a-key-of-my-own-" * 3)
    assert "export LLMP_MASTER_KEY" not in own and "Bearer $LLMP_MASTER_KEY" in own
    assert "llmp keys list\n" in own  # the default --url
    demo = demo_banner("127.0.0.1", 4000, ["http://127.0.0.1:1"], Path("/tmp/x"), DEMO_KEY)
    assert f"  export LLMP_MASTER_KEY={DEMO_KEY}\n" in demo
