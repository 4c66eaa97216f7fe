"""Bounds on every number governance accepts, stores, or sends to Redis and the ledger: one place, one reason each.

Redis counts in signed 64-bit integers (`HINCRBY`/`INCRBY` answer "value is not an integer or out of range"
past them) and Lua holds every number as a double, exact only up to 2**53; PostgreSQL's `bigint` is signed
64-bit. Each bound below is far under 2**53 even after the products the limiter forms (a lease is at most
1000 calls' worth of a call's reservation), so no arithmetic on bounded inputs can leave the exact range.
"""

from __future__ import annotations

import math

LUA_EXACT = 2**53  # the largest integer every step (Python, Lua doubles, Redis int64, bigint) holds exactly
MAX_TOKENS = 10**9  # a call's max_tokens / max_completion_tokens, and a key's max_tokens cap
MAX_RESERVED_TOKENS = 2 * 10**9  # what one call may reserve: max_tokens plus a prompt of any allowed size
MAX_USAGE_TOKENS = 10**12  # usage one call reports (prompt or completion tokens) as counted and recorded
MAX_LIMIT = 10**12  # rpm_limit, tpm_limit (and per-model ones) of a key or team
MAX_PARALLEL = 10**6  # max_parallel_requests
MAX_BUDGET = 1e12  # USD, max_budget
MAX_COST = 1e12  # USD, what one call may reserve or be charged
MAX_DURATION_SECONDS = 100 * 365 * 86400  # budget_duration and key duration: at most 100 years
MAX_SLOT_LIFE_MS = 30 * 86400 * 1000  # a parallel slot's heartbeat deadline (timeouts.total + 60 s), in Redis
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant a datetime (and ISO 8601) can show
MAX_REQUEST_BYTES = 2**31  # a key's max_request_bytes cap
MAX_TEXT = 256  # ids, aliases, model names and zones, in characters
MAX_LIST = 1000  # entries in a key's or team's list of models, or per-model limits
MAX_METADATA_BYTES = 16384  # metadata, as JSON
# A stored key, team or user document at its largest: up to three lists of MAX_LIST names (a key's models and its
# per-model rpm and tpm limits), each name at most 6 bytes a character as JSON (orjson writes a control character as
# \uXXXX, anything else in at most 4 bytes of UTF-8) plus quotes, separators and a number; metadata; and the
# fixed fields. A record a peer sends may be this large (gateway.governance.peer_wire).
MAX_DOC_BYTES = 3 * MAX_LIST * (6 * MAX_TEXT + 32) + MAX_METADATA_BYTES + 65536

assert MAX_LIMIT < LUA_EXACT and 1000 * (MAX_RESERVED_TOKENS + MAX_USAGE_TOKENS) < LUA_EXACT


def tokens_in_range(value: object) -> int:
    """A token count as counted and recorded: an int in [0, MAX_USAGE_TOKENS] (anything else is 0 or the bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_USAGE_TOKENS)


def cost_in_range(value: object) -> float:
    """A cost as counted and recorded: a finite float in [0, MAX_COST] (NaN, negative or junk: 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(min(value, MAX_COST))
