"""`gateway.front_door`: what one client connection may send and hold, proven with raw sockets on a real process."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import KEY, MODEL, closed_port_url, deployment, gateway_config
from tests.gateway.servers import GatewayProcess, read_until_closed

LIMITS = {"header_bytes": 1024, "body_bytes": 4096, "json_depth": 8, "keepalive_idle": 2.0, "request_read": 1.0,
          "connections": 16}
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = gateway_config([deployment("nowhere", closed_port_url())], front_door=LIMITS)
    process = GatewayProcess(config, tmp_path_factory.mktemp("front-door")).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The same limits with long read and idle windows: for what is not about time, so that a machine too busy to
    run the gateway for a second cannot turn a size check into a slow-client one."""
    limits = {**LIMITS, "keepalive_idle": 30.0, "request_read": 30.0}
    config = gateway_config([deployment("nowhere", closed_port_url())], front_door=limits)
    process = GatewayProcess(config, tmp_path_factory.mktemp("front-door-roomy")).start()
    yield process
    process.kill()


def connect(gw: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def answer(data: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n".encode() + AUTH
            + b"".join(extra) + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def test_a_connection_that_never_sends_a_byte_is_closed_after_request_read(gw: GatewayProcess) -> None:
    with connect(gw) as sock:
        data, closed_after = read_until_closed(sock)
    assert data == b""  # nothing was asked: nothing is answered, the socket is just closed
    assert 0.8 <= closed_after < 1.0 + 2


def test_headers_sent_byte_by_byte_are_cut_with_a_408(gw: GatewayProcess) -> None:
    head = post("/v1/chat/completions", b"{}")
    with connect(gw) as sock:
        started = time.monotonic()
        sock.settimeout(0.2)
        data = b""
        for byte in head:  # one byte every 0.2 s: the whole head would take minutes
            try:
                sock.send(bytes([byte]))
                data += sock.recv(65536)
                if data:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        rest, _ = read_until_closed(sock)
        data += rest
    assert time.monotonic() - started < 1.0 + 2
    status, body = answer(data)
    assert status == 408 and "gateway.front_door.request_read" in body["error"]["message"]  # type: ignore[index]


def test_a_body_that_trickles_in_is_answered_408_and_closed(gw: GatewayProcess) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with connect(gw) as sock:
        sock.sendall(post("/v1/chat/completions", body)[: -len(body)] + body[:5])
        data, closed_after = read_until_closed(sock)
    status, error = answer(data)
    assert status == 408 and error["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert closed_after < 1.0 + 2


def test_an_idle_kept_alive_connection_is_closed_after_keepalive_idle(gw: GatewayProcess) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        data, closed_after = read_until_closed(sock)
    assert data == b"" and 1.5 <= closed_after < 2.0 + 2


def test_a_header_over_header_bytes_is_431_in_json(roomy: GatewayProcess) -> None:
    with connect(roomy) as sock:
        sock.sendall(post("/v1/chat/completions", b"{}", b"x-padding: " + b"a" * 2000 + b"\r\n"))
        data, _ = read_until_closed(sock)
    status, body = answer(data)
    assert status == 431 and "gateway.front_door.header_bytes" in body["error"]["message"]  # type: ignore[index]
    assert "Traceback" not in roomy.log()


def test_a_body_over_body_bytes_is_413_naming_the_field_before_it_is_read(gw: GatewayProcess) -> None:
    # on `gw`: after answering, aiohttp reads and drops the unsent body for up to request_read (lingering_time)
    with connect(gw) as sock:  # Content-Length says 10 MB; the gateway answers without waiting for it
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: {10 * 2**20}\r\n".encode()
                     + AUTH + b"\r\n" + b"{" * 100)
        data, _ = read_until_closed(sock, timeout=5)
    status, body = answer(data)
    assert status == 413 and body["error"]["param"] == "gateway.front_door.body_bytes"  # type: ignore[index]


def test_a_chunked_body_over_body_bytes_is_cut_at_the_limit(roomy: GatewayProcess) -> None:
    chunk = b"a" * 1000
    with connect(roomy) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: roomy\r\nTransfer-Encoding: chunked\r\n" + AUTH
                     + b"\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n")
        data, _ = read_until_closed(sock, timeout=5)
    status, body = answer(data)
    assert status == 413 and body["error"]["param"] == "gateway.front_door.body_bytes"  # type: ignore[index]


def test_json_nested_deeper_than_json_depth_is_a_400(roomy: GatewayProcess) -> None:
    deep = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "metadata": json.loads("[" * 9 + "]" * 9)}
    with connect(roomy) as sock:
        sock.sendall(post("/v1/chat/completions", json.dumps(deep).encode(), b"Connection: close\r\n"))
        data, _ = read_until_closed(sock)
    status, body = answer(data)
    assert status == 400 and body["error"]["param"] == "gateway.front_door.json_depth"  # type: ignore[index]


def test_connections_over_the_cap_are_closed_while_an_existing_client_keeps_its_answers(gw: GatewayProcess) -> None:
    client = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    client.request("GET", "/health/live")
    assert client.getresponse().read() == b'{"status":"ok"}'
    held = [connect(gw) for _ in range(15)]  # with the client's, the cap of 16
    try:
        time.sleep(0.2)
        with connect(gw) as extra:
            data, closed_after = read_until_closed(extra, timeout=5)
        assert data == b"" and closed_after < 0.5  # refused at once, nothing read
        client.request("GET", "/health/live")
        assert client.getresponse().status == 200
    finally:
        for sock in held:
            sock.close()
        client.close()
    assert '"event": "connections_refused"' in gw.log() or '"event":"connections_refused"' in gw.log()


def test_a_header_aiohttp_cannot_parse_is_a_json_400_and_its_line_is_never_logged(roomy: GatewayProcess) -> None:
    secret = b"sk-llmp-private-key-of-a-client-0123456789"
    with connect(roomy) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: roomy\r\nAuthorization: Bearer " + secret
                     + b"\x01\r\nContent-Length: 2\r\n\r\n{}")
        data, _ = read_until_closed(sock)
    status, body = answer(data)
    assert status == 400 and body["error"]["message"].startswith("The request is not valid HTTP/1.1")  # type: ignore[index]
    time.sleep(0.2)
    log = roomy.log()
    assert '"bad_http_request"' in log.replace(" ", "") or "bad_http_request" in log
    assert secret.decode() not in log and "Traceback" not in log
