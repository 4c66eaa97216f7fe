"""Pulumi entry point: load the stack's config and build the platform."""
import pulumi

from infra.config import from_pulumi
from infra.platform import Platform

config = from_pulumi()
platform = Platform("llm-platform", config)
pulumi.export("gateway_url", f"https://{config.gateway.domain}/v1")
pulumi.export("regions", [r.name for r in config.regions])
# Delegate the zone to these from its parent domain, once, after the first `pulumi up`.
pulumi.export("name_servers", platform.dns.zone.name_servers)
