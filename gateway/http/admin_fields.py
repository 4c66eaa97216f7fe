"""What the admin API reads and answers: LiteLLM's key, team, user and member fields, validated, and keys, teams
and users as JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.errors import format_validation_error
from gateway.config.governance import parse_duration
from gateway.governance.bounds import (
    MAX_BUDGET,
    MAX_LIMIT,
    MAX_LIST,
    MAX_METADATA_BYTES,
    MAX_PARALLEL,
    MAX_REQUEST_BYTES,
    MAX_TEXT,
    MAX_TIMESTAMP,
    MAX_TOKENS,
)
from gateway.governance.keys import Limits, Team, User, VirtualKey
from gateway.http.errors import bad_request

LIMIT_FIELDS = ("max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")

# Every number is bounded (gateway/governance/bounds.py): limits reach Redis' 64-bit counters and Lua's doubles,
# times become ISO dates in every list; a value past a bound is a 400 naming the field, never a stored row that
# breaks later.
# No NUL: PostgreSQL's text and jsonb cannot hold one (the key's write, then its spend rows, would fail).
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00]*$")]
Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]
Names = Annotated[list[Text], Field(max_length=MAX_LIST)]
PerModel = Annotated[dict[Text, Limit], Field(max_length=MAX_LIST)]


class _Fields(BaseModel):
    # Unknown fields are kept aside (LiteLLM has many we do not use) and reported, not refused.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    models: Names | None = None
    max_budget: float | None = Field(None, ge=0, le=MAX_BUDGET)
    budget_duration: str | None = Field(None, max_length=40)
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: int | None = Field(None, ge=0, le=MAX_PARALLEL)
    metadata: dict[str, Any] | None = None
    residency: Text | None = None
    blocked: bool | None = None

    @field_validator("budget_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (255): the store could not keep it
            raise ValueError("nested too deeply") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"more than {MAX_METADATA_BYTES} bytes as JSON")
        return value


class KeyFields(_Fields):
    key_alias: Text | None = None
    duration: str | None = Field(None, max_length=40)
    expires: Annotated[str, Field(max_length=64)] | float | None = None
    team_id: Text | None = None
    user_id: Text | None = None
    key: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_request_bytes: int | None = Field(None, ge=1, le=MAX_REQUEST_BYTES)
    model_rpm_limit: PerModel | None = None
    model_tpm_limit: PerModel | None = None

    @field_validator("duration")
    @classmethod
    def _key_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class Member(BaseModel):
    """LiteLLM's `Member`: a user in a team, by id or e-mail, as `admin` or `user`."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["admin", "user"] = "user"
    user_id: Text | None = None
    user_email: Text | None = None

    @model_validator(mode="after")
    def _someone(self) -> Member:
        if self.user_id is None and self.user_email is None:
            raise ValueError("give user_id or user_email")
        return self


class TeamFields(_Fields):
    team_id: Text | None = None
    team_alias: Text | None = None
    members_with_roles: Annotated[list[Member], Field(max_length=MAX_LIST)] | None = None


class TeamRef(BaseModel):
    """An entry of /user/new's `teams` in LiteLLM's object form (NewUserRequestTeam)."""

    model_config = ConfigDict(extra="forbid")
    team_id: Text
    user_role: Literal["user", "admin"] = "user"
    max_budget_in_team: float | None = None


class UserFields(_Fields):
    """LiteLLM's NewUserRequest / UpdateUserRequest; key fields (key_alias, duration) go to the user's key."""

    user_id: Text | None = None
    user_email: Text | None = None
    user_alias: Text | None = None
    user_role: Literal["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"] | None = None
    teams: Annotated[list[Text | TeamRef], Field(max_length=MAX_LIST)] | None = None
    auto_create_key: bool = True
    key_alias: Text | None = None
    duration: str | None = Field(None, max_length=40)

    @field_validator("duration")
    @classmethod
    def _key_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("user_role")
    @classmethod
    def _admin_role(cls, value: str | None) -> str | None:
        # A user's keys never reach the admin API here (only the master key does): a role that would grant it in
        # LiteLLM is refused rather than stored with no effect.
        if value in ("proxy_admin", "proxy_admin_viewer"):
            raise ValueError(f"{value!r}: admin roles are not supported (the admin API takes the master key only)")
        return value


class MemberAddFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    team_id: Text
    member: Member | Annotated[list[Member], Field(min_length=1, max_length=MAX_LIST)]
    # max_budget_in_team is not here: a per-member budget is not enforced, so it is refused (admin_litellm.py).


class MemberDeleteFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    team_id: Text
    user_id: Text | None = None
    user_email: Text | None = None


class UserDeleteFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    user_ids: Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST)]


class DeleteFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    keys: Annotated[list[Text], Field(max_length=MAX_LIST)] = []
    key_aliases: Annotated[list[Text], Field(max_length=MAX_LIST)] = []


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
    try:
        return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
    except (ValueError, OverflowError, OSError, TypeError):  # a row from before times were bounded: shown as unknown
        return None


def expiry(fields: KeyFields, now: float) -> float | None:
    if fields.duration is not None:
        return now + parse_duration(fields.duration)
    value = fields.expires
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
            raise bad_request(f"expires: {value!r} is not a Unix time between 1970 and 9999", "expires")
        return float(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"expires: {value!r} is not an ISO 8601 date-time", "expires") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        stamp = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise bad_request(f"expires: {value!r} is not a date-time between 1970 and 9999", "expires") from None
    if not 0 <= stamp <= MAX_TIMESTAMP:
        raise bad_request(f"expires: {value!r} is not a date-time between 1970 and 9999", "expires")
    return stamp


def key_view(key: VirtualKey, revoked: bool = False) -> dict[str, Any]:
    d = dataclasses.asdict(key)
    limits = d.pop("limits")
    d.update(limits)
    d["models"] = list(key.models)
    d["expires"] = iso(key.expires)
    d["created_at"] = iso(key.created_at)
    if revoked:
        d["revoked"] = True
    d["budget_reset_at"] = reset_at(key.limits)
    # LiteLLM's /key/info `status`: deleted, revoked (blocked), expired or active.
    d["status"] = "deleted" if revoked else "revoked" if key.blocked else \
        "expired" if key.expires is not None and key.expires <= time.time() else "active"
    return d


def user_view(user: User) -> dict[str, Any]:
    d = dataclasses.asdict(user)
    d.update(d.pop("limits"))
    d["models"] = list(user.models)
    d["created_at"] = iso(user.created_at)
    d["updated_at"] = iso(user.updated_at)
    d["budget_reset_at"] = reset_at(user.limits)
    return d


def reset_at(limits: Limits) -> str | None:
    """When the current budget window ends (windows are aligned to the Unix epoch: gateway/governance/limits)."""
    if limits.budget_duration is None:
        return None
    seconds = parse_duration(limits.budget_duration)
    return iso((time.time() // seconds + 1) * seconds) if seconds else None


def member_view(row: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's `Member` as `members_with_roles` lists it."""
    return {"role": row["role"], "user_id": row["user_id"], "user_email": row["user_email"]}


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
