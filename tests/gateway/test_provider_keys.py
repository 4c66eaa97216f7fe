"""Provider keys and the master key come from the stack's Secrets Manager path (moto) or the environment;
rotated, never logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.http.app import build_app
from tests.gateway.conftest import MODEL, deployment, gateway_config

MASTER = "sk-llmp-master-from-secrets-manager-0123456789abcdef"
PROVIDER_V1 = "sk-provider-fake-value-one-000000"
PROVIDER_V2 = "sk-provider-fake-value-two-000000"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def secrets_manager(monkeypatch) -> Iterator[tuple[None, object]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():  # patches botocore in every thread: the gateway's refresh runs in a worker thread
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name="llm-platform/test/gateway/master-key", SecretString=MASTER)
        client.create_secret(Name="llm-platform/test/providers/openai", SecretString=PROVIDER_V1)
        yield None, client


def aws_config(sim, url: str) -> dict:
    config = gateway_config([deployment("hosted", sim.base_url, api_key="secret/providers/openai")],
                            master_key="secret/gateway/master-key")
    config["secrets"] = {"source": "aws-secretsmanager", "stack": "test", "region": "us-east-1",
                         "refresh_seconds": 1}
    return config


async def test_keys_are_read_from_the_stacks_path_and_rotation_is_picked_up(gateway_factory, sim,
                                                                            secrets_manager) -> None:
    url, sm = secrets_manager
    gw = await gateway_factory(aws_config(sim, url))
    client = gw.client(api_key=MASTER)
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert sim.stats.headers[-1]["Authorization"] == f"Bearer {PROVIDER_V1}"
    sm.put_secret_value(SecretId="llm-platform/test/providers/openai", SecretString=PROVIDER_V2)
    deadline = time.monotonic() + 5
    while True:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        if sim.stats.headers[-1]["Authorization"] == f"Bearer {PROVIDER_V2}":
            break
        assert time.monotonic() < deadline, "the rotated provider key was not picked up"
        await asyncio.sleep(0.2)
    log = gw.log_buffer.getvalue()
    assert b"secret_rotated" in log and b"llm-platform/test/providers/openai" in log
    for secret in (MASTER, PROVIDER_V1, PROVIDER_V2):
        assert secret.encode() not in log, "secret values are never logged"


async def test_a_secret_that_cannot_be_read_is_a_startup_error_naming_it(sim, secrets_manager) -> None:
    url, _ = secrets_manager
    config = aws_config(sim, url)
    config["models"][0]["deployments"][0]["api_key"] = "secret/providers/anthropic"
    with pytest.raises(ConfigError, match=r"api_key: cannot read secret llm-platform/test/providers/anthropic: "
                                          r"ResourceNotFoundException"):
        build_app(parse_native(config))


async def test_local_mode_reads_provider_keys_from_the_environment(gateway_factory, sim, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_V1)
    config = gateway_config([deployment("hosted", sim.base_url, api_key="secret/providers/openai")])
    gw = await gateway_factory(config)
    await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert sim.stats.headers[-1]["Authorization"] == f"Bearer {PROVIDER_V1}"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY is not set"):
        build_app(parse_native(config))


async def test_the_ledger_store_url_may_come_from_a_secret(gateway_factory, sim, tmp_path, secrets_manager) -> None:
    _, sm = secrets_manager
    sm.create_secret(Name="llm-platform/test/gateway/ledger-store", SecretString=f"sqlite:///{tmp_path / 'l.db'}")
    config = aws_config(sim, None)
    config["ledger"] = {"store": "secret/gateway/ledger-store", "spool_dir": str(tmp_path / "spool")}
    gw = await gateway_factory(config)
    await gw.client(api_key=MASTER).chat.completions.create(model=MODEL, messages=MESSAGES)
    await gw.state.governance.ledger.flush()
    assert (tmp_path / "l.db").exists()
    sm.put_secret_value(SecretId="llm-platform/test/gateway/ledger-store", SecretString="mysql://nope")
    with pytest.raises(ConfigError, match=r"ledger\.store: secret gateway/ledger-store does not hold a sqlite:/// or "
                                          r"postgres URL"):
        build_app(parse_native(config))
