"""The AWS roles GitHub Actions deploys with: OIDC trust, and permissions scoped to the stacks each may touch."""
from __future__ import annotations

from infra.components.model_weights import bucket_prefix
from infra.components.providers import TAG_STACK
from infra.components.registry import IMAGE_SOURCE_STACK, repository_name

GITHUB_OIDC = "token.actions.githubusercontent.com"
# What the program creates. Budgets, IAM and Route53 are named or checked by name below; the
# rest carries the stack tag (provider default tags), which the conditions test.
TAGGED_SERVICES = ["ec2", "eks", "kms", "acm", "secretsmanager", "elasticloadbalancing", "logs", "codebuild",
                   "codeconnections", "sqs", "events", "sns",  # sqs, events: Karpenter's interruption queue and rules
                   "elasticache", "rds"]  # the gateway's state stores (infra/components/gateway_stores.py)
# What reads a batch file's contents or sends them elsewhere: GetObject (also HEAD and SelectObjectContent),
# GetObjectVersion, and a replication configuration (which copies every new object).
BATCH_FILES_READS = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutReplicationConfiguration"]
# AWS creates a service's service-linked role the first time an account uses the service, with the
# caller's permission (iam:CreateServiceLinkedRole): the deploy role is the caller for EKS clusters and
# managed node groups (https://docs.aws.amazon.com/eks/latest/userguide/using-service-linked-roles.html).
# The stack's other first-use roles are created by AWS's own roles, not the deploy role: the NLB's
# (elasticloadbalancing) by the cluster role (AmazonEKSClusterPolicy grants iam:CreateServiceLinkedRole),
# autoscaling's by the node group role (AWSServiceRoleForAmazonEKSNodegroup), Spot's by autoscaling's
# (AutoScalingServiceRolePolicy). KMS, Secrets Manager, ACM, Route53, Budgets, CloudWatch Logs and
# Cost Explorer need none for what the program does.
# RDS and ElastiCache create theirs at the first DB instance / replication group, also with the caller's
# permission (docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAM.ServiceLinkedRoles.html,
# docs.aws.amazon.com/AmazonElastiCache/latest/dg/using-service-linked-roles.html).
SERVICE_LINKED_ROLES = ["eks.amazonaws.com", "eks-nodegroup.amazonaws.com", "rds.amazonaws.com",
                        "elasticache.amazonaws.com"]
EKS_MANAGED_POLICIES = [
    "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy",  # the EBS CSI add-on's role (monitoring.py)
]


def github_trust_policy(account_id: str, repository: str, environment: str) -> dict:
    """Only jobs of `repository` running in the GitHub environment `environment` may assume the role."""
    provider = f"arn:aws:iam::{account_id}:oidc-provider/{GITHUB_OIDC}"
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{GITHUB_OIDC}:aud": "sts.amazonaws.com",
                f"{GITHUB_OIDC}:sub": f"repo:{repository}:environment:{environment}",
            }},
        }],
    }


