"""The limiter's Redis connection: commands and scripts reach Redis in the order they were called."""

from __future__ import annotations

import asyncio

import redis

from gateway.governance.limits.redis_pipe import RedisPipe
from tests.gateway.servers import RedisServer

PUSH_A = "redis.call('RPUSH', 'order', 'a:' .. ARGV[1]) return 1"
PUSH_B = "redis.call('RPUSH', 'order', 'b:' .. ARGV[1]) return 1"


async def test_a_script_used_for_the_first_time_runs_in_call_order(redis_server: RedisServer) -> None:
    pipe = RedisPipe(redis_server.url)
    await pipe.script(PUSH_B, ["0"])  # B is known; A is not yet
    # A must not be overtaken by B while A's first use loads it: a flush's absolute slot count overtaken by a
    # lease it did not see would erase that lease's slots.
    await asyncio.gather(pipe.script(PUSH_A, ["1"]), pipe.script(PUSH_B, ["2"]), pipe.script(PUSH_A, ["3"]))
    assert redis.Redis(port=redis_server.port).lrange("order", 0, -1) == [b"b:0", b"a:1", b"b:2", b"a:3"]
    await pipe.close()


async def test_calls_made_while_connecting_keep_their_order(redis_server: RedisServer) -> None:
    pipe = RedisPipe(redis_server.url)
    await asyncio.gather(*(pipe.call("RPUSH", "order", i) for i in range(20)))
    assert redis.Redis(port=redis_server.port).lrange("order", 0, -1) == [str(i).encode() for i in range(20)]
    await pipe.close()


async def test_a_script_redis_forgot_is_sent_again(redis_server: RedisServer) -> None:
    pipe = RedisPipe(redis_server.url)
    await pipe.script(PUSH_A, ["1"])
    redis.Redis(port=redis_server.port).script_flush()
    await pipe.script(PUSH_A, ["2"])
    assert redis.Redis(port=redis_server.port).lrange("order", 0, -1) == [b"a:1", b"a:2"]
    await pipe.close()
