"""`llmp gateway --demo`: the gateway in front of two simulated vLLM replicas, ready for curl."""

from __future__ import annotations

import asyncio
import sys

from gateway.config.native import parse_native
from gateway.server import serve
from gateway.sim import SimServer, SimSettings

DEMO_KEY = "sk-llmp-local-EXAMPLE-demo-key-0000000000000000"  # refused outside --dev/--demo


def demo_config(replicas: list[str]) -> dict[str, object]:
    return {
        "version": 1,
        "gateway": {"region": "local", "residency": "local", "master_key": DEMO_KEY},
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


def run_demo(host: str, port: int) -> int:
    from gateway.http.app import build_app

    async def main() -> None:
        sims = []
        for name in ("replica-a", "replica-b"):
            settings = SimSettings(models=("meta-llama/Llama-3.1-8B-Instruct",), ttft=0.05, tokens_per_s=40,
                                   output_tokens=24, name=name)
            sims.append(await SimServer(settings).start())
        config = parse_native(demo_config([s.base_url for s in sims]))
        app = build_app(config, dev=True)

        async def announce() -> None:
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            print(
                f"llmp gateway demo on {url}, in front of {', '.join(s.base_url for s in sims)}\n\n"
                f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\\n"
                f"    -H 'Content-Type: application/json' -d '{{\"model\": \"demo-llama\", \"stream\": true, "
                f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\n"
                f"  curl {url}/metrics\n\nCtrl-C to stop.",
                file=sys.stderr, flush=True,
            )

        try:
            await serve(app, host, port, False, announce)
        finally:
            for sim in sims:
                await sim.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"llmp gateway: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
