"""The official openai client works unchanged against the gateway."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, RunningGateway, deployment, gateway_config

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the gateway"}]


async def test_chat_completion_answers_through_the_gateway(gateway: RunningGateway, sim) -> None:
    reply = await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content.strip().startswith("The gateway")
    assert reply.usage.completion_tokens == 8
    assert sim.stats.requests == 1
    [call] = gateway.calls()
    assert call["status"] == 200 and call["completion_tokens"] == 8 and call["deployment"] == "sim-a"


async def test_chat_stream_without_include_usage_hides_the_usage_chunk_but_meters_it(gateway, sim) -> None:
    stream = await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip().startswith("The gateway")
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert sim.stats.bodies[-1]["stream_options"] == {"include_usage": True}, "injected upstream"
    [call] = gateway.calls()
    assert call["completion_tokens"] == 8 and call["prompt_tokens"] > 0 and call["ttft_ms"] is not None


async def test_chat_stream_with_include_usage_gets_the_usage_chunk(gateway) -> None:
    stream = await gateway.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


async def test_completions_plain_and_streaming(gateway) -> None:
    client = gateway.client()
    reply = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    stream = await client.completions.create(model=MODEL, prompt="Once upon a time", stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert len(texts) == 8


async def test_embeddings(gateway) -> None:
    reply = await gateway.client().embeddings.create(model=MODEL, input=["one", "two"])
    assert [d.index for d in reply.data] == [0, 1] and len(reply.data[0].embedding) == 8


async def test_models_lists_the_aliases(gateway) -> None:
    models = await gateway.client().models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_alias_is_rewritten_to_the_upstream_model_and_max_tokens_capped(gateway_factory, sim_factory) -> None:
    sim = await sim_factory(models=("meta-llama/Llama-3.1-8B-Instruct",))
    config = gateway_config(models=[{
        "alias": "llama", "max_tokens": 3,
        "deployments": [{"name": "pool", "model": "meta-llama/Llama-3.1-8B-Instruct", "api_base": sim.base_url}],
    }])
    gw = await gateway_factory(config)
    reply = await gw.client().chat.completions.create(model="llama", messages=MESSAGES, max_tokens=100)
    assert sim.stats.bodies[-1]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert sim.stats.bodies[-1]["max_tokens"] == 3
    assert reply.usage.completion_tokens == 3
    await gw.client().chat.completions.create(model="llama", messages=MESSAGES)
    assert sim.stats.bodies[-1]["max_tokens"] == 3, "the cap applies when the client gives no max"


async def test_a_model_may_refuse_max_tokens_over_its_cap_naming_the_cap(gateway_factory, sim) -> None:
    config = gateway_config(models=[{"alias": MODEL, "max_tokens": 64, "over_max_tokens": "refuse",
                                     "deployments": [deployment("sim-a", sim.base_url)]}])
    gw = await gateway_factory(config)
    with pytest.raises(openai.BadRequestError) as refused:
        await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=65)
    assert "over the model cap: models[sim-model].max_tokens is 64" in refused.value.message
    assert sim.stats.requests == 0, "a refused call never reaches the upstream"
    reply = await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64)
    assert reply.choices[0].message.content


async def test_untouched_requests_are_forwarded_byte_for_byte(gateway, sim) -> None:
    raw = b'{"model":"sim-model","messages":[{"role":"user","content":"x"}],  "temperature":0.5}'
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", data=raw,
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 200
            assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
            assert resp.headers["x-request-id"].startswith("req-")
    assert sim.stats.headers[-1].get("Authorization") is None, "the gateway key never goes upstream"


async def test_provider_key_is_sent_upstream_not_the_client_key(gateway_factory, sim) -> None:
    gw = await gateway_factory(gateway_config([deployment("sim-a", sim.base_url, api_key="sk-upstream-FAKE-1")]))
    await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert sim.stats.headers[-1]["Authorization"] == "Bearer sk-upstream-FAKE-1"


async def test_health_and_metrics(gateway) -> None:
    await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/health/live") as resp:
            assert resp.status == 200
        async with http.get(gateway.url + "/health/ready") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        async with http.get(gateway.url + "/metrics") as resp:
            text = await resp.text()
    assert 'llmp_gateway_requests_total{deployment="sim-a",model="sim-model",status="200"} 1.0' in text
    assert 'llmp_gateway_tokens_total{kind="completion",model="sim-model"} 8.0' in text
    assert "llmp_gateway_time_to_first_token_seconds" in text


async def test_log_line_holds_a_prompt_hash_never_the_prompt_or_key(gateway) -> None:
    await gateway.client().chat.completions.create(model=MODEL, messages=MESSAGES, user="alice")
    raw = gateway.log_buffer.getvalue()
    assert b"Say hello" not in raw and KEY.encode() not in raw
    [call] = gateway.calls()
    assert len(call["prompt_hash"]) == 16 and call["key_id"].startswith("key-")
    for field in ("request_id", "model", "deployment", "region", "status", "latency_ms", "ttft_ms"):
        assert field in call


@pytest.mark.parametrize("api_key", [None, "sk-wrong"])
async def test_missing_or_wrong_key_is_refused_with_openai_error_shape(gateway, api_key) -> None:
    if api_key is None:
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/v1/chat/completions", json={"model": MODEL}) as resp:
                body = await resp.json()
                assert resp.status == 401 and body["error"]["code"] == "invalid_api_key"
        return
    with pytest.raises(openai.AuthenticationError):
        await gateway.client(api_key=api_key).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_unknown_model_is_a_400_as_litellm_answers_it(gateway) -> None:
    """LiteLLM: 400 "/chat/completions: Invalid model name passed in model=nope. ..." (litellm/proxy/
    route_llm_request.py@v1.106.2), param null, code "400"; clients catch openai.BadRequestError."""
    with pytest.raises(openai.BadRequestError) as err:
        await gateway.client().chat.completions.create(model="nope", messages=MESSAGES)
    assert err.value.body == {"message": "/chat/completions: Invalid model name passed in model=nope. Call "
                              "`/v1/models` to view available models for your key.", "type": "invalid_request_error",
                              "param": None, "code": "400"}


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", None),
        (b'{"messages": []}', "model"),
        (b'{"model": "sim-model"}', "messages"),
        (b'{"model": "sim-model", "messages": [{"role":"user","content":"x"}], "max_tokens": "ten"}', "max_tokens"),
    ],
)
async def test_bad_requests_name_the_field(gateway, body, field) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", data=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
            error = (await resp.json())["error"]
    assert resp.status == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == field


async def raw_call(gw: RunningGateway, path: str, body: bytes,
                   *headers: tuple[bytes, bytes]) -> tuple[int, bytes, bytes]:
    """One request with header bytes no HTTP client library lets through: (status, head, body)."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: gw", b"Content-Type: application/json",
             b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
    lines += [name + b": " + value for name, value in headers]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    data = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, payload


