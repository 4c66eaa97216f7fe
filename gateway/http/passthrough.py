"""OpenAI endpoints beyond chat and embeddings, passed through to OpenAI-compatible upstreams: images, moderations.

They go through the same path as chat (http/handlers.py `_call`): the key and its allowed models, limits and
budgets (governance/gate.py), routing, retries and fallbacks, the spend ledger. LiteLLM proxies the same
routes (litellm/proxy/image_endpoints/endpoints.py@v1.106.2 `/v1/images/generations`,
proxy_server.py@v1.106.2 `/v1/moderations`), and so with the same paths without `/v1`.

Spend: from the upstream's usage when it reports one (gpt-image-1 answers `usage.input_tokens` /
`output_tokens`, read by protocols/answers.py), priced per token as every other call; else (dall-e-2/3 report
none) each image in `data` at the model's `output_cost_per_image` (LiteLLM's name and rule,
litellm/llms/recraft/cost_calculator.py@v1.106.2), plus the request's size as prompt tokens. A key, team or user
with a budget is refused images from a model without a per-image price (governance/gate.py `_images`): such
images could not be charged, and the budget would not bind.

The audio endpoints are refused with a 501 that says so: `/v1/audio/transcriptions` takes a multipart
upload, and both are priced per second or per character in LiteLLM (`input_cost_per_second` for whisper-1,
`input_cost_per_character` for tts-1 in model_prices_and_context_window.json@v1.106.2), which this gateway's
metering does not do yet: answering them unmetered would let a key with a budget spend without limit.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.errors import GatewayError, bad_request

# Endpoint name (routing.PATHS) -> the body field it requires.
REQUIRED = {"images": "prompt", "moderations": "input"}
AUDIO = ("/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations",
         "/audio/speech", "/audio/transcriptions", "/audio/translations")


def check_body(endpoint: str, body: dict[str, Any]) -> None:
    """The fields the gateway relies on for a pass-through endpoint; the upstream judges the rest."""
    field = REQUIRED[endpoint]
    if field not in body:
        raise bad_request(f"`{field}` is required.", field)
    if body.get("stream") is not None and body.get("stream") is not False:
        raise bad_request(f"`stream` is not supported on the {endpoint} endpoint by this gateway "
                          "(partial images are not relayed): leave it out or set it to false.", "stream")


async def audio_refused(http: web.Request) -> web.Response:
    error = GatewayError(501, f"{http.path[:100]} is not offered by this gateway yet: audio is priced per second or "
                         "per character, which its metering does not do, and calls it cannot meter are refused "
                         "rather than left unbudgeted.", "invalid_request_error", None, "endpoint_not_supported")
    return error.response()


def audio_routes() -> list[web.RouteDef]:
    return [web.post(path, audio_refused) for path in AUDIO]
