"""Bedrock as a hosted fallback: no key in Secrets Manager, each region's gateway calls Bedrock in its own region, a
cross-region profile only from regions of its geography, and the gateway reads what the program renders."""
from __future__ import annotations

from gateway.config.native import parse_native
from infra.config import parse
from infra.gateway_config import gateway_config
from tests.infra.rendered_sections import gateway_parsable
from tests.stacks import stack_raw

HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"


def _fallbacks(config: dict, alias: str) -> list[dict]:
    model = next(m for m in config["models"] if m["alias"] == alias)
    return [d for d in model["deployments"] if d.get("tier") == "fallback"]


def test_each_zones_gateways_get_their_own_geographys_profile_and_no_key() -> None:
    raw = stack_raw("prod")
    raw["failover"]["hosted_fallbacks"] = {"llama-3-1-8b": [f"bedrock/us.{HAIKU}", f"bedrock/eu.{HAIKU}"]}
    raw["secrets"] = {"providers": []}  # Bedrock needs no provider key
    cfg = parse(raw, "prod")
    for region, geo in [("us-east-1", "us"), ("us-west-2", "us"), ("eu-north-1", "eu"), ("eu-west-2", "eu")]:
        rendered = gateway_config(cfg, cfg.region(region))
        [fallback] = _fallbacks(rendered, "llama-3-1-8b")
        assert fallback == {"name": f"llama-3-1-8b-bedrock-{geo}", "provider": "bedrock", "model": f"{geo}.{HAIKU}",
                            "region": region, "residency": cfg.zone_of(region), "tier": "fallback"}
        # The gateway accepts what the program renders, and calls Bedrock's endpoint in its own region.
        [dep] = [d for m in parse_native(gateway_parsable(rendered)).models for d in m.deployments
                 if d.provider == "bedrock"]
        assert dep.api_base == f"https://bedrock-runtime.{region}.amazonaws.com" and dep.api_key is None


def test_a_plain_model_id_is_called_in_every_gateways_own_region() -> None:
    raw = stack_raw("prod")
    raw["failover"]["hosted_fallbacks"] = {"llama-3-1-8b": [f"bedrock/{HAIKU}"]}
    cfg = parse(raw, "prod")
    regions = {f["region"] for r in cfg.regions for f in _fallbacks(gateway_config(cfg, r), "llama-3-1-8b")}
    assert regions == {"us-east-1", "us-west-2", "eu-north-1", "eu-west-2"}
