"""LiteLLM's proxy `config.yaml`, read as LiteLLM reads it and turned into the native `GatewayConfig`.

What is read (every other setting is ignored-and-logged or refused: gateway/config/litellm_settings.py)::

    environment_variables: {NAME: value}  # laid over the environment for os.environ/NAME
    model_list:                       # entries sharing a model_name form one alias
      - model_name: llama-3.1-8b      # or a wildcard: "*", "openai/*" (the client's name is sent upstream)
        litellm_params:
          model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct   # openai/<name>, anthropic/<name>, or a bare
                                      # OpenAI name (gpt-4o-mini), as LiteLLM reads it
          api_base: http://vllm:8000/v1
          api_key: os.environ/VLLM_API_KEY
          rpm: 600                    # kept for the governance layer
          tpm: 100000
          weight: 2
          timeout: 30                 # total seconds for this deployment
          stream_timeout: 30          # idle seconds between stream chunks
          region_name: us-east-1      # optional: the deployment's region
          temperature: 0.2            # OpenAI request fields: defaults, the client's value wins (as LiteLLM)
          max_tokens: 4096
        model_info: {id: ..., residency: us}   # residency is our extension; else derived from region_name
    router_settings:
      routing_strategy: simple-shuffle   # simple-shuffle -> weighted; least-busy;
                                         # latency-/usage-/cost-based -> least-busy
      num_retries: 2
      timeout: 30
      fallbacks: [{llama-3.1-8b: [gpt-4o-mini]}]
      context_window_fallbacks: [{llama-3.1-8b: [llama-3.1-8b-128k]}]
      default_fallbacks: [gpt-4o-mini]
      model_group_alias: {gpt-4: gpt-4o, old: {model: gpt-4o, hidden: true}}
      allowed_fails: 3                # -> circuit_breaker.failures = 4 (LiteLLM cools down on fails > allowed)
      cooldown_time: 30               # -> circuit_breaker.cooldown
      redis_host: redis                # with database_url: limits shared through this Redis (or redis_url)
      redis_port: 6379
      redis_password: os.environ/REDIS_PASSWORD
    litellm_settings: {num_retries, request_timeout, fallbacks, context_window_fallbacks, default_fallbacks}
                                      # read when router_settings lacks them
    general_settings:
      master_key: os.environ/LITELLM_MASTER_KEY   # absent: the LITELLM_MASTER_KEY variable, as LiteLLM
      database_url: os.environ/DATABASE_URL   # turns governance on: keys, teams and the spend ledger here
      max_request_size_mb: 16 / max_response_size_mb: 64
      llmp_spool_dir: /var/lib/llmp/spool     # ours: the spend spool (default ./llmp-spool/<database's identity>)

Prices come from `litellm_params.input_cost_per_token` / `output_cost_per_token` (or
the same fields under `model_info`). With `database_url` the admin API and virtual
keys work as in LiteLLM (`/key/generate`, `/team/new`, ...); the gateway keeps its own
`llmp_*` tables there, next to LiteLLM's.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from gateway.config.env import resolve_env
from gateway.config.errors import ConfigError
from gateway.config.governance import parse_duration
from gateway.config.limits import MiB
from gateway.config.litellm_models import read_models, renamed, request_defaults
from gateway.config.litellm_review import Ignored, review
from gateway.config.native import GatewayConfig, parse_native

STRATEGIES = {
    "simple-shuffle": "weighted",
    "least-busy": "least-busy",
    "latency-based-routing": "least-busy",
    "usage-based-routing": "least-busy",
    "usage-based-routing-v2": "least-busy",
    "cost-based-routing": "least-busy",
}
# Native paths a LiteLLM user never wrote, as they should read them (loading.Loaded.explain).
LITELLM_NAMES = {"gateway.master_key": "general_settings.master_key (or the LITELLM_MASTER_KEY variable)"}


def from_litellm(doc: dict[str, Any]) -> GatewayConfig:
    return translate(doc)[0]


def translate(doc: dict[str, Any]) -> tuple[GatewayConfig, list[Ignored]]:
    """The native config and the settings it ignores (to log once at start); ConfigError for refused ones."""
    ignored = review(doc)
    env = _environment(doc)
    doc = resolve_env({k: v for k, v in doc.items() if k != "environment_variables"}, environ=env)
    router = _section(doc, "router_settings")
    settings = _section(doc, "litellm_settings")
    general = _section(doc, "general_settings")
    origins: dict[tuple[int, int], int] = {}
    models = read_models(doc.get("model_list"), origins)
    aliases = _aliases(router.get("model_group_alias"))
    _router_defaults(router.get("default_litellm_params"), models)

    def group(name: Any) -> Any:  # a fallback may name a model_group_alias: LiteLLM resolves it
        return aliases[name]["model"] if isinstance(name, str) and name in aliases else name

    generic: dict[str, list[Any]] = {}
    for key in ("fallbacks", "context_window_fallbacks"):
        where = "router_settings" if key in router else "litellm_settings"
        for alias, targets in _fallbacks(router.get(key, settings.get(key)), f"{where}.{key}", models):
            if alias == "*" and "*" not in models:
                generic.setdefault(key, []).extend(targets)  # LiteLLM's generic `*` group: models without their own
                continue
            models[alias].setdefault(key, []).extend(group(t) for t in targets)
    for model in models.values():
        if not model.get("context_window_fallbacks") and generic.get("context_window_fallbacks"):
            targets = [group(t) for t in generic["context_window_fallbacks"]]
            model["context_window_fallbacks"] = [t for t in targets if t != model["alias"]]
    default_where = "router_settings" if "default_fallbacks" in router else "litellm_settings"
    defaults = router.get("default_fallbacks", settings.get("default_fallbacks")) or generic.get("fallbacks", [])
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{default_where}.default_fallbacks: expected a list of model names")
    for model in models.values():
        if not model["fallbacks"]:  # LiteLLM: default_fallbacks when a model has none of its own
            model["fallbacks"] = [group(d) for d in defaults if group(d) != model["alias"]]

    strategy = router.get("routing_strategy", "simple-shuffle")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"router_settings.routing_strategy: {strategy!r} is not one of {', '.join(sorted(STRATEGIES))}"
        )
    master = general["master_key"] if "master_key" in general else env.get("LITELLM_MASTER_KEY")
    gateway: dict[str, Any] = {"routing": STRATEGIES[strategy], "master_key": master}
    retries = router.get("num_retries", settings.get("num_retries"))
    if retries is not None:
        gateway["retries"] = {"attempts": retries}
    timeout = router.get("timeout", settings.get("request_timeout"))
    if timeout is not None:
        gateway["timeouts"] = {"total": timeout}
    budget_status = settings.get("budget_exceeded_status_code")
    if budget_status is not None:
        if isinstance(budget_status, bool) or not isinstance(budget_status, int) or not 400 <= budget_status <= 599:
            raise ConfigError(f"litellm_settings.budget_exceeded_status_code: {budget_status!r} is not an HTTP error "
                              "status (400 to 599)")
        gateway["budget_exceeded_status"] = budget_status
    breaker = renamed(router, {"allowed_fails": "failures", "cooldown_time": "cooldown"})
    if "failures" in breaker:
        fails = breaker["failures"]
        if isinstance(fails, bool) or not isinstance(fails, int) or fails < 0:
            raise ConfigError(f"router_settings.allowed_fails: {fails!r} is not a whole number from 0")
        # LiteLLM cools a deployment down when `updated_fails > allowed_fails` (router_utils/cooldown_handlers.py,
        # should_cooldown_based_on_allowed_fails_policy, 1.106.2): the circuit opens on failure allowed_fails + 1.
        breaker["failures"] = fails + 1
    if breaker:
        gateway["circuit_breaker"] = breaker
    gateway.update(_sizes(general))
    # Our extensions, so one LiteLLM file can also carry the gateway's place.
    for key in ("region", "residency"):
        if general.get(key) is not None:
            gateway[key] = general[key]
    native = {"version": 1, "gateway": gateway, "models": list(models.values()), **_governance(general, router)}
    user_defaults = _internal_user_defaults(settings)
    if user_defaults:
        native["keys"] = user_defaults
    if aliases:
        native["model_aliases"] = aliases
    try:
        return parse_native(native), ignored
    except ConfigError as exc:
        raise ConfigError(_their_paths(str(exc), origins, list(models))) from None


def _their_paths(message: str, origins: dict[tuple[int, int], int], aliases: list[str]) -> str:
    """A native validation message with the paths the LiteLLM file's author wrote."""
    def deployment(found: re.Match[str]) -> str:
        index = origins.get((int(found[1]), int(found[2])))
        return f"model_list[{index}].litellm_params" if index is not None else found[0]

    message = re.sub(r"models\[(\d+)\]\.deployments\[(\d+)\]", deployment, message)
    return re.sub(r"models\[(\d+)\]", lambda m: f"model_list (model_name {aliases[int(m[1])]!r})"
                  if int(m[1]) < len(aliases) else m[0], message)


