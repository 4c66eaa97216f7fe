"""Choosing the ledger store from its URL."""

from __future__ import annotations

from gateway.governance.store.postgres import PostgresStore
from gateway.governance.store.protocol import LedgerStore
from gateway.governance.store.sqlite import SqliteStore


def open_store(url: str, timeout: float) -> LedgerStore:
    """`sqlite:///relative/or//absolute/path` or `postgresql://...` (not yet connected: call `open`)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///"):], timeout)
    return PostgresStore(url, timeout)
