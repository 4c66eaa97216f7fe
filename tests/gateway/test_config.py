"""Config: the native format, LiteLLM's config.yaml as is, and errors that name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.loading import load_config, parse_config
from gateway.http.auth import check_master_key

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
    assert config.gateway.circuit_breaker.failures == 3 and config.gateway.circuit_breaker.cooldown == 30
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
