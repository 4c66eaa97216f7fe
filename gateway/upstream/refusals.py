"""What a non-200 upstream answer means: the client's fault (relayed, redacted), or a failed attempt to retry."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import orjson

from gateway.http.errors import GatewayError
from gateway.upstream.fallbacks import ContextWindowExceeded, context_window_exceeded
from gateway.upstream.outcomes import ratelimit_headers
from gateway.upstream.redaction import redact
from gateway.upstream.retry import retry_after_seconds
from gateway.upstream.routing import DeploymentPool

# Upstream statuses that say "the request is at fault": the client gets them as they are.
CLIENT_FAULT = frozenset({400, 413, 422})
# Upstream statuses about our credentials or permissions: their text names our tenant, account or role (Bedrock's
# 403 AccessDeniedException quotes the role ARN), so clients get the status alone.
CREDENTIALS = frozenset({401, 403, 407})
# Of an error answer, only enough to find its message is read: the rest is never held.
ERROR_BODY_BYTES = 64 * 1024


class AttemptFailed(Exception):
    """One attempt failed before any byte reached the client: try the next candidate."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason  # what the client may read: the class of failure, and the upstream's words if harmless
        self.detail = detail  # for the log only: what names our infrastructure (hosts, tenants, accounts, roles)
        self.retry_after = retry_after
        self.status = status  # the upstream's HTTP status, when it answered one (upstream/outcomes.py)
        self.headers = headers  # its x-ratelimit-* headers, relayed if this is the failure the client sees


async def refused(response: aiohttp.ClientResponse, dep: DeploymentPool) -> None:
    """Raise what a streamed call's non-200 answer means, from the first bytes of its body."""
    try:
        text = await response.content.read(ERROR_BODY_BYTES)
    except aiohttp.ClientError:
        text = b""
    refusal(response.status, response.reason or "", response.headers, text, secrets_of(dep))


def secrets_of(dep: DeploymentPool) -> list[str]:
    """The provider key sent to this deployment: all an upstream could echo of ours (used on errors only)."""
    found = []
    for name in ("Authorization", "x-api-key"):
        value = dep.headers.get(name)
        if value:
            found.append(value.removeprefix("Bearer "))
    return found


def redact_for(dep: DeploymentPool, text: str) -> str:
    """Upstream text as the client and the log may see it (upstream/redaction.py)."""
    return redact(text, secrets_of(dep))


def refusal(status: int, reason: str, headers: Mapping[str, str], text: bytes, secrets: list[str]) -> None:
    """Raise what a non-200 upstream answer means: the client's fault, or a failed attempt.

    Upstream error text is never relayed as is: it may echo the provider key (a 401 quoting the
    Authorization header) or anything else; it is capped and redacted (upstream/redaction.py).
    """
    message = redact(_upstream_message(text) or reason or "error", secrets)
    if context_window_exceeded(status, text):  # the client's 400, unless the alias has context-window fallbacks
        raise ContextWindowExceeded(status, f"Upstream rejected the request: {message}", "invalid_request_error",
                                    None, "context_length_exceeded")
    if status in CLIENT_FAULT:
        # The upstream's own code goes along (Azure's `content_filter`, Bedrock's `ValidationException`).
        raise GatewayError(status, f"Upstream rejected the request: {message}", "invalid_request_error",
                           code=_upstream_code(text))
    retry_after = retry_after_seconds(headers.get("retry-after")) if status in (429, 503) else None
    if status in CREDENTIALS:  # the upstream refused our credentials: the client gets the class, the log the text
        raise AttemptFailed(f"http_{status}", retry_after, status, ratelimit_headers(headers),
                            detail=f"http_{status}: {message}")
    raise AttemptFailed(f"http_{status}: {message}", retry_after, status, ratelimit_headers(headers))


def _upstream_code(text: bytes) -> str | None:
    try:
        error = orjson.loads(text).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:100] if isinstance(code, str) and code.isprintable() else None


def _upstream_message(text: bytes) -> str:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:4000].decode(errors="replace").strip()
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        if isinstance(error, str):
            return error
        if "message" in obj:
            return str(obj["message"])
    return ""
