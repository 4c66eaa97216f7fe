"""Running the gateway: the event loop, the listening socket, worker processes and clean shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.exit_codes import EXIT_LISTEN, EXIT_START, EXIT_USAGE
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
    # The port first: a port in use (CannotListen, the caller names it) fails before the app starts anything, so
    # nothing says "started", and no upstream session, spool or background task is left to close. The sockets
    # listen from here, so a connection made while the app starts waits in the backlog until the sites serve it.
    socks = listen_socket(host, port, reuse_port)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=UNWIND, **handler_settings(settings))
    try:
        # The app's start: upstream session, governance, the "started" event. If it fails half way, the app stops
        # what it started (gateway/http/app.py, _lifetime) and runner.cleanup() below is harmless.
        try:
            await runner.setup()
        except Exception as exc:  # named by the CLI as a start-up failure, not a traceback
            raise CannotStart(exc) from exc
        assert runner.server is not None
        door = Door(runner.server, settings, state.log.event)
        sites = [FrontDoorSite(runner, door, host, port, backlog=BACKLOG, reuse_port=reuse_port or None, sock=sock)
                 for sock in socks]
        for site in sites:
            await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_ready is not None:
            await on_ready()
        await stop.wait()
        state.draining = True  # /health/ready answers 503 from now on; /health/live stays 200
        state.grace_ends = time.monotonic() + settings.shutdown_grace
        for site in sites:
            await site.stop()  # no new connections
        state.log.event("draining", grace_s=settings.shutdown_grace, open_connections=len(door.open),
                        in_flight=state.in_flight)
        await door.drain(settings.shutdown_grace)
    finally:
        await runner.cleanup()
        for sock in socks:
            sock.close()


class CannotListen(OSError):
    """The port is in use, or binding it is not permitted: the only OSError the CLI reports as "cannot listen"."""


class CannotStart(Exception):
    """Something the app's on_startup needs failed (the cause is `__cause__`); what had started is stopped."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def listen_socket(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Sockets bound to host:port, one per address it resolves to, as asyncio's create_server makes them
    (Lib/asyncio/base_events.py@v3.12.0, create_server: every getaddrinfo result, de-duplicated, SO_REUSEADDR on
    POSIX, IPV6_V6ONLY on each IPv6 socket so the IPv4 and IPv6 sockets of "localhost" do not collide), made before
    the app starts: a port in use fails here, before anything starts. They listen only once the app has started
    (the event loop's create_server(sock=...) calls listen: base_events.Server._start_serving), so a client or a
    probe connecting earlier is refused, never accepted by a gateway that has not replayed its spool yet."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: a --host that does not resolve
        raise CannotListen(exc.errno, exc.strerror or str(exc)) from exc
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # getaddrinfo may repeat itself
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise CannotListen(exc.errno, exc.strerror or str(exc)) from exc
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


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


def fail(message: str) -> int:
    """A mistake in the command line or the config: one line, exit 2."""
    print(f"llmp gateway: {message}", file=sys.stderr)
    return EXIT_USAGE


def cannot_listen(host: str, port: int, exc: OSError) -> int:
    """The port is in use or may not be bound: one line naming it, exit 3."""
    print(f"llmp gateway: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_LISTEN


def cannot_start(failure: CannotStart) -> int:
    """Something the app needs at start-up failed (a spool directory it cannot create, a store it cannot open):
    one line naming it, exit 4. The port was free; what started has been stopped."""
    exc = failure.cause
    if isinstance(exc, OSError) and exc.filename is not None:
        what = f"{exc.strerror or exc}: {exc.filename}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    print(f"llmp gateway: cannot start: {what}", file=sys.stderr)
    return EXIT_START