def _router_defaults(value: Any, models: dict[str, dict[str, Any]]) -> None:
    """router_settings.default_litellm_params: LiteLLM `setdefault`s them into the call's kwargs, which then go
    over the deployment's litellm_params (`{**litellm_params, **kwargs}`, router.py 1.106.2): over each
    deployment's defaults, under the client's fields."""
    if not value:
        return
    if not isinstance(value, dict):
        raise ConfigError("router_settings.default_litellm_params: expected a mapping of request fields")
    fields = request_defaults(value, "router_settings.default_litellm_params")
    for model in models.values():
        for dep in model["deployments"]:
            dep["defaults"] = {**dep.get("defaults", {}), **fields}


def _environment(doc: dict[str, Any]) -> dict[str, str]:
    extra = doc.get("environment_variables") or {}
    if not isinstance(extra, dict):
        raise ConfigError("environment_variables: expected a mapping NAME: value")
    return {**os.environ, **{str(k): str(v) for k, v in extra.items() if v is not None}}


def _fallbacks(value: Any, where: str, models: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """[{alias: [targets]}] as pairs, each alias a model_name of model_list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list like [{{gpt-4o: [gpt-4o-mini]}}]")
    out = []
    for j, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{j}]: expected a mapping alias -> [aliases]")
        for alias, targets in item.items():
            if alias not in models and alias != "*":
                raise ConfigError(f"{where}[{j}]: {alias!r} is not a model_name in model_list")
            out.append((alias, targets if isinstance(targets, list) else [targets]))
    return out


def _aliases(value: Any) -> dict[str, dict[str, Any]]:
    """model_group_alias: `{name: target}` or `{name: {model: target, hidden: true}}` (LiteLLM's two forms,
    litellm/router_utils/common_utils.py resolve_model_group_alias, 1.106.2)."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("router_settings.model_group_alias: expected a mapping name -> model_name")
    out: dict[str, dict[str, Any]] = {}
    for name, target in value.items():
        where = f"router_settings.model_group_alias.{name}"
        if isinstance(target, str) and target:
            out[str(name)] = {"model": target, "hidden": False}
        elif isinstance(target, dict) and isinstance(target.get("model"), str):
            hidden = target.get("hidden", False)
            if not isinstance(hidden, bool):
                raise ConfigError(f"{where}.hidden: expected true or false")
            out[str(name)] = {"model": target["model"], "hidden": hidden}
        else:
            raise ConfigError(f"{where}: expected a model_name or {{model: <model_name>, hidden: true}}")
    return out


def _sizes(general: dict[str, Any]) -> dict[str, Any]:
    """max_request_size_mb / max_response_size_mb, in the native limits (MiB, as LiteLLM counts them)."""
    out: dict[str, Any] = {}
    for key, section, field in (("max_request_size_mb", "front_door", "body_bytes"),
                                ("max_response_size_mb", "upstream_limits", "body_bytes")):
        value = general.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"general_settings.{key}: {value!r} is not a positive number of megabytes")
        size = int(value * MiB)
        out[section] = {field: size, **({"decompressed_bytes": max(size, 64 * MiB)}
                                        if section == "upstream_limits" else {})}
    return out