def deploy_policy(account_id: str, stacks: str, dns_names: list[str], never: list[str],
                  activates_cost_tag: bool = False, owns_image_registry: bool = False) -> dict:
    """Permissions to create, change and destroy the resources of the stacks matching `stacks`
    (a pattern such as `pr-*`), and nothing of the stacks in `never`, whatever else grants it.

    `dns_names` are the record names the role may change (e.g. `*.preview.llm.example.com`);
    `activates_cost_tag`: the role may activate cost allocation tags (account-wide: prod's role only);
    `owns_image_registry`: the role manages the gateway image's repository, its replication and creation templates
    (prod's role only: previews pull prod's image, infra/components/registry.py)."""
    acct = account_id
    read_only = ["ec2:Describe*", "eks:Describe*", "eks:List*", "iam:GetRole", "iam:ListRoles",
                 "iam:GetOpenIDConnectProvider", "iam:ListOpenIDConnectProviders", "kms:DescribeKey",
                 "kms:ListAliases", "kms:ListKeys", "acm:DescribeCertificate", "acm:ListCertificates",
                 "route53:Get*", "route53:List*", "secretsmanager:ListSecrets", "sts:GetCallerIdentity",
                 "budgets:ViewBudget", "logs:DescribeLogGroups",
                 # previews look prod's gateway image repository up by name (infra/components/registry.py); the
                 # data source reads its tags too
                 "ecr:DescribeRepositories", "ecr:ListTagsForResource",
                 # The Redis AUTH token and the peer key are drawn at every preview/up
                 # (aws.secretsmanager.get_random_password): the action has no resource type, so only "*" grants
                 # it (docs.aws.amazon.com/service-authorization/latest/reference/list_awssecretsmanager.html).
                 "secretsmanager:GetRandomPassword"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            # Reading is harmless and has no resource-level scoping for most of these calls.
            {"Sid": "Discover", "Effect": "Allow", "Action": read_only, "Resource": "*"},
            {"Sid": "CreateOnlyWithTheStackTag", "Effect": "Allow",
             "Action": [f"{svc}:Create*" for svc in TAGGED_SERVICES]
             + ["ec2:RunInstances", "ec2:AllocateAddress", "acm:RequestCertificate", "kms:ReplicateKey",
                "ec2:CreateTags", "eks:TagResource", "kms:TagResource", "acm:AddTagsToCertificate",
                "secretsmanager:TagResource", "logs:TagResource", "sqs:TagQueue", "events:PutRule",
                "events:TagResource", "sns:TagResource", "rds:AddTagsToResource", "elasticache:AddTagsToResource"],
             "Resource": "*",
             "Condition": {"StringLike": {f"aws:RequestTag/{TAG_STACK}": stacks}}},
            {"Sid": "ChangeOnlyTheStacksResources", "Effect": "Allow",
             "Action": [f"{svc}:*" for svc in TAGGED_SERVICES],
             "Resource": "*",
             "Condition": {"StringLike": {f"aws:ResourceTag/{TAG_STACK}": stacks}}},
            # The accepter-side copy of an inter-region peering carries none of the requester's tags
            # (aws-cloudformation/cloudformation-coverage-roadmap#340), so accepting cannot be judged on the
            # stack tag. AcceptVpcPeeringConnection is authorised on the peering and on the accepter VPC: the
            # peering on any id here, the VPC only through the statement above (the stack's own VPCs).
            {"Sid": "AcceptPeeringsIntoTheStacksVpcs", "Effect": "Allow", "Action": "ec2:AcceptVpcPeeringConnection",
             "Resource": f"arn:aws:ec2:*:{acct}:vpc-peering-connection/*"},
            {"Sid": "TheStacksSecretsByName", "Effect": "Allow", "Action": "secretsmanager:*",
             "Resource": f"arn:aws:secretsmanager:*:{acct}:secret:llm-platform/{stacks}/*"},
            # RDS creates the ledger's managed password secret (rds!db-<id>, named by RDS, without the stack tag) with
            # the caller's permission (docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-secrets-manager.html,
            # "Permissions required for Secrets Manager integration": kms:DescribeKey, secretsmanager:CreateSecret,
            # secretsmanager:TagResource; secretsmanager:RotateSecret to rotate it, which a rotation schedule change
            # or `rotate_master_user_password` does). None reads a secret's value. The KMS calls RDS makes through
            # Secrets Manager (kms:DescribeKey, GenerateDataKey, Decrypt, CreateGrant) are on the stack's own key
            # (tagged: ChangeOnlyTheStacksResources) or on Secrets Manager's AWS-managed key, whose key policy admits
            # every principal of the account via Secrets Manager.
            {"Sid": "RdsManagedPasswordSecrets", "Effect": "Allow",
             "Action": ["secretsmanager:CreateSecret", "secretsmanager:TagResource", "secretsmanager:RotateSecret"],
             "Resource": f"arn:aws:secretsmanager:*:{acct}:secret:rds!*"},
            # S3 buckets are judged by name (infra/components/model_weights.py names them llmp-<stack>-weights-...):
            # CreateBucket cannot be conditioned on the stack tag the way the services above are.
            {"Sid": "TheStacksWeightsBuckets", "Effect": "Allow", "Action": "s3:*",
             "Resource": _weights_buckets(stacks)},
            # Likewise the batch file buckets (infra/components/batch_files.py: llmp-<stack>-batch-<zone>-...): the
            # program creates each with its encryption, public access block, policy, versioning and lifecycle
            # (s3:PutEncryptionConfiguration, PutBucketPublicAccessBlock, PutBucketPolicy, PutBucketVersioning,
            # PutLifecycleConfiguration and their Get*), and a preview's destroy empties it (force_destroy).
            {"Sid": "TheStacksBatchBuckets", "Effect": "Allow", "Action": "s3:*",
             "Resource": _batch_buckets(stacks)},
            # ...but never their contents: batch files are customer prompts and answers, which only the zone's
            # gateways read. The role manages each bucket and empties a preview's (force_destroy: the provider's
            # EmptyBucket lists object versions and deletes them, terraform-provider-aws internal/service/s3; it
            # reads no object), and it holds kms:* on the stack's
            # keys (ChangeOnlyTheStacksResources), so without this deny a deploy workflow could download every file.
            # Replication is denied too: it would copy each new file to a bucket of the role's choosing (and out of
            # the zone). An explicit deny wins over every allow (https://docs.aws.amazon.com/IAM/latest/UserGuide/
            # reference_policies_evaluation-logic.html).
            {"Sid": "NeverTheBatchFilesContents", "Effect": "Deny", "Action": BATCH_FILES_READS,
             "Resource": _batch_buckets(stacks)},
            {"Sid": "TheStacksRoles", "Effect": "Allow",
             "Action": ["iam:CreateRole", "iam:DeleteRole", "iam:TagRole", "iam:UntagRole", "iam:UpdateRole",
                        "iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy", "iam:GetRolePolicy",
                        "iam:DeleteRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies",
                        "iam:ListInstanceProfilesForRole", "iam:PassRole"],
             "Resource": f"arn:aws:iam::{acct}:role/llm-platform/{stacks}/*"},
            # Attaching AdministratorAccess to its own role would undo every scope above.
            {"Sid": "OnlyEksManagedPolicies", "Effect": "Allow",
             "Action": ["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
             "Resource": f"arn:aws:iam::{acct}:role/llm-platform/{stacks}/*",
             "Condition": {"ArnEquals": {"iam:PolicyARN": EKS_MANAGED_POLICIES}}},
            # A new provider has no tags yet: creating is judged on the tags asked for, the rest on the tags it has.
            {"Sid": "CreateTheStacksOidcProviders", "Effect": "Allow",
             "Action": ["iam:CreateOpenIDConnectProvider", "iam:TagOpenIDConnectProvider"],
             "Resource": f"arn:aws:iam::{acct}:oidc-provider/oidc.eks.*.amazonaws.com/id/*",
             "Condition": {"StringLike": {f"aws:RequestTag/{TAG_STACK}": stacks}}},
            {"Sid": "TheStacksOidcProviders", "Effect": "Allow",
             "Action": ["iam:DeleteOpenIDConnectProvider", "iam:UpdateOpenIDConnectProviderThumbprint",
                        "iam:AddClientIDToOpenIDConnectProvider", "iam:UntagOpenIDConnectProvider"],
             "Resource": f"arn:aws:iam::{acct}:oidc-provider/oidc.eks.*.amazonaws.com/id/*",
             "Condition": {"StringLike": {f"aws:ResourceTag/{TAG_STACK}": stacks}}},
            {"Sid": "TheStacksBudget", "Effect": "Allow", "Action": "budgets:*",
             "Resource": f"arn:aws:budgets::{acct}:budget/llm-platform-{stacks}"},
            # Records only under the stack's names (the zone itself is the operator's). The Null test
            # matters: ForAllValues is true when the key is missing.
            {"Sid": "TheStacksDnsRecords", "Effect": "Allow", "Action": "route53:ChangeResourceRecordSets",
             "Resource": "arn:aws:route53:::hostedzone/*",
             "Condition": {"ForAllValues:StringLike": {
                 "route53:ChangeResourceRecordSetsNormalizedRecordNames": dns_names},
                 "Null": {"route53:ChangeResourceRecordSetsNormalizedRecordNames": "false"}}},
            {"Sid": "FirstUseServiceLinkedRoles", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
             "Resource": [f"arn:aws:iam::{acct}:role/aws-service-role/{service}/*" for service in SERVICE_LINKED_ROLES],
             "Condition": {"StringEquals": {"iam:AWSServiceName": SERVICE_LINKED_ROLES}}},
            # Health checks have no resource-level conditions in IAM: a deploy role can change any
            # health check of the account. Keep prod and previews in separate accounts to close this.
            {"Sid": "HealthChecks", "Effect": "Allow",
             "Action": ["route53:CreateHealthCheck", "route53:UpdateHealthCheck", "route53:DeleteHealthCheck",
                        "route53:ChangeTagsForResource"],
             "Resource": "arn:aws:route53:::healthcheck/*"},
            # Cost Explorer has no resource-level permissions; the program only ever activates the stack tag.
            *([{"Sid": "ActivateTheStackCostTag", "Effect": "Allow",
                "Action": ["ce:UpdateCostAllocationTagsStatus", "ce:ListCostAllocationTags"], "Resource": "*"}]
              if activates_cost_tag else []),
            *(_image_registry(acct, stacks) if owns_image_registry else []),
            *(_never(acct, stack) for stack in never),
        ],
    }


