"""The ledger's PostgreSQL password comes from RDS's own rotating secret: read at connect, read again when refused.

Real PostgreSQL with password authentication for the gateway's user; Secrets Manager played by moto, the secret in
the JSON form RDS writes for a managed master password.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest
from moto import mock_aws

from gateway.config.errors import ConfigError
from gateway.config.loading import load_config
from gateway.governance.store.connect import open_store
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import StoreError
from tests.gateway.servers import PostgresServer

REGION = "eu-west-2"


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, name: str, **fields: Any) -> None:
        self.append((name, fields))


@pytest.fixture(scope="module")
def password_server(postgres_server: PostgresServer) -> PostgresServer:
    """The module's own cluster, where the `llmp` user must give its password (scram-sha-256), as on RDS."""
    hba = Path(postgres_server._data) / "pg_hba.conf"
    hba.write_text("host all llmp 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    return postgres_server


@pytest.fixture
async def database(password_server: PostgresServer) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A fresh database owned by `llmp` (password `first`), its DSN without a password, and a superuser connection."""
    admin = await asyncpg.connect(password_server.url, timeout=10)
    name = f"ledger_{time.monotonic_ns()}"
    try:
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("DROP ROLE IF EXISTS llmp")
        await admin.execute("CREATE ROLE llmp LOGIN PASSWORD 'first'")
        await admin.execute(f"CREATE DATABASE {name} OWNER llmp")
        yield f"postgresql://llmp@127.0.0.1:{password_server.port}/{name}", admin
    finally:
        await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()


@pytest.fixture
def secrets() -> Iterator[Any]:
    with mock_aws():  # patches botocore in every thread: the password is read in a worker thread
        yield boto3.client("secretsmanager", region_name=REGION)


def rds_secret(client: Any, password: str) -> str:
    """A secret shaped like RDS's managed master user secret (rds!db-<id>)."""
    arn: str = client.create_secret(Name="rds!db-0f3e7a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
                                    SecretString=json.dumps({"username": "llmp", "password": password}))["ARN"]
    return arn


async def test_the_store_connects_with_the_password_in_rds_secret(database, secrets) -> None:
    dsn, _ = database
    arn = rds_secret(secrets, "first")
    store = open_store(dsn, 10, Events(), arn)
    await store.open()
    try:
        assert await store.list_keys(None) == []
    finally:
        await store.close()


async def test_without_the_secret_postgresql_refuses_the_same_dsn(database) -> None:
    """The control for the test above: the DSN alone does not get in."""
    dsn, _ = database
    store = open_store(dsn, 10)
    with pytest.raises(StoreError, match=r"InvalidPasswordError|password"):
        await store.open()


async def test_a_rotated_password_is_read_again_and_the_call_goes_through(database, secrets) -> None:
    """RDS rotated the password while the gateway ran (open connections stay, as rotation leaves them): once the
    pool replaces its connections, the next connection is refused with the old password, the secret is read once
    more, and the call that hit the refusal succeeds."""
    dsn, admin = database
    arn = rds_secret(secrets, "first")
    events = Events()
    store = open_store(dsn, 10, events, arn)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await admin.execute("ALTER ROLE llmp PASSWORD 'second'")
        secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "llmp", "password": "second"}))
        assert await store.list_keys(None) == []  # the open connection still serves
        assert events == []
        await store._pool.expire_connections()  # what a failover or the pool's recycling does
        assert await store.list_keys(None) == []
        assert [name for name, _ in events] == ["store_password_reread"]
        assert events[0][1] == {"secret": arn}
        assert store._password is not None and store._password.reads == 2
    finally:
        await store.close()


async def test_a_refused_password_is_read_again_only_once(database, secrets) -> None:
    """A secret that still holds a wrong password after the re-read fails the call (no loop of reads)."""
    dsn, _ = database
    arn = rds_secret(secrets, "wrong")
    store = open_store(dsn, 10, Events(), arn)
    assert isinstance(store, PostgresStore)
    with pytest.raises(StoreError, match="InvalidPasswordError"):
        await store.open()
    assert store._password is not None and store._password.reads == 2


async def test_a_secret_without_a_password_names_the_secret_never_a_value(database, secrets) -> None:
    dsn, _ = database
    arn: str = secrets.create_secret(Name="not-rds", SecretString="hunter2-plain")["ARN"]
    with pytest.raises(StoreError) as caught:
        await open_store(dsn, 10, Events(), arn).open()
    assert arn in str(caught.value) and '"password"' in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_an_unreadable_secret_names_it_and_why(database, secrets) -> None:
    dsn, _ = database
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:rds!db-missing-abcdef"
    with pytest.raises(StoreError, match=r"cannot read secret .*rds!db-missing-abcdef: ResourceNotFoundException"):
        await open_store(dsn, 10, Events(), arn).open()


def _config(tmp_path: Path, ledger: dict[str, Any]) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps({"version": 1, "gateway": {"master_key": "sk-llmp-0123456789abcdef0123456789"},
                                "models": [{"alias": "m", "deployments": [{
                                    "name": "d", "provider": "openai", "model": "m",
                                    "api_base": "http://127.0.0.1:9/v1"}]}],
                                "ledger": ledger}))
    return path


def test_the_config_takes_a_secrets_manager_arn_for_a_postgresql_store(tmp_path: Path) -> None:
    arn = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:rds!db-0f3e7a4c-abcdef"
    config = load_config(_config(tmp_path, {"store": "postgresql://llmp@db:5432/llmp?sslmode=require",
                                            "store_password_secret": arn}))
    assert config.ledger is not None and config.ledger.store_password_secret == arn


@pytest.mark.parametrize(("ledger", "names"), [
    ({"store": "sqlite:///./l.db", "store_password_secret": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:x"},
     "only a postgresql:// store has a password"),
    ({"store": "postgresql://llmp@db/llmp", "store_password_secret": "rds!db-0f3e7a4c"}, "store_password_secret"),
])
def test_the_config_refuses_a_password_secret_it_cannot_use(tmp_path: Path, ledger: dict[str, Any],
                                                             names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(_config(tmp_path, ledger))
