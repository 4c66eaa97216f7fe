"""Fake Amazon Bedrock and Azure OpenAI endpoints on real sockets, speaking their real wire formats.

Bedrock: every request's SigV4 Authorization header is checked for its shape and signed headers, and its
signature recomputed with botocore's own signer for the known test credentials. ConverseStream answers are
`application/vnd.amazon.eventstream` frames encoded here byte by byte (prelude, string headers, CRC32s:
docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream). Errors are
Bedrock's: a status, `x-amzn-ErrorType` naming the exception, `{"message": ...}` (botocore's
bedrock-runtime service-2.json gives each exception's status).
Azure: the deployment URL and `api-version` query, `api-key` or a bearer token, OpenAI's answers and
errors (a content-filter refusal is a 400 with `code: content_filter`), and an Entra ID token endpoint.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example credentials, never real ones
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token"
AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
                  r"(?P<service>[a-z-]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
                  r"Signature=(?P<signature>[0-9a-f]{64})$")
STATUS = {"ValidationException": 400, "AccessDeniedException": 403, "ResourceNotFoundException": 404,
          "ModelTimeoutException": 408, "ModelErrorException": 424, "ThrottlingException": 429,
          "ModelNotReadyException": 429, "InternalServerException": 500, "ServiceUnavailableException": 503}


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event stream message: prelude (total and headers length, CRC32), headers, payload, message CRC32."""
    head = b"".join(bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
                    for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(head) + len(payload) + 4, len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, body: dict[str, Any]) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 orjson.dumps(body))


def text_events(words: list[str], stop: str = "end_turn", usage: tuple[int, int] = (11, 3)) -> list[bytes]:
    return [event("messageStart", {"role": "assistant"}),
            *[event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words],
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": stop}),
            event("metadata", {"usage": {"inputTokens": usage[0], "outputTokens": usage[1],
                                         "totalTokens": sum(usage)}, "metrics": {"latencyMs": 5}})]


@dataclass
class FakeBedrock:
    region: str = "us-east-1"
    answer: dict[str, Any] = field(default_factory=lambda: {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello from Bedrock"}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16},
        "metrics": {"latencyMs": 9}})
    stream: list[bytes] = field(default_factory=lambda: text_events(["Hel", "lo"]))
    error: tuple[str, str] | None = None  # (exception name, message): answered instead
    requests: list[dict[str, Any]] = field(default_factory=list)
    signature_problems: list[str] = field(default_factory=list)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeBedrock:
        app = web.Application()
        app.router.add_post("/model/{model_id}/{operation}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _check_signature(self, request: web.Request, body: bytes) -> list[str]:
        match = AUTH.match(request.headers.get("Authorization", ""))
        if match is None:
            return [f"Authorization is not SigV4: {request.headers.get('Authorization')!r}"]
        problems = []
        signed = match["signed"].split(";")
        for needed in ("content-type", "host", "x-amz-date", "x-amz-security-token"):
            if needed not in signed:
                problems.append(f"{needed} is not signed ({signed})")
        if (match["key"], match["region"], match["service"]) != (ACCESS_KEY, self.region, "bedrock"):
            problems.append(f"credential scope {match['key']}/{match['region']}/{match['service']}")
        # botocore's signer, fed what arrived (the raw path, the signed headers and the body), must agree.
        url = f"http://{request.headers['Host']}{request.raw_path}"
        replay = AWSRequest(method="POST", url=url, data=body,
                            headers={name: request.headers[name] for name in signed if name in request.headers})
        replay.context["timestamp"] = request.headers.get("X-Amz-Date", "")
        signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "bedrock", self.region)
        expected = signer.signature(signer.string_to_sign(replay, signer.canonical_request(replay)), replay)
        if expected != match["signature"]:
            problems.append("signature does not match botocore's for the test credentials")
        return problems

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.signature_problems += self._check_signature(request, body)
        self.requests.append({"path": request.raw_path, "operation": request.match_info["operation"],
                              "model": request.match_info["model_id"], "body": orjson.loads(body),
                              "headers": dict(request.headers)})
        if self.signature_problems:
            return web.json_response({"message": "The request signature we calculated does not match"},
                                     status=403, headers={"x-amzn-ErrorType": "InvalidSignatureException:"})
        if self.error is not None:
            name, message = self.error
            return web.json_response({"message": message}, status=STATUS[name], headers={
                "x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"})
        if request.match_info["operation"] == "converse":
            return web.json_response(self.answer)
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        for chunk in self.stream:
            await response.write(chunk)
        await response.write_eof()
        return response


@dataclass
class FakeAzure:
    deployment: str = "gpt-4o-prod"
    api_version: str = "2024-10-21"
    api_key: str = "azure-key-FAKE-0123456789"
    content_filter: bool = False
    token_lifetime: int = 3600
    requests: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    base_url: str = ""
    _tokens: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeAzure:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/{path:.*}", self._handle)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append({"tenant": request.match_info["tenant"], **form})
        if form.get("client_secret") != "entra-secret-FAKE":
            return web.json_response({"error": "invalid_client",
                                      "error_description": "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        token = f"entra-token-{len(self._tokens)}"
        self._tokens.append(token)
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers),
                              "body": body})
        authorized = request.headers.get("api-key") == self.api_key or \
            request.headers.get("Authorization", "").removeprefix("Bearer ") in [*self._tokens, "static-ad-token"]
        if not authorized:
            return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid "
                                                "subscription key or wrong API endpoint."}}, status=401)
        if request.match_info["deployment"] != self.deployment or request.query.get("api-version") != self.api_version:
            return web.json_response({"error": {"code": "DeploymentNotFound", "message": "no such deployment"}},
                                     status=404)
        if self.content_filter:
            return web.json_response({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                           "management policy.", "type": None, "param": "prompt", "code": "content_filter",
                "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation"}}}, status=400)
        if request.match_info["path"] == "embeddings":
            return web.json_response({"object": "list", "model": "text-embedding-3-small", "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2}})
        completion = {"id": "chatcmpl-azure", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi from Azure"},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
        if not body.get("stream"):
            return web.json_response(completion)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ("Hi", " from", " Azure"):
            chunk = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                     "choices": [], "usage": completion["usage"]}
            await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
