"""Virtual keys through the LiteLLM-compatible admin API: created, used, limited, capped, updated and revoked."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.http.admin_litellm import KEY_RESPONSE_DEFAULTS
from gateway.http.admin_off import ADMIN_PATHS
from tests.gateway.conftest import KEY, MODEL, RunningGateway, deployment, gateway_config

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]


def governed(sim: Any, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    config = gateway_config([deployment("sim-a", sim.base_url)])
    config["models"][0].update(input_cost_per_token=0.001, output_cost_per_token=0.002)
    config["ledger"] = {"spool_dir": str(tmp_path / "spool"), "store": f"sqlite:///{tmp_path / 'ledger.db'}",
                        "flush_interval": 0.05}
    config.update(extra)
    return config


async def admin(gw: RunningGateway, method: str, path: str, body: Any = None, key: str = KEY) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status, await resp.json(content_type=None)


async def ledger_holds(gw: RunningGateway, calls: int) -> None:
    """Flush until the ledger holds `calls` records: a call is recorded once its answer is sent, which the client
    may see first."""
    for _ in range(100):
        await gw.state.governance.ledger.flush()
        _, report = await admin(gw, "GET", "/spend/report?group_by=day")
        if sum(r["requests"] for r in report["data"]) >= calls:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the ledger never held {calls} records")


@pytest.fixture
async def gov(gateway_factory, sim, tmp_path) -> RunningGateway:
    return await gateway_factory(governed(sim, tmp_path))


async def test_generated_key_calls_models_and_is_stored_hashed(gov, tmp_path) -> None:
    status, made = await admin(gov, "POST", "/key/generate", {"key_alias": "alice", "models": [MODEL],
                                                              "max_budget": 10, "budget_duration": "30d"})
    assert status == 200, made
    assert made["key"].startswith("sk-llmp-") and made["key_name"].endswith(made["key"][-4:])
    # As LiteLLM's generate_key_helper_fn answers: `token` is the key itself, `token_id` its stored hash.
    assert made["token"] == made["key"] and made["token_id"] == hashlib.sha256(made["key"].encode()).hexdigest()
    assert made["max_budget"] == 10 and made["budget_duration"] == "30d" and made["models"] == [MODEL]
    reply = await gov.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert reply.usage.completion_tokens == 8
    assert made["key"].encode() not in (tmp_path / "ledger.db").read_bytes(), "keys are stored hashed only"
    await gov.state.governance.ledger.flush()
    status, info = await admin(gov, "GET", f"/key/info?key={made['key']}")
    assert status == 200 and info["info"]["key_alias"] == "alice"
    assert info["info"]["spend"] == pytest.approx(reply.usage.prompt_tokens * 0.001 + 8 * 0.002)


async def test_admin_api_needs_the_master_key(gov) -> None:
    _, made = await admin(gov, "POST", "/key/generate", {})
    status, body = await admin(gov, "POST", "/key/generate", {}, key=made["key"])
    assert status == 403 and "master key" in body["error"]["message"]
    status, body = await admin(gov, "GET", "/key/list", key="sk-wrong-key-0000000000")
    assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_bad_admin_input_names_the_field(gov) -> None:
    status, body = await admin(gov, "POST", "/key/generate", {"rpm_limit": "lots"})
    assert status == 400 and body["error"]["message"].startswith("rpm_limit:") and body["error"]["param"] == "rpm_limit"
    status, body = await admin(gov, "POST", "/key/generate", {"budget_duration": "monthly"})
    assert status == 400 and "budget_duration" in body["error"]["message"] and "30d" in body["error"]["message"]
    status, body = await admin(gov, "POST", "/key/generate", {"team_id": "nobody"})
    assert status == 400 and "team `nobody` does not exist" in body["error"]["message"]
    status, body = await admin(gov, "GET", "/key/info?key=sk-not-a-key")
    assert status == 404
    status, body = await admin(gov, "POST", "/key/generate", {"tags": ["a"], "key_alias": "x"})
    assert status == 200 and body["ignored_fields"] == ["tags"], "LiteLLM fields we do not use are accepted"


async def test_deleted_key_is_refused_and_listed_as_deleted(gov) -> None:
    _, made = await admin(gov, "POST", "/key/generate", {"key_alias": "temp"})
    client = gov.client(api_key=made["key"])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    status, body = await admin(gov, "POST", "/key/delete", {"keys": [made["key"]]})
    assert status == 200 and body == {"deleted_keys": [made["token_id"]]}
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    _, listed = await admin(gov, "GET", "/key/list")
    assert made["token_id"] not in listed["keys"]


async def test_expired_key_and_disallowed_model_are_refused(gov) -> None:
    _, made = await admin(gov, "POST", "/key/generate", {"expires": "2001-01-01T00:00:00Z"})
    with pytest.raises(openai.AuthenticationError, match="expired"):
        await gov.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    _, made = await admin(gov, "POST", "/key/generate", {"models": ["other-model"]})
    # LiteLLM's answer (proxy/auth/auth_checks.py@v1.106.2 `_can_object_call_model`): 403 key_model_access_denied.
    with pytest.raises(openai.PermissionDeniedError, match="is not available for this API key"):
        await gov.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_team_limits_apply_to_its_keys_and_the_tighter_limit_wins(gov) -> None:
    status, team = await admin(gov, "POST", "/team/new", {"team_id": "ml", "rpm_limit": 2})
    assert status == 200 and team["rpm_limit"] == 2
    _, a = await admin(gov, "POST", "/key/generate", {"team_id": "ml", "rpm_limit": 100})
    _, b = await admin(gov, "POST", "/key/generate", {"team_id": "ml"})
    await gov.client(api_key=a["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gov.client(api_key=b["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="team `ml`: rpm_limit 2") as refused:
        await gov.client(api_key=a["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    _, c = await admin(gov, "POST", "/key/generate", {"rpm_limit": 1})
    await gov.client(api_key=c["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="this key: rpm_limit 1"):
        await gov.client(api_key=c["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_update_changes_limits_at_once_on_this_replica(gov) -> None:
    _, made = await admin(gov, "POST", "/key/generate", {"rpm_limit": 1})
    client = gov.client(api_key=made["key"])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    status, updated = await admin(gov, "POST", "/key/update", {"key": made["key"], "rpm_limit": None})
    assert status == 200 and updated["rpm_limit"] is None
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_caps_refuse_with_a_400_that_names_the_cap(gateway_factory, sim, tmp_path) -> None:
    config = governed(sim, tmp_path)
    config["models"][0]["max_request_bytes"] = 2000
    gw = await gateway_factory(config)
    _, made = await admin(gw, "POST", "/key/generate", {"max_tokens": 16, "max_request_bytes": 1000})
    client = gw.client(api_key=made["key"])
    with pytest.raises(openai.BadRequestError, match="over the key cap: max_tokens is 16") as err:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=17)
    assert err.value.body["param"] == "max_tokens"
    big = [{"role": "user", "content": "x" * 1500}]
    with pytest.raises(openai.BadRequestError, match="over the key cap: max_request_bytes is 1000"):
        await client.chat.completions.create(model=MODEL, messages=big)
    huge = [{"role": "user", "content": "x" * 3000}]
    with pytest.raises(openai.BadRequestError, match=r"models\[sim-model\].max_request_bytes is 2000"):
        await gw.client().chat.completions.create(model=MODEL, messages=huge)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)


async def test_parallel_limit_counts_calls_in_flight(gateway_factory, sim_factory, tmp_path) -> None:
    import asyncio

    slow = await sim_factory(name="slow", ttft=0.3)
    gw = await gateway_factory(governed(slow, tmp_path))
    _, made = await admin(gw, "POST", "/key/generate", {"max_parallel_requests": 2})
    client = gw.client(api_key=made["key"])
    results = await asyncio.gather(*(client.chat.completions.create(model=MODEL, messages=MESSAGES)
                                     for _ in range(4)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(refused) == 2 and "max_parallel_requests 2" in str(refused[0])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # slots were freed


async def test_spend_report_by_key_team_model_and_day(gov) -> None:
    await admin(gov, "POST", "/team/new", {"team_id": "search"})
    _, made = await admin(gov, "POST", "/key/generate", {"team_id": "search", "key_alias": "bob"})
    for _ in range(3):
        await gov.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gov.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    await ledger_holds(gov, 4)
    _, by_team = await admin(gov, "GET", "/spend/report?group_by=team")
    rows = {r["team_id"]: r for r in by_team["data"]}
    assert rows["search"]["requests"] == 3 and rows[None]["requests"] == 1
    _, by_key = await admin(gov, "GET", "/spend/report?group_by=key")
    assert {r["key_alias"]: r["requests"] for r in by_key["data"]} == {"bob": 3, None: 1}
    _, by_model = await admin(gov, "GET", "/spend/report?group_by=model")
    assert by_model["data"][0]["model"] == MODEL and by_model["data"][0]["completion_tokens"] == 32
    _, by_day = await admin(gov, "GET", "/spend/report?group_by=day")
    assert len(by_day["data"]) == 1 and by_day["total_spend"] > 0
    status, body = await admin(gov, "GET", "/spend/report?group_by=customer")
    assert status == 400 and body["error"]["param"] == "group_by"


async def test_embedded_limits_are_announced_at_start(gov) -> None:
    events = [line for line in gov.log_buffer.getvalue().splitlines() if b'"governance"' in line]
    assert events and b"in-process counters" in events[0]


async def test_a_key_pinned_to_a_residency_zone_only_reaches_that_zone(gateway_factory, sim_factory, tmp_path) -> None:
    us, eu = await sim_factory(name="us"), await sim_factory(name="eu")
    config = governed(us, tmp_path)
    config["models"][0]["deployments"] = [deployment("us-pool", us.base_url, residency="us", region="us-east-1"),
                                          deployment("eu-pool", eu.base_url, residency="eu", region="eu-west-1")]
    gw = await gateway_factory(config)  # a gateway without a zone of its own (laptop, global test bed)
    _, made = await admin(gw, "POST", "/key/generate", {"residency": "eu"})
    for _ in range(6):
        await gw.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert eu.stats.requests == 6 and us.stats.requests == 0
    _, nowhere = await admin(gw, "POST", "/key/generate", {"residency": "apac"})
    with pytest.raises(openai.PermissionDeniedError, match="no deployment in residency zone `apac`"):
        await gw.client(api_key=nowhere["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_a_zone_gateway_refuses_keys_pinned_elsewhere(gateway_factory, sim, tmp_path) -> None:
    config = governed(sim, tmp_path)
    config["gateway"]["residency"] = "us"
    config["models"][0]["deployments"][0]["residency"] = "us"
    gw = await gateway_factory(config)
    _, made = await admin(gw, "POST", "/key/generate", {"residency": "eu"})
    with pytest.raises(openai.PermissionDeniedError, match="pinned to residency zone `eu`; this gateway serves `us`"):
        await gw.client(api_key=made["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)


# ---- LiteLLM's key fields, a key reading itself, users ---------------------------------------------

async def test_generate_answers_every_field_of_litellms_generate_key_response(gov) -> None:
    status, made = await admin(gov, "POST", "/key/generate", {"tags": ["nightly"], "soft_budget": 5})
    assert status == 200 and set(KEY_RESPONSE_DEFAULTS) <= set(made), set(KEY_RESPONSE_DEFAULTS) - set(made)
    assert len(KEY_RESPONSE_DEFAULTS) == 60  # LiteLLM 1.106.2's GenerateKeyResponse.model_fields
    # Unsupported fields carry LiteLLM's defaults, with LiteLLM's types; harmless ones given are echoed.
    assert made["spend"] == 0 and made["allowed_routes"] == [] and made["config"] == {} and made["tpd_limit"] is None
    assert made["tags"] == ["nightly"] and made["ignored_fields"] == ["soft_budget", "tags"]
    status, updated = await admin(gov, "POST", "/key/update", {"key": made["key"], "rpm_limit": 7})
    assert status == 200 and updated["key"] == made["key"] and updated["rpm_limit"] == 7
    assert updated["token_id"] == made["token_id"] and set(KEY_RESPONSE_DEFAULTS) <= set(updated)


@pytest.mark.parametrize("field,value", [("allowed_routes", ["/key/generate"]), ("model_max_budget", {MODEL: 1}),
                                         ("tpd_limit", 1000), ("key_type", "management"), ("permissions", {"x": 1}),
                                         ("organization_id", "org-1"), ("spend", 3.5)])
async def test_an_unsupported_field_that_would_widen_a_key_is_refused_by_name(gov, field, value) -> None:
    for path, body in (("/key/generate", {field: value}), ("/team/new", {field: value}),
                       ("/user/new", {field: value})):
        status, answer = await admin(gov, "POST", path, body)
        assert status == 400 and answer["error"]["param"] == field, (path, answer)
        assert "not supported" in answer["error"]["message"]
    _, listed = await admin(gov, "GET", "/key/list")
    assert listed["total_count"] == 0, "nothing was made"


async def test_a_virtual_key_reads_its_own_key_team_and_user_and_nothing_else(gov) -> None:
    await admin(gov, "POST", "/team/new", {"team_id": "search"})
    await admin(gov, "POST", "/team/new", {"team_id": "ads"})
    _, mine = await admin(gov, "POST", "/key/generate", {"team_id": "search", "user_id": "ana"})
    _, sibling = await admin(gov, "POST", "/key/generate", {"user_id": "ana"})
    _, other = await admin(gov, "POST", "/key/generate", {"team_id": "ads", "user_id": "bob"})
    key = mine["key"]
    for path in ("/key/info", f"/key/info?key={mine['token_id']}", f"/key/info?key={sibling['token_id']}",
                 "/team/info?team_id=search", "/user/info", "/user/info?user_id=ana", "/model/info"):
        status, body = await admin(gov, "GET", path, key=key)
        assert status == 200, (path, body)
    for path in (f"/key/info?key={other['token_id']}", "/team/info?team_id=ads", "/user/info?user_id=bob"):
        status, body = await admin(gov, "GET", path, key=key)
        assert status == 403 and body["error"]["type"] == "permission_error", (path, body)
    for method, path in (("GET", "/key/list"), ("GET", "/spend/logs"), ("POST", "/user/new"),
                         ("GET", "/user/list"), ("POST", "/team/member_add")):
        status, _ = await admin(gov, method, path, {}, key=key)
        assert status == 403, path


async def test_model_info_shows_where_models_are_served_to_the_admin_only(gov, sim) -> None:
    # As /health: a replica's address is the platform's to know, not every key holder's.
    _, made = await admin(gov, "POST", "/key/generate", {})
    _, as_admin = await admin(gov, "GET", "/model/info")
    _, as_key = await admin(gov, "GET", "/model/info", key=made["key"])
    assert [m["litellm_params"]["api_base"] for m in as_admin["data"]] == [sim.base_url]
    assert [m["litellm_params"] for m in as_key["data"]] == [{"model": f"openai/{MODEL}"}]
    assert sim.base_url.split("//")[1] not in str(as_key)


async def test_a_users_budget_spans_its_keys_and_is_raised_from_the_ledger(gateway_factory, sim, tmp_path) -> None:
    config = governed(sim, tmp_path)
    config["ledger"]["budget_sync_seconds"] = 60
    first = await gateway_factory(config)
    _, user = await admin(first, "POST", "/user/new", {"user_id": "ana", "max_budget": 0.05,
                                                       "budget_duration": "30d"})
    _, second_key = await admin(first, "POST", "/key/generate", {"user_id": "ana"})
    calls = 0
    with pytest.raises(openai.UnprocessableEntityError, match="user `ana`"):
        for calls in range(1, 100):
            key = user["key"] if calls % 2 else second_key["key"]
            await first.client(api_key=key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert calls >= 2, "both keys spent from the one budget"
    await first.runner.cleanup()  # the ledger is flushed; in-process counters are gone
    again = await gateway_factory(config)  # its budget sync raises the user's counter from the ledger
    with pytest.raises(openai.UnprocessableEntityError, match="user `ana`"):
        await again.client(api_key=second_key["key"]).chat.completions.create(model=MODEL, messages=MESSAGES)
    _, info = await admin(again, "GET", "/user/info?user_id=ana")
    assert info["user_info"]["spend"] > 0 and {k["token"] for k in info["keys"]} == {
        user["token_id"], second_key["token_id"]}


@pytest.mark.parametrize("field,value", [("residency", "eu"), ("blocked", True)])
async def test_a_key_field_sent_for_a_user_is_refused_not_dropped(gov, field, value) -> None:
    status, body = await admin(gov, "POST", "/user/new", {"user_id": "ana", field: value})
    assert status == 400 and body["error"]["param"] == field
    await admin(gov, "POST", "/user/new", {"user_id": "ana"})
    status, body = await admin(gov, "POST", "/user/update", {"user_id": "ana", field: value})
    assert status == 400 and body["error"]["param"] == field


async def test_a_bad_key_field_in_user_new_is_a_400_and_leaves_no_user(gov) -> None:
    status, body = await admin(gov, "POST", "/user/new", {"user_id": "ana", "duration": "727335"})
    assert status == 400 and body["error"]["param"] == "duration", body
    status, _ = await admin(gov, "GET", "/user/info?user_id=ana")
    assert status == 404


async def test_admin_paths_are_the_same_with_governance_off_and_on(gov, gateway_factory, sim) -> None:
    # Without governance every admin path still answers (with how to turn it on): the list in http/admin_off.py
    # is exactly what a governed gateway serves, and nothing else differs.
    def paths(gw: RunningGateway) -> set[tuple[str, str]]:
        return {(r.method, r.resource.canonical) for r in gw.app.router.routes()
                if r.resource is not None and r.method != "HEAD"}
    off = await gateway_factory(gateway_config([deployment("d", sim.base_url)]))
    assert set(ADMIN_PATHS) <= paths(off)
    assert paths(gov) == paths(off)


async def test_an_admin_call_without_governance_says_which_section_turns_it_on(gateway_factory, sim) -> None:
    gw = await gateway_factory(gateway_config([deployment("d", sim.base_url)]))
    status, body = await admin(gw, "GET", "/key/list")
    assert status == 501 and body["error"]["code"] == "governance_off"
    assert body["error"]["message"].startswith("GET /key/list needs governance")
    assert "add a `ledger:` section" in body["error"]["message"]
