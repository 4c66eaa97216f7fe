"""Reading a client's JSON body within `gateway.front_door`'s bounds: size, time and nesting."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.config.limits import FrontDoor
from gateway.http.errors import GatewayError, bad_request

ORJSON_MAX_DEPTH = 254
# A body may take `request_read` plus this long per byte: a 16 MiB request over a 512 kbit/s uplink still arrives,
# while a client trickling a few bytes a second is cut as before.
MIN_UPLOAD_BYTES_PER_S = 64 * 1024


def too_large(limit: int, size: int | None = None) -> GatewayError:
    said = f"is {size} bytes" if size is not None else "is larger"
    return GatewayError(413, f"The request body {said}, over the gateway's limit: gateway.front_door.body_bytes "
                        f"is {limit}.", "invalid_request_error", "gateway.front_door.body_bytes",
                        "request_too_large", close=True)


async def read_body(http: web.Request, door: FrontDoor) -> bytes:
    """The whole body: refused before reading when Content-Length is over the limit, cut at the limit when
    chunked (aiohttp's client_max_size, set from the same field), and within `request_read` seconds."""
    size = http.content_length
    if size is not None and size > door.body_bytes:
        raise too_large(door.body_bytes, size)
    try:
        if http.content.is_eof():  # the whole body came with the head (most calls): no timer to arm
            return await http.read()
        async with asyncio.timeout(body_deadline(door, size)):
            return await http.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(door.body_bytes) from None
    except TimeoutError:
        raise GatewayError(408, f"The request body did not arrive within {body_deadline(door, size):g}s "
                           f"(gateway.front_door.request_read, plus 1s per {MIN_UPLOAD_BYTES_PER_S} bytes).",
                           "invalid_request_error", None,
                           "request_timeout", close=True) from None
    except (RequestPayloadError, HttpProcessingError) as exc:  # bad chunked framing or content encoding
        raise GatewayError(400, f"The request body could not be read: {exc}"[:300], close=True) from None


def body_deadline(door: FrontDoor, size: int | None) -> float:
    """Seconds a body of `size` bytes (None: chunked, judged at the limit) may take to arrive."""
    return door.request_read + (door.body_bytes if size is None else size) / MIN_UPLOAD_BYTES_PER_S


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (containers only are walked)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


async def read_json(http: web.Request, door: FrontDoor) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object; 400 for anything else, or for nesting deeper than `json_depth`
    (orjson itself refuses to write more than 254 levels, which once made such bodies a 500)."""
    raw = await read_body(http, door)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON (UTF-8, no NaN or Infinity).") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    # orjson writes at most 254 levels (its recursion limit): a deeper body could not be forwarded or hashed,
    # so a json_depth above that is held at it.
    depth = min(door.json_depth, ORJSON_MAX_DEPTH)
    # Cheap first: fewer brackets than the limit cannot nest deeper; only larger bodies are walked.
    if raw.count(b"[") + raw.count(b"{") > depth and nested_deeper(body, depth):
        raise bad_request(f"The request body nests JSON deeper than {depth} levels "
                          f"(gateway.front_door.json_depth).", "gateway.front_door.json_depth")
    return raw, body
