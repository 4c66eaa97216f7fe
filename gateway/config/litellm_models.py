"""LiteLLM's `model_list`: each entry as one native deployment, entries sharing a model_name as one model."""

from __future__ import annotations

from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.litellm_clouds import CLOUD_PREFIXES, cloud_deployment
from gateway.config.litellm_settings import REQUEST_DEFAULTS
from gateway.governance.bounds import MAX_LIMIT, MAX_TOKENS

# LiteLLM provider prefixes that speak OpenAI's wire protocol.
OPENAI_COMPATIBLE = frozenset(
    {"openai", "hosted_vllm", "vllm", "text-completion-openai", "openai_like", "together_ai",
     "groq", "ollama_chat", "fireworks_ai", "deepinfra", "sglang", "huggingface", "lm_studio"}
)
DEFAULT_BASES = {
    "openai": "https://api.openai.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "groq": "https://api.groq.com/openai/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "anthropic": "https://api.anthropic.com/v1",
}


def read_models(model_list: Any, origins: dict[tuple[int, int], int] | None = None) -> dict[str, dict[str, Any]]:
    """Native models by alias, in file order; `origins` gets (model, deployment) index -> model_list index."""
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError("model_list: expected a non-empty list of models")
    models: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(model_list):
        where = f"model_list[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping")
        alias = entry.get("model_name")
        if not isinstance(alias, str) or not alias:
            raise ConfigError(f"{where}.model_name: required field is missing")
        params = entry.get("litellm_params")
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.litellm_params: required mapping is missing")
        model = models.setdefault(alias, {"alias": alias, "deployments": [], "fallbacks": []})
        if origins is not None:
            origins[(list(models).index(alias), len(model["deployments"]))] = i
        model["deployments"].append(_deployment(params, entry, where, len(model["deployments"])))
    return models


def _quota(params: dict[str, Any], entry: dict[str, Any], name: str, where: str) -> int | None:
    """A deployment's rpm or tpm: a whole number from 0 to MAX_LIMIT, refused by its LiteLLM key path."""
    value = params.get(name, entry.get(name))
    path = f"{where}.litellm_params.{name}" if name in params else f"{where}.{name}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ConfigError(f"{path}: {value!r} is not a whole number from 0 to {MAX_LIMIT}")
    return value


def renamed(source: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The LiteLLM settings `source` gives, under the native format's names."""
    return {ours: source[theirs] for theirs, ours in names.items() if source.get(theirs) is not None}


def _provider(target: Any, where: str) -> tuple[str, str, str]:
    """(LiteLLM prefix, wire protocol, upstream model) of `litellm_params.model`."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}.litellm_params.model: expected '<provider>/<model>' such as "
                          f"'hosted_vllm/llama', got {target!r}")
    if "/" not in target:
        # LiteLLM infers the provider of a bare name from its model map; a name it does not know fails there.
        # The gateway reads every bare name as OpenAI's, which is what LiteLLM does for OpenAI's models.
        return "openai", "openai", target
    prefix, name = target.split("/", 1)
    if prefix in OPENAI_COMPATIBLE:
        return prefix, "openai", name
    if prefix == "anthropic" or prefix in CLOUD_PREFIXES:
        return prefix, prefix, name
    raise ConfigError(
        f"{where}.litellm_params.model: provider {prefix!r} is not supported; "
        f"use one of {', '.join(sorted(OPENAI_COMPATIBLE | CLOUD_PREFIXES | {'anthropic'}))}"
    )


def request_defaults(params: dict[str, Any], where: str) -> dict[str, Any]:
    """OpenAI request fields sent when the client gives none (see REQUEST_DEFAULTS); `where` names `params`."""
    out = {k: v for k, v in params.items() if k in REQUEST_DEFAULTS and v is not None}
    for key in ("max_tokens", "max_completion_tokens"):
        cap = out.get(key)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_TOKENS):
            raise ConfigError(f"{where}.{key}: {cap!r} is not a whole number from 1 to {MAX_TOKENS}")
    return out


def _deployment(params: dict[str, Any], entry: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    prefix, provider, name = _provider(params.get("model"), where)
    info = entry.get("model_info") or {}
    if not isinstance(info, dict):
        raise ConfigError(f"{where}.model_info: expected a mapping")
    dep: dict[str, Any] = {
        "name": str(info.get("id") or f"{entry['model_name']}-{index}"),
        "weight": params.get("weight", 1),
        "rpm": _quota(params, entry, "rpm", where),
        "tpm": _quota(params, entry, "tpm", where),
    }
    defaults = request_defaults(params, f"{where}.litellm_params")
    if defaults:
        dep["defaults"] = defaults
    for price in ("input_cost_per_token", "output_cost_per_token", "output_cost_per_image"):
        value = params.get(price, info.get(price))
        if value is not None:
            dep[price] = value
    timeouts = renamed(params, {"timeout": "total", "stream_timeout": "idle"})
    if timeouts:
        dep["timeouts"] = timeouts
    if prefix in CLOUD_PREFIXES:
        return {**dep, **cloud_deployment(prefix, name, params, info, where)}
    api_base = params.get("api_base") or DEFAULT_BASES.get(prefix)
    if not api_base:
        raise ConfigError(f"{where}.litellm_params.api_base: required for provider {prefix!r}")
    api_base = str(api_base).rstrip("/")
    if provider == "anthropic" and not api_base.endswith("/v1"):
        api_base += "/v1"  # LiteLLM writes Anthropic's base without the version path
    region = params.get("region_name")
    residency = info.get("residency") or (region.split("-", 1)[0] if isinstance(region, str) else None)
    return {**dep, "provider": provider, "model": name, "api_base": api_base, "api_key": params.get("api_key"),
            "region": region, "residency": residency}