def _internal_user_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's defaults for users /user/new creates with role internal_user (proxy/management_endpoints/
    internal_user_endpoints.py@v1.106.2 `new_user`); `default_max_internal_user_budget` stands in when
    `max_internal_user_budget` is unset (proxy_server.py@v1.106.2, `load_config`)."""
    out: dict[str, Any] = {}
    for name in ("max_internal_user_budget", "default_max_internal_user_budget"):
        value = settings.get(name)
        if value is None or "internal_user_max_budget" in out:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"litellm_settings.{name}: {value!r} is not a budget in USD (a number from 0)")
        out["internal_user_max_budget"] = float(value)
    duration = settings.get("internal_user_budget_duration")
    if duration is not None:
        try:
            parse_duration(duration)
        except ValueError as exc:
            raise ConfigError(f"litellm_settings.internal_user_budget_duration: {exc}") from None
        out["internal_user_budget_duration"] = duration
    return out


def _governance(general: dict[str, Any], router: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's database turns governance on, its router Redis shares the limits."""
    database = general.get("database_url")
    if not database:
        return {}
    if not isinstance(database, str):
        raise ConfigError("general_settings.database_url: expected a postgresql:// URL")
    ledger: dict[str, Any] = {"store": database}
    spool = general.get("llmp_spool_dir")
    if spool is not None:
        if not isinstance(spool, str) or not spool:
            raise ConfigError("general_settings.llmp_spool_dir: expected a directory path")
        ledger["spool_dir"] = spool
    sections: dict[str, Any] = {"ledger": ledger}
    host = router.get("redis_host")
    if router.get("redis_url"):
        sections["redis"] = {"url": str(router["redis_url"])}
    elif host:
        password = router.get("redis_password")
        auth = f":{quote(str(password), safe='')}@" if password else ""
        port, db = router.get("redis_port") or 6379, router.get("redis_db") or 0
        sections["redis"] = {"url": f"redis://{auth}{host}:{port}/{db}"}
    if "redis" in sections and general.get("fail_closed_rate_limit_enforcement") is True:
        sections["redis"]["on_unavailable"] = "fail-closed"  # LiteLLM: refuse calls while limits cannot be counted
    return sections


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping")
    return value
