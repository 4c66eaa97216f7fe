"""The `x-litellm-*` response headers LiteLLM clients and admin scripts read, built cheaply per call.

LiteLLM's proxy sets them in `ProxyBaseLLMRequestProcessing.get_custom_headers`
(litellm/proxy/common_request_processing.py@v1.106.2) and the router adds the model group, retries and
fallbacks (litellm/router.py@v1.106.2 `additional_headers["x-litellm-model-group"]`,
router_utils/add_retry_fallback_headers.py@v1.106.2); seen side by side, a stream carries the same
headers as a whole answer, an error carries `x-litellm-call-id`. Values LiteLLM leaves out when unknown
("None", "") are left out here too.

What is sent differently, and why:
- `x-litellm-model-id` is the deployment's name (LiteLLM: a hash of its params, or the `model_info.id`
  set in config); `x-litellm-model-name` is `<provider>/<model>`, as LiteLLM's `litellm_params.model`.
- `x-litellm-model-api-base` and `x-litellm-version` are not sent: a replica's in-cluster address is
  not the caller's business, and our version is not LiteLLM's.
- `x-litellm-key-spend` is not sent: a key's spend lives in the shared limiter (Redis), and reading it
  per call would put a round trip on the hot path.
- `x-litellm-response-cost` is sent for whole answers only (a stream's cost is known after its headers
  went out, as in LiteLLM, which sends none for them either when the price is unknown).
"""

from __future__ import annotations

from typing import Any

from gateway.observability.usage import CallRecord
from gateway.upstream.routing import DeploymentPool

CALL_ID = "x-litellm-call-id"


class LiteLLMHeaders:
    """Per-deployment headers computed once; per-call values added in a few dict writes."""

    def __init__(self, prices: Any = None) -> None:
        self.prices = prices  # gateway.governance.ledger.prices.Prices, or None without governance
        self._static: dict[tuple[str, str, int, int], dict[str, str]] = {}
        self._keys: dict[tuple[str, Any], dict[str, str]] = {}

    def _fixed(self, dep: DeploymentPool, group: str, retries: int, fallbacks: int) -> dict[str, str]:
        """The headers that depend on the deployment, group, retries and fallbacks only: built once for each."""
        key = (dep.name, group, retries, fallbacks)
        found = self._static.get(key)
        if found is None:
            if len(self._static) > 10_000:
                self._static.clear()
            found = self._static[key] = {
                "x-litellm-model-id": dep.name, "x-litellm-model-name": f"{dep.provider}/{dep.model}",
                "x-litellm-model-group": group, "x-litellm-attempted-retries": str(retries),
                "x-litellm-attempted-fallbacks": str(fallbacks)}
        return found

    def key_headers(self, principal: Any) -> dict[str, str]:
        """The calling key's limits as LiteLLM reports them (`x-litellm-key-{tpm,rpm}-limit`, `-max-budget`)."""
        key = getattr(principal, "key", None)
        if key is None:
            return {}
        cache_key = (key.token, key.limits)  # a key whose limits changed gets new headers at once
        found = self._keys.get(cache_key)
        if found is None:
            if len(self._keys) > 50_000:
                self._keys.clear()
            limits = key.limits
            found = {name: str(value) for name, value in (
                ("x-litellm-key-tpm-limit", limits.tpm_limit), ("x-litellm-key-rpm-limit", limits.rpm_limit),
                ("x-litellm-key-max-budget", limits.max_budget)) if value is not None}
            self._keys[cache_key] = found
        return found

    def on_answer(self, headers: dict[str, str], record: CallRecord, dep: DeploymentPool, overhead_ms: str,
                  ratelimit: dict[str, str] | None, whole: bool) -> None:
        """Add the success headers to `headers` (which already holds the call id and the key's limits)."""
        fallbacks = record.fallbacks
        tried = len(fallbacks)
        group = fallbacks[-1] if tried else record.alias
        headers.update(self._fixed(dep, group, max(0, record.attempts - 1 - tried), tried))
        headers["x-litellm-overhead-duration-ms"] = overhead_ms
        if ratelimit:
            headers.update(ratelimit)
        if whole and self.prices is not None:
            cost = self.prices.cost(record.alias, dep.name, record.prompt_tokens, record.completion_tokens,
                                    record.images)
            headers["x-litellm-response-cost"] = repr(float(cost))
