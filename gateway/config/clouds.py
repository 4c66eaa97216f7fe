"""Native settings of the hosted clouds' deployments: Azure OpenAI's api-version and Entra ID, Bedrock's region."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.config.urls import check_url


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


# Azure OpenAI's newest GA data-plane version (learn.microsoft.com/azure/ai-services/openai/reference).
AZURE_API_VERSION = "2024-10-21"


class AzureSettings(_Strict):
    """Azure OpenAI: the `api-version` and, instead of `api_key`, an Entra ID token or client credentials."""

    api_version: str = Field(AZURE_API_VERSION, min_length=1)
    ad_token: str | None = None  # a bearer token kept fresh by someone else (LiteLLM's `azure_ad_token`)
    tenant_id: str | None = None  # client credentials: the gateway fetches and refreshes the token itself
    client_id: str | None = None
    client_secret: str | None = None
    authority_host: str = "https://login.microsoftonline.com"  # Entra ID's token endpoint host (sovereign clouds)

    @model_validator(mode="after")
    def _whole_credentials(self) -> AzureSettings:
        given = [n for n in ("tenant_id", "client_id", "client_secret") if getattr(self, n)]
        if given and len(given) != 3:
            missing = sorted({"tenant_id", "client_id", "client_secret"} - set(given))
            raise ValueError(f"client credentials need tenant_id, client_id and client_secret; missing {missing}")
        if given and self.ad_token:
            raise ValueError("give either 'ad_token' or client credentials, not both")
        check_url(self.authority_host)
        return self

    @property
    def client_credentials(self) -> bool:
        return self.tenant_id is not None


class BedrockSettings(_Strict):
    """Amazon Bedrock: the region to call when it is not the deployment's own (LiteLLM's `aws_region_name`)."""

    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
