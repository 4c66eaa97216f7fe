"""Models restricted to another residency zone: the `other_zones` config section (the 421 for them: http/errors.py).

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
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def check_other_zones(own_zone: str | None, other_zones: Mapping[str, OtherZone], served: set[str]) -> None:
    """A model served here cannot also be another zone's, and this gateway's own zone is not 'other'."""
    for zone, other in other_zones.items():
        if own_zone is not None and zone == own_zone:
            raise ValueError(f"other_zones.{zone}: is this gateway's own residency zone (gateway.residency)")
        for alias in other.models:
            if alias in served:
                raise ValueError(f"other_zones.{zone}.models: {alias!r} is also a model alias served here")


def zone_serving(other_zones: Mapping[str, OtherZone], alias: str) -> tuple[str, OtherZone] | None:
    """The residency zone that alone serves `alias`, and where to call it; None when no zone claims it."""
    return next(((zone, other) for zone, other in other_zones.items() if alias in other.models), None)
