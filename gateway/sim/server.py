"""A model server simulator speaking vLLM's OpenAI API and Anthropic's Messages API, with failure modes."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.sim import media
from gateway.sim.answers import (
    WORDS,
    anthropic_events,
    count_tokens,
    embedding,
    error_body,
    json_response,
    openai_events,
)
from gateway.sim.drain import Admission
from gateway.sim.settings import FAULTS as FAULTS
from gateway.sim.settings import SimSettings as SimSettings
from gateway.sim.settings import SimStats as SimStats
from gateway.sim.structured import shaped

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Simulator:
    """The aiohttp application of one simulated replica."""

    def __init__(self, settings: SimSettings | None = None, keep_bodies: int = 20) -> None:
        self.settings = settings or SimSettings()
        self.stats = SimStats()
        self._keep = keep_bodies
        self._ids = itertools.count(1)
        self.admission = Admission()
        self.app = web.Application(middlewares=[self.admission.middleware])
        self.app.add_routes(
            [
                web.post("/v1/chat/completions", self.chat),
                web.post("/v1/completions", self.completions),
                web.post("/v1/embeddings", self.embeddings),
                web.post("/v1/messages", self.messages),
                web.post("/v1/images/generations", functools.partial(media.images, self)),
                web.post("/v1/moderations", functools.partial(media.moderations, self)),
                web.get("/v1/models", self.models),
                web.get("/health", self.health),
                web.get("/metrics", self.metrics),
            ]
        )

    # ---- shared steps -------------------------------------------------------

    async def _begin(self, request: web.Request) -> dict[str, Any]:
        self.stats.requests += 1
        raw = await request.read()
        try:
            body: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(
                text=orjson.dumps(error_body("request body is not valid JSON", "BadRequestError", 400)).decode(),
                content_type="application/json",
            ) from None
        if self._keep:
            self.stats.bodies.append(body)
            self.stats.headers.append(dict(request.headers))
            del self.stats.bodies[: -self._keep], self.stats.headers[: -self._keep]
        model = body.get("model")
        if model not in self.settings.models and not self.settings.any_model:
            # vLLM answers 404 NotFoundError for a model it does not serve (a dict as the body once made
            # aiohttp answer 500 "Unsupported body type": the body is serialized text).
            raise web.HTTPNotFound(
                text=orjson.dumps(error_body(f"The model `{model}` does not exist.", "NotFoundError", 404)).decode(),
                content_type="application/json",
            )
        return body

    def _take_fault(self) -> str:
        s = self.settings
        if s.fault == "none":
            return "none"
        if s.fault_count is not None:
            if s.fault_count <= 0:
                return "none"
            s.fault_count -= 1
        return s.fault

    async def _early_fault(self, fault: str, anthropic: bool = False) -> web.Response | None:
        """Faults that strike before any byte of the answer."""
        if fault == "error_500":
            status = self.settings.error_status
            return json_response(error_body(self.settings.error_message, "InternalServerError", status, anthropic,
                                            self.settings.legacy_errors), status)
        if fault == "rate_limit_429":
            resp = json_response(error_body("simulated rate limit", "RateLimitError", 429, anthropic,
                                            self.settings.legacy_errors), 429)
            resp.headers["Retry-After"] = f"{self.settings.retry_after:g}"
            resp.headers.update(self.settings.headers)
            return resp
        if fault == "hang_before_headers":
            await asyncio.Event().wait()  # until the client gives up
        return None

    def _completion_len(self, body: dict[str, Any], key: str = "max_tokens") -> tuple[int, str]:
        limit = body.get(key) or body.get("max_completion_tokens")
        n = self.settings.output_tokens
        if isinstance(limit, int) and limit < n:
            return limit, "length"
        return n, "stop"

    async def _pace(self, first: bool) -> None:
        s = self.settings
        if first and s.ttft:
            await asyncio.sleep(s.ttft)
        elif not first and s.tokens_per_s:
            await asyncio.sleep(1.0 / s.tokens_per_s)

    def _ident(self, prefix: str) -> str:
        return f"{prefix}-{self.settings.name}-{next(self._ids)}"

    def _headers(self) -> dict[str, str]:
        return {"x-sim-replica": self.settings.name, **self.settings.headers}

    async def _stream(self, request: web.Request, events: Any, fault: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**SSE_HEADERS, **self._headers()})
        await resp.prepare(request)
        try:
            for i, event in enumerate(events):
                if i == 2 and fault == "hang_mid_stream":
                    await asyncio.Event().wait()
                if i == 2 and fault == "truncate_stream":
                    # Drop the connection without the terminating chunk.
                    request.transport.close() if request.transport else None
                    return resp
                if fault == "malformed_json":
                    await resp.write(b"data: {\"id\": \"broken\", \"choices\": [\n\n")
                    await resp.write_eof()
                    return resp
                await resp.write(event)
                await self._pace(first=False)
            await resp.write_eof()
            self.stats.completed += 1
        except ConnectionResetError:  # (a cancellation is counted by the caller)
            self.stats.cancelled += 1
            raise
        return resp

    # ---- OpenAI API ---------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._begin(request)
        self.stats.in_flight += 1
        try:
            fault = self._take_fault()
            early = await self._early_fault(fault)
            if early is not None:
                return early
            prompt = count_tokens(body.get("messages") if chat else body.get("prompt"))
            n, finish = self._completion_len(body)
            misbehave = self.settings.misbehave
            pieces, finish = shaped(body, n, finish, misbehave.get(str(body.get("model"))) or misbehave.get("*"))
            self.stats.prompt_tokens += prompt
            self.stats.generation_tokens += n
            model = body["model"]
            created = int(time.time())
            ident = self._ident("chatcmpl" if chat else "cmpl")
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + n, "completion_tokens": n}
            if body.get("stream"):
                opts = body.get("stream_options") or {}
                events = openai_events(ident, created, model, n, finish, usage, chat, bool(opts.get("include_usage")),
                                       pieces)
                await self._pace(first=True)
                return await self._stream(request, events, fault)
            await self._pace(first=True)
            text = "".join(pieces) if pieces is not None else "".join(WORDS[i % len(WORDS)] for i in range(n))
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "tool_calls": [], "reasoning_content": None},
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                obj = "text_completion"
            payload = orjson.dumps(
                {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}
            )
            return await self._body(request, payload, fault)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.in_flight -= 1

    async def _body(self, request: web.Request, payload: bytes, fault: str) -> web.StreamResponse:
        if fault == "malformed_json":
            payload = payload[: len(payload) // 2]
        elif fault in ("hang_mid_stream", "truncate_stream"):
            # Promise the whole body, send half of it, then stall or hang up.
            resp = web.StreamResponse(headers={"Content-Type": "application/json", **self._headers()})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            if fault == "hang_mid_stream":
                await asyncio.Event().wait()
            request.transport.close() if request.transport else None
            return resp
        self.stats.completed += 1
        return web.Response(body=payload, content_type="application/json", headers=self._headers())

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        fault = self._take_fault()
        early = await self._early_fault(fault)
        if early is not None:
            return early
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
        data = [{"index": i, "object": "embedding", "embedding": embedding(str(item))} for i, item in enumerate(items)]
        prompt = sum(count_tokens(item) for item in items)
        payload = orjson.dumps(
            {
                "id": self._ident("embd"),
                "object": "list",
                "created": int(time.time()),
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0},
            }
        )
        await self._pace(first=True)
        return await self._body(request, payload, fault)

    async def models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": m, "parent": None,
             "max_model_len": 8192}
            for m in self.settings.models
        ]
        return json_response({"object": "list", "data": data}, 200)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        s, model = self.stats, self.settings.models[0]
        label = f'{{model_name="{model}"}}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {s.in_flight}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} 0",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {s.prompt_tokens}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {s.generation_tokens}",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {s.completed}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ---- Anthropic Messages API --------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        has_key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").startswith("Bearer ")
        if not has_key or not request.headers.get("anthropic-version"):
            return json_response(
                error_body("an API key (x-api-key or Bearer) and anthropic-version are required",
                           "authentication_error", 401, True), 401
            )
        body = await self._begin(request)
        if not isinstance(body.get("max_tokens"), int):
            return json_response(error_body("max_tokens: Field required", "invalid_request_error", 400, True), 400)
        self.stats.in_flight += 1
        try:
            fault = self._take_fault()
            early = await self._early_fault(fault, anthropic=True)
            if early is not None:
                return early
            system = body.get("system")
            prompt = count_tokens(body.get("messages")) + (count_tokens(system) if system else 0)
            n, finish = self._completion_len(body)
            stop_reason = "max_tokens" if finish == "length" else "end_turn"
            self.stats.prompt_tokens += prompt
            self.stats.generation_tokens += n
            ident = self._ident("msg")
            await self._pace(first=True)
            if body.get("stream"):
                events = anthropic_events(ident, body["model"], prompt, n, stop_reason)
                return await self._stream(request, events, fault)
            text = "".join(WORDS[i % len(WORDS)] for i in range(n))
            payload = orjson.dumps(
                {
                    "id": ident,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt, "output_tokens": n},
                }
            )
            return await self._body(request, payload, fault)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.in_flight -= 1


class SimServer:
    """Runs a `Simulator` on a real socket: `async with SimServer() as sim: sim.base_url`."""

    def __init__(self, settings: SimSettings | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = Simulator(settings)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def settings(self) -> SimSettings:
        return self.sim.settings

    @property
    def stats(self) -> SimStats:
        return self.sim.stats

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> SimServer:
        # handler_cancellation: a client hanging up cancels the handler, as in vLLM.
        self._runner = web.AppRunner(self.sim.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def drain(self, timeout: float) -> int:
        """SIGTERM under vLLM's `--shutdown-timeout`: refuse new requests (503), let those in flight
        finish for up to `timeout` s, abort the rest and stop; returns how many were aborted."""
        aborted = await self.sim.admission.drain(timeout)
        await self.stop()
        return aborted

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
