"""What a client is answered when no upstream attempt succeeded: the status LiteLLM's proxy would give.

LiteLLM's proxy answers with the status of the last exception its router raised once retries and
fallbacks are exhausted (litellm/proxy/common_request_processing.py@v1.106.2, `handle_llm_api_exception`:
"Use [the exception's status_code] to return the correct HTTP code instead of defaulting to 500"), and
the OpenAI SDK picks its exception class from that status. So:

- an upstream 429 stays 429 (`litellm.RateLimitError`, type `throttling_error`, code "429":
  litellm/exceptions.py@v1.106.2 `RateLimitError.__init__`), so `except openai.RateLimitError` fires;
  the upstream's four `x-ratelimit-*` headers go with it (litellm_core_utils/llm_response_utils/
  get_headers.py@v1.106.2 `get_response_headers`);
- an upstream 5xx keeps its status (500 `InternalServerError`, 502 `BadGatewayError`, 503
  `ServiceUnavailableError`, 504 mapped to `Timeout` with the upstream's status: litellm_core_utils/
  exception_mapping_utils.py@v1.106.2, the `status_code == 5xx` branches);
- a connection that could not be made or broke is 500 (`APIConnectionError.status_code = 500`,
  exceptions.py@v1.106.2), a timeout 408 (`Timeout.status_code = exception_status_code or 408`);
- every replica cooling down or with an open circuit is 429: the router's "No deployments available"
  is mapped to 429 by `ProxyException.__init__` (proxy/_types.py@v1.106.2, after BerriAI/litellm#2487).

Our own refusals that LiteLLM has no equivalent for (provider key not set, no deployment in this
residency zone, an answer over our size limits) keep their own status and say why.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.http.errors import GatewayError, unavailable

# The upstream headers LiteLLM copies onto the client's answer under their own names (get_headers.py@v1.106.2).
RATELIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                     "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")
# Failure reasons (the prefix before ":" in AttemptFailed.reason) and the status LiteLLM gives for each.
_CONNECTION = frozenset({"connect_error", "upstream_disconnected", "stream_error", "malformed_response"})
_TIMEOUT = frozenset({"connect_timeout", "first_byte_timeout", "timeout"})
_BUSY = (": no healthy deployment", ": at its rpm/tpm quota")
_TYPES = {429: "throttling_error", 408: "timeout_error"}


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's `x-ratelimit-*` request/token headers, as LiteLLM forwards them (only these four)."""
    found = {}
    for name in RATELIMIT_HEADERS:
        value = headers.get(name)
        if value is not None and len(value) <= 64 and value.isprintable():
            found[name] = value
    return found


class Failures(list[str]):
    """Why each attempt of one call failed (for the message), and the last failure's upstream facts."""

    last_reason: str = ""
    last_status: int | None = None  # the upstream's HTTP status, when it answered one
    last_headers: dict[str, str] | None = None  # its x-ratelimit-* headers
    details: list[str] | None = None  # what the log may read and the client may not (AttemptFailed.detail)

    def failed(self, reason: str, status: int | None, headers: dict[str, str] | None,
               detail: str | None = None) -> None:
        self.last_reason = reason.split(":", 1)[0]
        self.last_status, self.last_headers = status, headers
        if detail is not None:
            self.details = [*(self.details or []), detail]


def final_error(alias: str, failures: Failures) -> GatewayError:
    """The error for a call no attempt answered, with the status LiteLLM gives for its last failure; what the
    client may not read (connect targets, credential refusals) goes to the call log only (`GatewayError.detail`)."""
    error = _final_error(alias, failures)
    if failures.details:
        error.detail = f"{error.message} (details: {'; '.join(failures.details[-6:])})"
    return error


def _final_error(alias: str, failures: Failures) -> GatewayError:
    listed = "; ".join(failures[-6:])
    if any(f.split(": ", 2)[1:2] == ["too_large"] for f in failures):
        # An answer too large to hold is the upstream's fault, named as such (not "unavailable").
        return GatewayError(502, f"No usable upstream answer for model `{alias}`: {listed}", "upstream_error",
                            None, "upstream_limit_exceeded")
    message = f"No upstream could answer for model `{alias}`: {listed}"
    status = failures.last_status
    if status is not None and (status == 429 or status >= 500):
        # No Retry-After of the upstream's: LiteLLM sends one only for its own cooldowns (below), and the
        # openai client would otherwise sleep up to 60 s on a replica's word before its own retry.
        return GatewayError(status, message, _TYPES.get(status, "internal_server_error"), None, str(status),
                            dict(failures.last_headers or {}))
    if failures.last_reason in _TIMEOUT:
        return GatewayError(408, message, "timeout_error", None, "408")
    if failures.last_reason in _CONNECTION:
        return GatewayError(500, message, "internal_server_error", None, "500")
    if not failures.last_reason and any(f.endswith(_BUSY) for f in failures):
        # Nothing was tried: every replica had an open circuit, or every deployment was at its rpm/tpm quota.
        # LiteLLM's router: "No deployments available" (all in cooldown or over their limits), with a
        # retry-after (common_request_processing.py@v1.106.2 `_apply_router_cooldown_retry_after`).
        return GatewayError(429, f"No deployments available for model `{alias}`: {listed}", "throttling_error",
                            None, "429", {"Retry-After": "1"})
    return unavailable(message)