def _image_registry(acct: str, stacks: str) -> list[dict]:
    """The stack's gateway image repository by name, and the registry-wide settings it needs: the replication
    configuration and creation templates have no resource-level scoping (`*`). The first replication configuration
    of an account makes ECR create its replication service-linked role with the caller's permission
    (https://docs.aws.amazon.com/AmazonECR/latest/userguide/slr-replication.html): README, Running it for real,
    has an operator create it once instead, so the deploy role gets no further iam:CreateServiceLinkedRole."""
    return [
        {"Sid": "TheStacksImageRepository", "Effect": "Allow", "Action": "ecr:*",
         "Resource": f"arn:aws:ecr:*:{acct}:repository/llm-platform/{stacks}/*"},
        {"Sid": "ImageReplicationSettings", "Effect": "Allow",
         "Action": ["ecr:PutReplicationConfiguration", "ecr:DescribeRegistry",
                    "ecr:CreateRepositoryCreationTemplate", "ecr:UpdateRepositoryCreationTemplate",
                    "ecr:DeleteRepositoryCreationTemplate", "ecr:DescribeRepositoryCreationTemplates"],
         "Resource": "*"},
    ]


def image_push_policy(account_id: str, repository_name: str) -> dict:
    """The gateway-image workflow's role: push to (and read) the one repository, nothing else. A registry login
    token (GetAuthorizationToken) has no resource-level scoping."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "RegistryLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Sid": "PushTheGatewayImage", "Effect": "Allow",
             "Action": ["ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                        "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage",
                        "ecr:GetDownloadUrlForLayer", "ecr:DescribeImages"],
             "Resource": f"arn:aws:ecr:*:{account_id}:repository/{repository_name}"},
        ],
    }


def _weights_buckets(stacks: str) -> list[str]:
    """The stacks' model weights buckets and their objects."""
    bucket = f"arn:aws:s3:::{bucket_prefix(stacks)}*"
    return [bucket, f"{bucket}/*"]


