"""Fixtures: simulated vLLM replicas and a gateway on real sockets, and the official openai client."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from gateway.config.native import GatewayConfig, parse_native
from gateway.http.app import build_app
from gateway.http.state import STATE, AppState
from gateway.sim import SimServer, SimSettings

# Real Redis and PostgreSQL servers, as fixtures for every test here (`x as x`: re-exported, not unused).
from tests.gateway.servers import postgres_server as postgres_server
from tests.gateway.servers import redis_server as redis_server

KEY = "sk-llmp-test-0123456789abcdef0123456789abcdef"  # fake, long enough to pass the start-up check
MODEL = "sim-model"


class RunningGateway:
    def __init__(self, runner: web.AppRunner, app: web.Application, log: io.BytesIO) -> None:
        self.runner = runner
        self.app = app
        self.log_buffer = log
        self.port = runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)  # the gateway retries; the client must see what it answers
        kwargs.setdefault("timeout", 15)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", KEY), **kwargs)

    def calls(self) -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in self.log_buffer.getvalue().splitlines() if line]
        return [line for line in lines if line.get("event") == "call"]

    async def logged_calls(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The call log once it holds `count` calls. A call is logged after its answer is sent, so the
        client can have the last answer before the gateway (on the same loop) has logged it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(calls := self.calls()) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(calls)} of {count} calls logged"
            await asyncio.sleep(0.01)
        return calls


def gateway_config(deployments: list[dict[str, Any]] | None = None, models: list[dict[str, Any]] | None = None,
                   **gateway: Any) -> dict[str, Any]:
    settings = {"master_key": KEY, "retries": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.05},
                "timeouts": {"connect": 1, "first_byte": 2, "idle": 1, "total": 10}}
    settings.update(gateway)
    if models is None:
        models = [{"alias": MODEL, "deployments": deployments or []}]
    return {"version": 1, "gateway": settings, "models": models}


def deployment(name: str, base: str | list[str], **extra: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"name": name, "model": MODEL, **extra}
    if isinstance(base, list):
        dep["replicas"] = {"static": base}
    else:
        dep["api_base"] = base
    return dep


@pytest.fixture
async def sim_factory() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    started: list[SimServer] = []

    async def start(**settings: Any) -> SimServer:
        settings.setdefault("models", (MODEL,))
        server = await SimServer(SimSettings(**settings)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def sim(sim_factory: Callable[..., Awaitable[SimServer]]) -> SimServer:
    return await sim_factory(name="sim-a")


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    started: list[RunningGateway] = []

    async def start(config: dict[str, Any] | GatewayConfig, **kwargs: Any) -> RunningGateway:
        log = io.BytesIO()
        app = build_app(config if isinstance(config, GatewayConfig) else parse_native(config), log_out=log, **kwargs)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        gw = RunningGateway(runner, app, log)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.runner.cleanup()


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Awaitable[RunningGateway]], sim: SimServer) -> RunningGateway:
    return await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)]))


def closed_port_url() -> str:
    """A base URL nothing listens on: connecting to it is refused."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"
