"""Who is calling: the Bearer key check on /v1/*, and the start-up refusal of weak master keys."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from gateway.config.errors import ConfigError
from gateway.http.errors import GatewayError, master_key_not_set, unauthorized

# Keys that appear in docs, quick-starts and our own examples: never accepted for real traffic.
KNOWN_DEFAULT_KEYS = frozenset({"sk-1234", "sk-12345", "sk-1234567890", "sk-master", "changeme", "secret", "password"})
MIN_KEY_LENGTH = 32
EXAMPLE_MARKER = "EXAMPLE"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. `key_id` is safe to log; the key itself never is."""

    key_id: str


class Authenticator(Protocol):
    """The auth step on the request path; the governance layer plugs virtual keys in here."""

    def authenticate(self, authorization: str | None) -> Principal: ...


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class MasterKeyAuth:
    """Accepts one master key, compared in constant time; with none set (""), refuses every call."""

    def __init__(self, master_key: str) -> None:
        self._set = bool(master_key)
        self._expected = ("Bearer " + master_key).encode()
        self._principal = Principal(key_id("master:" + master_key))

    def authenticate(self, authorization: str | None) -> Principal:
        if not self._set:
            raise master_key_not_set()
        if not authorization:
            raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        if not hmac.compare_digest(authorization.encode(), self._expected):
            raise unauthorized("Incorrect API key provided.")
        return self._principal


def check_master_key(key: str | None, dev: bool) -> None:
    """Refuse, at start-up, keys anyone could guess, unless the operator said --dev."""
    if not key:
        raise ConfigError("gateway.master_key: required (general_settings.master_key in LiteLLM format)")
    if dev:
        return
    if key in KNOWN_DEFAULT_KEYS:
        raise ConfigError("gateway.master_key: is a well-known default key; set a random one (or pass --dev)")
    if EXAMPLE_MARKER in key:
        raise ConfigError("gateway.master_key: is an example key; set a random one (or pass --dev)")
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"gateway.master_key: is {len(key)} characters; at least {MIN_KEY_LENGTH} are required (or pass --dev)"
        )



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_master_key_on(host: str, key: str | None, dev: bool) -> None:
    """check_master_key for a gateway listening on `host`: --dev's leniency (example, default and short keys) holds
    on this machine only, since anyone who can reach the port can try a published key."""
    if is_loopback(host):
        check_master_key(key, dev)
        return
    try:
        check_master_key(key, False)
    except ConfigError as exc:
        if not dev or not key:
            raise
        reason = str(exc).removeprefix("gateway.master_key: ").removesuffix(" (or pass --dev)")
        raise ConfigError(f"--host {host}: gateway.master_key {reason}; --dev accepts example and short keys on this "
                          f"machine only (--host 127.0.0.1, its default)") from None


__all__ = ["Authenticator", "GatewayError", "MasterKeyAuth", "Principal", "check_master_key", "check_master_key_on",
           "is_loopback", "key_id"]
