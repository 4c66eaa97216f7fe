"""Choosing the ledger store from its URL."""

from __future__ import annotations

from collections.abc import Callable

from gateway.governance.store.managed_password import ManagedPassword
from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import LedgerStore
from gateway.governance.store.sqlite import SqliteStore


def open_store(url: str, timeout: float, on_event: Callable[..., None] | None = None,
               password_secret: str | None = None, endpoint_url: str | None = None) -> LedgerStore:
    """`sqlite:///relative/or//absolute/path` or `postgresql://...` (not yet connected: call `open`);
    `on_event` hears of rows it cannot read back. `password_secret`: the ARN of the Secrets Manager secret
    (RDS's own, JSON with `password`) that PostgreSQL's password is read from, through `endpoint_url` if set."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///"):], timeout, on_event)
    password = ManagedPassword(password_secret, endpoint_url, on_event) if password_secret else None
    return PostgresStore(url, timeout, on_event, password)
