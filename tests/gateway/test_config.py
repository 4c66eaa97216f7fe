"""Config: the native format, LiteLLM's config.yaml as is, and errors that name the field."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.loading import load_config, parse_config
from gateway.http.auth import check_master_key
from tests.gateway.conftest import KEY as KEY_FOR_CLI
from tests.gateway.servers import free_port, wait_port

EXAMPLES = Path(__file__).resolve().parents[2] / "gateway" / "examples"
ENV = ["LLMP_MASTER_KEY", "LLMP_PEER_KEY_US_WEST_2", "TOGETHER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
       "VLLM_API_KEY", "LITELLM_MASTER_KEY"]


@pytest.fixture
def env(monkeypatch):
    for name in ENV:
        monkeypatch.setenv(name, f"value-of-{name}")


def test_native_example_loads(env) -> None:
    config = load_config(EXAMPLES / "native.yaml")
    assert config.gateway.region == "us-east-1" and config.gateway.residency == "us"
    llama = config.model("llama-3.1-8b")
    assert llama.max_tokens == 4096 and llama.fallbacks == ["gpt-4o-mini"]
    pool = llama.deployments[0]
    assert pool.replicas.endpoint_slices.service == "vllm-llama-3-1-8b" and pool.replicas.endpoint_slices.port == 8000
    assert llama.deployments[3].tier == "fallback" and llama.deployments[3].api_key == "value-of-TOGETHER_API_KEY"


def test_litellm_example_loads_as_is(env) -> None:
    config = load_config(EXAMPLES / "litellm.yaml")
    assert config.gateway.master_key == "value-of-LITELLM_MASTER_KEY"
    assert config.gateway.routing == "weighted" and config.gateway.retries.attempts == 2
    # allowed_fails: 3 -> the 4th failure opens the circuit (LiteLLM cools down on fails > allowed_fails)
    assert config.gateway.circuit_breaker.failures == 4 and config.gateway.circuit_breaker.cooldown == 30
    llama = config.model("llama-3.1-8b")
    assert [d.weight for d in llama.deployments] == [2, 1]
    first = llama.deployments[0]
    assert first.model == "meta-llama/Llama-3.1-8B-Instruct" and first.api_base == "http://127.0.0.1:8001/v1"
    assert first.rpm == 600 and first.timeouts.total == 60 and first.timeouts.idle == 30
    assert first.region == "us-east-1" and first.residency == "us"
    assert llama.fallbacks == ["gpt-4o-mini"]
    assert config.model("gpt-4o-mini").deployments[0].api_base == "https://api.openai.com/v1"
    claude = config.model("claude-haiku").deployments[0]
    assert claude.provider == "anthropic" and claude.api_base == "https://api.anthropic.com/v1"


def native(**override):
    doc = {"version": 1, "gateway": {"master_key": "k"},
           "models": [{"alias": "m", "deployments": [{"name": "d", "model": "m", "api_base": "http://x/v1"}]}]}
    doc.update(override)
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        (native(models=[{"alias": "m", "deployments": [{"name": "d", "model": "m"}]}]),
         "models[0].deployments[0]: give exactly one of 'api_base' or 'replicas'"),
        (native(models=[{"alias": "m", "deployments": [{"name": "d", "model": "m", "api_base": "x"}]}]),
         "models[0].deployments[0].api_base: 'x' is not an http(s) URL"),
        (native(models=[{"alias": "m", "deployments": [{"name": "d", "model": "m", "replicas": {
            "endpoint_slices": {"service": "s", "namespace": "n", "port": [1]}}}]}]),
         "models[0].deployments[0].replicas.endpoint_slices.port"),
        (native(models=[{"alias": "m", "deployments": [{"name": "d", "model": "m", "api_base": "http://x",
                                                        "wieght": 2}]}]),
         "models[0].deployments[0].wieght: unknown field"),
        (native(gateway={"routing": "fastest"}), "gateway.routing: Input should be 'least-busy' or 'weighted'"),
        (native(gateway={"residency": "eu"}), "deployment 'd': 'residency' is required when gateway.residency is set"),
        (native(models=[{"alias": "m", "fallbacks": ["nope"], "deployments": [
            {"name": "d", "model": "m", "api_base": "http://x"}]}]), "fallback 'nope' is not a model alias"),
        (native(gateway={"master_key": "os.environ/LLMP_TEST_UNSET_VAR"}),
         "gateway.master_key: environment variable LLMP_TEST_UNSET_VAR is not set"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "vertex_ai/gemini-pro"}}]},
         "model_list[0].litellm_params.model: provider 'vertex_ai' is not supported"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m"}}]},
         "model_list[0].litellm_params.api_base: required for provider 'hosted_vllm'"),
        ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
          "router_settings": {"routing_strategy": "magic"}}, "router_settings.routing_strategy: 'magic' is not one of"),
    ],
)
def test_bad_config_names_the_field_and_the_problem(doc, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert message in str(err.value)


@pytest.mark.parametrize("key, problem", [
    ("sk-1234", "well-known default"),
    ("sk-llmp-local-EXAMPLE-0000000000000000000000000", "example key"),
    ("sk-short-but-random-x9", "at least 32"),
])
def test_weak_master_keys_are_refused_unless_dev(key, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        check_master_key(key, dev=False)
    check_master_key(key, dev=True)


def run_gateway(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_reports_config_errors_in_one_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(native(models=[{"alias": "m", "deployments": [{"name": "d", "model": "m",
                                                                                 "api_base": "ftp://x"}]}])))
    result = run_gateway("--config", str(bad))
    assert result.returncode == 2
    assert "config error" in result.stderr and "api_base: 'ftp://x' is not an http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed")
    result = run_gateway("--config", str(broken))
    assert result.returncode == 2 and "not valid YAML at line" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_an_example_key_outside_dev(tmp_path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(native(gateway={"master_key": "sk-llmp-local-EXAMPLE-000000000000000000000"})))
    result = run_gateway("--config", str(config), "--port", "0")
    assert result.returncode == 2 and "example key" in result.stderr and "Traceback" not in result.stderr


def litellm_file(tmp_path: Path, **sections: object) -> Path:
    doc = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": "http://x/v1"}}],
           "general_settings": {"master_key": "sk-llmp-test-0123456789abcdef0123456789abcdef"}}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **value}  # type: ignore[dict-item]
        else:
            doc[name] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("sections, setting", [
    ({"guardrails": [{"guardrail_name": "pii", "litellm_params": {"guardrail": "presidio", "mode": "pre_call"}}]},
     "guardrails: not supported by the gateway: guardrails change what is answered"),
    ({"general_settings": {"custom_auth": "custom_auth.user_api_key_auth"}},
     "general_settings.custom_auth: not supported by the gateway: a custom Python auth hook decides who may call"),
    ({"general_settings": {"pass_through_endpoints": [{"path": "/v1/rerank", "target": "https://x/v1/rerank"}]}},
     "general_settings.pass_through_endpoints: not supported"),
    ({"router_settings": {"provider_budget_config": {"openai": {"budget_limit": 100, "time_period": "1d"}}}},
     "router_settings.provider_budget_config: not supported"),
    ({"router_settings": {"enable_tag_filtering": True}}, "router_settings.enable_tag_filtering: not supported"),
    ({"litellm_settings": {"callbacks": ["custom_callbacks.proxy_handler_instance"]}},
     "litellm_settings.callbacks: not supported by the gateway: a plug-in (a guardrail, an interception, a Python "
     "hook) may rewrite or reject calls"),
    ({"litellm_settings": {"callbacks": ["otel", "presidio"]}}, "litellm_settings.callbacks: not supported"),
])
def test_settings_that_change_who_may_call_or_what_is_answered_are_refused_naming_setting_and_file(
        tmp_path, sections, setting) -> None:
    path = litellm_file(tmp_path, **sections)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith(f"{path}: {setting}")


def test_harmless_settings_are_listed_once_as_ignored_and_settings_turned_off_are_not_refused(tmp_path) -> None:
    from gateway.config.loading import load

    path = litellm_file(tmp_path, litellm_settings={"success_callback": ["langfuse"], "cache": True,
                                                    "callbacks": ["otel", "prometheus"]},
                        guardrails=[], router_settings={"enable_tag_filtering": False})
    path.write_text(path.read_text() + "model_list_extra: 1\n")
    lines = sorted(i.line() for i in load(path).ignored)
    assert [line.split(" ignored: ")[0] for line in lines] == [
        "litellm_settings.cache", "litellm_settings.callbacks", "litellm_settings.success_callback",
        "model_list_extra"]
    assert lines[2] == ("litellm_settings.success_callback ignored: callbacks are LiteLLM's logging integrations; "
                        "the gateway writes one structured call log line per call and serves Prometheus metrics "
                        "on /metrics")
    assert lines[3] == "model_list_extra ignored: not a LiteLLM setting this gateway knows"


def test_litellm_master_key_and_environment_variables_are_read_as_litellm_reads_them(monkeypatch) -> None:
    doc = {"model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {"model": "gpt-4o-mini",
                                                                           "api_key": "os.environ/MY_OPENAI_KEY"}}],
           "environment_variables": {"MY_OPENAI_KEY": "sk-from-the-file"}}
    monkeypatch.setenv("LITELLM_MASTER_KEY", "from-the-environment")
    config = parse_config(doc)
    assert config.gateway.master_key == "from-the-environment"
    dep = config.model("gpt-4o-mini").deployments[0]
    assert (dep.provider, dep.model, dep.api_base, dep.api_key) == (
        "openai", "gpt-4o-mini", "https://api.openai.com/v1", "sk-from-the-file")
    doc["general_settings"] = {"master_key": "from-the-file"}
    assert parse_config(doc).gateway.master_key == "from-the-file", "general_settings.master_key wins"


def test_litellm_routing_names_translate_to_native_ones() -> None:
    doc = {"model_list": [
        {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/meta/llama", "api_base": "http://v/v1",
                                                   "temperature": 0.2, "max_tokens": 64}},
        {"model_name": "long", "litellm_params": {"model": "hosted_vllm/meta/llama-128k", "api_base": "http://v/v1"}},
        {"model_name": "openai/*", "litellm_params": {"model": "openai/*"}}],
        "router_settings": {"model_group_alias": {"gpt-4": "llama", "old": {"model": "openai/gpt-4o", "hidden": True}},
                            "context_window_fallbacks": [{"llama": ["long"]}], "default_fallbacks": ["gpt-4"]}}
    config = parse_config(doc)
    llama = config.model("llama")
    assert llama.context_window_fallbacks == ["long"] and llama.fallbacks == []  # `gpt-4` is llama itself
    assert config.model("long").fallbacks == ["llama"], "default_fallbacks, through the alias"
    assert llama.deployments[0].defaults == {"temperature": 0.2, "max_tokens": 64} and llama.max_tokens is None
    assert config.model("openai/*").deployments[0].model == "*"
    assert config.model_aliases["old"].model == "openai/gpt-4o" and config.model_aliases["old"].hidden


@pytest.mark.parametrize("doc, message", [
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": "ftp://x"}}]},
     "model_list[0].litellm_params.api_base: 'ftp://x' is not an http(s) URL"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
      "router_settings": {"model_group_alias": {"gpt-4": "nothing"}}},
     "model_aliases.gpt-4: 'nothing' is not a model alias"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
      "router_settings": {"allowed_fails": -1}}, "router_settings.allowed_fails: -1 is not a whole number"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}],
      "router_settings": {"context_window_fallbacks": [{"x": ["m"]}]}},
     "router_settings.context_window_fallbacks[0]: 'x' is not a model_name in model_list"),
])
def test_litellm_config_errors_name_the_litellm_path(doc, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert message in str(err.value)


def test_cli_names_general_settings_master_key_and_the_file(tmp_path) -> None:
    path = litellm_file(tmp_path, general_settings={"master_key": "sk-1234"})
    result = run_gateway("--config", str(path), "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}: general_settings.master_key (or the LITELLM_MASTER_KEY variable): is a well-known default" \
        in result.stderr


def test_cli_logs_each_ignored_litellm_setting_once_as_a_json_line(tmp_path) -> None:
    import json
    import signal

    path = litellm_file(tmp_path, litellm_settings={"success_callback": ["langfuse"], "set_verbose": True})
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path), "--port", "0",
                             "--host", "127.0.0.1"], stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    lines += proc.stderr.read().splitlines()  # up to exit: a worker must not log them again
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert sorted((e["event"], e["setting"]) for e in events) == [
        ("config_setting_ignored", "litellm_settings.set_verbose"),
        ("config_setting_ignored", "litellm_settings.success_callback")], "each once"
    assert all(e["file"] == str(path) and e["message"].startswith(f"{e['setting']} ignored: ") for e in events)


def test_a_star_fallback_group_is_litellms_generic_fallback() -> None:
    doc = {"model_list": [{"model_name": n, "litellm_params": {"model": f"openai/{n}"}} for n in ("a", "b", "c")],
           "router_settings": {"fallbacks": [{"*": ["c"]}, {"a": ["b"]}]}}
    config = parse_config(doc)
    assert [config.model(n).fallbacks for n in ("a", "b", "c")] == [["b"], ["c"], []]


def test_router_defaults_redis_db_and_fail_closed_limits_are_read_as_litellm_reads_them() -> None:
    doc = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "temperature": 0.1,
                                                                 "seed": 1}}],
           "router_settings": {"default_litellm_params": {"temperature": 0.7, "timeout": 5}, "redis_host": "redis",
                               "redis_db": 3},
           "general_settings": {"database_url": "postgresql://llmp@db/llmp",
                                "fail_closed_rate_limit_enforcement": True}}
    config = parse_config(doc)
    # deployment < router default < client: LiteLLM setdefaults the router's into kwargs, which go over litellm_params
    assert config.model("m").deployments[0].defaults == {"temperature": 0.7, "seed": 1}
    assert config.redis is not None and config.redis.url == "redis://redis:6379/3"
    assert config.redis.on_unavailable == "fail-closed"


def test_a_fallback_may_name_a_model_a_wildcard_serves() -> None:
    doc = {"model_list": [{"model_name": "llama", "litellm_params": {"model": "hosted_vllm/llama",
                                                                     "api_base": "http://v/v1"}},
                          {"model_name": "openai/*", "litellm_params": {"model": "openai/*"}}],
           "router_settings": {"fallbacks": [{"llama": ["openai/gpt-4o-mini"]}]}}
    assert parse_config(doc).model("llama").fallbacks == ["openai/gpt-4o-mini"]
    del doc["model_list"][1]
    with pytest.raises(ConfigError, match="fallback 'openai/gpt-4o-mini' is not a model alias"):
        parse_config(doc)


def test_every_missing_environment_variable_of_a_file_is_named_in_one_run(monkeypatch) -> None:
    # examples/native.yaml reads five variables: a new user learns all five from one start, each with its field.
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLES / "native.yaml")
    message = str(err.value)
    for field, name in [("gateway.master_key", "LLMP_MASTER_KEY"),
                        ("models[0].deployments[1].api_key", "LLMP_PEER_KEY_US_WEST_2"),
                        ("models[0].deployments[3].api_key", "TOGETHER_API_KEY"),
                        ("models[1].deployments[0].api_key", "OPENAI_API_KEY"),
                        ("models[2].deployments[0].api_key", "ANTHROPIC_API_KEY")]:
        assert f"{field}: environment variable {name} is not set" in message
    assert message.endswith("(5 variables to set: LLMP_MASTER_KEY LLMP_PEER_KEY_US_WEST_2 TOGETHER_API_KEY "
                            "OPENAI_API_KEY ANTHROPIC_API_KEY)")


def test_litellm_file_names_every_missing_variable_at_once(monkeypatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLES / "litellm.yaml")
    for name in ("VLLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LITELLM_MASTER_KEY"):
        assert f"environment variable {name} is not set" in str(err.value)


def test_a_port_in_use_is_one_line_naming_it_and_nothing_starts(tmp_path) -> None:
    # Bound first: no "started" event, no upstream session left open (aiohttp warns "Unclosed client session"
    # for one that is, shown under -X dev), exit 3 (`llmp gateway --help` lists the codes).
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(native(gateway={"master_key": KEY_FOR_CLI})))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv in (["--config", str(config)], ["--demo"]):
            result = subprocess.run([sys.executable, "-X", "dev", "-m", "gateway", *argv, "--host", "127.0.0.1",
                                     "--port", str(port)], capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "LLMP_MASTER_KEY": KEY_FOR_CLI})
            assert result.returncode == 3, result.stderr
            assert result.stderr == f"llmp gateway: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            assert "started" not in result.stdout


def test_the_demo_listens_on_this_machine_only_unless_given_a_key_of_your_own() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LLMP_MASTER_KEY"}
    result = subprocess.run([sys.executable, "-m", "gateway", "--demo", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("llmp gateway: --host 0.0.0.0: the demo's master key is published")
    from gateway.demo import DEMO_KEY, demo_master_key

    with pytest.raises(ConfigError, match="LLMP_MASTER_KEY is an example key"):
        demo_master_key("0.0.0.0", DEMO_KEY)
    assert demo_master_key("0.0.0.0", KEY_FOR_CLI) == KEY_FOR_CLI
    assert demo_master_key("127.0.0.1", None) == demo_master_key("::1", None) == DEMO_KEY


def test_the_demo_binds_loopback_by_default() -> None:
    from gateway.cli import parser

    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "gateway", "--demo", "--port", str(port)],
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30, demo)
        assert listening_addresses(port) == ["127.0.0.1"]
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    assert parser().parse_args(["--demo"]).host is None  # resolved to 127.0.0.1 for --demo, 0.0.0.0 otherwise


def listening_addresses(port: int) -> list[str]:
    """IPv4 addresses listening on `port`, from the kernel's socket table (/proc/net/tcp: hex little-endian
    address:port, state 0A is LISTEN)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found
