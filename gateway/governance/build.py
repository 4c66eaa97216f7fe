"""Governance wired from config: the store, key cache, limiter (Redis or in-process), spend ledger, budget sync,
and the puller from peers in the stack's other regions."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.config.errors import ConfigError
from gateway.config.native import GatewayConfig
from gateway.governance.budget_sync import BudgetSync
from gateway.governance.gate import Governance
from gateway.governance.keys import KeyCache, VirtualKeyAuth
from gateway.governance.ledger.spend import SpendLedger
from gateway.governance.ledger.spool import LEGACY, SpendSpool, default_spool_dir, store_identity
from gateway.governance.limits.in_process import LocalLimiter
from gateway.governance.limits.redis_limiter import RedisLimiter
from gateway.governance.limits.scopes import RateLimiter
from gateway.governance.peers import PeerSync
from gateway.governance.store.connect import open_store
from gateway.governance.store.protocol import LedgerStore


def build_governance(config: GatewayConfig, on_event: Callable[..., None],
                     registry: CollectorRegistry | None = None,
                     on_charge: Callable[[str, str | None, float], None] | None = None) -> Governance:
    """Governance from the `ledger`, `redis` and `keys` sections (the caller checked `ledger` is set);
    its metrics go to `registry`, and each charge to the ledger also to `on_charge`."""
    settings = config.ledger
    assert settings is not None
    store = open_store(settings.store, settings.store_timeout, on_event, settings.store_password_secret,
                       config.secrets.endpoint_url)
    cache = KeyCache(store, config.keys.refresh_seconds, on_event)
    auth = VirtualKeyAuth(config.gateway.master_key or "", cache)
    limiter: RateLimiter
    if config.redis is not None:
        r = config.redis
        limiter = RedisLimiter(r.url, fail_open=r.on_unavailable == "fail-open", timeout_ms=r.timeout_ms,
                               retry_after_ms=r.retry_after_ms, settle_interval_ms=r.settle_interval_ms,
                               lease_requests=r.lease_requests, on_event=on_event)
    else:
        limiter = LocalLimiter()
    spool_dir = settings.spool_dir or default_spool_dir(settings.store)
    if settings.spool_dir is None:
        # Versions before per-store spools wrote to ./llmp-spool itself; whose database those records belong to
        # is not known, so they are not replayed into this one: a human moves them (the event says where).
        legacy = len(list(Path(spool_dir).parent.glob(LEGACY)))
        if legacy:
            on_event("spool_legacy_segments", segments=legacy, found_in=str(Path(spool_dir).parent),
                     action=f"move those of this gateway's database into {spool_dir}; they are replayed at start")
    spool = SpendSpool(spool_dir, settings.fsync == "always", store_identity(settings.store))
    ledger = SpendLedger(spool, store, settings.flush_interval, settings.batch, on_event, registry)
    budgets = None
    if settings.budget_sync_seconds > 0:
        budgets = BudgetSync(store, cache, limiter, settings.budget_sync_seconds, on_event)
    governance = Governance(config, auth, cache, limiter, ledger, store, on_event, budgets, on_charge)
    if config.peers is not None:
        governance.peers = build_peers(config, store, cache, limiter, budgets, on_event, registry)
    return governance


def build_peers(config: GatewayConfig, store: LedgerStore, cache: KeyCache, limiter: RateLimiter,
                budgets: BudgetSync | None, on_event: Callable[..., None],
                registry: CollectorRegistry | None) -> PeerSync:
    """The puller of the `peers` section; ConfigError for a peer key that would also be another credential."""
    peers = config.peers
    assert peers is not None
    if peers.key.startswith("secret/") or len(peers.key) < 32:
        raise ConfigError("peers.key: the peer key must hold at least 32 characters")
    if config.gateway.master_key and hmac.compare_digest(peers.key.encode(), config.gateway.master_key.encode()):
        raise ConfigError("peers.key: must differ from gateway.master_key (a peer must not be able to administer)")
    # Without a periodic budget sync (budget_sync_seconds 0), one that runs only after each pull.
    raising = budgets or BudgetSync(store, cache, limiter, peers.interval, on_event)
    return PeerSync(peers, peers.key, store, cache, raising, on_event, registry)
