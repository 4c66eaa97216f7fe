"""Provider keys and the master key come from the stack's Secrets Manager path (moto) or the environment;
rotated, never logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import boto3
import openai
import pytest
from moto import mock_aws

from gateway.config.errors import ConfigError
from gateway.config.native import parse_native
from gateway.governance.provider_keys import PLACEHOLDER, is_unset
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


async def get_json(gw, path: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(gw.url + path) as resp:
        return await resp.json()


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


async def test_an_unreadable_master_key_is_a_startup_error_naming_it(sim, secrets_manager) -> None:
    """Unlike a provider key, the master key must be readable: a wrong name or a missing permission is loud."""
    config = aws_config(sim, None)
    config["gateway"]["master_key"] = "secret/gateway/no-such-key"
    with pytest.raises(ConfigError, match=r"gateway.master_key: cannot read secret llm-platform/test/gateway/"
                                          r"no-such-key: ResourceNotFoundException"):
        build_app(parse_native(config))


def test_the_placeholder_is_the_one_the_program_writes() -> None:
    from infra.components.secrets import PLACEHOLDER as WRITTEN

    assert PLACEHOLDER == WRITTEN and is_unset(WRITTEN)


async def test_a_first_deploy_starts_locked_then_opens_as_the_keys_are_put_in(gateway_factory, sim,
                                                                              secrets_manager) -> None:
    """The first `pulumi up` writes placeholders: the gateway must start (its release is atomic), refuse calls
    until the master key is put in, skip the provider's deployment until its key is, then serve."""
    _, sm = secrets_manager
    for name in ("gateway/master-key", "providers/openai"):
        sm.put_secret_value(SecretId=f"llm-platform/test/{name}", SecretString=PLACEHOLDER)
    gw = await gateway_factory(aws_config(sim, None))
    ready = await get_json(gw, "/health/ready")
    assert ready["deployments"]["hosted"]["api_key_set"] is False and ready["ready"] is False

    for key in (MASTER, PLACEHOLDER):
        with pytest.raises(openai.APIStatusError) as refused:
            await gw.client(api_key=key).chat.completions.create(model=MODEL, messages=MESSAGES)
        assert refused.value.status_code == 503 and refused.value.code == "master_key_not_set"
    async with aiohttp.ClientSession() as http, http.post(  # an empty key never matches an unset master key
            gw.url + "/v1/chat/completions", headers={"Authorization": "Bearer "},
            json={"model": MODEL, "messages": MESSAGES}) as resp:
        assert resp.status == 503

    sm.put_secret_value(SecretId="llm-platform/test/gateway/master-key", SecretString=MASTER)
    client = gw.client(api_key=MASTER, max_retries=0)
    while True:  # the refresh (every second) picks the master key up
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        except openai.APIStatusError as exc:
            if exc.code == "master_key_not_set":
                await asyncio.sleep(0.2)
                continue
            assert exc.status_code == 503 and "its provider key is not set yet (hosted)" in exc.message
            break
    assert sim.stats.requests == 0, "nothing reached the provider without its key"

    sm.put_secret_value(SecretId="llm-platform/test/providers/openai", SecretString=PROVIDER_V1)
    deadline = time.monotonic() + 5
    while True:
        try:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
            break
        except openai.APIStatusError:
            assert time.monotonic() < deadline, "the provider key put in later was not picked up"
            await asyncio.sleep(0.2)
    assert sim.stats.headers[-1]["Authorization"] == f"Bearer {PROVIDER_V1}"
    assert (await get_json(gw, "/health/ready"))["deployments"]["hosted"]["api_key_set"] is True
    log = gw.log_buffer.getvalue()
    assert b'"secret_not_set"' in log and b"deployment hosted skipped until it is set" in log
    assert PLACEHOLDER.encode() not in log and MASTER.encode() not in log


async def test_local_mode_reads_provider_keys_from_the_environment(gateway_factory, sim, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_V1)
    config = gateway_config([deployment("hosted", sim.base_url, api_key="secret/providers/openai")])
    gw = await gateway_factory(config)
    await gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert sim.stats.headers[-1]["Authorization"] == f"Bearer {PROVIDER_V1}"
    monkeypatch.delenv("OPENAI_API_KEY")
    gw = await gateway_factory(config)  # a provider key missing is not fatal: its deployment waits for it
    with pytest.raises(openai.APIStatusError, match=r"its provider key is not set yet \(hosted\)"):
        await gw.client(max_retries=0).chat.completions.create(model=MODEL, messages=MESSAGES)


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


async def test_with_governance_an_unset_master_key_opens_neither_the_admin_api_nor_the_data_path(
        gateway_factory, sim, tmp_path, secrets_manager) -> None:
    _, sm = secrets_manager
    sm.put_secret_value(SecretId="llm-platform/test/gateway/master-key", SecretString=PLACEHOLDER)
    config = aws_config(sim, None)
    config["ledger"] = {"store": f"sqlite:///{tmp_path / 'l.db'}", "spool_dir": str(tmp_path / "spool")}
    gw = await gateway_factory(config)
    async with aiohttp.ClientSession() as http:
        for header in ("Bearer ", f"Bearer {PLACEHOLDER}", f"Bearer {MASTER}"):
            async with http.post(gw.url + "/key/generate", headers={"Authorization": header}, json={}) as resp:
                assert resp.status == 503 and (await resp.json())["error"]["code"] == "master_key_not_set"
            async with http.post(gw.url + "/v1/chat/completions", headers={"Authorization": header},
                                 json={"model": MODEL, "messages": MESSAGES}) as resp:
                assert resp.status == 401, header
    assert sim.stats.requests == 0
