"""What makes two calls the same for the response cache: the normalised request, its scope, and per-call opt-outs.

Normalised: the request body as canonical JSON (keys sorted at every depth, orjson's OPT_SORT_KEYS) without the
fields that do not change the answer (`IGNORED`), so `messages`, `tools`, `temperature`, `top_p`, `max_tokens`,
`stop`, `seed`, `response_format`, `tool_choice`, `n`, `logprobs` and every other field (known to us or not) are
part of the key. The key is a hash of the scope, the endpoint, the model alias serving the call and that JSON:
the raw API key never appears in it (a key's scope is its stored SHA-256 token, hashed again here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Fields that change how the answer is delivered, who is billed or what is logged, never what the model writes.
# `stream`/`stream_options`: a streamed hit is replayed from the same answer; `user`, `metadata`, `tags`,
# `litellm_metadata`: attribution; `cache`: LiteLLM's per-call controls (below); `store`, `prompt_cache_key`,
# `safety_identifier`: OpenAI's storage, prompt-cache routing and abuse-monitoring hints.
IGNORED = frozenset({"user", "stream", "stream_options", "metadata", "cache", "tags", "litellm_metadata", "store",
                     "prompt_cache_key", "safety_identifier"})
# The endpoints whose answers are cached: one JSON answer, replayable as OpenAI's SSE chunks.
ENDPOINTS = frozenset({"chat", "completions"})
# OpenAI's default temperature (platform.openai.com/docs/api-reference/chat/create, `temperature`: "Defaults to 1"),
# vLLM's too (SamplingParams.temperature = 1.0): a call that names none samples.
DEFAULT_TEMPERATURE = 1.0


def entry_id(scope: str, endpoint: str, group: str, body: Mapping[str, Any]) -> str:
    """The entry's name in the store: a hash of scope, endpoint, the model alias serving the call (a ladder's rung:
    each rung's answers are its own) and the normalised request."""
    canonical = orjson.dumps({k: v for k, v in body.items() if k not in IGNORED}, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(scope.encode("utf-8", "surrogateescape"))
    digest.update(b"\x00" + endpoint.encode() + b"\x00" + group.encode("utf-8", "surrogateescape") + b"\x00")
    digest.update(canonical)
    return digest.hexdigest()


def scope_of(kind: str, key_token: str, team_id: str | None) -> str:
    """`team`: a team's keys share answers; a key with no team (and the master key) is a scope of its own."""
    if kind == "team" and team_id is not None:
        return "t:" + team_id
    return "k:" + (key_token or "master")


def samples(body: Mapping[str, Any]) -> bool:
    """Whether the call samples (temperature > 0, or none given): its answer is one draw among many."""
    t = body.get("temperature", DEFAULT_TEMPERATURE)
    if t is None:
        t = DEFAULT_TEMPERATURE
    return not isinstance(t, (int, float)) or isinstance(t, bool) or t > 0


def opt_out(headers: Mapping[str, str], body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(read, write): whether this call may be answered from the cache, and whether its answer may be stored.

    `Cache-Control: no-cache` (RFC 9111 5.2.1.4: not served from a cache without revalidation) or LiteLLM's body
    `cache: {"no-cache": true}` skips the lookup, and the fresh answer replaces the stored one; `no-store`
    (RFC 9111 5.2.1.5) or `cache: {"no-store": true}` also keeps the answer out of the cache. LiteLLM reads both
    the same way (docs.litellm.ai/docs/proxy/caching_controls; litellm/caching/caching_handler.py: `no-cache`
    skips the read, `no-store` the write)."""
    read = write = True
    # Several Cache-Control lines are one comma-separated list (RFC 9110 5.3): a `no-store` on the second line counts.
    getall = getattr(headers, "getall", None)
    lines = getall("Cache-Control", []) if getall is not None else [headers.get("Cache-Control", "")]
    control = ",".join(lines).lower()
    directives = {part.strip().split("=", 1)[0] for part in control.split(",")} if control else set()
    per_call = body.get("cache")
    if not isinstance(per_call, dict):
        per_call = {}
    if "no-cache" in directives or per_call.get("no-cache") is True:
        read = False
    if "no-store" in directives or per_call.get("no-store") is True:
        read = write = False
    return read, write
