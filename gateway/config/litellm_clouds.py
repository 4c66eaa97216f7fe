"""LiteLLM's `azure/<deployment>` and `bedrock/[converse/]<model id>` entries as native Azure and Bedrock
deployments, with LiteLLM's parameter names (docs.litellm.ai/docs/providers/azure, .../providers/bedrock)."""

from __future__ import annotations

import os
from typing import Any

from gateway.config.errors import ConfigError

CLOUD_PREFIXES = frozenset({"azure", "bedrock"})
# Static AWS credentials LiteLLM accepts per deployment; the gateway signs with its own (the pod's IAM role), so
# the settings table (litellm_settings.py) refuses them by name before any entry is mapped.
AWS_CREDENTIAL_PARAMS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_role_name",
                         "aws_profile_name", "aws_web_identity_token")
AZURE_PARAMS = {"api_version": "api_version", "azure_ad_token": "ad_token", "tenant_id": "tenant_id",
                "client_id": "client_id", "client_secret": "client_secret"}


def cloud_deployment(prefix: str, name: str, params: dict[str, Any], info: dict[str, Any],
                     where: str) -> dict[str, Any]:
    """The provider-specific fields of one native deployment (provider, model, api_base, region, ...)."""
    at = f"{where}.litellm_params"
    if prefix == "azure":
        if not params.get("api_base"):
            raise ConfigError(f"{at}.api_base: required for azure (https://<resource>.openai.azure.com)")
        region = params.get("region_name")
        azure = {ours: params[theirs] for theirs, ours in AZURE_PARAMS.items() if params.get(theirs) is not None}
        dep: dict[str, Any] = {"provider": "azure", "model": name, "api_base": str(params["api_base"]).rstrip("/"),
                               "api_key": params.get("api_key"), **({"azure": azure} if azure else {})}
    else:
        name = name.removeprefix("converse/")  # LiteLLM's explicit route to the Converse API, the only one here
        if "/" in name and not name.startswith("arn:"):  # bedrock/invoke/..., bedrock/llama/...: other APIs
            raise ConfigError(f"{at}.model: bedrock/{name} is not served through the Converse API; use "
                              "bedrock/<model id or inference profile id> or bedrock/converse/<...>")
        # As LiteLLM: the parameter, an ARN's own region, then the environment (EKS sets AWS_REGION in every pod).
        arn_region = name.split(":")[3] if name.startswith("arn:") and name.count(":") > 3 else None
        region = params.get("aws_region_name") or params.get("region_name") or arn_region or next(
            (os.environ[v] for v in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(v)), None)
        if not isinstance(region, str) or not region:
            raise ConfigError(f"{at}.aws_region_name: required for bedrock (the region calls are signed for), "
                              "or AWS_REGION in the environment")
        dep = {"provider": "bedrock", "model": name}
        endpoint = params.get("aws_bedrock_runtime_endpoint")
        if endpoint:
            dep["api_base"] = str(endpoint).rstrip("/")
    dep["region"] = region
    dep["residency"] = info.get("residency") or (region.split("-", 1)[0] if isinstance(region, str) else None)
    return dep
