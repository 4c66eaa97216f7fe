"""What the simulator answers on OpenAI's image and moderation endpoints (pass-through endpoints of the gateway).

`sim` is the gateway.sim.server.Simulator answering (typed Any: server.py imports this module).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.sim.answers import count_tokens


async def images(sim: Any, request: web.Request) -> web.StreamResponse:
    """OpenAI's image answer as gpt-image-1 sends it: base64 images and token usage
    (https://platform.openai.com/docs/api-reference/images/object); for a `dall-e-*` model, without usage, as
    dall-e-2 and dall-e-3 answer (the object's `usage` is "For gpt-image-1 only")."""
    body = await sim._begin(request)
    early: web.StreamResponse | None = await sim._early_fault(sim._take_fault())
    if early is not None:
        return early
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    prompt = count_tokens(body.get("prompt"))
    usage = {"input_tokens": prompt, "output_tokens": 272 * n, "total_tokens": prompt + 272 * n,
             "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0}}
    answer: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": "iVBORw0KGgo="}] * n}
    if not str(body.get("model", "")).startswith("dall-e"):
        answer["usage"] = usage
    payload = orjson.dumps(answer)
    sim.stats.completed += 1
    return web.Response(body=payload, content_type="application/json", headers=sim._headers())


async def moderations(sim: Any, request: web.Request) -> web.StreamResponse:
    """OpenAI's moderation object (https://platform.openai.com/docs/api-reference/moderations/object)."""
    body = await sim._begin(request)
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    results = [{"flagged": False, "categories": {"violence": False}, "category_scores": {"violence": 0.0001}}
               for _ in items]
    payload = orjson.dumps({"id": sim._ident("modr"), "model": body["model"], "results": results})
    sim.stats.completed += 1
    return web.Response(body=payload, content_type="application/json", headers=sim._headers())
