"""Pulumi entry point: load the stack's config and build the platform."""
import sys

import pulumi
from pulumi.runtime.settings import get_monitor

if get_monitor() is None:
    # Run by Python itself, not by the Pulumi engine: the language host sets the stack's config and connects the
    # resource monitor before it runs the program (pulumi/pulumi sdk/python/cmd/pulumi-language-python-exec:
    # set_all_config, then configure(Settings(monitor=...)), then runpy), as the plan's mock engine does; without
    # one there is nothing to register resources with and no stack config to read.
    print("infra is the Pulumi program of llm-platform and runs under the Pulumi engine: use `pulumi up` (or "
          "`pulumi preview`) on a stack, or `llmp plan --stack <name>` for an offline plan", file=sys.stderr)
    sys.exit(2)

from infra.config import from_pulumi  # after the check: config loading needs the engine
from infra.platform import Platform

config = from_pulumi()
platform = Platform("llm-platform", config)
pulumi.export("gateway_url", f"https://{config.gateway.domain}/v1")
pulumi.export("regions", [r.name for r in config.regions])
pulumi.export("dns_zone_id", platform.dns.zone_id)
