"""Where cached answers live: the region's Redis (shared by replicas) or an in-process LRU (one replica).

Both keep each answer for `ttl_seconds` and the total of answers' bytes under `max_bytes`:

- In process: an LRU over an OrderedDict with a byte total; storing evicts the least recently used entries until
  the total fits. Exact.
- Redis: an entry is a string `llmp:cache:e:<id>` set with PX (Redis expires it itself); beside it, a sorted set
  `llmp:cache:index` of entry ids scored by their expiry time, a hash `llmp:cache:sizes` of their sizes and a
  counter `llmp:cache:bytes` of the total. One Lua script forgets up to 64 expired entries, evicts the soonest to
  expire (the oldest stored, as every entry of a gateway has the same TTL) until the new answer fits under
  `max_bytes`, and stores it; a script runs atomically (redis.io/docs/latest/develop/interactive-programmability/
  eval-intro/), so replicas storing at once never overshoot together. Each entry counts its answer's bytes plus
  `ENTRY_OVERHEAD`, what Redis spends on it besides (the key and its expiry, the index's member, the sizes hash's
  field: about 450-550 bytes, measured with INFO memory on Redis 7.0), so `max_bytes` bounds the memory the cache takes
  in the Redis it shares with the limiter, not only its answers' bytes. While a script runs "all server activities
  are blocked during its entire runtime" (same page), the limiter's calls too, and a script that has written cannot
  be killed (redis.io/docs/latest/commands/script-kill/): one store evicts at most
  `MAX_EVICTIONS` entries, and an answer that would need more to fit is not stored (the evictions stand, so a later
  store finds the room); a `max_bytes` lowered under what is stored is thus reached over several stores, never in one
  long script. Expired entries the script has not yet forgotten still count, which only makes eviction start earlier.
  The script names its keys itself (no KEYS: the entries it evicts are found as it runs), as the limiter's scripts
  do: right for one Redis primary (the stack's ElastiCache replication group, cluster mode off:
  infra/components/gateway_stores.py), not for Redis Cluster, where every key a script touches must be declared
  (same page, "Script parameterization").

A Redis that fails or is slower than `redis.timeout_ms` makes the call bypass the cache (never fail it); after a
failure the store is skipped for `redis.retry_after_ms`, as the limiter does (governance/limits/redis_limiter.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.governance.limits.redis_pipe import RedisPipe, is_outage

PREFIX = "llmp:cache:"


class StoreDown(Exception):
    """The cache store cannot answer now: the call bypasses the cache."""


class AnswerStore(Protocol):
    description: str

    async def get(self, entry: str) -> bytes | None: ...  # raises StoreDown
    async def put(self, entry: str, answer: bytes) -> None: ...  # raises StoreDown
    async def close(self) -> None: ...


class InProcessStore:
    """An LRU with a TTL and a byte cap, in this process only."""

    def __init__(self, ttl_seconds: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0
        self.description = f"in-process (one replica; max_bytes {max_bytes})"

    async def get(self, entry: str) -> bytes | None:
        found = self.entries.get(entry)
        if found is None:
            return None
        if found[0] <= self.clock():
            self._drop(entry)
            return None
        self.entries.move_to_end(entry)
        return found[1]

    async def put(self, entry: str, answer: bytes) -> None:
        if entry in self.entries:
            self._drop(entry)
        self.entries[entry] = (self.clock() + self.ttl, answer)
        self.bytes += len(answer)
        while self.bytes > self.max_bytes and self.entries:
            self._drop(next(iter(self.entries)))

    def _drop(self, entry: str) -> None:
        _, answer = self.entries.pop(entry)
        self.bytes -= len(answer)

    async def close(self) -> None:
        self.entries.clear()
        self.bytes = 0


# What Redis holds for an entry besides its answer's bytes (INFO memory's used_memory per entry stored through
# PUT_LUA, Redis 7.0.15 with jemalloc: 496 bytes with 100-byte answers, 447 with 1,000, 542 with 5,000, about 500
# with 200-byte answers once eviction churns), rounded up for the hash tables' buckets, which grow with the entries.
ENTRY_OVERHEAD = 600
# Evictions one store may make: each is about seven Redis commands, so a store's script stays around a millisecond.
MAX_EVICTIONS = 128
# A refusal of the same kind is logged at most this often (`RedisStore._refused`).
ERROR_LOG_SECONDS = 60.0

# ARGV: prefix, entry id, answer, ttl in ms, max_bytes, overhead per entry, eviction bound.
# Returns {evicted for size, 1 when stored else 0}.
PUT_LUA = """
local prefix, id, answer = ARGV[1], ARGV[2], ARGV[3]
local ttl, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local overhead, bound = tonumber(ARGV[6]), tonumber(ARGV[7])
local index, sizes, total = prefix .. 'index', prefix .. 'sizes', prefix .. 'bytes'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function forget(member)
  local size = redis.call('HGET', sizes, member)
  if size then
    redis.call('DECRBY', total, size)
    redis.call('HDEL', sizes, member)
  end
  redis.call('ZREM', index, member)
  redis.call('DEL', prefix .. 'e:' .. member)
