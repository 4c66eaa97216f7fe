"""How the gateway talks to its upstreams: timeouts, retries, circuit breaking, session affinity, and where a
self-hosted deployment's replicas are (native config sections; see gateway/config/native.py for the format)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.config.urls import check_url


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: float = Field(2.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    idle: float = Field(30.0, gt=0)
    total: float = Field(600.0, gt=0)


class TimeoutOverrides(_Strict):
    """Per-deployment timeouts; a field left out keeps the gateway's value."""

    connect: float | None = Field(None, gt=0)
    first_byte: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)

    def over(self, base: Timeouts) -> Timeouts:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Retries(_Strict):
    attempts: int = Field(2, ge=0, le=10)
    backoff_base: float = Field(0.05, ge=0)
    backoff_max: float = Field(2.0, ge=0)
    retry_after_max: float = Field(5.0, ge=0)


class CircuitBreakerSettings(_Strict):
    failures: int = Field(5, ge=1)
    cooldown: float = Field(10.0, gt=0)


class AffinitySettings(_Strict):
    bounded_load: float = Field(1.25, ge=1.0)
    prefix_chars: int = Field(512, ge=1)


class EndpointSlices(_Strict):
    """Replicas discovered from the EndpointSlices of a Kubernetes Service."""

    service: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    port: int | str  # number, or the port's name in the Service
    scheme: Literal["http", "https"] = "http"
    base_path: str = "/v1"
    refresh: float = Field(10.0, gt=0)  # s each EndpointSlice watch call lasts (then resumed); wait after an error


class Replicas(_Strict):
    static: list[str] | None = None
    endpoint_slices: EndpointSlices | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Replicas:
        if (self.static is None) == (self.endpoint_slices is None):
            raise ValueError("give exactly one of 'static' or 'endpoint_slices'")
        if self.static is not None:
            if not self.static:
                raise ValueError("'static' lists no replica")
            for url in self.static:
                check_url(url)
        return self
