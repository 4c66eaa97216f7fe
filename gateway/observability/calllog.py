"""The one structured JSON log line written per call."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, BinaryIO

import orjson

from gateway.observability.usage import CallRecord


def _clean(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (lone surrogates escaped) and anything else as text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean(repr(value))


def safe_dumps(value: Any, option: int = 0) -> bytes:
    """orjson's bytes, which never raise on content: client text can hold lone surrogates (aiohttp decodes
    header bytes that are not UTF-8 that way), which orjson refuses; such values are escaped instead."""
    try:
        return orjson.dumps(value, option=option)
    except (TypeError, orjson.JSONEncodeError):  # rare: only on odd content, so the common line costs nothing
        return orjson.dumps(_clean(value), option=option)


class CallLog:
    """Writes `CallRecord`s as JSON lines; flushed about once a second instead of per call."""

    def __init__(self, out: BinaryIO | None = None, flush_every: float = 1.0) -> None:
        self._out = out if out is not None else sys.stdout.buffer
        self._flush_every = flush_every
        self._task: asyncio.Task[None] | None = None

    def write(self, call: CallRecord) -> None:
        line = {
            "ts": round(time.time(), 3),
            "event": "call",
            "request_id": call.request_id,
            "key_id": call.key_id,
            "endpoint": call.endpoint,
            "model": call.alias,
            "deployment": call.deployment,
            "replica": call.replica,
            "region": call.region,
            "status": call.status,
            "stream": call.stream,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "latency_ms": round(call.latency_ms, 3),
            "ttft_ms": None if call.ttft_ms is None else round(call.ttft_ms, 3),
            "overhead_ms": round(call.overhead_ms, 3),
            "attempts": call.attempts,
            "prompt_hash": call.prompt_hash,
        }
        if call.error:
            line["error"] = call.error
        if call.fallbacks:
            line["fallbacks"] = call.fallbacks
        if call.route:
            line["route"] = call.route
        # Never raises on a field's content: the call's usage accounting runs after this line.
        self._out.write(safe_dumps(line, orjson.OPT_APPEND_NEWLINE))

    def event(self, name: str, **fields: object) -> None:
        """A non-call event (start-up, circuit changes, discovery), same JSON-lines stream."""
        self._out.write(safe_dumps({"ts": round(time.time(), 3), "event": name, **fields}, orjson.OPT_APPEND_NEWLINE))
        self.flush()

    def flush(self) -> None:
        try:
            self._out.flush()
        except (ValueError, OSError):  # closed at shutdown
            pass

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            self.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
