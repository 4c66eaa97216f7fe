"""The rendered gateway config judged by the gateway's own parser (gateway/config/native.py): its `ladders`,
`cache`, `batch` sections and `models[].tier` included, with the gateway's cross-checks (rungs, cache models and
batch targets are configured aliases; a batch target is `tier: batch`; batch needs the ledger)."""
from __future__ import annotations

from typing import Any

from gateway.config.native import GatewayConfig


def sections(config: dict[str, Any]) -> GatewayConfig:
    """The rendered config as the gateway reads it (raises pydantic's ValidationError)."""
    return GatewayConfig.model_validate(config)


def gateway_parsable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as rendered: the gateway parses every section the program writes."""
    sections(config)
    return config
