"""Cluster: an EKS control plane with a private endpoint, KMS-encrypted secrets, IRSA and a system node group."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components.providers import TAG_STACK, child_opts
from infra.scheduling import POOL_LABEL

# The AWS-managed access policy equal to Kubernetes' cluster-admin ClusterRole
# (https://docs.aws.amazon.com/eks/latest/userguide/access-policy-permissions.html).
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
# Long enough for a quarter's audit questions; EKS's own log group would keep them forever, untagged.
LOG_RETENTION_DAYS = 90
SYSTEM_POOL = "system"
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "cni": "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "ssm": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
}


@dataclass(frozen=True)
class ClusterArgs:
    region: str
    cluster_name: str
    kubernetes_version: str
    private_subnet_ids: Sequence[pulumi.Input[str]]
    public_access_cidrs: list[str]
    system_instance_type: str
    system_nodes: int
    iam_path: str
    tags: dict[str, str]  # stamped on the system nodes' instances, volumes and interfaces
    admin_roles: tuple[str, ...] = ()  # role names (in the deploying account) or role ARNs
    # The deploy runner's VPC block, admitted to the private endpoint, and what its path there needs first.
    deployer_cidr: str | None = None
    deployer_path: tuple[pulumi.Resource, ...] = ()


def assume_role_policy(service: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    })


class Cluster(pulumi.ComponentResource):
    """EKS cluster. `kubernetes` is the provider its workloads are deployed with."""

    def __init__(self, name: str, args: ClusterArgs, provider: aws.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:cluster:Cluster", name, None, opts)
        child, iam_child = child_opts(self, provider), child_opts(self, iam)

        role = aws.iam.Role(f"{name}-control-plane", path=args.iam_path,
                            assume_role_policy=assume_role_policy("eks.amazonaws.com"), opts=iam_child)
        aws.iam.RolePolicyAttachment(f"{name}-control-plane", role=role.name,
                                     policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy", opts=iam_child)
        self.secrets_key = aws.kms.Key(
            f"{name}-secrets", description=f"EKS secrets envelope encryption for {args.cluster_name}",
            enable_key_rotation=True, deletion_window_in_days=30, opts=child)

        # EKS sends control plane logs to /aws/eks/<cluster>/cluster and creates that group itself,
        # untagged and never expiring, unless it exists already
        # (https://docs.aws.amazon.com/eks/latest/userguide/control-plane-logs.html): create it first.
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane-logs", name=f"/aws/eks/{args.cluster_name}/cluster",
            retention_in_days=LOG_RETENTION_DAYS, opts=child)
        public = bool(args.public_access_cidrs)
        self.eks = aws.eks.Cluster(
            name,
            name=args.cluster_name,
            role_arn=role.arn,
            version=args.kubernetes_version,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.private_subnet_ids,
                endpoint_private_access=True,
                endpoint_public_access=public,
                public_access_cidrs=args.public_access_cidrs if public else None,
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=self.secrets_key.arn),
                resources=["secrets"],
            ),
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True),
            # Extended support costs six times the standard price; upgrade on schedule instead.
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
            opts=child_opts(self, provider, depends_on=[self.log_group]),
        )
        # EKS's VPC CNI ignores NetworkPolicies unless told to enforce them; the charts rely on them.
        aws.eks.Addon(
            f"{name}-vpc-cni", cluster_name=self.eks.name, addon_name="vpc-cni",
            configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE", opts=child)
        issuer = self.eks.identities.apply(_oidc_issuer)
        self.oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=iam_child)
        self.oidc_issuer = issuer.apply(lambda url: url.removeprefix("https://"))

        self.node_role = aws.iam.Role(f"{name}-nodes", path=args.iam_path,
                                      assume_role_policy=assume_role_policy("ec2.amazonaws.com"), opts=iam_child)
        for short, arn in NODE_POLICIES.items():
            aws.iam.RolePolicyAttachment(f"{name}-nodes-{short}", role=self.node_role.name, policy_arn=arn,
                                         opts=iam_child)

        # As for the GPU pools (node_pool.py): managed node groups don't tag what they start.
        system_template = aws.ec2.LaunchTemplate(
            f"{name}-{SYSTEM_POOL}", description="llm-platform system nodes",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(  # IMDSv2 only
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2),
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=args.tags)
                                for kind in ("instance", "volume", "network-interface")],
            opts=child)
        self.system_nodes = aws.eks.NodeGroup(
            f"{name}-{SYSTEM_POOL}",
            cluster_name=self.eks.name,
            node_role_arn=self.node_role.arn,
            subnet_ids=args.private_subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            # Pinned with the control plane: an unpinned group follows nothing and drifts (EKS never upgrades
            # managed node groups itself, kubernetes-versions.html "Amazon EKS version FAQs").
            version=args.kubernetes_version,
            capacity_type="ON_DEMAND",
            instance_types=[args.system_instance_type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.system_nodes, max_size=args.system_nodes * 2, desired_size=args.system_nodes),
            labels={POOL_LABEL: SYSTEM_POOL},
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=system_template.id, version=system_template.latest_version.apply(str)),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            opts=child_opts(self, provider, ignore_changes=["scalingConfig.desiredSize"]),
        )

        self._grant_admins(name, args.admin_roles, iam, child)

        api_path = list(args.deployer_path)
        if args.deployer_cidr:
            # "you must ensure that your Amazon EKS control plane security group contains rules to allow
            # ingress traffic on port 443 from your connected network"
            # (https://docs.aws.amazon.com/eks/latest/userguide/cluster-endpoint.html).
            # EKS creates this group without the cluster's tags (terraform-aws-modules/terraform-aws-eks#1957
            # tags it for the same reason), and the deploy role may change only EC2 resources carrying the
            # stack tag (infra/ci_access.py): tag it first, which the role may do with that tag only.
            sg = self.eks.vpc_config.cluster_security_group_id
            stack_tag = aws.ec2.Tag(f"{name}-cluster-sg-stack-tag", resource_id=sg, key=TAG_STACK,
                                    value=args.tags[TAG_STACK], opts=child)
            api_path.append(aws.vpc.SecurityGroupIngressRule(
                f"{name}-api-from-deploy-hub", security_group_id=sg,
                cidr_ipv4=args.deployer_cidr, ip_protocol="tcp", from_port=443, to_port=443,
                description="Kubernetes API from the deploy runner's VPC",
                opts=child_opts(self, provider, depends_on=[stack_tag])))
        self.kubernetes = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=pulumi.Output.all(self.eks.name, self.eks.endpoint,
                                         self.eks.certificate_authority.data).apply(
                lambda a: kubeconfig(args.region, *a)),
            enable_server_side_apply=True,
            # Every release waits for the network path from the runner to this API.
            opts=pulumi.ResourceOptions(parent=self, depends_on=api_path),
        )
        self.register_outputs({"name": self.eks.name, "endpoint": self.eks.endpoint,
                               "oidc_provider_arn": self.oidc.arn})


    def _grant_admins(self, name: str, roles: tuple[str, ...], iam: aws.Provider,
                      child: pulumi.ResourceOptions) -> None:
        """Operators reach the cluster through EKS access entries (authentication mode API), never a
        hand-edited aws-auth ConfigMap; without one, only the identity that created the cluster could."""
        if not roles:
            return
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=iam, parent=self)).account_id
        for i, role in enumerate(roles):
            arn = role if role.startswith("arn:") else pulumi.Output.concat("arn:aws:iam::", account, ":role/", role)
            entry = aws.eks.AccessEntry(f"{name}-admin-{i}", cluster_name=self.eks.name, principal_arn=arn,
                                        type="STANDARD", opts=child)
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{i}", cluster_name=self.eks.name, principal_arn=entry.principal_arn,
                policy_arn=CLUSTER_ADMIN_POLICY,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"), opts=child)


def kubeconfig(region: str, name: str, endpoint: str, ca_data: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token` (no static credentials)."""
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region, "--output", "json"],
        }}}],
    })


def _oidc_issuer(identities: Sequence[aws.eks.outputs.ClusterIdentity]) -> str:
    """The cluster's OIDC issuer URL: EKS gives every cluster one."""
    oidcs = identities[0].oidcs
    issuer = oidcs[0].issuer if oidcs else None
    assert issuer, "the EKS cluster has no OIDC issuer"
    return issuer
