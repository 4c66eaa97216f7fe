"""`llmp gateway` / `python -m gateway`: arguments, config errors as one clear line, then serving."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from gateway.config.errors import ConfigError
from gateway.config.loading import Loaded, load, load_config
from gateway.config.native import GatewayConfig
from gateway.exit_codes import EXIT_OK, GATEWAY_EPILOG
from gateway.server import CannotListen, CannotStart, cannot_listen, cannot_start, fail, run_workers, serve, use_uvloop

EPILOG = GATEWAY_EPILOG
LOOPBACK_HOST = "127.0.0.1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmp gateway", description="OpenAI-compatible LLM gateway", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="native or LiteLLM config YAML file")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0, every interface; with --dev or --demo "
                                  "127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=4000, help="TCP port to listen on (default 4000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--dev", action="store_true",
                   help="local development: listen on 127.0.0.1 by default, and accept example and short master "
                        "keys there (beyond this machine, --dev refuses them as production does)")
    p.add_argument("--demo", action="store_true",
                   help="run in front of two simulated vLLM replicas, with virtual keys on (implies --dev); beyond "
                        "this machine (--host 0.0.0.0) only with a master key of your own in LLMP_MASTER_KEY")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers < 1:
        return fail("--workers: must be at least 1")
    if args.demo:
        from gateway.demo import demo_master_key, run_demo

        host = default_host(args)
        try:
            master_key = demo_master_key(host, os.environ.get("LLMP_MASTER_KEY"))
        except ConfigError as exc:
            return fail(str(exc))
        use_uvloop()
        return run_demo(host, args.port, master_key)
    if not args.config:
        return fail("--config FILE is required (or --demo)")
    host = default_host(args)
    try:
        loaded = load(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}")
    try:
        _check(loaded.config, host, args.dev)
    except ConfigError as exc:
        return fail(f"config error: {loaded.explain(exc)}")
    _log_ignored(loaded)  # here, once, before any worker starts
    if args.workers == 1:
        return run_one(args.config, host, args.port, args.dev, False)
    return run_workers(run_one, (args.config, host, args.port, args.dev, True), args.workers)


def default_host(args: argparse.Namespace) -> str:
    """--host, else this machine only for --dev and --demo (whose keys may be published), else every interface."""
    if args.host:
        return str(args.host)
    return LOOPBACK_HOST if args.dev or args.demo else "0.0.0.0"


def _check(config: GatewayConfig, host: str, dev: bool) -> None:
    from gateway.governance.provider_keys import resolve_secrets
    from gateway.http.auth import check_master_key_on

    config, secrets = resolve_secrets(config)  # a secret needed to start that cannot be read: an error, named
    if secrets is None or not secrets.master_key_unset():
        check_master_key_on(host, config.gateway.master_key, dev)


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
    except CannotListen as exc:
        return cannot_listen(host, port, exc)
    except CannotStart as exc:
        return cannot_start(exc)
    return EXIT_OK