end
forget(id)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 64)) do
  forget(member)
end
local size = string.len(answer) + overhead
local evicted = 0
while tonumber(redis.call('GET', total) or '0') + size > cap do
  if evicted >= bound then
    return {evicted, 0}
  end
  local oldest = redis.call('ZRANGE', index, 0, 0)
  if #oldest == 0 then
    redis.call('SET', total, 0)
    break
  end
  forget(oldest[1])
  evicted = evicted + 1
end
redis.call('SET', prefix .. 'e:' .. id, answer, 'PX', ttl)
redis.call('ZADD', index, now + ttl, id)
redis.call('HSET', sizes, id, size)
redis.call('INCRBY', total, size)
return {evicted, 1}
"""


class RedisStore:
    """Answers in the region's Redis, on a connection of its own (the limiter's URL and timeouts)."""

    def __init__(self, url: str, ttl_seconds: float, max_bytes: int, timeout_ms: float, retry_after_ms: float,
                 on_event: Callable[..., None], prefix: str = PREFIX) -> None:
        self.client = RedisPipe(url)
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.max_bytes = max_bytes
        self.timeout = timeout_ms / 1000
        self.retry_after = retry_after_ms / 1000
        self.prefix = prefix
        self._event = on_event
        self._down_until = 0.0
        self._down = False
        self._said: dict[str, tuple[float, int]] = {}  # refusal kind: (when last logged, refusals not logged since)
        self.evicted = 0
        self.not_stored = 0  # answers that would have needed more than MAX_EVICTIONS evictions to fit
        self.description = f"redis (shared by replicas; max_bytes {max_bytes})"

    async def get(self, entry: str) -> bytes | None:
        found = await self._run(lambda: self.client.call("GET", self.prefix + "e:" + entry))
        return found if isinstance(found, bytes) else None

    async def put(self, entry: str, answer: bytes) -> None:
        args = [self.prefix, entry, answer, self.ttl_ms, self.max_bytes, ENTRY_OVERHEAD, MAX_EVICTIONS]
        reply = await self._run(lambda: self.client.script(PUT_LUA, args))
        if isinstance(reply, list) and len(reply) == 2:
            self.evicted += int(reply[0])
            self.not_stored += 1 - int(reply[1])

    async def _run(self, command: Callable[[], Awaitable[Any]]) -> Any:
        if self._down and time.monotonic() < self._down_until:
            raise StoreDown("redis unavailable (retrying later)")
        try:
            async with asyncio.timeout(self.timeout):
                result = await command()
        except Exception as exc:  # noqa: BLE001 - judged below: an outage bypasses, anything else too, once said
            if not is_outage(exc):
                self._refused(exc)
                raise StoreDown(str(exc)) from None
            self._down_until = time.monotonic() + self.retry_after
            if isinstance(exc, TimeoutError):
                self.client.abort()  # a reply that never came: the next call starts on a fresh connection
            if not self._down:
                self._down = True
                self._event("cache_store_unavailable", error=f"{type(exc).__name__}: {exc}"[:300],
                            effect="calls bypass the response cache")
            raise StoreDown(str(exc)) from None
        if self._down:
            self._down = False
            self._event("cache_store_recovered")
        return result

    def _refused(self, exc: Exception) -> None:
        """A command Redis refused (`-ERR`, `-WRONGTYPE`, `-NOPERM` ...): this call bypasses, the next tries again.
        Such a refusal usually repeats on every call (a key of ours overwritten, an ACL without EVAL): said once per
        kind a minute, with how many were not said, never a log line per call."""
        kind = str(exc).split(" ", 1)[0][:40] or type(exc).__name__
        now = time.monotonic()
        said = self._said.get(kind)
        if said is not None and now - said[0] < ERROR_LOG_SECONDS:
            self._said[kind] = (said[0], said[1] + 1)
            return
        if len(self._said) > 64:  # kinds are Redis's error codes: a handful; never a growing map
            self._said.clear()
        self._said[kind] = (now, 0)
        self._event("cache_store_error", error=f"{type(exc).__name__}: {exc}"[:300],
                    not_logged_since_last=said[1] if said is not None else 0)

    async def close(self) -> None:
        await self.client.close()
