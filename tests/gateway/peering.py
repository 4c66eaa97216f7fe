"""What the peer tests share: the stack's peer key, a gateway started in-process on a chosen port, and waiting for
pulls with a deadline (a puller that stopped fails the test instead of hanging it)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

from aiohttp import web

from gateway.config.native import parse_native
from gateway.governance.peers import PeerSync
from gateway.http.app import build_app
from tests.gateway.conftest import RunningGateway

PEER_KEY = "peer-key-for-tests-0123456789abcdef0123456789"


async def start_gateway(doc: dict[str, Any], port: int = 0) -> RunningGateway:
    log = io.BytesIO()
    app = build_app(parse_native(doc), log_out=log)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningGateway(runner, app, log)


def peers_of(gw: RunningGateway) -> PeerSync:
    peers = gw.state.governance.peers
    assert peers is not None
    return peers  # type: ignore[no-any-return]


async def wait_for_pulls(*pullers: PeerSync, count: int = 2, deadline: float = 30.0) -> None:
    """Until each puller has completed `count` more rounds: a change made before this call has then been pulled by
    a round that started after it (the first may have been under way already)."""
    targets = [(p, p.pulls + count) for p in pullers]
    until = time.monotonic() + deadline
    while any(p.pulls < target for p, target in targets):
        assert time.monotonic() < until, "peers stopped pulling"
        await asyncio.sleep(0.01)
