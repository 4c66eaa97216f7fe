"""Choosing the ledger store from its URL."""

from __future__ import annotations

from collections.abc import Callable

from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import LedgerStore
from gateway.governance.store.sqlite import SqliteStore


def open_store(url: str, timeout: float, on_event: Callable[..., None] | None = None) -> LedgerStore:
    """`sqlite:///relative/or//absolute/path` or `postgresql://...` (not yet connected: call `open`);
    `on_event` hears of rows it cannot read back."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///"):], timeout, on_event)
    return PostgresStore(url, timeout, on_event)
