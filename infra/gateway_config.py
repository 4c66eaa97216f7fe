"""The gateway config (gateway's native format, see gateway/config.py) the program renders for each region."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra import bedrock
from infra.chart_values import MODEL_NAMESPACE, VLLM_DRAIN_SECONDS, VLLM_PORT, vllm_release_name
from infra.components.dns import regional_host, zone_host
from infra.config import BEDROCK, Model, Region, StackConfig, hosted_fallback

# References the gateway resolves in its stack's Secrets Manager path, llm-platform/<stack>/<name>
# (infra/components/secrets.py creates them; the gateway's IRSA role reads exactly these).
MASTER_KEY = "secret/gateway/master-key"
# The region's Redis URL (infra/components/gateway_stores.py writes it) and the stack-wide peer key
# (infra/components/secrets.py PeerKey).
REDIS_URL = "secret/gateway/redis-url"
PEER_KEY = "secret/gateway/peer-key"
# Replicas re-read changed keys this often: the bound on how long a revoked key still works in its region.
KEY_REFRESH_SECONDS = 2
# Each gateway pulls key records and spend totals from every peer this often (s): with the ledger's flush
# interval, what bounds a budget's overshoot across regions (README: Gateway state stores).
PEER_INTERVAL_SECONDS = 5
# After SIGTERM, calls in flight get this long (s) to finish (gateway.front_door.shutdown_grace); charts/gateway
# reads it from the rendered config for terminationGracePeriodSeconds, so the two cannot disagree. As long as a
# model server drains: a gateway rollout never cuts a generation its model server would have finished.
SHUTDOWN_GRACE_SECONDS = VLLM_DRAIN_SECONDS


def provider_key(provider: str) -> str:
    return f"secret/providers/{provider}"


def deployment_name(model: str, region: str) -> str:
    """A model's deployment in a region: its gateways' `x-litellm-model-id` and readiness key (llmp verify)."""
    return f"{model}-{region}"


def _deployments(cfg: StackConfig, model: Model, region: Region) -> list[dict[str, Any]]:
    zone = region.residency
    out: list[dict[str, Any]] = []
    for name in model.regions:
        if cfg.zone_of(name) != zone:
            continue  # other zones are never reachable from this gateway
        common = {"name": deployment_name(model.name, name), "provider": "openai", "model": model.name,
                  "region": name, "residency": zone}
        if name == region.name:
            # The gateway spreads sessions over the replicas itself (bounded-load consistent
            # hashing), so it needs each replica's address, not the Service's one virtual IP.
            out.append({**common, "replicas": {"endpoint_slices": {
                "service": vllm_release_name(model), "namespace": MODEL_NAMESPACE, "port": VLLM_PORT}}})
        else:
            # Another region's pool is reached through that region's gateway.
            # The zone's gateways share the zone's master key (one secret, replicated in the zone).
            out.append({**common, "api_base": f"https://{regional_host(name, cfg.gateway.domain)}/v1",
                        "api_key": MASTER_KEY})
    if model.residency is None:
        for spec in cfg.failover.hosted_fallbacks.get(model.name, []):
            provider, protocol, api_base, upstream = hosted_fallback(spec)
            if provider == BEDROCK:
                out.extend(_bedrock(model, region, upstream))
                continue
            out.append({"name": f"{model.name}-{provider}", "provider": protocol, "model": upstream,
                        "api_base": api_base, "api_key": provider_key(provider),
                        "region": region.name, "residency": zone, "tier": "fallback"})
    return out


def _bedrock(model: Model, region: Region, model_id: str) -> list[dict[str, Any]]:
    """Bedrock in the gateway's own region, signed with the gateway's IRSA role (no key). A cross-region
    profile only from a region of its geography (Bedrock refuses it elsewhere): `us.` and `eu.` profiles of one
    model may both be listed, each region's gateway gets its own."""
    geo = bedrock.geography(model_id)
    if geo is not None and region.name not in bedrock.geographies()[geo]:
        return []
    return [{"name": f"{model.name}-bedrock-{geo or 'regional'}", "provider": BEDROCK, "model": model_id,
             "region": region.name, "residency": region.residency, "tier": "fallback"}]


def other_zones(cfg: StackConfig, region: Region) -> dict[str, Any]:
    """Models restricted to another residency zone, and the zone's own name: the global name may land a
    request for one of them here, and the gateway answers with where to call instead of a bare 404."""
    out: dict[str, Any] = {}
    for model in cfg.models:
        if model.residency and model.residency != region.residency:
            zone = out.setdefault(model.residency, {
                "url": f"https://{zone_host(model.residency, cfg.gateway.domain)}", "models": []})
            zone["models"].append(model.name)
    return out


