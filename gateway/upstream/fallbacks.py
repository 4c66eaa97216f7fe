"""Which aliases a call falls back to: configured fallbacks, a client's `fallbacks` in the request body, and
context-window fallbacks when the upstream says the prompt is over its context window."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from gateway.http.errors import GatewayError, bad_request
from gateway.observability.usage import CallRecord
from gateway.protocols.request import Request
from gateway.upstream.routing import ModelRoute, Router

# Set by the governance gate on every call it admits (gateway/governance/gate.py MASTER_TOKEN): "" without
# governance, "master" for the master key, a virtual key's hash otherwise.
NOT_A_VIRTUAL_KEY = frozenset({"", "master"})
MAX_BODY_FALLBACKS = 10

# May this call's key use this alias? (the governance layer's answer for a virtual key)
MayCall = Callable[[CallRecord, str], bool]

# How upstreams say "the prompt is over the context window", lower-cased. A 400 in each case:
# - vLLM: "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens ..." (older)
#   or "... However, your request has 9000 input tokens ..." (vllm/entrypoints/openai/serving_engine.py,
#   _validate_input), an OpenAI-shaped error with type BadRequestError;
# - OpenAI: the same sentence, with error.code "context_length_exceeded"
#   (https://platform.openai.com/docs/guides/error-codes);
# - Anthropic: "prompt is too long: 210000 tokens > 200000 maximum" (invalid_request_error);
# - others LiteLLM knows (litellm/litellm_core_utils/exception_mapping_utils.py, 1.106.2,
#   is_context_window_exceeded_error's known substrings).
CONTEXT_WINDOW_PHRASES = (
    "maximum context length is",
    "context_length_exceeded",
    "prompt is too long",
    "exceed context limit",
    "model's maximum context limit",
    "is longer than the model's context length",
    "input tokens exceed the configured limit",
    "`inputs` tokens + `max_new_tokens` must be",
    "exceeds the available context size",
    "exceeds the maximum number of tokens allowed",
)


class ContextWindowExceeded(GatewayError):
    """The upstream refused the prompt as longer than its context window: the client's 400, unless the alias
    has context-window fallbacks."""


def context_window_exceeded(status: int, text: bytes) -> bool:
    """Is this upstream error answer a context-window refusal? (The phrases above, or OpenAI's error code.)"""
    if status not in (400, 413, 422):
        return False
    lowered = text[:16384].decode(errors="replace").lower()
    if "string_above_max_length" in lowered:  # a too-long `user` field, not the prompt (LiteLLM's exclusion)
        return False
    if any(phrase in lowered for phrase in CONTEXT_WINDOW_PHRASES):
        return True
    try:
        error = orjson.loads(text).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == "context_length_exceeded"


def fallback_names(request: Request, route: ModelRoute, record: CallRecord, may_call: MayCall | None) -> list[str]:
    """The aliases to try after `route`: the request body's `fallbacks` when given (they replace the configured
    ones for this call, as LiteLLM's `kwargs.get("fallbacks", self.fallbacks)`), else the model's."""
    given = request.body.get("fallbacks")
    if given is None:
        return route.fallbacks
    if not isinstance(given, list) or not all(isinstance(n, str) and n for n in given):
        raise bad_request("`fallbacks` must be a list of model names.", "fallbacks")
    if len(given) > MAX_BODY_FALLBACKS:
        raise bad_request(f"`fallbacks` lists {len(given)} models; at most {MAX_BODY_FALLBACKS} are tried.",
                          "fallbacks")
    if record.key_token not in NOT_A_VIRTUAL_KEY:
        for name in given:
            if may_call is None or not may_call(record, name):
                raise GatewayError(403, f"`fallbacks`: this key may not call model `{name}`.",
                                   "invalid_request_error", "fallbacks", "model_not_allowed")
    return list(dict.fromkeys(n for n in given if n != request.alias))


def fallback_routes(router: Router, names: list[str]) -> list[ModelRoute]:
    """Routes for fallback names (aliases, model_aliases names, wildcard matches); unknown names are skipped,
    as LiteLLM skips a fallback group it cannot find."""
    return [r for r in (router.route(n) for n in names) if r is not None]


def after_context_window(router: Router, route: ModelRoute, configured: list[str]) -> list[ModelRoute] | None:
    """What LiteLLM tries after a context-window error on `route` (litellm/router.py,
    async_function_with_fallbacks, 1.106.2): the alias's context_window_fallbacks; none at all when any other alias
    has some (the error goes back to the client); else the ordinary fallbacks. None: answer the error."""
    if route.context_window_fallbacks:
        return fallback_routes(router, route.context_window_fallbacks)
    if router.context_window_configured:
        return None
    return fallback_routes(router, configured) or None
