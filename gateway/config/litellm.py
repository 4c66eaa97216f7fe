"""LiteLLM's proxy `config.yaml`, read as is and turned into the native `GatewayConfig`.

What is read::

    model_list:                       # entries sharing a model_name form one alias
      - model_name: llama-3.1-8b
        litellm_params:
          model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct   # or openai/<name>, anthropic/<name>
          api_base: http://vllm:8000/v1
          api_key: os.environ/VLLM_API_KEY
          rpm: 600                    # kept for the governance layer
          tpm: 100000
          weight: 2
          timeout: 30                 # total seconds for this deployment
          stream_timeout: 30          # idle seconds between stream chunks
          region_name: us-east-1      # optional: the deployment's region
          max_tokens: 4096            # optional: cap for the alias
        model_info: {id: ..., residency: us}   # residency is our extension; else derived from region_name
    router_settings:
      routing_strategy: simple-shuffle   # simple-shuffle -> weighted; least-busy;
                                         # latency-/usage-/cost-based -> least-busy
      num_retries: 2
      timeout: 30
      fallbacks: [{llama-3.1-8b: [gpt-4o-mini]}]
      allowed_fails: 3                # -> circuit_breaker.failures
      cooldown_time: 30               # -> circuit_breaker.cooldown
      redis_host: redis                # with database_url: limits shared through this Redis
      redis_port: 6379
      redis_password: os.environ/REDIS_PASSWORD
    litellm_settings: {num_retries, request_timeout, fallbacks}   # read when router_settings lacks them
    general_settings:
      master_key: os.environ/LITELLM_MASTER_KEY
      database_url: os.environ/DATABASE_URL   # turns governance on: keys, teams and the spend ledger here
      llmp_spool_dir: /var/lib/llmp/spool     # ours: the spend spool (default ./llmp-spool/<database's identity>)

Prices come from `litellm_params.input_cost_per_token` / `output_cost_per_token` (or
the same fields under `model_info`). With `database_url` the admin API and virtual
keys work as in LiteLLM (`/key/generate`, `/team/new`, ...); the gateway keeps its own
`llmp_*` tables there, next to LiteLLM's. Everything else LiteLLM knows (callbacks,
caching, guardrails...) is ignored.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from gateway.config.env import resolve_env
from gateway.config.errors import ConfigError
from gateway.config.native import GatewayConfig, parse_native
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
STRATEGIES = {
    "simple-shuffle": "weighted",
    "least-busy": "least-busy",
    "latency-based-routing": "least-busy",
    "usage-based-routing": "least-busy",
    "usage-based-routing-v2": "least-busy",
    "cost-based-routing": "least-busy",
}


def from_litellm(doc: dict[str, Any]) -> GatewayConfig:
    doc = resolve_env(doc)
    model_list = doc.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError("model_list: expected a non-empty list of models")
    router = _section(doc, "router_settings")
    settings = _section(doc, "litellm_settings")
    general = _section(doc, "general_settings")

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
        model["deployments"].append(_deployment(params, entry, where, len(model["deployments"])))
        cap = params.get("max_tokens")
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_TOKENS:
                raise ConfigError(f"{where}.litellm_params.max_tokens: {cap!r} is not a whole number "
                                  f"from 1 to {MAX_TOKENS}")
            model["max_tokens"] = min(cap, model.get("max_tokens", cap))

    fallbacks = router.get("fallbacks", settings.get("fallbacks")) or []
    if not isinstance(fallbacks, list):
        raise ConfigError("router_settings.fallbacks: expected a list like [{gpt-4o: [gpt-4o-mini]}]")
    for j, item in enumerate(fallbacks):
        if not isinstance(item, dict):
            raise ConfigError(f"router_settings.fallbacks[{j}]: expected a mapping alias -> [aliases]")
        for alias, targets in item.items():
            if alias not in models:
                raise ConfigError(f"router_settings.fallbacks[{j}]: {alias!r} is not a model_name in model_list")
            models[alias]["fallbacks"].extend(targets if isinstance(targets, list) else [targets])

    strategy = router.get("routing_strategy", "simple-shuffle")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"router_settings.routing_strategy: {strategy!r} is not one of {', '.join(sorted(STRATEGIES))}"
        )
    gateway: dict[str, Any] = {"routing": STRATEGIES[strategy], "master_key": general.get("master_key")}
    retries = router.get("num_retries", settings.get("num_retries"))
    if retries is not None:
        gateway["retries"] = {"attempts": retries}
    timeout = router.get("timeout", settings.get("request_timeout"))
    if timeout is not None:
        gateway["timeouts"] = {"total": timeout}
    breaker = _renamed(router, {"allowed_fails": "failures", "cooldown_time": "cooldown"})
    if breaker:
        gateway["circuit_breaker"] = breaker
    # Our extensions, so one LiteLLM file can also carry the gateway's place.
    for key in ("region", "residency"):
        if general.get(key) is not None:
            gateway[key] = general[key]
    return parse_native({"version": 1, "gateway": gateway, "models": list(models.values()),
                         **_governance(general, router)})


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
    if host:
        password = router.get("redis_password")
        auth = f":{quote(str(password), safe='')}@" if password else ""
        sections["redis"] = {"url": f"redis://{auth}{host}:{router.get('redis_port') or 6379}/0"}
    return sections


def _quota(params: dict[str, Any], entry: dict[str, Any], name: str, where: str) -> int | None:
    """A deployment's rpm or tpm: a whole number from 0 to MAX_LIMIT, refused by its LiteLLM key path."""
    value = params.get(name, entry.get(name))
    path = f"{where}.litellm_params.{name}" if name in params else f"{where}.{name}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise ConfigError(f"{path}: {value!r} is not a whole number from 0 to {MAX_LIMIT}")
    return value


