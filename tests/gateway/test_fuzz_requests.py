"""Request fuzz: hostile bodies and headers against one gateway process never get a 5xx, a hang, a traceback or
a secret in the log, and leave nothing held (the governed key still calls afterwards)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import KEY, MODEL, gateway_config
from tests.gateway.servers import ROOT, GatewayProcess, RedisServer, free_port, read_until_closed, wait_port

PROVIDER_KEY = "sk-provider-SECRET-0123456789abcdef"
REQUEST_TIMEOUT = 20  # longer than any upstream timeout of the config: a request that takes longer hangs

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"]
ADMIN = ["POST /key/generate", "POST /key/update", "POST /key/delete", "POST /team/new", "GET /key/list",
         "GET /key/info?key=x", "GET /spend/report", "GET /team/info", "DELETE /v1/models", "PUT /nowhere"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer()
    sim_port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port", str(sim_port), "--model", MODEL,
                            "--model", "claude-sim"], cwd=ROOT, stdout=subprocess.DEVNULL)
    gw = None
    try:
        wait_port(sim_port, 20, sim)
        base = f"http://127.0.0.1:{sim_port}/v1"
        config = gateway_config(models=[
            {"alias": MODEL, "input_cost_per_token": 0.001, "output_cost_per_token": 0.002, "deployments": [
                {"name": "vllm", "model": MODEL, "replicas": {"static": [base, base + "/"]}, "api_key": PROVIDER_KEY}]},
            {"alias": "claude", "deployments": [{"name": "anthropic", "provider": "anthropic", "model": "claude-sim",
                                                 "api_base": base, "api_key": PROVIDER_KEY}]},
        ])
        config["ledger"] = {"spool_dir": str(workdir / "spool"), "store": f"sqlite:///{workdir / 'ledger.db'}",
                            "flush_interval": 0.2}
        config["redis"] = {"url": redis.url}
        gw = GatewayProcess(config, workdir).start(timeout=30)
        status, made = gw.admin("POST", "/key/generate", {"max_parallel_requests": 1, "max_budget": 1000,
                                                          "tpm_limit": 10**9}, key=KEY)
        assert status == 200, made
        yield {"gw": gw, "key": made["key"]}
    finally:
        if gw is not None:
            gw.kill()
        sim.kill()
        sim.wait(timeout=10)
        redis.stop()


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """One raw request on its own connection: (status, body); fails the test if it takes too long."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway refused early (e.g. 413) and closed; its answer is still readable
        data, _ = read_until_closed(sock, REQUEST_TIMEOUT)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"no answer: {data[:200]!r}"
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split(b" ", 2)[1]), body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


# ---- what a client can send ------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.sampled_from([2**62, -1, 0, 1e308])
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return plausible | json_values


text_block = st.fixed_dictionaries({"type": st.just("text"), "text": either(st.text(max_size=30))})
image_block = st.fixed_dictionaries({"type": st.just("image"), "source": either(st.fixed_dictionaries({
    "type": st.sampled_from(["base64", "url", "x"]), "media_type": either(st.just("image/png")),
    "data": either(st.just("iVBORw0KGgo=")), "url": either(st.just("https://example.com/a.png"))}))})
tool_use = st.fixed_dictionaries({"type": st.just("tool_use"), "id": either(st.just("t1")),
                                  "name": either(st.just("f")), "input": json_values})
tool_result = st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": either(st.just("t1")),
                                     "content": either(st.lists(text_block, max_size=2))})
openai_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"]),
                                     "text": either(st.text(max_size=20)),
                                     "image_url": either(st.fixed_dictionaries({"url": either(st.text(max_size=30))}))})
tool_call = st.fixed_dictionaries({"id": either(st.just("c1")), "type": st.just("function"), "function": either(
    st.fixed_dictionaries({"name": either(st.just("f")), "arguments": either(st.just('{"a": 1}'))}))})
message = st.fixed_dictionaries(
    {"role": either(st.sampled_from(["user", "assistant", "system", "tool", "developer"]))},
    optional={"content": either(st.text(max_size=40) | st.lists(
        text_block | image_block | tool_use | tool_result | openai_part, max_size=3)),
        "tool_calls": either(st.lists(tool_call, max_size=2)), "tool_call_id": either(st.just("c1"))})
tool = either(st.fixed_dictionaries({"type": st.just("function"), "name": either(st.just("f")),
                                     "input_schema": either(st.just({"type": "object"})),
                                     "function": either(st.fixed_dictionaries({
                                         "name": either(st.just("f")), "parameters": json_values}))}))
