"""The IRSA role a region's model servers mount the Hugging Face token with, and its policy reading exactly that."""
from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from infra.components.gateway import irsa_trust_policy, secret_read_policy


def model_server_role(name: str, region: str, path: str, tags: dict[str, str], subjects: list[str],
                      oidc_provider_arn: pulumi.Input[str], issuer: pulumi.Input[str], iam: aws.Provider,
                      parent: pulumi.Resource) -> aws.iam.Role:
    """Trusted by the model servers' ServiceAccounts of `region` only (`subjects`), never the gateway's.

    The Secrets Store CSI driver's AWS provider (ASCP) fetches the secret for the pod with a token of the
    pod's ServiceAccount (audience sts.amazonaws.com, from the driver's `tokenRequests`) and the role in its
    `eks.amazonaws.com/role-arn` annotation: IRSA is its default (`usePodIdentity` unset), see
    https://github.com/aws/secrets-store-csi-driver-provider-aws README ("usePodIdentity", "tokenRequests").
    """
    return aws.iam.Role(
        name,
        path=path,
        description=f"llm-platform model servers in {region}",
        assume_role_policy=pulumi.Output.all(oidc_provider_arn, issuer).apply(
            lambda a: json.dumps(irsa_trust_policy(a[0], a[1], subjects))),
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent, provider=iam))


def model_token_policy(name: str, region: str, role: aws.iam.Role, token_arn: pulumi.Input[str],
                       key_arn: pulumi.Input[str], iam: aws.Provider,
                       parent: pulumi.Resource) -> aws.iam.RolePolicy:
    """GetSecretValue and DescribeSecret (both in ASCP's documented policy) on this region's copy of the
    token, and kms:Decrypt through Secrets Manager in this region only."""
    return aws.iam.RolePolicy(
        name,
        role=role.name,
        policy=pulumi.Output.all(key_arn, token_arn).apply(
            lambda a: json.dumps(secret_read_policy(region, [a[1]], a[0]))),
        opts=pulumi.ResourceOptions(parent=parent, provider=iam))
