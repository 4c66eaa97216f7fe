"""LiteLLM's key fields: every field of its `GenerateKeyResponse` with its default, which ones this gateway
keeps, and the refusal of those it does not support when a request sets them to something that matters.

The field list and defaults are those of `litellm.proxy._types.GenerateKeyResponse` in LiteLLM 1.106.2
(read from the installed package, `GenerateKeyResponse.model_fields`, 2026-11-26; source:
https://github.com/BerriAI/litellm/blob/main/litellm/proxy/_types.py). A script that reads any of them
from our answer finds it, with LiteLLM's type; a value we do not keep is LiteLLM's default.

A request that sets an unsupported field changing who may call or what a call costs (routes, per-model
budgets, guardrails, aliases, organisations...) is refused with a 400 naming the field: silently dropping it
would leave a key more powerful, or cheaper to the caller, than its creator asked for. Fields with no such
effect, or whose absence only narrows what a key can do (tags, a soft budget that only alerts, invite e-mails,
model aliases), are accepted, echoed back, and listed in `ignored_fields`.
"""

from __future__ import annotations

from typing import Any

from gateway.http.errors import bad_request

# GenerateKeyResponse.model_fields in LiteLLM 1.106.2: name -> default (`key` is required there).
KEY_RESPONSE_DEFAULTS: dict[str, Any] = {
    "key_alias": None, "duration": None, "models": [], "spend": 0, "max_budget": None, "user_id": None,
    "team_id": None, "agent_id": None, "max_parallel_requests": None, "metadata": {}, "tpm_limit": None,
    "rpm_limit": None, "budget_duration": None, "budget_limits": None, "allowed_cache_controls": [],
    "config": {}, "permissions": {}, "model_max_budget": {}, "budget_fallbacks": None, "model_rpm_limit": None,
    "model_tpm_limit": None, "mcp_rpm_limit": None, "tag_rpm_limit": None, "guardrails": None, "policies": None,
    "prompts": None, "blocked": None, "aliases": {}, "object_permission": None, "key": None, "tpd_limit": None,
    "default_estimated_output_tokens": None, "default_estimated_output_tokens_per_model": None,
    "budget_id": None, "end_user_budget_id": None, "tags": None, "disable_global_guardrails": None,
    "enable_prompt_caching": None, "throttle_on_budget_exceeded": None, "enforced_params": None,
    "allowed_routes": [], "allowed_passthrough_routes": None, "denied_passthrough_routes": None,
    "allowed_vector_store_indexes": None, "rpm_limit_type": None, "tpm_limit_type": None,
    "router_settings": None, "access_group_ids": None, "key_name": None, "key_type": None, "expires": None,
    "token_id": None, "organization_id": None, "project_id": None, "litellm_budget_table": None, "token": None,
    "created_by": None, "updated_by": None, "created_at": None, "updated_at": None,
}

# LiteLLM_UserTable's fields in LiteLLM 1.106.2 (litellm/models/user.py) -> default, as /user/* answer them
# (password and organisation fields left out: never shown, not kept).
USER_TABLE_DEFAULTS: dict[str, Any] = {
    "user_id": None, "user_alias": None, "team_id": None, "sso_user_id": None, "teams": [], "user_role": None,
    "max_budget": None, "spend": 0.0, "user_email": None, "models": [], "metadata": None,
    "max_parallel_requests": None, "tpm_limit": None, "rpm_limit": None, "budget_duration": None,
    "budget_reset_at": None, "allowed_cache_controls": [], "policies": [], "model_spend": {},
    "model_max_budget": {}, "created_at": None, "updated_at": None,
}

# Fields accepted and not applied, because not applying them never widens access nor lowers a cost: tags and
# alerts; `aliases` / `model_aliases` (extra model names for a key or team: unapplied, a call naming one gets a
# 404 model_not_found); `budget_fallbacks` (another model once over budget: unapplied, the call is refused).
# LiteLLM's own proxy tests send `aliases` with every key (tests/test_keys.py, tests/test_users.py).
INERT = frozenset({"tags", "soft_budget", "send_invite_email", "created_by", "updated_by", "user_email",
                   "auto_create_key", "sso_user_id", "teams", "user_alias", "user_role", "key_name", "token",
                   "token_id", "created_at", "updated_at", "litellm_budget_table", "budget_reset_at", "aliases",
                   "model_aliases", "budget_fallbacks"})
# Harmless values of otherwise refused fields: what LiteLLM itself treats as "no restriction".
_HARMLESS: dict[str, tuple[Any, ...]] = {
    "key_type": ("default", "llm_api"), "auto_rotate": (False,), "spend": (0, 0.0),
}
# Unsupported fields that change who may call, what, or what it costs. Each is refused when set.
REFUSED = frozenset({
    "agent_id", "budget_limits", "allowed_cache_controls", "config", "permissions", "model_max_budget",
    "mcp_rpm_limit", "tag_rpm_limit", "guardrails", "policies", "prompts", "object_permission", "tpd_limit",
    "default_estimated_output_tokens", "default_estimated_output_tokens_per_model",
    "budget_id", "end_user_budget_id", "disable_global_guardrails", "enable_prompt_caching",
    "throttle_on_budget_exceeded", "enforced_params", "allowed_routes", "allowed_passthrough_routes",
    "denied_passthrough_routes", "allowed_vector_store_indexes", "rpm_limit_type", "tpm_limit_type",
    "router_settings", "access_group_ids", "organization_id", "project_id", "organizations", "auto_rotate",
    "rotation_interval", "spend", "temp_budget_increase", "temp_budget_expiry", "key_type", "password",
    "object_permission_id", "team_member_budget", "team_member_rpm_limit",
    "team_member_tpm_limit", "team_member_key_duration", "team_member_permissions", "max_budget_in_team",
})


def _unset(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""


def refuse_unsupported(extra: dict[str, Any] | None) -> list[str]:
    """400 naming the first refused field set to a value that matters; else the names of inert fields given."""
    extra = extra or {}
    for name in sorted(extra):
        value = extra[name]
        if name in REFUSED and not _unset(value) and value not in _HARMLESS.get(name, ()):
            raise bad_request(f"{name}: not supported by this gateway (it would change who may call, or what a call "
                              f"costs); omit it or send {KEY_RESPONSE_DEFAULTS.get(name)!r}", name)
    return sorted(extra)


def litellm_key(ours: dict[str, Any], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every GenerateKeyResponse field: ours where we keep it, what the request gave for inert fields, else
    LiteLLM's default; then our own fields (residency, max_tokens, max_request_bytes...)."""
    given = given or {}
    out = {name: _copy(default) for name, default in KEY_RESPONSE_DEFAULTS.items()}
    for name in KEY_RESPONSE_DEFAULTS:
        if name in given and (name in INERT or name == "duration" or name in _HARMLESS):
            out[name] = given[name]
    out.update(ours)
    return out


def _copy(value: Any) -> Any:
    return [] if value == [] and isinstance(value, list) else ({} if isinstance(value, dict) else value)