body_fields = {
    "model": either(st.sampled_from([MODEL, "claude", "unknown-model", ""])),
    "messages": either(st.lists(message, min_size=1, max_size=3)),
    "prompt": either(st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=2)),
    "input": either(st.text(max_size=30)),
    "max_tokens": either(st.integers(1, 16) | st.sampled_from([2**62, 2**64, 0, -5])),
    "max_completion_tokens": either(st.integers(1, 16)),
    "stream": either(st.booleans()),
    "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
    "n": either(st.sampled_from([1, 2**62])),
    "temperature": either(st.floats(0, 2) | st.just(2**62)),
    "top_p": json_values,
    "stop": either(st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=2)),
    "stop_sequences": either(st.lists(st.text(max_size=5), max_size=2)),
    "system": either(st.text(max_size=20) | st.lists(text_block, max_size=2)),
    "tools": either(st.lists(tool, max_size=2)),
    "tool_choice": either(st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries(
        {"type": st.sampled_from(["auto", "any", "tool", "function"])}, optional={"name": json_values})),
    "metadata": either(st.fixed_dictionaries({}, optional={"user_id": json_values})),
    "user": json_values,
}
json_bodies = st.fixed_dictionaries({}, optional=body_fields).map(lambda b: json.dumps(b).encode())
hostile_bodies = st.one_of(
    st.integers(100, 5000).map(lambda n: b'{"model": "sim-model", "messages": ' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([b'{"model": "sim-model", "max_tokens": NaN, "messages": [{"role": "user", "content": "x"}]}',
                     b'{"model": "sim-model", "temperature": Infinity, "prompt": "x"}',
                     b'{"model": "sim-model", "messages": [{"role": "user", "content": "\\ud800"}]}',
                     b'{"model": "sim-\xff\xfe", "prompt": "x"}', b'{"model": "sim-model", "input": "x"',
                     b"", b"null", b"[]", b'"text"', b"\x00\x01\x02"]),
    st.binary(max_size=200),
    json_bodies.map(lambda raw: raw.replace(b'"hi"', b'"\\udc80\\u0000\\ufeff\xe2\x80\xae"')),
)
header_values = st.one_of(
    st.binary(min_size=0, max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(100, 20000).map(lambda n: b"a" * n),
)
header_names = st.sampled_from([b"x-request-id", b"x-session-id", b"Authorization", b"x-api-key", b"Content-Type",
                                b"x-llmp-hop", b"anthropic-version", b"Content-Encoding"])
keys = st.sampled_from(["master", "governed", "none", "wrong", "binary"])


def build(path: str, body: bytes, key: str, headers: list[tuple[bytes, bytes]], creds: dict[str, str]) -> bytes:
    method, _, path = path.rpartition(" ")
    lines = [(method or "POST").encode() + b" " + path.encode() + b" HTTP/1.1", b"Host: gw", b"Connection: close",
             b"Content-Length: " + str(len(body)).encode()]
    auth = {"master": f"Bearer {KEY}".encode(), "governed": f"Bearer {creds['key']}".encode(),
            "wrong": b"Bearer sk-wrong-00000000000000000000", "binary": b"Bearer sk-\xff\xfe\x80"}.get(key)
    if auth is not None:
        lines.append(b"Authorization: " + auth)
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def check_answer(status: int, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"], body[:300]


def test_hostile_requests_get_client_errors_and_leave_nothing_held(stack: dict[str, Any]) -> None:
    gw: GatewayProcess = stack["gw"]

    @settings(max_examples=250, deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(path=st.sampled_from(ENDPOINTS), body=json_bodies | hostile_bodies, key=keys,
           headers=st.lists(st.tuples(header_names, header_values), max_size=4))
    def data_path(path: str, body: bytes, key: str, headers: list[tuple[bytes, bytes]]) -> None:
        check_answer(*exchange(gw.port, build(path, body, key, headers, stack)))

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(path=st.sampled_from(ADMIN), body=json_bodies | hostile_bodies,
           key=st.sampled_from(["governed", "none", "wrong", "binary"]),
           headers=st.lists(st.tuples(header_names, header_values), max_size=3))
    def admin(path: str, body: bytes, key: str, headers: list[tuple[bytes, bytes]]) -> None:
        status, answer = exchange(gw.port, build(path, body, key, headers, stack))
        check_answer(status, answer)
        assert status in (400, 401, 403, 404, 405, 413, 431), (status, answer[:200])  # never let in

    data_path()
    admin()

    # Nothing held: the key limited to one call at a time calls again; and the gateway still answers.
    for key in (stack["key"], KEY):
        ok = build("/v1/chat/completions", json.dumps({"model": MODEL, "max_tokens": 3, "messages": [
            {"role": "user", "content": "still there?"}]}).encode(), "master", [], stack)
        ok = ok.replace(f"Bearer {KEY}".encode(), f"Bearer {key}".encode())
        status, answer = exchange(gw.port, ok)
        assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 3, answer[:300]
    log = gw.log()
    assert "Traceback" not in log and "Unhandled exception" not in log
    for secret in (KEY, PROVIDER_KEY, stack["key"]):
        assert secret not in log
