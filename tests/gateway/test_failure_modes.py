"""Each upstream failure mode ends in a fallback answer or a clean error, never a hung connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from gateway.upstream.retry import retry_after_seconds
from tests.gateway.conftest import KEY, MODEL, closed_port_url, deployment, gateway_config

MESSAGES = [{"role": "user", "content": "hello"}]


async def two_replicas(sim_factory, gateway_factory, fault: str, **gateway):
    bad = await sim_factory(name="bad", fault=fault)
    good = await sim_factory(name="good")
    # least-busy with the bad replica listed first: ties are broken at random, so pin the order.
    # A non-streamed answer has until `total` (model servers send nothing before it is whole): keep it short here.
    gateway.setdefault("timeouts", {"connect": 1, "first_byte": 1, "idle": 1, "total": 2.5})
    config = gateway_config([deployment("bad", bad.base_url, region="r1"),
                             deployment("good", good.base_url, region="r2")], region="r1", **gateway)
    return bad, good, await gateway_factory(config)


@pytest.mark.parametrize(
    "fault, stream",
    [
        ("error_500", False), ("error_500", True),
        ("hang_before_headers", False), ("hang_before_headers", True),
        ("malformed_json", False), ("malformed_json", True),  # streaming: the first chunk is broken
        ("truncate_stream", False),  # half the JSON body, then the connection drops
        ("hang_mid_stream", False),  # half the JSON body, then silence
    ],
)
async def test_failing_replica_falls_back_to_a_healthy_one(sim_factory, gateway_factory, fault, stream) -> None:
    bad, good, gw = await two_replicas(sim_factory, gateway_factory, fault)
    started = time.monotonic()
    client = gw.client()
    if stream:
        chunks = [c async for c in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        text = reply.choices[0].message.content
    assert "gateway" in text
    assert bad.stats.requests == 1 and good.stats.requests == 1
    assert time.monotonic() - started < 5
    [call] = gw.calls()
    assert call["deployment"] == "good" and call["attempts"] == 2


async def test_refused_connection_falls_back(sim_factory, gateway_factory) -> None:
    good = await sim_factory(name="good")
    gw = await gateway_factory(gateway_config([deployment("gone", closed_port_url(), region="r1"),
                                               deployment("good", good.base_url, region="r2")], region="r1"))
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content
    assert "connect_error" in (await metrics(gw))


async def test_429_retry_after_is_honoured_on_the_same_replica(sim_factory, gateway_factory) -> None:
    only = await sim_factory(name="only", fault="rate_limit_429", fault_count=1, retry_after=0.3)
    gw = await gateway_factory(gateway_config([deployment("only", only.base_url)]))
    started = time.monotonic()
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content
    assert time.monotonic() - started >= 0.3, "waited for Retry-After before trying again"
    assert only.stats.requests == 2


async def test_retry_after_beyond_the_limit_is_not_waited_for(sim_factory, gateway_factory) -> None:
    only = await sim_factory(name="only", fault="rate_limit_429", retry_after=60)
    gw = await gateway_factory(gateway_config([deployment("only", only.base_url)]))
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as err:  # the upstream's 429 reaches the client, as with LiteLLM
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert err.value.status_code == 429 and "http_429" in err.value.message
    assert "retry-after" not in err.value.response.headers, "the upstream's 60 s is not the client's to wait"
    assert time.monotonic() - started < 2 and only.stats.requests == 1


async def test_everything_failing_is_answered_with_the_last_failure_status_and_every_reason(
        sim_factory, gateway_factory) -> None:
    """LiteLLM answers the status of the last exception once retries are exhausted (upstream/outcomes.py)."""
    a = await sim_factory(name="a", fault="error_500")
    gw = await gateway_factory(gateway_config([deployment("a", a.base_url), deployment("gone", closed_port_url())]))
    with pytest.raises(openai.InternalServerError) as err:
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    last = err.value.message.rsplit("; ", 1)[-1]
    assert err.value.status_code == 500 and err.value.body["type"] == "internal_server_error", last
    assert "No upstream could answer for model `sim-model`" in err.value.message
    assert "http_500" in err.value.message and "connect_error" in err.value.message


@pytest.mark.parametrize("fault", ["hang_mid_stream", "truncate_stream"])
async def test_failure_mid_stream_ends_with_an_error_event(sim, gateway, fault) -> None:
    sim.settings.fault = fault
    started = time.monotonic()
    stream = await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        async for chunk in stream:
            received.append(chunk)
    assert received, "the first chunks reached the client before the failure"
    assert "upstream" in str(err.value.message)
    assert time.monotonic() - started < 4, "idle timeout (1 s) ends a stalled stream"
    [call] = gateway.calls()
    assert call["status"] == 502 and call["error"]


async def test_upstream_400_is_passed_to_the_client_without_retry(sim, gateway) -> None:
    with pytest.raises(openai.BadRequestError):
        await gateway.client().chat.completions.create(model="unknown", messages=MESSAGES)
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                             data=b'{"model":"sim-model","messages":[{"role":"user","content":"x"}],"stream":"yes"}'
                             ) as resp:
            assert resp.status == 400
    assert sim.stats.requests == 0


async def test_circuit_opens_after_repeated_failures_and_half_opens_after_cooldown(sim_factory, gateway_factory):
    bad = await sim_factory(name="bad", fault="error_500")
    good = await sim_factory(name="good")
    config = gateway_config([deployment("bad", bad.base_url, region="r1"),
                             deployment("good", good.base_url, region="r2")], region="r1",
                            circuit_breaker={"failures": 2, "cooldown": 0.5})
    gw = await gateway_factory(config)
    client = gw.client()
    for _ in range(5):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert bad.stats.requests == 2, "after 2 failures the circuit is open and the replica is skipped"
    assert 'llmp_gateway_circuit_state{deployment="bad"' in await metrics(gw)
    bad.settings.fault = "none"
    await asyncio.sleep(0.6)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert bad.stats.requests == 3, "half-open: one trial call"
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert bad.stats.requests == 4, "the trial succeeded: closed again, local region preferred"


async def hang_up_mid_stream(gw: Any, sim: Any) -> None:
    """Start a slow stream, hang up after its first line, and wait until the simulator saw the cancellation."""
    sim.settings.tokens_per_s = 20
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                               json={"model": MODEL, "messages": MESSAGES, "stream": True})
        await resp.content.readline()
        resp.close()
    for _ in range(50):
        if sim.stats.cancelled:
            break
        await asyncio.sleep(0.05)


async def test_client_disconnect_cancels_the_upstream_request(sim, gateway) -> None:
    sim.settings.output_tokens = 200
    await hang_up_mid_stream(gateway, sim)
    assert sim.stats.cancelled == 1 and sim.stats.in_flight == 0
    assert gateway.state.router.pools[0].in_flight == 0


async def test_client_disconnect_while_waiting_for_the_first_byte_cancels_upstream(sim, gateway) -> None:
    sim.settings.ttft = 5
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(http.post(gateway.url + "/v1/chat/completions",
                                               headers={"Authorization": f"Bearer {KEY}"},
                                               json={"model": MODEL, "messages": MESSAGES}))
        await asyncio.sleep(0.3)
        task.cancel()
    for _ in range(50):
        if sim.stats.cancelled:
            break
        await asyncio.sleep(0.05)
    assert sim.stats.cancelled == 1


async def metrics(gw) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as resp:
            return await resp.text()


async def test_a_replica_that_sent_retry_after_is_skipped_by_the_next_calls(sim_factory, gateway_factory) -> None:
    busy = await sim_factory(name="busy", fault="rate_limit_429", retry_after=2)
    spare = await sim_factory(name="spare")
    gw = await gateway_factory(gateway_config([deployment("busy", busy.base_url, region="r1"),
                                               deployment("spare", spare.base_url, region="r2")], region="r1"))
    client = gw.client()
    for _ in range(3):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert busy.stats.requests == 1 and spare.stats.requests == 3, "cooling for 2 s after its Retry-After"


async def test_a_client_hanging_up_does_not_count_against_the_replica(sim, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)],
                                              circuit_breaker={"failures": 1, "cooldown": 30}))
    sim.settings.output_tokens = 100
    await hang_up_mid_stream(gw, sim)
    replica = gw.state.router.pools[0].replicas[0]
    assert replica.breaker.state == "closed" and replica.in_flight == 0
    sim.settings.tokens_per_s = 0
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content


async def test_many_clients_hanging_up_mid_stream_leave_the_circuit_closed(sim, gateway_factory) -> None:
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)],
                                              circuit_breaker={"failures": 2, "cooldown": 30}))
    sim.settings.output_tokens = 400  # a fast stream: hang-ups are often noticed while writing to the client
    async with aiohttp.ClientSession() as http:
        for _ in range(30):
            resp = await http.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                   json={"model": MODEL, "messages": MESSAGES, "stream": True})
            await resp.content.readline()
            resp.close()
    await asyncio.sleep(0.2)
    replica = gw.state.router.pools[0].replicas[0]
    assert replica.breaker.state == "closed" and replica.in_flight == 0
    assert all(call["status"] in (200, 499) for call in gw.calls())


async def test_a_non_streamed_answer_slower_than_first_byte_arrives_within_total(sim, gateway_factory) -> None:
    # Model servers send a non-streamed answer only once it is whole: `first_byte` cannot apply to it
    # (LiteLLM's `timeout`, mapped to `total`, would otherwise be cut at first_byte's 60 s default).
    sim.settings.ttft = 1.0
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)],
                                              timeouts={"connect": 1, "first_byte": 0.3, "idle": 0.3, "total": 5}))
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content and sim.stats.requests == 1
    sim.settings.ttft = 3.0
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url)], retries={"attempts": 0},
                                              timeouts={"connect": 1, "first_byte": 0.3, "idle": 0.3, "total": 1.5}))
    started = time.monotonic()
    # LiteLLM's Timeout is a 408 (litellm/exceptions.py@v1.106.2: `exception_status_code or 408`).
    with pytest.raises(openai.APIStatusError, match=r"timeout: no complete answer within 1\.5s") as err:
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert err.value.status_code == 408
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("header, seconds", [("inf", None), ("nan", None), ("1e12", 300.0), ("-5", 0.0), ("2.5", 2.5),
                                             ("Fri, 01 Jan 2100 00:00:00 GMT", 300.0), ("soon", None)])
def test_retry_after_from_an_upstream_is_bounded(header, seconds) -> None:
    # An upstream's `Retry-After: inf` (or a year) must not take a replica out of rotation for good.
    assert retry_after_seconds(header) == seconds


async def test_a_replica_that_refuses_connections_is_not_named_to_the_client(gateway_factory) -> None:
    """The replica's host and port are the platform's, not the client's: the class of failure goes out, the
    address only to the call log."""
    dead = closed_port_url()
    gw = await gateway_factory(gateway_config([deployment("dead", dead)]))
    with pytest.raises(openai.APIStatusError) as err:
        await gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    port = dead.rsplit(":", 1)[1].split("/")[0]
    assert "dead: connect_error" in err.value.message and port not in err.value.message
    [logged] = await gw.logged_calls(1)
    assert port in logged["error"]
