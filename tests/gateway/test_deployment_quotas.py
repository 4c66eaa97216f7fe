"""Deployment quotas (`deployments[].rpm` / `tpm`, LiteLLM's per-deployment limits): a deployment at its quota is
skipped, the call goes elsewhere, and only when nothing can take it the client gets a 503 naming the quotas."""

from __future__ import annotations

from collections import Counter
from typing import Any

import openai
import pytest

from tests.gateway.conftest import KEY, MODEL, deployment, gateway_config
from tests.gateway.servers import RedisServer

MESSAGES = [{"role": "user", "content": "hi"}]


async def calls_until_refused(client: openai.AsyncOpenAI, most: int = 20, **kwargs: Any) -> tuple[int, str]:
    for answered in range(most):
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)
        except openai.RateLimitError as exc:
            # Every deployment at its quota: LiteLLM's router "No deployments available", a 429 with a
            # retry-after (litellm/proxy/_types.py@v1.106.2 ProxyException; gateway/upstream/outcomes.py).
            assert exc.status_code == 429 and exc.response.headers["retry-after"], exc
            return answered, str(exc)
    pytest.fail(f"{most} calls and no deployment reached its quota")


async def test_a_deployment_at_its_rpm_is_skipped_then_all_full_is_a_429(gateway_factory, sim) -> None:
    gw = await gateway_factory(gateway_config([deployment("small", sim.base_url, rpm=2),
                                               deployment("smaller", sim.base_url, rpm=1)]))
    answered, message = await calls_until_refused(gw.client())
    assert answered == 3
    assert "small: at its rpm/tpm quota" in message and "smaller: at its rpm/tpm quota" in message
    served = Counter(c["deployment"] for c in gw.calls() if c["status"] == 200)
    assert served == {"small": 2, "smaller": 1}
    assert all(c["attempts"] <= 1 for c in gw.calls()), "a deployment at its quota is not an attempt"


async def test_a_tpm_quota_counts_the_tokens_used(gateway_factory, sim) -> None:
    gw = await gateway_factory(gateway_config([deployment("metered", sim.base_url, tpm=100),
                                               deployment("spare", sim.base_url)]))
    client = gw.client()
    # About 9 tokens each, routed at random between the two: `metered` needs 12 calls to reach its quota,
    # and is offered far more than that (with 30 calls, 1 run in 10 fell short and failed).
    for _ in range(80):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    calls = await gw.logged_calls(80)
    metered = [c for c in calls if c["deployment"] == "metered"]
    used = sum(c["prompt_tokens"] + c["completion_tokens"] for c in metered)
    # Admitted while the minute's count is below the quota: over by at most one call's reservation (~30 tokens).
    assert 100 <= used <= 100 + 30, used
    assert len(calls) == 80 and all(c["status"] == 200 for c in calls), "the rest went to `spare`"


async def test_quotas_hold_across_replicas_sharing_redis(gateway_factory, sim, tmp_path,
                                                         redis_server: RedisServer) -> None:
    replicas = []
    for name in ("a", "b"):
        config = gateway_config([deployment("provider", sim.base_url, rpm=5)])
        config["ledger"] = {"spool_dir": str(tmp_path / f"spool-{name}"), "store": f"sqlite:///{tmp_path / 'l.db'}"}
        config["redis"] = {"url": redis_server.url, "on_unavailable": "fail-closed", "timeout_ms": 2000}
        replicas.append(await gateway_factory(config))
    answered = 0
    refused = 0
    for i in range(16):
        try:
            await replicas[i % 2].client(api_key=KEY).chat.completions.create(model=MODEL, messages=MESSAGES)
            answered += 1
        except openai.RateLimitError as exc:
            assert exc.status_code == 429 and "provider: at its rpm/tpm quota" in str(exc)
            refused += 1
    assert answered == 5 and refused == 11, "one quota for the pair, not one per replica"
