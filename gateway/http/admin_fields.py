"""What the admin API reads and answers: LiteLLM's key and team fields, validated, and keys and teams as JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config.errors import format_validation_error
from gateway.config.governance import parse_duration
from gateway.governance.keys import Limits, Team, VirtualKey
from gateway.http.errors import bad_request

LIMIT_FIELDS = ("max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")


class _Fields(BaseModel):
    # Unknown fields are kept aside (LiteLLM has many we do not use) and reported, not refused.
    model_config = ConfigDict(extra="allow")

    models: list[str] | None = None
    max_budget: float | None = Field(None, ge=0)
    budget_duration: str | None = None
    rpm_limit: int | None = Field(None, ge=0)
    tpm_limit: int | None = Field(None, ge=0)
    max_parallel_requests: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    residency: str | None = None
    blocked: bool | None = None

    @field_validator("budget_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class KeyFields(_Fields):
    key_alias: str | None = None
    duration: str | None = None
    expires: str | float | None = None
    team_id: str | None = None
    user_id: str | None = None
    key: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_request_bytes: int | None = Field(None, ge=1)
    model_rpm_limit: dict[str, int] | None = None
    model_tpm_limit: dict[str, int] | None = None

    @field_validator("duration")
    @classmethod
    def _key_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class TeamFields(_Fields):
    team_id: str | None = None
    team_alias: str | None = None


class DeleteFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    keys: list[str] = []
    key_aliases: list[str] = []


def parse_fields(model: type[BaseModel], body: Any) -> BaseModel:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise bad_request(format_validation_error(exc), _first_field(exc)) from None


def _first_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None


def iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def expiry(fields: KeyFields, now: float) -> float | None:
    if fields.duration is not None:
        return now + parse_duration(fields.duration)
    value = fields.expires
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"expires: {value!r} is not an ISO 8601 date-time", "expires") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def key_view(key: VirtualKey, revoked: bool = False) -> dict[str, Any]:
    d = dataclasses.asdict(key)
    limits = d.pop("limits")
    d.update(limits)
    d["models"] = list(key.models)
    d["expires"] = iso(key.expires)
    d["created_at"] = iso(key.created_at)
    if revoked:
        d["revoked"] = True
    return d


def team_view(team: Team) -> dict[str, Any]:
    d = dataclasses.asdict(team)
    d.update(d.pop("limits"))
    d["models"] = list(team.models)
    d["created_at"] = iso(team.created_at)
    return d


def limits_from(fields: _Fields, base: Limits | None = None) -> Limits:
    values = dataclasses.asdict(base) if base is not None else {}
    for name in LIMIT_FIELDS:
        if name in fields.model_fields_set:
            values[name] = getattr(fields, name)
    return Limits(**values)
