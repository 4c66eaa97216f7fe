"""Config sections that bound what a client or an upstream can make the gateway hold: sizes, idle times, connections."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1024 * 1024


class _Strict(BaseModel):
    # Same rule as gateway.config.native: unknown keys are typos, refused by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrontDoor(_Strict):
    """What one client connection may send and hold: `gateway.front_door`."""

    header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)  # request line and each header field
    body_bytes: int = Field(16 * MiB, ge=1024)  # any request body; models and keys may set lower caps
    json_depth: int = Field(64, ge=4, le=1000)  # nesting of a JSON body; deeper is a 400
    keepalive_idle: float = Field(75.0, gt=0)  # an idle keep-alive connection is closed after this (s)
    request_read: float = Field(30.0, gt=0)  # headers and body must arrive within this (s): slow clients go
    connections: int = Field(4096, ge=16)  # open client connections per worker process; more are refused
    shutdown_grace: float = Field(50.0, ge=0)  # after SIGTERM, calls in flight get this long to finish (s)


class UpstreamLimits(_Strict):
    """What one upstream answer may make the gateway hold: `gateway.upstream_limits`."""

    header_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)  # status line and headers
    body_bytes: int = Field(64 * MiB, ge=1024)  # a whole (non-streamed) answer, as received
    decompressed_bytes: int = Field(64 * MiB, ge=1024)  # a gzip/deflate answer once inflated
    sse_event_bytes: int = Field(8 * MiB, ge=1024)  # one server-sent event of a stream

    @model_validator(mode="after")
    def _inflated_at_least_body(self) -> UpstreamLimits:
        if self.decompressed_bytes < self.body_bytes:
            raise ValueError("decompressed_bytes must be at least body_bytes")
        return self
