"""GatewayRegistry: the ECR repository a stack's gateway image lives in, replicated to every region of the stack.

One repository per stack, `llm-platform/<stack>/gateway`, in the stack's first region; ECR copies each pushed image
into the same name in every other region of the stack, so every cluster pulls from its own region. Preview stacks
create none: they pull prod's image from prod's repository (`gateway_image_repositories`, README: The gateway image).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts
from infra.config import PLACEHOLDER_DIGEST, StackConfig

# The stack whose repository previews pull from (read-only): the image main's gateway-image workflow built.
IMAGE_SOURCE_STACK = "prod"
# The gateway-image workflow tags each build `sha-<commit>` (the digest is what stacks pin; the tag says which commit).
BUILD_TAG_PREFIX = "sha-"
# Builds kept: well past any digest a stack still pins (the workflow builds once per merged gateway change).
KEEP_BUILDS = 200
UNTAGGED_DAYS = 14
# The replicas' encryption at rest (see the creation templates below for why not KMS).
REPLICA_ENCRYPTION = "AES256"


def repository_name(stack: str) -> str:
    return f"llm-platform/{stack}/gateway"


def repository_prefix(stack: str) -> str:
    """What the stack's replication rule and creation templates match: its own repositories only."""
    return f"llm-platform/{stack}/"


def lifecycle_policy() -> str:
    """Expire what an interrupted push leaves untagged, and builds beyond the newest KEEP_BUILDS. Images are
    single-platform manifests (the workflow builds linux/amd64 with no attestation manifests), so no tagged image
    has untagged children for the first rule to take
    (https://docs.aws.amazon.com/AmazonECR/latest/userguide/LifecyclePolicies.html)."""
    return json.dumps({"rules": [
        {"rulePriority": 1, "description": f"untagged images after {UNTAGGED_DAYS} days",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                       "countNumber": UNTAGGED_DAYS},
         "action": {"type": "expire"}},
        {"rulePriority": 2, "description": f"builds beyond the newest {KEEP_BUILDS}",
         "selection": {"tagStatus": "tagged", "tagPrefixList": [BUILD_TAG_PREFIX], "countType": "imageCountMoreThan",
                       "countNumber": KEEP_BUILDS},
         "action": {"type": "expire"}},
    ]}, sort_keys=True)


@dataclass(frozen=True)
class GatewayRegistryArgs:
    stack: str
    regions: list[str]  # the stack's regions; the first holds the repository, the others get replicas
    tags: dict[str, str] = field(default_factory=dict)


