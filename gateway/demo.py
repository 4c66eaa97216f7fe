"""`llmp gateway --demo`: the gateway in front of two simulated vLLM replicas, with virtual keys, ready for curl."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.exit_codes import EXIT_OK
from gateway.http.auth import check_master_key_on, is_loopback
from gateway.server import CannotListen, CannotStart, cannot_listen, cannot_start, serve
from gateway.sim import SimServer, SimSettings

# Published in this file: accepted only on loopback (the demo's default host), as every example key is with --dev
# (gateway/http/auth.py, check_master_key_on).
DEMO_KEY = "sk-llmp-local-EXAMPLE-demo-key-0000000000000000"
DEFAULT_URL_PORT = 4000  # `llmp keys`' default --url is http://127.0.0.1:4000


def demo_master_key(host: str, own_key: str | None) -> str:
    """The demo's master key: the published demo key on loopback only; beyond it, a key of the user's own (checked
    as a production key is), since anyone who can reach the port can read this file's key."""
    if is_loopback(host):
        return own_key or DEMO_KEY
    if not own_key:
        raise ConfigError(f"--host {host}: the demo's master key is published, so the demo listens beyond this "
                          f"machine only with a key of your own: set LLMP_MASTER_KEY (32+ random characters), or "
                          f"leave --host out (127.0.0.1)")
    try:
        check_master_key_on(host, own_key, dev=True)
    except ConfigError as exc:
        reason = str(exc).removeprefix(f"--host {host}: gateway.master_key ").split("; --dev", 1)[0]
        raise ConfigError(f"--host {host}: LLMP_MASTER_KEY {reason}") from None
    return own_key


def demo_config(replicas: list[str], ledger_dir: Path | None = None,
                master_key: str = DEMO_KEY) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 1,
        "gateway": {"region": "local", "residency": "local", "master_key": master_key},
        "models": [{
            "alias": "demo-llama",
            "max_tokens": 512,
            "deployments": [{
                "name": "sim-pool",
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "region": "local",
                "residency": "local",
                "replicas": {"static": replicas},
            }],
        }],
    }
    if ledger_dir is not None:  # governance on: virtual keys, teams and spend in a local SQLite ledger
        config["ledger"] = {"store": f"sqlite:///{ledger_dir / 'ledger.db'}", "spool_dir": str(ledger_dir / "spool")}
    return config


def banner(host: str, port: int, replicas: list[str], ledger_dir: Path, master_key: str) -> str:
    """What the demo prints once it listens: the commands to try, with the key to use."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    shown = DEMO_KEY if master_key == DEMO_KEY else "$LLMP_MASTER_KEY"
    # With the user's own key, LLMP_MASTER_KEY is already set (that is where it came from): no export line.
    export = f"  export LLMP_MASTER_KEY={DEMO_KEY}\n" if master_key == DEMO_KEY else ""
    url_flag = "" if url == f"http://127.0.0.1:{DEFAULT_URL_PORT}" else f" --url {url}"
    return (
        f"llmp gateway demo on {url}, in front of {', '.join(replicas)}\n"
        f"virtual keys on: SQLite ledger in {ledger_dir} (removed when the demo stops)\n\n"
        f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {shown}' \\\n"
        f"    -H 'Content-Type: application/json' -d '{{\"model\": \"demo-llama\", \"stream\": true, "
        f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\n"
        f"{export}"
        f"  llmp keys generate --alias me --rpm 60{url_flag}\n"
        f"  llmp keys list{url_flag}\n\n"
        f"  curl {url}/metrics\n\nCtrl-C to stop."
    )


def run_demo(host: str, port: int, master_key: str = DEMO_KEY) -> int:
    from gateway.http.app import build_app

    ledger_dir = Path(tempfile.mkdtemp(prefix="llmp-demo-"))

    async def main() -> None:
        sims = []
        for name in ("replica-a", "replica-b"):
            settings = SimSettings(models=("meta-llama/Llama-3.1-8B-Instruct",), ttft=0.05, tokens_per_s=40,
                                   output_tokens=24, name=name)
            sims.append(await SimServer(settings).start())
        config = parse_native(demo_config([s.base_url for s in sims], ledger_dir, master_key))
        app = build_app(config, dev=True)

        async def announce() -> None:
            print(banner(host, port, [s.base_url for s in sims], ledger_dir, master_key), file=sys.stderr, flush=True)

        try:
            await serve(app, host, port, False, announce)
        finally:
            for sim in sims:
                await sim.stop()

    try:
        asyncio.run(main())
    except CannotListen as exc:
        return cannot_listen(host, port, exc)
    except CannotStart as exc:
        return cannot_start(exc)
    finally:
        shutil.rmtree(ledger_dir, ignore_errors=True)
    return EXIT_OK
