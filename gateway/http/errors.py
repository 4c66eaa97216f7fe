"""Errors a client sees, in OpenAI's error JSON shape with the matching HTTP status."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.observability.calllog import safe_dumps
from gateway.protocols.anthropic_clients import anthropic_error

JSON = "application/json"


class GatewayError(Exception):
    """An error answered to the client: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.close = close  # end the connection after the answer (a body left unread, a slow client)
        self.detail: str | None = None  # for the call log, never the client: what names our infrastructure

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        headers = {**self.headers, **(extra_headers or {})}
        return self._closing(web.Response(status=self.status, body=safe_dumps(self.body()), content_type=JSON,
                                          headers=headers))

    def _closing(self, response: web.Response) -> web.Response:
        if self.close:
            response.force_close()
        return response

    def sse_event(self, anthropic: bool = False) -> bytes:
        """The same error as a final server-sent event, for failures after the stream began."""
        if anthropic:
            return b"event: error\ndata: " + safe_dumps(self.anthropic_body()) + b"\n\n"
        return b"data: " + safe_dumps(self.body()) + b"\n\n"

    def anthropic_body(self) -> dict[str, Any]:
        return anthropic_error(self.status, self.message)

    def anthropic_response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        """The error in Anthropic's shape, for clients of /v1/messages."""
        headers = {**self.headers, **(extra_headers or {})}
        return self._closing(web.Response(status=self.status, body=safe_dumps(self.anthropic_body()),
                                          content_type=JSON, headers=headers))


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "authentication_error", None, "invalid_api_key",
                        {"WWW-Authenticate": 'Bearer realm="llmp"'})


# RFC 9110 section 15.5.20: the request reached a server that cannot answer for it. Not retried by
# the openai client (it retries 408, 409, 429 and 5xx), unlike a 5xx; unlike 404 it says where to go.
MISDIRECTED = 421


def misdirected(alias: str, zone: str, url: str) -> GatewayError:
    """A model only another residency zone serves: never forwarded, answered with the zone's own name."""
    return GatewayError(
        MISDIRECTED,
        f"model {alias} is served only in residency zone {zone}: call {url} (OpenAI base URL {url}/v1); "
        f"this gateway is outside that zone and did not forward the request",
        "invalid_request_error", "model", "model_in_other_residency_zone")


def master_key_not_set() -> GatewayError:
    """Calls while the master key's secret still holds no value (a first deploy): refused, never let in."""
    return GatewayError(
        503, "This gateway's master key is not set yet: an operator must put it in the gateway's secret "
        "(llm-platform/<stack>/gateway/master-key); calls are refused until then.",
        "service_unavailable", None, "master_key_not_set")


def model_not_found(alias: str, path: str = "") -> GatewayError:
    """A model no route serves: 400 with LiteLLM's message, type, param and code (litellm/proxy/
    route_llm_request.py@v1.106.2, "Invalid model name passed in model=..."; seen side by side: param null,
    code "400"), so clients catching `openai.BadRequestError` for it keep working."""
    return GatewayError(400, f"{path}: Invalid model name passed in model={alias}. Call `/v1/models` to view "
                        "available models for your key.", "invalid_request_error", None, "400")


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "service_unavailable", None, "no_healthy_upstream")


def upstream_failed(message: str) -> GatewayError:
    return GatewayError(502, message, "upstream_error", None, "upstream_error")
