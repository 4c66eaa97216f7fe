"""Models restricted to another residency zone: the `other_zones` config section and the 421 answered for them.

The stack's global name spans every region (Route 53 latency records), so a client may reach this
gateway with a model that only another residency zone serves. Such a request is never forwarded:
it is answered at once, before any upstream, log of the prompt or spend, with the zone's own name.

    other_zones:
      eu:
        url: https://eu.api.llm.example.com   # the zone's name: resolves only to the zone's regions
        models: [mistral-small-24b]
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

# RFC 9110 section 15.5.20: the request reached a server that cannot answer for it. Not retried by
# the openai client (it retries 408, 409, 429 and 5xx), unlike a 5xx; unlike 404 it says where to go.
MISDIRECTED = 421
_URL = re.compile(r"^https://[^/\s]+$")


class OtherZone(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str  # https://<zone>.<domain>, no path: clients append /v1 themselves
    models: list[str] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _https_origin(cls, url: str) -> str:
        if not _URL.match(url.rstrip("/")):
            raise ValueError(f"{url!r} is not an https origin such as https://eu.api.example.com")
        return url.rstrip("/")


def check_other_zones(config: "GatewayConfig") -> None:
    """A model served here cannot also be another zone's, and this gateway's own zone is not 'other'."""
    own = config.gateway.residency
    for zone, other in config.other_zones.items():
        if own is not None and zone == own:
            raise ValueError(f"other_zones.{zone}: is this gateway's own residency zone (gateway.residency)")
        for alias in other.models:
            if config.model(alias) is not None:
                raise ValueError(f"other_zones.{zone}.models: {alias!r} is also a model alias served here")


def misdirected(other_zones: Mapping[str, OtherZone], alias: str) -> GatewayError | None:
    """The error for a model only another residency zone serves; None when no zone claims it."""
    for zone, other in other_zones.items():
        if alias in other.models:
            return GatewayError(
                MISDIRECTED,
                f"model {alias} is served only in residency zone {zone}: call {other.url} "
                f"(OpenAI base URL {other.url}/v1); this gateway is outside that zone and did not forward "
                f"the request",
                "invalid_request_error", "model", "model_in_other_residency_zone")
    return None