@dataclass(frozen=True)
class StoreRefs:
    """Where a region's gateway keeps its state (infra/components/gateway_stores.py): strings, or Pulumi Outputs
    when the program renders the release (the release's values then resolve once the stores exist)."""

    ledger_dsn: Any  # postgresql://llmp@<address>:5432/llmp?sslmode=..., no password
    ledger_password_secret: Any  # the ARN of RDS's own secret holding the password
    # The zone's batch bucket as the gateway config's `batch.files` (infra/components/batch_files.py s3_settings);
    # None: no batch section is rendered.
    batch_files: Any = None


def peer_urls(cfg: StackConfig, region: Region) -> list[str]:
    """Every other region of the stack, in any zone: peers exchange key records and spend totals only."""
    return [f"https://{regional_host(r.name, cfg.gateway.domain)}" for r in cfg.regions if r.name != region.name]


def governance(cfg: StackConfig, region: Region, stores: StoreRefs) -> dict[str, Any]:
    """The config sections that turn keys, limits, budgets and the spend ledger on, with this region's stores."""
    out: dict[str, Any] = {
        "redis": {"url": REDIS_URL},
        # No spool_dir: the chart gives the ledger its volume's mount path (charts/gateway values `spool.path`, the
        # one place the path is written), so the config and the mount cannot disagree.
        "ledger": {"store": stores.ledger_dsn, "store_password_secret": stores.ledger_password_secret},
        "keys": {"refresh_seconds": KEY_REFRESH_SECONDS},
    }
    peers = peer_urls(cfg, region)
    if peers:  # a one-region stack has nobody to sync with
        out["peers"] = {"urls": peers, "key": PEER_KEY, "interval": PEER_INTERVAL_SECONDS}
    return out


def gateway_config(cfg: StackConfig, region: Region, stores: StoreRefs | None = None) -> dict[str, Any]:
    """Models this region's gateway offers: every model served somewhere in its residency zone; with `stores`,
    governance on those stores (the program always passes them; None renders the stateless gateway)."""
    models = []
    for model in cfg.models:
        deployments = _deployments(cfg, model, region)
        if any(d.get("tier") != "fallback" for d in deployments):
            models.append({"alias": model.name, "max_tokens": model.max_model_len // 2, "tier": model.tier,
                           "deployments": deployments})
    return {
        "version": 1,
        "gateway": {"region": region.name, "residency": region.residency, "master_key": MASTER_KEY,
                    "front_door": {"shutdown_grace": SHUTDOWN_GRACE_SECONDS}},
        "secrets": {"source": "aws-secretsmanager", "stack": cfg.stack, "region": region.name},
        "models": models,
        "other_zones": other_zones(cfg, region),
        **(governance(cfg, region, stores) if stores is not None else {}),
        **cost_features(cfg, region, {str(m["alias"]) for m in models}, stores),
    }


def dropped_ladders(cfg: StackConfig, region: Region) -> list[tuple[str, list[str]]]:
    """Ladders this region's gateway cannot offer, with the rungs its zone does not serve: the program warns."""
    offered = {m.name for m in cfg.models if any(cfg.zone_of(r) == region.residency for r in m.regions
                                                 if r in {x.name for x in cfg.regions})}
    return [(ladder.alias, [r for r in ladder.rungs if r not in offered]) for ladder in cfg.gateway.ladders
            if any(r not in offered for r in ladder.rungs)]


def cost_features(cfg: StackConfig, region: Region, offered: set[str], stores: StoreRefs | None) -> dict[str, Any]:
    """The gateway's `ladders`, `cache` and `batch` sections for `region` (gateway/config/ladders.py, cache.py,
    batch.py): only what names models this gateway offers (its zone's), never a model of another zone. The cache
    and batch need the stores: the cache lives in the region's Redis, batches in the ledger."""
    out: dict[str, Any] = {}
    ladders = []
    for ladder in cfg.gateway.ladders:
        if not set(ladder.rungs) <= offered:
            continue  # dropped_ladders names it; the program warns
        pins = {kind: dict(v) for kind, v in (("teams", ladder.pins.teams), ("keys", ladder.pins.keys)) if v}
        ladders.append({"alias": ladder.alias, "rungs": list(ladder.rungs), "escalate_on": list(ladder.escalate_on),
                        **({"rules": [r.model_dump(exclude_none=True) for r in ladder.rules]} if ladder.rules else {}),
                        **({"pins": pins} if pins else {})})
    if ladders:
        out["ladders"] = ladders
    cache = cfg.gateway.cache
    if cache is not None and stores is not None:
        models = [m for m in cache.models if m == "*" or m in offered]
        if models or cache.teams or cache.keys:  # else nothing here to cache (the gateway refuses an empty cache)
            out["cache"] = {**cache.model_dump(exclude={"models"}), "models": models}
    batch = cfg.gateway.batch
    if batch is not None and stores is not None and stores.batch_files is not None:
        mapped = {k: v for k, v in batch.models.items() if k in offered and v in offered}
        out["batch"] = {"files": stores.batch_files,
                        **batch.model_dump(exclude={"models", "retention_days", "budget_gib"}), "models": mapped}
    return out
