"""A 120 MB upload and its download pass through the gateway on disk, never held whole in its memory: the gateway
process's peak resident memory (VmHWM) grows by far less than the file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from gateway.sim import SimServer
from tests.gateway.servers import GatewayProcess
from tests.gateway.test_batch import batch_config, client

SIZE = 120 * 1024 * 1024


def peak_rss(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _upload_and_download(gw: GatewayProcess, source: Path) -> tuple[int, int]:
    assert gw.proc is not None
    oai = client(gw)
    before = peak_rss(gw.proc.pid)
    with open(source, "rb") as f:
        uploaded = oai.files.create(file=("big.jsonl", f), purpose="batch")
    assert uploaded.bytes == SIZE
    with oai.files.with_streaming_response.content(uploaded.id) as answer:
        got = sum(len(chunk) for chunk in answer.iter_bytes(1 << 20))
    assert got == SIZE
    return before, peak_rss(gw.proc.pid)


async def test_a_large_upload_and_its_download_are_streamed_through_disk(sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    row = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}'.ljust(1023) + b"\n"
    await asyncio.to_thread(source.write_bytes, row * 1024 * (SIZE // (1 << 20)))
    gw = GatewayProcess(batch_config(sim, tmp_path), tmp_path).start()
    try:
        before, after = await asyncio.to_thread(_upload_and_download, gw, source)
        assert after - before < SIZE // 3, f"the gateway's peak memory grew by {(after - before) >> 20} MB"
    finally:
        gw.kill(signal.SIGTERM)