def _renamed(source: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The LiteLLM settings `source` gives, under the native format's names."""
    return {ours: source[theirs] for theirs, ours in names.items() if source.get(theirs) is not None}


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping")
    return value


def _deployment(params: dict[str, Any], entry: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    target = params.get("model")
    if not isinstance(target, str) or "/" not in target:
        raise ConfigError(
            f"{where}.litellm_params.model: expected '<provider>/<model>' such as 'hosted_vllm/llama', got {target!r}"
        )
    prefix, name = target.split("/", 1)
    if prefix in ("azure", "bedrock"):
        return _cloud_deployment(prefix, name, params, entry, where, index)
    if prefix in OPENAI_COMPATIBLE:
        provider = "openai"
    elif prefix == "anthropic":
        provider = "anthropic"
    else:
        raise ConfigError(
            f"{where}.litellm_params.model: provider {prefix!r} is not supported; "
            f"use one of {', '.join(sorted(OPENAI_COMPATIBLE | {'anthropic', 'azure', 'bedrock'}))}"
        )
    api_base = params.get("api_base") or DEFAULT_BASES.get(prefix)
    if not api_base:
        raise ConfigError(f"{where}.litellm_params.api_base: required for provider {prefix!r}")
    api_base = str(api_base).rstrip("/")
    if provider == "anthropic" and not api_base.endswith("/v1"):
        api_base += "/v1"  # LiteLLM writes Anthropic's base without the version path
    info = entry.get("model_info") or {}
    region = params.get("region_name")
    residency = info.get("residency") or (region.split("-", 1)[0] if isinstance(region, str) else None)
    dep: dict[str, Any] = {
        "name": str(info.get("id") or f"{entry['model_name']}-{index}"),
        "provider": provider,
        "model": name,
        "api_base": api_base,
        "api_key": params.get("api_key"),
        "region": region,
        "residency": residency,
        "weight": params.get("weight", 1),
        "rpm": _quota(params, entry, "rpm", where),
        "tpm": _quota(params, entry, "tpm", where),
    }
    for price in ("input_cost_per_token", "output_cost_per_token"):
        value = params.get(price, info.get(price))
        if value is not None:
            dep[price] = value
    timeouts = _renamed(params, {"timeout": "total", "stream_timeout": "idle"})
    if timeouts:
        dep["timeouts"] = timeouts
    return dep


def _cloud_deployment(prefix: str, name: str, params: dict[str, Any], entry: dict[str, Any], where: str,
                      index: int) -> dict[str, Any]:
    """`azure/<deployment>` and `bedrock/[converse/]<model id>` with LiteLLM's parameter names
    (docs.litellm.ai/docs/providers/azure, docs.litellm.ai/docs/providers/bedrock)."""
    at = f"{where}.litellm_params"
    info = entry.get("model_info") or {}
    dep: dict[str, Any] = {"name": str(info.get("id") or f"{entry['model_name']}-{index}"), "provider": prefix,
                           "weight": params.get("weight", 1), "rpm": _quota(params, entry, "rpm", where),
                           "tpm": _quota(params, entry, "tpm", where)}
    for price in ("input_cost_per_token", "output_cost_per_token"):
        if params.get(price, info.get(price)) is not None:
            dep[price] = params.get(price, info.get(price))
    timeouts = _renamed(params, {"timeout": "total", "stream_timeout": "idle"})
    if timeouts:
        dep["timeouts"] = timeouts
    if prefix == "azure":
        if not params.get("api_base"):
            raise ConfigError(f"{at}.api_base: required for azure (https://<resource>.openai.azure.com)")
        region = params.get("region_name")
        azure = _renamed(params, {"api_version": "api_version", "azure_ad_token": "ad_token",
                                  "tenant_id": "tenant_id", "client_id": "client_id",
                                  "client_secret": "client_secret"})
        dep.update(model=name, api_base=str(params["api_base"]).rstrip("/"), api_key=params.get("api_key"),
                   **({"azure": azure} if azure else {}))
    else:
        name = name.removeprefix("converse/")  # LiteLLM's explicit route to the Converse API, the only one here
        if "/" in name and not name.startswith("arn:"):  # bedrock/invoke/..., bedrock/llama/...: other APIs
            raise ConfigError(f"{at}.model: bedrock/{name} is not served through the Converse API; use "
                              "bedrock/<model id or inference profile id> or bedrock/converse/<...>")
        for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_role_name",
                    "aws_profile_name", "aws_web_identity_token"):
            if params.get(key) is not None:
                raise ConfigError(f"{at}.{key}: the gateway signs Bedrock calls with its own AWS credentials "
                                  "(the pod's IAM role, or the environment on a laptop); remove it")
        # As LiteLLM: the parameter, an ARN's own region, then the environment (EKS sets AWS_REGION in every pod).
        arn_region = name.split(":")[3] if name.startswith("arn:") and name.count(":") > 3 else None
        region = params.get("aws_region_name") or params.get("region_name") or arn_region or next(
            (os.environ[v] for v in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(v)), None)
        if not isinstance(region, str) or not region:
            raise ConfigError(f"{at}.aws_region_name: required for bedrock (the region calls are signed for), "
                              "or AWS_REGION in the environment")
        dep.update(model=name)
        endpoint = params.get("aws_bedrock_runtime_endpoint")
        if endpoint:
            dep["api_base"] = str(endpoint).rstrip("/")
    dep["region"] = region
    dep["residency"] = info.get("residency") or (region.split("-", 1)[0] if isinstance(region, str) else None)
    return dep
