"""Provider API keys and the master key from the stack's secret store (or the environment), refreshed, never logged.

A config value `secret/<name>` names a secret relative to the stack: with
`secrets.source: aws-secretsmanager` it is the secret string of
`llm-platform/<stack>/<name>` in the gateway's region (`secret/providers/openai`,
`secret/gateway/master-key`); with `source: env` (local mode) it is read from the
environment: `providers/<p>` from `<P>_API_KEY` (OPENAI_API_KEY, ANTHROPIC_API_KEY),
`gateway/master-key` from `LLMP_MASTER_KEY`, anything else from
`LLMP_SECRET_<NAME>` (upper case, `/` and `-` as `_`). Provider keys and the master
key are re-read every `refresh_seconds`; a rotated value is used by the next call.
`ledger.store`, `redis.url` and `peers.key` may name a secret too (a DSN with a password), read at
start only. Errors name the secret, never its value.

A secret nobody has put a value in yet (empty, or the placeholder the Pulumi program's first deploy
writes) does not stop the gateway: a provider key that is unset or unreadable marks its deployment
unavailable (routing skips it, readiness says why) until a refresh reads a real value; an unset master
key leaves the gateway refusing every call that needs it (503 `master_key_not_set`) until it is set.
Start-only values (`ledger.store`, `redis.url`) and an unreadable master key still stop the start.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config.errors import ConfigError
from gateway.config.governance import SecretsSettings
from gateway.config.native import GatewayConfig
from gateway.tasks import cancel

PREFIX = "secret/"
# What the Pulumi program writes as every secret's first value (infra/components/secrets.py; a test
# keeps the two equal), so that readers start before anyone has put a key in.
PLACEHOLDER = "llm-platform:placeholder (not set yet)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class SecretSource(Protocol):
    def read(self, name: str) -> str: ...

    def where(self, name: str) -> str: ...


class EnvSecrets:
    def __init__(self, environ: Any = None) -> None:
        import os

        self.environ = os.environ if environ is None else environ

    def where(self, name: str) -> str:
        if name.startswith("providers/") and name.count("/") == 1:
            return _env_name(name.split("/", 1)[1]) + "_API_KEY"
        if name == "gateway/master-key":
            return "LLMP_MASTER_KEY"
        return "LLMP_SECRET_" + _env_name(name)

    def read(self, name: str) -> str:
        var = self.where(name)
        value = self.environ.get(var)
        if not value:
            raise LookupError(f"environment variable {var} is not set")
        return value


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


class AwsSecrets:
    """Secrets Manager in one region, under `llm-platform/<stack>/`; boto3's default credentials (IRSA in EKS)."""

    def __init__(self, stack: str, region: str | None, endpoint_url: str | None = None) -> None:
        import boto3

        self.stack = stack
        self.client = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url)

    def where(self, name: str) -> str:
        return f"llm-platform/{self.stack}/{name}"

    def read(self, name: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            value: str | None = self.client.get_secret_value(SecretId=self.where(name)).get("SecretString")
        except ClientError as exc:
            raise LookupError(exc.response.get("Error", {}).get("Code", "ClientError")) from None
        except BotoCoreError as exc:
            raise LookupError(type(exc).__name__) from None
        if not value:
            raise LookupError("the secret has no string value")
        return value.strip()


def secret_source(settings: SecretsSettings) -> SecretSource:
    if settings.source == "aws-secretsmanager":
        assert settings.stack is not None
        return AwsSecrets(settings.stack, settings.region, settings.endpoint_url)
    return EnvSecrets()


@dataclass(frozen=True)
class SecretRef:
    """One config field that names a secret: where it sits, and which secret."""

    field: str  # gateway.master_key | models[alias].deployments[name].api_key | ledger.store | redis.url
    name: str
    deployment: str | None = None  # None: the master key (or a start-only value, see `refreshed`)
    refreshed: bool = True  # False: ledger.store and redis.url, read once at start (a new value needs a restart)


def references(config: GatewayConfig) -> list[SecretRef]:
    refs = []
    master = config.gateway.master_key
    if master and master.startswith(PREFIX):
        refs.append(SecretRef("gateway.master_key", _check_name(master, "gateway.master_key")))
    for model in config.models:
        for dep in model.deployments:
            if dep.api_key and dep.api_key.startswith(PREFIX):
                where = f"models[{model.alias}].deployments[{dep.name}].api_key"
                refs.append(SecretRef(where, _check_name(dep.api_key, where), dep.name))
    for where, value in (("ledger.store", config.ledger.store if config.ledger else None),
                         ("redis.url", config.redis.url if config.redis else None),
                         ("peers.key", config.peers.key if config.peers else None)):
        if value and value.startswith(PREFIX):
            refs.append(SecretRef(where, _check_name(value, where), None, refreshed=False))
    return refs


def _check_name(value: str, where: str) -> str:
    name = value[len(PREFIX):]
    if not _NAME.match(name) or ".." in name:
        raise ConfigError(f"{where}: {value!r} is not a secret reference like secret/providers/openai")
    return name


def is_unset(value: str | None) -> bool:
    """A secret nobody has put a value in yet: empty, or the placeholder the first deploy wrote."""
    return value is None or not value.strip() or value.strip() == PLACEHOLDER


def read_all(source: SecretSource, refs: list[SecretRef]) -> tuple[dict[str, str], dict[str, str]]:
    """Every referenced secret's value, and why each unset one is unset (secret name -> reason).

    Provider keys may be unset or unreadable (their deployments wait for a value); the master key may be
    unset (calls wait for it) but must be readable; start-only values must be readable and set."""
    values: dict[str, str] = {}
    unset: dict[str, str] = {}
    for ref in refs:
        if ref.name in values:
            continue
        where = source.where(ref.name)
        try:
            values[ref.name] = source.read(ref.name)
        except LookupError as exc:
            if ref.deployment is None:
                raise ConfigError(f"{ref.field}: cannot read secret {where}: {exc}") from None
            values[ref.name], unset[ref.name] = "", f"cannot read secret {where}: {exc}"
            continue
        if is_unset(values[ref.name]):
            if not ref.refreshed:
                raise ConfigError(f"{ref.field}: secret {where} has no value yet; put one in, then restart")
            unset[ref.name] = f"secret {where} has no value yet"
    return values, unset


def resolve_secrets(config: GatewayConfig,
                    source: SecretSource | None = None) -> tuple[GatewayConfig, SecretRefresher | None]:
    """The config with every `secret/...` value read; and a refresher, or None when nothing names a secret."""
    refs = references(config)
    if not refs:
        return config, None
    source = source or secret_source(config.secrets)
    values, unset = read_all(source, refs)
    config = apply(config, refs, values)
    refreshed = [r for r in refs if r.refreshed]
    if not refreshed:
        return config, None
    return config, SecretRefresher(source, refreshed, values, config.secrets.refresh_seconds, unset)


def apply(config: GatewayConfig, refs: list[SecretRef], values: dict[str, str]) -> GatewayConfig:
    value = {name: None if is_unset(v) else v for name, v in values.items()}
    by_dep = {r.deployment: value[r.name] for r in refs if r.deployment is not None}
    gateway, ledger, redis, peers = config.gateway, config.ledger, config.redis, config.peers
    for ref in refs:
        if ref.field == "gateway.master_key":
            gateway = gateway.model_copy(update={"master_key": value[ref.name]})
        elif ref.field == "ledger.store" and ledger is not None:
            store = _checked_url(values[ref.name], ref, ("sqlite:///", "postgres"))
            ledger = ledger.model_copy(update={"store": store})
        elif ref.field == "redis.url" and redis is not None:
            redis = redis.model_copy(update={"url": _checked_url(values[ref.name], ref, ("redis://", "rediss://"))})
        elif ref.field == "peers.key" and peers is not None:
            peers = peers.model_copy(update={"key": values[ref.name]})  # read at start; a new value needs a restart
    models = [
        m.model_copy(update={"deployments": [
            d.model_copy(update={"api_key": by_dep[d.name]}) if d.name in by_dep else d for d in m.deployments
        ]})
        for m in config.models
    ]
    return config.model_copy(update={"gateway": gateway, "models": models, "ledger": ledger, "redis": redis,
                              "peers": peers})


def _checked_url(value: str, ref: SecretRef, schemes: tuple[str, ...]) -> str:
    if not value.startswith(schemes):
        # Name the secret and the expected form, never the value (it holds a password).
        raise ConfigError(f"{ref.field}: secret {ref.name} does not hold a {' or '.join(schemes)} URL")
    return value


Listener = Callable[[SecretRef, str], None]


class SecretRefresher:
    """Re-reads the referenced secrets periodically (in a thread: boto3 blocks) and reports changed values."""

    def __init__(self, source: SecretSource, refs: list[SecretRef], values: dict[str, str], every: float,
                 unset: dict[str, str] | None = None) -> None:
        self.source = source
        self.refs = refs
        self.values = dict(values)
        self.unset_at_start = dict(unset or {})  # secret name -> why it had no usable value at start
        self.every = every
        self.listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._event: Callable[..., None] = lambda *a, **k: None
        self._failing: set[str] = set()

    def unset_refs(self) -> list[SecretRef]:
        """The references whose secret had no usable value at start."""
        return [r for r in self.refs if r.name in self.unset_at_start]

    def master_key_unset(self) -> bool:
        return any(r.deployment is None for r in self.unset_refs())

    def on_change(self, listener: Listener) -> None:
        self.listeners.append(listener)

    async def refresh(self) -> int:
        """Read every secret once; returns how many changed. A secret that cannot be read keeps its value."""
        changed = 0
        for name in dict.fromkeys(r.name for r in self.refs):
            try:
                value = await asyncio.to_thread(self.source.read, name)
            except LookupError as exc:
                if name not in self._failing:
                    self._failing.add(name)
                    self._event("secret_refresh_failed", secret=self.source.where(name), error=str(exc)[:200])
                continue
            self._failing.discard(name)
            if value != self.values.get(name):
                self.values[name] = value
                changed += 1
                self._event("secret_rotated", secret=self.source.where(name))  # the name only, never the value
                for ref in self.refs:
                    if ref.name == name:
                        for listener in self.listeners:
                            listener(ref, value)
        return changed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.refresh()

    def start(self, on_event: Callable[..., None]) -> None:
        self._event = on_event
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
