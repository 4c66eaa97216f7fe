"""`llmp gateway` / `python -m gateway`: arguments, config errors as one clear line, then serving."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.config.errors import ConfigError
from gateway.config.loading import Loaded, load, load_config
from gateway.config.native import GatewayConfig
from gateway.server import fail, run_workers, serve, use_uvloop


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmp gateway", description="OpenAI-compatible LLM gateway")
    p.add_argument("--config", help="native or LiteLLM config YAML file")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=4000)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--dev", action="store_true", help="local development: accept example and short master keys")
    p.add_argument("--demo", action="store_true", help="run in front of two simulated vLLM replicas (implies --dev)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        return fail("--workers: must be at least 1")
    if args.demo:
        from gateway.demo import run_demo

        use_uvloop()
        return run_demo(args.host, args.port)
    if not args.config:
        return fail("--config FILE is required (or --demo)")
    try:
        loaded = load(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}")
    try:
        _check(loaded.config, args.dev)
    except ConfigError as exc:
        return fail(f"config error: {loaded.explain(exc)}")
    _log_ignored(loaded)  # here, once, before any worker starts
    if args.workers == 1:
        return run_one(args.config, args.host, args.port, args.dev, False)
    return run_workers(run_one, (args.config, args.host, args.port, args.dev, True), args.workers)


def _check(config: GatewayConfig, dev: bool) -> None:
    from gateway.governance.provider_keys import resolve_secrets
    from gateway.http.auth import check_master_key

    config, secrets = resolve_secrets(config)  # a secret needed to start that cannot be read: an error, named
    if secrets is None or not secrets.master_key_unset():
        check_master_key(config.gateway.master_key, dev)


def _log_ignored(loaded: Loaded) -> None:
    """One structured line per LiteLLM setting the gateway ignores (gateway/config/litellm_settings.py)."""
    import orjson

    for item in loaded.ignored:
        line = {"event": "config_setting_ignored", "setting": item.path, "why": item.why, "file": loaded.path,
                "message": item.line()}
        sys.stderr.write(orjson.dumps(line).decode() + "\n")
    sys.stderr.flush()


def run_one(config_path: str, host: str, port: int, dev: bool, reuse_port: bool) -> int:
    """One worker process: load config, build the app, serve."""
    from gateway.http.app import build_app

    use_uvloop()
    try:
        app = build_app(load_config(config_path), dev=dev)
    except ConfigError as exc:
        return fail(f"config error: {exc}")

    async def announce() -> None:
        print(f"llmp gateway listening on http://{host}:{port}", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(app, host, port, reuse_port, announce))
    except OSError as exc:
        return fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return 0
