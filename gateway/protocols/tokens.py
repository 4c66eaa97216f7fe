"""Token counts read off what an upstream sends: bounded at the wire, estimated when unknown."""

from __future__ import annotations

import math
from typing import Any

# No call uses a billion tokens: a larger count (2**64, say) is a broken or hostile upstream, not usage.
MAX_TOKENS = 10**9


def token_count(value: Any) -> int | None:
    """A usage count as the gateway accepts it: a non-negative integer below MAX_TOKENS; else None (unknown).
    A missing count (None) is 0, as upstreams leave out what they did not use."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS:
        return None
    return value


def bounded_tokens(value: Any) -> int:
    """A usage count, or 0 when it cannot be trusted (the call is then charged its estimate: see the relay)."""
    return token_count(value) or 0


def usage_pair(usage: Any, prompt_key: str, completion_key: str) -> tuple[int, int] | None:
    """(prompt, completion) from an upstream `usage` object; None when it is not one the gateway can trust."""
    if not isinstance(usage, dict) or prompt_key not in usage or completion_key not in usage:
        return None  # `usage: {}` says nothing: the call is charged its estimate, never 0
    prompt = token_count(usage.get(prompt_key))
    completion = token_count(usage.get(completion_key))
    if prompt is None or completion is None:
        return None
    return prompt, completion


def estimate_tokens(chars: int) -> int:
    """Tokens in `chars` characters of text (or bytes of a JSON body) when no usage says: about 4 per token,
    OpenAI's rule of thumb, and the limiter's reservation rule (governance.limits.scopes.reserve_tokens)."""
    return math.ceil(chars / 4) if chars > 0 else 0
