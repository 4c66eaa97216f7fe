"""A raw TCP upstream that answers each request with scripted bytes: framing, encoding and stream faults on demand."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

# Script steps: bytes are written, a float sleeps that long, CLOSE closes the connection, HANG waits for good.
CLOSE = "close"
HANG = "hang"
Step = bytes | float | str
Script = Callable[[bytes], list[Step]]  # the request (head and body) -> what to send back


class FaultyUpstream:
    """Reads HTTP/1.1 requests (Content-Length bodies) and answers each with `script(request)`, byte for byte."""

    def __init__(self, script: Script | list[Step]) -> None:
        self.script = script if callable(script) else (lambda _request, steps=script: list(steps))
        self.requests: list[bytes] = []
        self.connections = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> FaultyUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        self.server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                for step in self.script(request):
                    if isinstance(step, bytes):
                        writer.write(step)
                        await writer.drain()
                    elif isinstance(step, float):
                        await asyncio.sleep(step)
                    elif step == HANG:
                        await asyncio.sleep(3600)
                    else:
                        writer.close()
                        return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


def chat_answer(text: str = "hello from a raw upstream", usage: Any = None) -> bytes:
    body: dict[str, Any] = {"id": "raw-1", "object": "chat.completion", "created": 0, "model": "sim-model",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}]}
    body["usage"] = usage if usage is not None else {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    return json.dumps(body).encode()  # json: orjson refuses integers over 64 bits


def http(body: bytes, status: bytes = b"200 OK", headers: bytes = b"Content-Type: application/json\r\n",
         length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return b"HTTP/1.1 " + status + b"\r\n" + headers + b"Content-Length: " + str(size).encode() + b"\r\n\r\n" + body


def chunked(*pieces: bytes, sizes: list[bytes] | None = None) -> bytes:
    """A chunked 200 whose chunk-size lines are `sizes` (hex of each piece's length unless given)."""
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i, piece in enumerate(pieces):
        size = sizes[i] if sizes is not None else f"{len(piece):x}".encode()
        out += size + b"\r\n" + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def gzip_bomb(inflated: int) -> bytes:
    """`inflated` zero bytes, gzip-compressed (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    out = [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join(out) + packer.flush()


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body)


def sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse_chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}".encode() + b"\r\n" + payload + b"\r\n"


def delta(text: str) -> bytes:
    obj = {"id": "raw-s", "object": "chat.completion.chunk", "created": 0, "model": "sim-model",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def usage_event(usage: Any) -> bytes:
    obj = {"id": "raw-s", "object": "chat.completion.chunk", "created": 0, "model": "sim-model", "choices": [],
           "usage": usage}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream(*events: bytes, done: bool = True, end: bool = True) -> list[Step]:
    """An SSE answer: each event in a chunk of its own, then `[DONE]` and the last chunk unless told otherwise."""
    steps: list[Step] = [sse_head()]
    steps += [sse_chunk(e) for e in events]
    if done:
        steps.append(sse_chunk(b"data: [DONE]\n\n"))
    if end:
        steps.append(b"0\r\n\r\n")
    return steps
