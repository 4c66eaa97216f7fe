"""A LiteLLM config.yaml with a database turns governance on as is: LiteLLM's key scripts and limits work."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from gateway.config.errors import ConfigError
from gateway.config.loading import parse_config
from tests.gateway.conftest import KEY
from tests.gateway.servers import RedisServer
from tests.gateway.test_keys_admin import admin

MESSAGES = [{"role": "user", "content": "hi"}]


def litellm_doc(sim_url: str, database_url: str, redis_port: int | None = None, password: str | None = None) -> dict:
    router: dict[str, Any] = {"routing_strategy": "simple-shuffle", "num_retries": 0}
    if redis_port is not None:
        router.update(redis_host="127.0.0.1", redis_port=redis_port)
        if password is not None:
            router["redis_password"] = password
    return {
        "model_list": [{"model_name": "llama", "litellm_params": {
            "model": "hosted_vllm/sim-model", "api_base": sim_url,
            "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}}],
        "router_settings": router,
        "general_settings": {"master_key": KEY, "database_url": database_url},
    }


def test_database_url_turns_governance_on_and_redis_settings_share_the_limits(tmp_path) -> None:
    config = parse_config(litellm_doc("http://127.0.0.1:9/v1", "postgresql://llmp@db/llmp", 6380, "p@ss/word"))
    assert config.ledger is not None and config.ledger.store == "postgresql://llmp@db/llmp"
    assert config.redis is not None and config.redis.url == "redis://:p%40ss%2Fword@127.0.0.1:6380/0"
    deployment = config.model("llama").deployments[0]
    assert (deployment.input_cost_per_token, deployment.output_cost_per_token) == (0.001, 0.002)
    without = litellm_doc("http://127.0.0.1:9/v1", "postgresql://llmp@db/llmp")
    del without["general_settings"]["database_url"]
    assert parse_config(without).ledger is None, "no database: the master key only, as LiteLLM"


def test_a_database_url_that_is_not_a_url_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"general_settings\.database_url"):
        parse_config(litellm_doc("http://127.0.0.1:9/v1", ["not", "a", "url"]))  # type: ignore[arg-type]


def test_a_litellm_config_sets_the_spool_directory_and_the_default_is_per_database(monkeypatch) -> None:
    from gateway.governance.ledger.spool import default_spool_dir

    doc = litellm_doc("http://127.0.0.1:9/v1", "postgresql://llmp@db/llmp")
    doc["general_settings"]["llmp_spool_dir"] = "os.environ/LLMP_SPOOL_DIR"
    monkeypatch.setenv("LLMP_SPOOL_DIR", "/var/lib/llmp/spool")
    config = parse_config(doc)
    assert config.ledger is not None and config.ledger.spool_dir == "/var/lib/llmp/spool"
    del doc["general_settings"]["llmp_spool_dir"]
    assert parse_config(doc).ledger.spool_dir is None  # type: ignore[union-attr]
    one, other = default_spool_dir("postgresql://llmp@db/llmp"), default_spool_dir("postgresql://llmp@db/other")
    assert one != other and one.startswith("llmp-spool/")
    assert default_spool_dir("postgresql://llmp:secret@db/llmp") == one, "a password never names a directory"
    doc["general_settings"]["llmp_spool_dir"] = 5
    with pytest.raises(ConfigError, match=r"general_settings\.llmp_spool_dir"):
        parse_config(doc)


@pytest.mark.parametrize(("field", "value"), [("rpm", -1), ("tpm", -5), ("rpm", 10**30), ("tpm", "many"),
                                              ("max_tokens", 0), ("max_tokens", "lots")])
def test_negative_or_absurd_deployment_limits_are_refused_naming_the_litellm_key(field: str, value: Any) -> None:
    doc = litellm_doc("http://127.0.0.1:9/v1", "postgresql://llmp@db/llmp")
    doc["model_list"][0]["litellm_params"][field] = value
    with pytest.raises(ConfigError, match=rf"model_list\[0\]\.litellm_params\.{field}: "):
        parse_config(doc)


async def test_litellm_key_scripts_and_limits_work_on_a_litellm_config(gateway_factory, sim, tmp_path,
                                                                       redis_server: RedisServer) -> None:
    doc = litellm_doc(sim.base_url, f"sqlite:///{tmp_path / 'ledger.db'}", redis_server.port)
    gw = await gateway_factory(parse_config(doc))
    status, team = await admin(gw, "POST", "/team/new", {"team_id": "ml", "max_budget": 10})
    assert status == 200, team
    status, made = await admin(gw, "POST", "/key/generate", {"team_id": "ml", "rpm_limit": 2, "models": ["llama"]})
    assert status == 200, made
    client = gw.client(api_key=made["key"])
    for _ in range(2):
        await client.chat.completions.create(model="llama", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="rpm_limit 2"):
        await client.chat.completions.create(model="llama", messages=MESSAGES)
    assert b"redis (shared by replicas" in gw.log_buffer.getvalue()


async def test_a_model_without_a_price_is_named_once_at_start_when_budgets_are_on(gateway_factory, sim,
                                                                                  tmp_path) -> None:
    # LiteLLM prices unknown models from its model cost map; the gateway has none: an unpriced model costs $0,
    # so no budget ever binds on it, and the operator is told at start.
    priced = {"model_name": "priced", "litellm_params": {"model": "hosted_vllm/sim-model", "api_base": sim.base_url,
                                                         "input_cost_per_token": 0.001}}
    free = {"model_name": "free", "litellm_params": {"model": "hosted_vllm/sim-model", "api_base": sim.base_url}}
    gw = await gateway_factory(parse_config({
        "model_list": [priced, free, {**free, "model_info": {"id": "free-2"}}],
        "general_settings": {"master_key": KEY, "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                             "llmp_spool_dir": str(tmp_path / "spool")}}))
    lines = [orjson.loads(line) for line in gw.log_buffer.getvalue().splitlines() if line]
    assert [line["model"] for line in lines if line.get("event") == "model_unpriced"] == ["free"]


async def test_internal_users_get_the_configured_budget_unless_they_name_one(gateway_factory, sim, tmp_path) -> None:
    # LiteLLM's new_user (internal_user_endpoints.py@v1.106.2): an internal_user with no max_budget /
    # budget_duration gets litellm_settings.max_internal_user_budget / internal_user_budget_duration.
    entry = {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/sim-model", "api_base": sim.base_url}}
    gw = await gateway_factory(parse_config({
        "model_list": [entry], "litellm_settings": {"max_internal_user_budget": 5, "internal_user_budget_duration":
                                                    "30d"},
        "general_settings": {"master_key": KEY, "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                             "llmp_spool_dir": str(tmp_path / "spool")}}))
    for body, expected in (({"user_id": "ana"}, (5, "30d")), ({"user_id": "bob", "max_budget": 50}, (50, "30d")),
                           ({"user_id": "cy", "user_role": "internal_user_viewer"}, (None, None))):
        status, made = await admin(gw, "POST", "/user/new", body)
        assert status == 200, made
        _, info = await admin(gw, "GET", f"/user/info?user_id={body['user_id']}")
        assert (info["user_info"]["max_budget"], info["user_info"]["budget_duration"]) == expected, body


def test_internal_user_budget_settings_are_checked_by_name() -> None:
    entry = {"model_name": "m", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:9/v1"}}
    with pytest.raises(ConfigError, match=r"litellm_settings\.internal_user_budget_duration: '3 weeks' is not a dur"):
        parse_config({"model_list": [entry], "litellm_settings": {"internal_user_budget_duration": "3 weeks"}})
    with pytest.raises(ConfigError, match=r"litellm_settings\.max_internal_user_budget: -1 is not a budget"):
        parse_config({"model_list": [entry], "litellm_settings": {"max_internal_user_budget": -1}})
    config = parse_config({"model_list": [entry], "litellm_settings": {"default_max_internal_user_budget": 2}})
    assert config.keys.internal_user_max_budget == 2.0
