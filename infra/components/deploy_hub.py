"""Deploy hub: the GitHub Actions runner (a CodeBuild project) in the first region's private subnets that
runs `pulumi up`.

The cluster API endpoints are private, so whatever deploys must sit in a network that reaches them.
AWS CodeBuild hosts self-hosted GitHub Actions runners: a project with a webhook filtered to
WORKFLOW_JOB_QUEUED starts a build that registers as a runner for a job whose `runs-on` label is
`codebuild-<project>-${{ github.run_id }}-${{ github.run_attempt }}`
(https://docs.aws.amazon.com/codebuild/latest/userguide/action-runner-overview.html,
https://docs.aws.amazon.com/codebuild/latest/userguide/sample-github-action-runners-update-labels.html,
https://docs.aws.amazon.com/codebuild/latest/userguide/action-runner-questions.html).
The runner holds no deploy rights of its own: the job still assumes the stack's deploy role through
GitHub's OIDC token, so the runner's role is only what CodeBuild needs to put it in the VPC.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.cluster import assume_role_policy
from infra.components.providers import child_opts

# Ubuntu, so actions/setup-python finds its prebuilt interpreters (it has none for Amazon Linux).
RUNNER_IMAGE = "aws/codebuild/standard:7.0"
HTTPS = 443
# What CodeBuild itself calls to attach a build to the VPC: "Allow CodeBuild access to AWS services
# required to create a VPC network interface"
# (https://docs.aws.amazon.com/codebuild/latest/userguide/auth-and-access-control-iam-identity-based-access-control.html).
# The Describe calls have no resource-level permissions and an interface's id is unknown before it
# exists, so this statement's Resource is "*" (secret-scope accepts exactly these actions so).
VPC_INTERFACE_ACTIONS = ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:DescribeDhcpOptions",
                         "ec2:DescribeNetworkInterfaces", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets",
                         "ec2:DescribeVpcs"]


def runner_project_name(stack: str) -> str:
    """The CodeBuild project, and so the `runs-on: codebuild-<name>-...` label the deploy jobs use."""
    return f"llmp-{stack}-deploy"


def bootstrap_targets(stack: str, hub_region: str, project: str = "llm-platform") -> list[str]:
    """URN globs for the first `pulumi up --target ...`: the hub region's network and the runner, with
    their providers, and nothing that talks to a Kubernetes API. Globs also match resources not yet
    created (https://github.com/pulumi/pulumi/pull/11150); a targeted update creates only what matches
    (https://github.com/pulumi/pulumi/pull/3251)."""
    root = f"urn:pulumi:{stack}::{project}::"
    return [
        f"{root}pulumi:providers:aws::aws-{hub_region}",
        f"{root}pulumi:providers:aws::aws-global",
        f"{root}llm-platform:platform:Platform::{project}",
        f"{root}llm-platform:platform:Platform$llm-platform:network:Network::{hub_region}",
        f"{root}llm-platform:platform:Platform$llm-platform:network:Network$**::{hub_region}-*",
        f"{root}llm-platform:platform:Platform$llm-platform:network:Network$aws:ec2/vpc:Vpc::{hub_region}",
        f"{root}llm-platform:platform:Platform$llm-platform:network:Network$aws:ec2/internetGateway:InternetGateway"
        f"::{hub_region}",
        f"{root}llm-platform:platform:Platform$llm-platform:deploy:DeployHub**",
        # The gateway image's repository (infra/components/registry.py), so the first image can be pushed before
        # the first full `up`; its replication templates live in the other regions, under their providers.
        f"{root}pulumi:providers:aws::aws-*",
        f"{root}llm-platform:platform:Platform$llm-platform:registry:GatewayRegistry**",
    ]


# The project's own role must be able to use its GitHub connection: "Grant CodeBuild project IAM role
# access to use the connection" (https://docs.aws.amazon.com/codebuild/latest/userguide/connections-github-app.html).
CONNECTION_ACTIONS = ["codeconnections:GetConnectionToken", "codeconnections:GetConnection"]


def runner_policy(region: str, account_id: str, subnet_arns: list[str], connection_arn: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PlaceTheRunnerInTheVpc", "Effect": "Allow", "Action": VPC_INTERFACE_ACTIONS, "Resource": "*"},
            {"Sid": "OnlyInTheHubSubnets", "Effect": "Allow", "Action": "ec2:CreateNetworkInterfacePermission",
             "Resource": f"arn:aws:ec2:{region}:{account_id}:network-interface/*",
             "Condition": {"StringEquals": {"ec2:Subnet": subnet_arns,
                                            "ec2:AuthorizedService": "codebuild.amazonaws.com"}}},
            {"Sid": "UseTheGitHubConnection", "Effect": "Allow", "Action": CONNECTION_ACTIONS,
             "Resource": connection_arn},
        ],
    }


@dataclass(frozen=True)
class DeployHubArgs:
    stack: str
    region: str
    repository: str  # owner/name on GitHub
    compute_type: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    iam_path: str


class DeployHub(pulumi.ComponentResource):
    """The runner: its security group (egress HTTPS only), its role, the CodeBuild project and its webhook."""

    def __init__(self, name: str, args: DeployHubArgs, provider: aws.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:deploy:DeployHub", name, None, opts)
        child, iam_child = child_opts(self, provider), child_opts(self, iam)
        self.project_name = runner_project_name(args.stack)

        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-runner", vpc_id=args.vpc_id, description="llm-platform deploy runner: no ingress, HTTPS out",
            tags={"Name": f"{name}-runner"}, opts=child)
        # GitHub, AWS APIs, the Pulumi backend and the peered cluster APIs all speak HTTPS; DNS goes to
        # the VPC resolver, which security groups do not filter.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-runner-https", security_group_id=self.security_group.id, cidr_ipv4="0.0.0.0/0",
            ip_protocol="tcp", from_port=HTTPS, to_port=HTTPS, description="HTTPS out", opts=child)

        self.role = aws.iam.Role(f"{name}-runner", path=args.iam_path,
                                 description=f"llm-platform deploy runner in {args.region}",
                                 assume_role_policy=assume_role_policy("codebuild.amazonaws.com"), opts=iam_child)
        # The stack's own GitHub connection. It is created PENDING: an operator completes it once in the
        # console (Developer Tools, Connections: install the AWS Connector for GitHub app on the repository);
        # until then the webhook below cannot be created (README: Deploy path).
        self.connection = aws.codeconnections.Connection(
            f"{name}-github", name=f"llmp-{args.stack}-github"[:32], provider_type="GitHub", opts=child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=iam, parent=self))
        aws.iam.RolePolicy(
            f"{name}-runner", role=self.role.name,
            policy=pulumi.Output.all(self.connection.arn, account.account_id, *args.private_subnet_ids).apply(
                lambda a: json.dumps(runner_policy(
                    args.region, a[1], [f"arn:aws:ec2:{args.region}:{a[1]}:subnet/{s}" for s in a[2:]], a[0]))),
            opts=iam_child)

        self.project = aws.codebuild.Project(
            name, name=self.project_name,
            description=f"GitHub Actions runner that deploys llm-platform stack {args.stack}",
            service_role=self.role.arn,
            source=aws.codebuild.ProjectSourceArgs(
                type="GITHUB", location=f"https://github.com/{args.repository}.git", git_clone_depth=1,
                auth=aws.codebuild.ProjectSourceAuthArgs(type="CODECONNECTIONS", resource=self.connection.arn)),
            artifacts=aws.codebuild.ProjectArtifactsArgs(type="NO_ARTIFACTS"),
            environment=aws.codebuild.ProjectEnvironmentArgs(
                type="LINUX_CONTAINER", compute_type=args.compute_type, image=RUNNER_IMAGE,
                image_pull_credentials_type="CODEBUILD"),
            vpc_config=aws.codebuild.ProjectVpcConfigArgs(
                vpc_id=args.vpc_id, subnets=args.private_subnet_ids, security_group_ids=[self.security_group.id]),
            # The job's log is in GitHub Actions; a CloudWatch copy would need a log-stream wildcard grant.
            logs_config=aws.codebuild.ProjectLogsConfigArgs(
                cloudwatch_logs=aws.codebuild.ProjectLogsConfigCloudwatchLogsArgs(status="DISABLED")),
            build_timeout=180,
            opts=child)
        # The webhook is created on the repository through the project's connection.
        self.webhook = aws.codebuild.Webhook(
            name, project_name=self.project.name, build_type="BUILD",
            filter_groups=[aws.codebuild.WebhookFilterGroupArgs(filters=[
                aws.codebuild.WebhookFilterGroupFilterArgs(type="EVENT", pattern="WORKFLOW_JOB_QUEUED")])],
            opts=child)
        self.register_outputs({"project": self.project.name, "security_group_id": self.security_group.id})