def governed_config(sim, tmp_path, **gateway) -> dict:
    config = gateway_config([deployment("sim-a", sim.base_url)], **gateway)
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    return config


BEARER = (b"Authorization", b"Bearer " + KEY.encode())
CHAT = b'{"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_id_that_is_not_plain_text_is_replaced_and_the_call_still_accounted(
        gateway_factory, sim, tmp_path, stream) -> None:
    import sqlite3

    gw = await gateway_factory(governed_config(sim, tmp_path))
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/key/generate", json={"max_parallel_requests": 1},
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
            key = (await resp.json())["key"]
    body = CHAT[:-1] + (b', "stream": true}' if stream else b"}")
    status, head, payload = await raw_call(gw, "/v1/chat/completions", body,
                                           (b"Authorization", f"Bearer {key}".encode()),
                                           (b"x-request-id", b"abc\xff\xfe id"))
    assert status == 200, payload
    assert (b"data: [DONE]" in payload) if stream else payload.startswith(b"{")
    assert b"\nx-request-id: req-" in head.lower()  # ours: the client's is logged as replaced
    assert '"event":"request_id_replaced"' in gw.log_buffer.getvalue().decode()
    # The parallel slot was given back: the same key (max_parallel_requests 1) calls again at once.
    reply = await gw.client(api_key=key).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.usage.completion_tokens == 8
    await gw.state.governance.ledger.flush()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT request_id, status FROM llmp_spend").fetchall()
    assert len(rows) == 2 and all(row[1] == 200 for row in rows), rows


@pytest.mark.parametrize(("header", "value", "status", "param"), [
    (b"Authorization", b"Bearer sk-\xff\xfe", 401, None),
    (b"x-api-key", b"sk-\xc3\x28", 401, None),
    (b"x-session-id", b"session-\xff", 400, "x-session-id"),
])
async def test_header_bytes_that_are_not_utf8_are_client_errors(gateway, header, value, status, param) -> None:
    headers = [(header, value)] if header != b"x-session-id" else [BEARER, (header, value)]
    got, _, payload = await raw_call(gateway, "/v1/chat/completions", CHAT, *headers)
    error = __import__("json").loads(payload)["error"]
    assert got == status and error["param"] == param and error["message"], payload
    assert gateway.calls()[-1]["status"] == status


async def test_json_nested_255_deep_is_a_400_not_a_500(gateway) -> None:
    deep = b'{"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "user_data": ' \
        + b"[" * 300 + b"]" * 300 + b"}"
    status, _, payload = await raw_call(gateway, "/v1/chat/completions", deep, BEARER)
    assert status == 400 and b"gateway.front_door.json_depth" in payload


async def test_odd_text_in_a_field_never_breaks_the_log_line() -> None:
    import io

    from gateway.observability.calllog import CallLog
    from gateway.observability.usage import CallRecord

    out = io.BytesIO()
    CallLog(out).write(CallRecord("id-\udcff", alias="m\ud800", error="bad \udcfe"))  # lone surrogates
    assert b'"request_id":"id-\\\\udcff"' in out.getvalue()


async def test_admin_api_answers_401_to_an_authorization_that_is_not_utf8(gateway_factory, sim, tmp_path) -> None:
    """Once a 500: the master key comparison encoded the header, which raised on its lone surrogates."""
    import asyncio
    import json

    gw = await gateway_factory(governed_config(sim, tmp_path))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /key/list HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                 b"Authorization: Bearer sk-\xff\xfe\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401") and json.loads(body)["error"]["type"] == "authentication_error"
