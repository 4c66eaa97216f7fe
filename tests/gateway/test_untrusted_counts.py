"""Counts and replies the gateway cannot trust: usage that says nothing, Redis refusing every write, slow uploads."""

from __future__ import annotations

import orjson
import pytest

from gateway.config.limits import FrontDoor
from gateway.config.native import parse_native
from gateway.governance.limits.redis_pipe import RedisReplyError, is_outage
from gateway.http.body import body_deadline
from gateway.protocols.answers import read_answer
from gateway.upstream.routing import DeploymentPool

CONFIG = parse_native({"models": [{"alias": "m", "deployments": [
    {"name": "d", "model": "m", "api_base": "http://127.0.0.1:9/v1"}]}]})
POOL = DeploymentPool(CONFIG.models[0].deployments[0], CONFIG)
TEXT = "x" * 4000


def _answer(usage: object) -> bytes:
    doc: dict[str, object] = {"choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}}]}
    if usage is not None:
        doc["usage"] = usage
    return orjson.dumps(doc)


@pytest.mark.parametrize("usage", [None, {}, {"prompt_tokens": 12}, {"completion_tokens": 5}],
                         ids=["absent", "empty", "no-completion", "no-prompt"])
def test_a_whole_answer_whose_usage_says_nothing_is_charged_its_estimate_never_zero(usage: object) -> None:
    _, prompt, completion = read_answer(POOL, _answer(usage), "m", prompt_estimate=500)
    assert (prompt, completion) == (500, 1000)  # the prompt's estimate, 4000 characters at 4 a token


def test_a_whole_answer_with_both_counts_is_charged_what_it_says() -> None:
    _, prompt, completion = read_answer(POOL, _answer({"prompt_tokens": 7, "completion_tokens": 0}), "m",
                                        prompt_estimate=500)
    assert (prompt, completion) == (7, 0)


@pytest.mark.parametrize("reply", ["OOM command not allowed when used memory > 'maxmemory'.",
                                   "NOREPLICAS Not enough good replicas to write."])
def test_a_redis_that_refuses_every_write_is_an_outage_not_one_calls_error(reply: str) -> None:
    assert is_outage(RedisReplyError(reply))


def test_a_script_error_is_still_one_calls_error() -> None:
    assert not is_outage(RedisReplyError("ERR value is not an integer or out of range"))


def test_a_large_body_over_a_slow_uplink_gets_time_in_proportion_to_its_size() -> None:
    door = FrontDoor(request_read=30, body_bytes=16 * 2**20)
    assert body_deadline(door, 200) == pytest.approx(30, abs=0.01)  # a chat call: the head's window, as before
    assert body_deadline(door, 16 * 2**20) == pytest.approx(30 + 256)  # 16 MiB at 512 kbit/s
    assert body_deadline(door, None) == body_deadline(door, door.body_bytes)  # chunked: judged at the limit
