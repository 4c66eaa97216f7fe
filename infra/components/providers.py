"""Explicit AWS providers: one per region, plus one for global services, each stamping the stack's tags."""
from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

GLOBAL = "global"
# Services with no region: IAM, Route53 and Budgets live here and nowhere else.
GLOBAL_PROVIDER_REGION = "us-east-1"
PROJECT = "llm-platform"

TAG_PROJECT = "llm-platform:project"
TAG_STACK = "llm-platform:stack"
TAG_REGION = "llm-platform:region"
TAG_RESIDENCY = "llm-platform:residency"


def stack_tags(stack: str, region: str, residency: str) -> dict[str, str]:
    return {TAG_PROJECT: PROJECT, TAG_STACK: stack, TAG_REGION: region, TAG_RESIDENCY: residency}


def iam_path(stack: str) -> str:
    """IAM roles live under the stack's path, so a deploy role can be scoped to `/llm-platform/pr-*`."""
    return f"/llm-platform/{stack}/"


def provider_name(region: str) -> str:
    return f"aws-{region}"


def regional_provider(stack: str, region: str, residency: str,
                      extra_tags: dict[str, str] | None = None) -> aws.Provider:
    return aws.Provider(
        provider_name(region),
        region=region,
        default_tags=aws.ProviderDefaultTagsArgs(tags={**stack_tags(stack, region, residency), **(extra_tags or {})}),
    )


def global_provider(stack: str, extra_tags: dict[str, str] | None = None) -> aws.Provider:
    return aws.Provider(
        provider_name(GLOBAL),
        region=GLOBAL_PROVIDER_REGION,
        default_tags=aws.ProviderDefaultTagsArgs(tags={**stack_tags(stack, GLOBAL, GLOBAL), **(extra_tags or {})}),
    )


def child_opts(parent: pulumi.Resource, provider: pulumi.ProviderResource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, provider=provider, **kwargs)
