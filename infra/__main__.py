"""Pulumi entry point: load the stack's config and build the platform."""
import pulumi

from infra.config import from_pulumi
from infra.platform import Platform

config = from_pulumi()
platform = Platform("llm-platform", config)
pulumi.export("gateway_url", f"https://{config.gateway.domain}/v1")
pulumi.export("regions", [r.name for r in config.regions])
pulumi.export("dns_zone_id", platform.dns.zone_id)