class GatewayRegistry(pulumi.ComponentResource):
    """`repository_urls[region]`: `<account>.dkr.ecr.<region>.amazonaws.com/llm-platform/<stack>/gateway`."""

    def __init__(self, name: str, args: GatewayRegistryArgs, providers: Mapping[str, aws.Provider],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:registry:GatewayRegistry", name, None, opts)
        source, replicas = args.regions[0], args.regions[1:]
        # Encrypted with ECR's AWS-managed KMS key (aws/ecr): a stack-owned key would have to exist in every
        # destination region before ECR creates the replica there, and each region's nodes would need grants on it.
        kms = aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")
        self.repository = aws.ecr.Repository(
            f"{name}-repository", name=repository_name(args.stack),
            # A tag, once pushed, names one image forever; stacks pin digests anyway.
            image_tag_mutability="IMMUTABLE",
            # Basic scanning on push, beside the workflow's own scan before the push.
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[kms],
            # No force_delete: destroying the stack fails while images are in it, rather than deleting what
            # running pods (of this or a preview stack) still pull.
            tags=args.tags,
            opts=child_opts(self, providers[source]))
        aws.ecr.LifecyclePolicy(f"{name}-lifecycle", repository=self.repository.name, policy=lifecycle_policy(),
                                opts=child_opts(self, providers[source]))
        self.replication: aws.ecr.ReplicationConfiguration | None = None
        if replicas:
            # ECR creates the replica repositories itself, from the destination region's creation template for the
            # prefix (https://docs.aws.amazon.com/AmazonECR/latest/userguide/repository-creation-templates.html):
            # without one a replica would be mutable, unscanned and AES256-encrypted.
            templates = [aws.ecr.RepositoryCreationTemplate(
                f"{name}-{region}-template", prefix=repository_prefix(args.stack).rstrip("/"),
                description=f"llm-platform {args.stack}: replicas of the gateway image",
                applied_fors=["REPLICATION"], image_tag_mutability="IMMUTABLE",
                # AES256 (S3-managed keys), not KMS: a template that creates KMS-encrypted repositories needs a
                # custom role for ECR to assume (pulumi_aws 7.51.1 RepositoryCreationTemplate custom_role_arn:
                # "Required if using repository tags or KMS encryption"; docs.aws.amazon.com/AmazonECR/latest/
                # userguide/repository-creation-templates-create.html). A role with kms:CreateGrant for ECR's
                # AWS-managed key buys no control the replicas need: both keep the image encrypted at rest, and
                # the image is public to nobody either way. Without a role, ECR uses its service-linked role.
                encryption_configurations=[aws.ecr.RepositoryCreationTemplateEncryptionConfigurationArgs(
                    encryption_type=REPLICA_ENCRYPTION)],
                lifecycle_policy=lifecycle_policy(),
                opts=child_opts(self, providers[region])) for region in replicas]
            # A registry (account and region) has ONE replication configuration: this resource owns the source
            # region's whole configuration, and its one rule matches this stack's prefix only
            # (https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_PutReplicationConfiguration.html;
            # README: The gateway image says how stacks sharing an account and first region coexist).
            self.replication = aws.ecr.ReplicationConfiguration(
                f"{name}-replication",
                replication_configuration=aws.ecr.ReplicationConfigurationReplicationConfigurationArgs(rules=[
                    aws.ecr.ReplicationConfigurationReplicationConfigurationRuleArgs(
                        destinations=[aws.ecr.ReplicationConfigurationReplicationConfigurationRuleDestinationArgs(
                            region=region, registry_id=self.repository.registry_id) for region in replicas],
                        repository_filters=[
                            aws.ecr.ReplicationConfigurationReplicationConfigurationRuleRepositoryFilterArgs(
                                filter=repository_prefix(args.stack), filter_type="PREFIX_MATCH")])]),
                opts=child_opts(self, providers[source], depends_on=templates))
        self.repository_urls: dict[str, pulumi.Output[str]] = {
            region: self.repository.repository_url if region == source
            else regional_url(self.repository.registry_id, region, self.repository.name)
            for region in args.regions}
        self.register_outputs({"repository": self.repository.repository_url})


def regional_url(registry_id: pulumi.Input[str], region: str, name: pulumi.Input[str]) -> pulumi.Output[str]:
    """A private repository's URI in a region (https://docs.aws.amazon.com/AmazonECR/latest/userguide/Registries.html):
    what its replica there is pulled as."""
    return pulumi.Output.concat(registry_id, ".dkr.ecr.", region, ".amazonaws.com/", name)


def gateway_image_repositories(cfg: StackConfig, providers: Mapping[str, aws.Provider],
                               parent: pulumi.Resource) -> dict[str, pulumi.Output[str]]:
    """The repository URL each region's gateway pulls its image from. A preview stack reads prod's repository
    (in its own region: prod replicates to it when the region is one of prod's; the lookup fails the preview
    with ECR's RepositoryNotFoundException otherwise) and creates none: a repository per PR would be empty on
    the PR's first `up`, and pushing PR builds would need prod's push role on pull requests."""
    if cfg.gateway.image_digest == PLACEHOLDER_DIGEST:
        # Not refused: the first `up` of a stack must run to create the repository the first image is pushed to.
        pulumi.log.warn(f"gateway.image_digest is the placeholder {PLACEHOLDER_DIGEST}: the gateway pods cannot pull "
                        "it; push an image (.github/workflows/gateway-image.yml) and set the digest it prints")
    if cfg.environment == "preview":
        return {r.name: aws.ecr.get_repository_output(
            name=repository_name(IMAGE_SOURCE_STACK),
            opts=pulumi.InvokeOutputOptions(provider=providers[r.name], parent=parent)).repository_url
            for r in cfg.regions}
    registry = GatewayRegistry(f"{cfg.stack}-gateway-registry", GatewayRegistryArgs(
        stack=cfg.stack, regions=[r.name for r in cfg.regions]), providers, pulumi.ResourceOptions(parent=parent))
    return registry.repository_urls
