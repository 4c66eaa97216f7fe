"""Running the gateway: the event loop, the listening socket, worker processes and clean shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.http.front_door import Door, FrontDoorSite, handler_settings
from gateway.http.state import STATE

BACKLOG = 2048
UNWIND = 1.0  # seconds a handler cut at the end of the grace gets to account for its call


def use_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # a listed dependency; plain asyncio works, only slower
        pass


async def serve(app: web.Application, host: str, port: int, reuse_port: bool,
                on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain: stop listening, report not ready, give calls in flight
    `gateway.front_door.shutdown_grace` seconds in total to finish, cut the rest, clean up, return."""
    state = app[STATE]
    settings = state.config.gateway.front_door
    # handler_cancellation: a client that hangs up cancels its handler, and with it the upstream call.
    # shutdown_timeout: only bounds how long handlers cut after the grace take to unwind. aiohttp applies it
    # twice (wait for handlers "with timeout", then close what remains "with timeout again": aio-libs/aiohttp
    # PR 7718; web_protocol.RequestHandler.shutdown), so 10 s once cut streams ~20 s after SIGTERM. The grace
    # itself is Door.drain's, applied once.
    # The port first: a port in use (OSError, the caller names it) fails before the app starts anything, so
    # nothing says "started", and no upstream session, spool or background task is left to close.
    sock = listen_socket(host, port, reuse_port)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=UNWIND, **handler_settings(settings))
    try:
        await runner.setup()  # the app's on_startup: upstream session, governance, the "started" event
    except BaseException:
        sock.close()
        raise
    try:
        assert runner.server is not None
        door = Door(runner.server, settings, state.log.event)
        site = FrontDoorSite(runner, door, host, port, backlog=BACKLOG, reuse_port=reuse_port or None, sock=sock)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            await on_ready()
        await stop.wait()
        state.draining = True  # /health/ready answers 503 from now on; /health/live stays 200
        await site.stop()  # no new connections
        state.log.event("draining", grace_s=settings.shutdown_grace, open_connections=len(door.open),
                        in_flight=state.in_flight)
        await door.drain(settings.shutdown_grace)
    finally:
        await runner.cleanup()
        sock.close()


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket on host:port, as asyncio's create_server would make it (SO_REUSEADDR on POSIX, IPv6 only
    for an IPv6 address: Lib/asyncio/base_events.py, create_server), made before the app starts."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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


EXIT_OK, EXIT_USAGE, EXIT_LISTEN = 0, 2, 3  # `llmp gateway --help` says what each means (gateway/cli.py)


def fail(message: str) -> int:
    """A mistake in the command line or the config: one line, exit 2."""
    print(f"llmp gateway: {message}", file=sys.stderr)
    return EXIT_USAGE


def cannot_listen(host: str, port: int, exc: OSError) -> int:
    """The port is in use or may not be bound: one line naming it, exit 3."""
    print(f"llmp gateway: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_LISTEN
