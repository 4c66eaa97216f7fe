"""Running the gateway: the event loop, the listening socket, worker processes and clean shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

BACKLOG = 2048


def use_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # a listed dependency; plain asyncio works, only slower
        pass


async def serve(app: web.Application, host: str, port: int, reuse_port: bool,
                on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; on the way out, finish in-flight calls (aiohttp's graceful shutdown)."""
    # handler_cancellation: a client that hangs up cancels its handler, and with it the upstream call.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=BACKLOG, shutdown_timeout=10)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            await on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()


def run_workers(target: Callable[..., int], args: tuple[object, ...], workers: int) -> int:
    """N processes, each its own event loop, sharing the port through SO_REUSEPORT."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args, name=f"gateway-worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                try:
                    import os

                    os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for proc in procs:
        proc.join()
        code = code or (proc.exitcode or 0)
    return code


def fail(message: str) -> int:
    print(f"llmp gateway: {message}", file=sys.stderr)
    return 2