def _batch_buckets(stacks: str) -> list[str]:
    """The stacks' batch file buckets and their objects."""
    bucket = f"arn:aws:s3:::llmp-{stacks}-batch-*"
    return [bucket, f"{bucket}/*"]


def _never(acct: str, stack: str) -> dict:
    """An explicit deny: it wins over any allow this role gets now or later."""
    return {"Sid": f"Never{stack.title().replace('-', '')}", "Effect": "Deny", "Action": "*",
            "Resource": [f"arn:aws:secretsmanager:*:{acct}:secret:llm-platform/{stack}/*",
                         f"arn:aws:iam::{acct}:role/llm-platform/{stack}/*",
                         f"arn:aws:budgets::{acct}:budget/llm-platform-{stack}", *_weights_buckets(stack),
                         *_batch_buckets(stack)]}


def ci_roles(account_id: str, repository: str, preview_domain: str, prod_domain: str) -> dict[str, dict]:
    """The two deploy roles: `preview` (pr-* stacks, GitHub environment `preview`) and `prod`."""
    return {
        "preview": {
            "trust": github_trust_policy(account_id, repository, "preview"),
            "permissions": deploy_policy(account_id, "pr-*", [f"*.{preview_domain}"], never=["prod"]),
        },
        "prod": {
            "trust": github_trust_policy(account_id, repository, "production"),
            "permissions": deploy_policy(account_id, "prod", [prod_domain, f"*.{prod_domain}"], never=[],
                                         activates_cost_tag=True, owns_image_registry=True),
        },
    }


def image_push_role(account_id: str, repository: str) -> dict[str, dict]:
    """.github/workflows/gateway-image.yml's role, assumed in the GitHub environment `gateway-image`."""
    return {"trust": github_trust_policy(account_id, repository, "gateway-image"),
            "permissions": image_push_policy(account_id, repository_name(IMAGE_SOURCE_STACK))}
