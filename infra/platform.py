"""Platform: builds the whole stack from its config: per region network, cluster, pools, serving, gateway; globally
secrets, budget, DNS."""
from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.catalog import load_catalog
from infra.chart_values import GATEWAY_RELEASE, model_service_account_subjects
from infra.components.addons import ClusterAddons, ClusterAddonsArgs
from infra.components.autoscaling import Autoscaling, AutoscalingArgs
from infra.components.batch_files import BatchFiles, BatchFilesArgs, s3_settings
from infra.components.budget import StackBudget, StackBudgetArgs
from infra.components.cluster import Cluster, ClusterArgs
from infra.components.deploy_hub import DeployHub, DeployHubArgs
from infra.components.dns import FailoverDns, FailoverDnsArgs
from infra.components.gateway import Gateway, GatewayArgs, gateway_role
from infra.components.gateway_stores import GatewayStores, GatewayStoresArgs
from infra.components.hub_peering import HubPeering, HubPeeringArgs
from infra.components.karpenter import Karpenter, KarpenterArgs
from infra.components.load_balancer import LoadBalancerController, LoadBalancerControllerArgs, load_balancer_hostname
from infra.components.model_serving import ModelServing, ModelServingArgs
from infra.components.model_token import model_server_role, model_token_policy
from infra.components.model_weights import ModelWeights, ModelWeightsArgs, WeightsStaging, WeightsStagingArgs
from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.components.network import Network, NetworkArgs
from infra.components.node_pool import NodePool, NodePoolArgs
from infra.components.providers import global_provider, iam_path, regional_provider, stack_tags
from infra.components.registry import gateway_image_repositories
from infra.components.secrets import PeerKey, PeerKeyArgs, StackSecrets, StackSecretsArgs, huggingface_token_name
from infra.config import Region, StackConfig
from infra.gateway_config import StoreRefs, dropped_ladders, gateway_config
from infra.placement import network_zones, pool_zones

TAG_PR = "llm-platform:pr"
TAG_EXPIRES = "llm-platform:expires-at"


def ephemeral_tags(cfg: StackConfig) -> dict[str, str]:
    """A pr-<n> stack's resources say which PR they serve and when the reaper may remove them."""
    if cfg.pr_number is None or cfg.preview.expires_at is None:
        return {}
    return {TAG_PR: str(cfg.pr_number),
            TAG_EXPIRES: cfg.preview.expires_at.isoformat().replace("+00:00", "Z")}


def cluster_name(stack: str, region: str) -> str:
    return f"llmp-{stack}-{region}"


class RegionalStack:
    """What one region holds; built in two steps because secrets need every region's gateway role first."""

    def __init__(self, cfg: StackConfig, region: Region, iam: aws.Provider, dns: FailoverDns,
                 parent: pulumi.Resource, extra_tags: dict[str, str], hub: RegionalStack | None = None):
        """`hub` is the deploy hub's region, built first; None when this region is the hub."""
        name = region.name
        self.region = region
        self.iam = iam
        self.reads_token = cfg.secrets.huggingface_token
        self.provider = regional_provider(cfg.stack, name, region.residency, extra_tags)
        tags = {**stack_tags(cfg.stack, name, region.residency), **extra_tags}  # for what default tags miss
        catalog, system_type = load_catalog(), cfg.cluster.system_instance_type
        self.network = Network(name, NetworkArgs(
            region=name, cidr=cfg.vpc_cidr(name), cluster_name=cluster_name(cfg.stack, name),
            nat_per_az=cfg.network.nat_gateways == "per-az",
            zone_ids=tuple(network_zones(region, system_type, catalog))),
            self.provider, pulumi.ResourceOptions(parent=parent))
        deployer_path = self._deploy_path(cfg, iam, parent, hub)
        self.cluster = Cluster(name, ClusterArgs(
            region=name, cluster_name=cluster_name(cfg.stack, name),
            kubernetes_version=cfg.cluster.kubernetes_version,
            private_subnet_ids=self.network.private_subnet_ids,
            public_access_cidrs=cfg.cluster.public_access_cidrs,
            system_instance_type=cfg.cluster.system_instance_type,
            system_nodes=cfg.cluster.system_nodes, iam_path=iam_path(cfg.stack), tags=tags,
            admin_roles=tuple(cfg.cluster.admin_roles),
            deployer_cidr=cfg.vpc_cidr(cfg.deploy_hub.name), deployer_path=deployer_path),
            self.provider, iam, pulumi.ResourceOptions(parent=parent))
        k8s = self.cluster.kubernetes
        # Karpenter grows and shrinks every GPU pool (README: Node autoscaling); it runs on the system nodes.
        self.karpenter = Karpenter(name, KarpenterArgs(
            region=name, cluster_name=cluster_name(cfg.stack, name), iam_path=iam_path(cfg.stack), tags=tags,
            oidc_provider_arn=self.cluster.oidc.arn, oidc_issuer=self.cluster.oidc_issuer,
            system_nodes=cfg.cluster.system_nodes),
            self.provider, iam, k8s, [self.cluster.system_nodes], pulumi.ResourceOptions(parent=parent))
        self.pools = {
            pool.name: NodePool(f"{name}-{pool.name}", NodePoolArgs(
                pool=pool, node_role_name=self.karpenter.node_role.name,
                subnet_ids=[self.network.private_subnet_by_zone[z] for z in zones],
                zone_ids=zones, security_group_id=self.cluster.eks.vpc_config.cluster_security_group_id,
                tags=tags, catalog=catalog, karpenter=self.karpenter.release,
                node_role_policies=self.karpenter.node_policies),
                k8s, pulumi.ResourceOptions(parent=parent))
            for pool in region.pools
            for zones in [pool_zones(region, pool, system_type, catalog)]
        }
        # Failure isolation: the load balancer, gateway and DNS hang off the system nodes only, so a GPU pool that
        # cannot get capacity fails its own models and nothing else (with `pulumi up --continue-on-error`:
        # by default the engine starts no new operation after the first failure).
        self.addons = ClusterAddons(name, ClusterAddonsArgs(
            region=name, secrets_store=cfg.secrets.huggingface_token), k8s,
            pulumi.ResourceOptions(parent=parent, depends_on=[self.cluster.system_nodes]))
        self.tags = tags
        self.certificate_arn = dns.certificate(name, self.provider)
        # The controller runs on the system nodes (GPU pools are tainted), so they must exist first.
        self.load_balancer = LoadBalancerController(name, LoadBalancerControllerArgs(
            region=name, cluster_name=self.cluster.eks.name, vpc_id=self.network.vpc_id,
            oidc_provider_arn=self.cluster.oidc.arn, oidc_issuer=self.cluster.oidc_issuer,
            iam_path=iam_path(cfg.stack), tags=tags), k8s, iam,
            pulumi.ResourceOptions(parent=parent, depends_on=[self.cluster.system_nodes]))
        # KEDA and metrics-server run on the system nodes; the model and gateway releases render ScaledObjects,
        # which need KEDA's CRDs and admission webhook first.
        self.autoscaling = Autoscaling(name, AutoscalingArgs(region=name), k8s,
                                       pulumi.ResourceOptions(parent=parent, depends_on=[self.cluster.system_nodes]))
        # Metrics, dashboards and alerts of the region (README: Metrics and alerts), on the system nodes.
        self.monitoring = Monitoring(f"{name}-monitoring", MonitoringArgs(
            stack=cfg.stack, region=name, iam_path=iam_path(cfg.stack), tags=tags,
            oidc_provider_arn=self.cluster.oidc.arn, oidc_issuer=self.cluster.oidc_issuer,
            cluster_name=self.cluster.eks.name, alert_emails=tuple(cfg.budget.alert_emails),
            monthly_budget_usd=cfg.budget.monthly_usd, regions=len(cfg.regions)),
            k8s, self.provider, iam, pulumi.ResourceOptions(parent=parent, depends_on=[self.cluster.system_nodes]))
        self.gateway_role = gateway_role(
            f"{name}-gateway", name, iam_path(cfg.stack), tags,
            self.cluster.oidc.arn, self.cluster.oidc_issuer, iam, parent)
        # Weights from S3 live in the region's own bucket (README: Weights): per region, so replicas read
        # locally and a restricted model's weights exist only in its zone's regions.
        self.s3_models = [m for m in cfg.models_in(name) if m.weights_from(cfg.environment) == "s3"]
        self.weights = ModelWeights(f"{name}", ModelWeightsArgs(
            stack=cfg.stack, region=name, models=tuple(self.s3_models), iam_path=iam_path(cfg.stack), tags=tags,
            oidc_provider_arn=self.cluster.oidc.arn, oidc_issuer=self.cluster.oidc_issuer),
            self.provider, iam, pulumi.ResourceOptions(parent=parent)) if self.s3_models else None
        self.model_role = model_server_role(
            f"{name}-models", name, iam_path(cfg.stack), tags, model_service_account_subjects(cfg, name),
            self.cluster.oidc.arn, self.cluster.oidc_issuer, iam, parent,
        ) if (cfg.secrets.huggingface_token or self.s3_models) and cfg.models_in(name) else None
        self.weights_read = self.weights.read_policy(
            f"{name}-models-weights", self.model_role, self.s3_models, iam, parent,
        ) if self.weights and self.model_role else None

    @property
    def token_reader_roles(self) -> list[aws.iam.Role]:
        """Roles that mount the Hugging Face token here: the model servers', and the weights stager's."""
        if not (self.reads_token and self.model_role):
            return []
        return [self.model_role, *([self.weights.stager_role] if self.weights else [])]

    def serve(self, cfg: StackConfig, parent: pulumi.Resource, token_ready: list[pulumi.Resource],
              token: tuple[str, pulumi.Output[str], pulumi.Output[str]] | None) -> None:
        """The weights staging Jobs, then the model releases, once the token they mount (if any) is readable
        by their role and (from S3) their weights are staged and readable."""
        role_arn = self.model_role.arn if self.model_role else None
        name = self.region.name
        staging = WeightsStaging(f"{name}-weights", WeightsStagingArgs(
            region=name, weights=self.weights, models=tuple(self.s3_models), token=token),
            self.cluster.kubernetes, self.iam, pulumi.ResourceOptions(
                parent=parent, depends_on=[self.addons, self.cluster.system_nodes, *token_ready],
            )) if self.weights else None
        self.serving = []
        for model in cfg.models_in(name):
            # The release renders a ServiceMonitor (its CRD comes with the metrics stack) and a ScaledObject.
            after: list[pulumi.Resource] = [self.addons, self.autoscaling, self.monitoring.stack,
                                            self.pools[model.pool], *token_ready]
            if staging and self.weights and self.weights_read and model.name in staging.jobs:
                after += [staging.jobs[model.name], self.weights_read]
            self.serving.append(ModelServing(f"{name}-{model.name}", ModelServingArgs(
                cfg=cfg, model=model, region=self.region, role_arn=role_arn,
                weights_source=self.weights.source(model) if staging and self.weights else None),
                self.cluster.kubernetes, pulumi.ResourceOptions(parent=parent, depends_on=after)))


    def _deploy_path(self, cfg: StackConfig, iam: aws.Provider, parent: pulumi.Resource,
                     hub: RegionalStack | None) -> tuple[pulumi.Resource, ...]:
        """The hub region holds the runner; every other region is peered with the hub's VPC."""
        name = self.region.name
        if hub is None:
            self.deploy_hub = DeployHub(f"{name}-deploy-hub", DeployHubArgs(
                stack=cfg.stack, region=name, repository=cfg.deploy.repository,
                compute_type=cfg.deploy.runner_compute_type, vpc_id=self.network.vpc_id,
                private_subnet_ids=self.network.private_subnet_ids, iam_path=iam_path(cfg.stack)),
                self.provider, iam, pulumi.ResourceOptions(parent=parent))
            return ()
        peering = HubPeering(f"{hub.region.name}-to-{name}", HubPeeringArgs(
            hub_region=hub.region.name, region=name, hub=hub.network, spoke=self.network),
            hub.provider, self.provider, pulumi.ResourceOptions(parent=parent))
        return tuple(peering.routes)


class Platform(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:platform:Platform", name, None, opts)
        extra_tags = ephemeral_tags(cfg)
        here = pulumi.ResourceOptions(parent=self)
        iam = global_provider(cfg.stack, extra_tags)
        StackBudget(f"{name}-budget", StackBudgetArgs(stack=cfg.stack, budget=cfg.budget), iam, here)
        dns = self.dns = FailoverDns(f"{name}-dns", FailoverDnsArgs(
            zone=cfg.gateway.zone, domain=cfg.gateway.domain, residency={r.name: r.residency for r in cfg.regions}),
            iam, here)

        hub = RegionalStack(cfg, cfg.deploy_hub, iam, dns, self, extra_tags)
        regions = {hub.region.name: hub, **{r.name: RegionalStack(cfg, r, iam, dns, self, extra_tags, hub)
                                            for r in cfg.regions[1:]}}
        providers = {n: rs.provider for n, rs in regions.items()}
        # The gateway image's repository per region (README: The gateway image); the stack config pins the digest.
        images = gateway_image_repositories(cfg, providers, self)
        zone_secrets: dict[str, StackSecrets] = {}
        # Prod's secrets can be restored for a week after a delete; a preview's go at once (re-creatable).
        recovery_window = 0 if cfg.environment == "preview" else 7
        for zone in cfg.zones:
            members = [r.name for r in cfg.regions_in(zone)]
            secrets = zone_secrets[zone] = StackSecrets(f"{name}-secrets-{zone}", StackSecretsArgs(
                stack=cfg.stack, zone=zone, regions=members, providers=cfg.secrets.providers,
                reader_role_arns=[regions[r].gateway_role.arn for r in members],
                model_reader_role_arns=[role.arn for r in members for role in regions[r].token_reader_roles],
                recovery_window_days=recovery_window), providers, here)
            for region_name in members:
                rs = regions[region_name]
                reads_token = rs.reads_token and rs.model_role is not None
                rs.serve(cfg, self, [secrets, model_token_policy(
                    f"{region_name}-models-token", region_name, rs.model_role,
                    secrets.huggingface_token_arns[region_name], secrets.key_arns[region_name], iam, self,
                )] if reads_token and rs.model_role else [],
                    (huggingface_token_name(cfg.stack), secrets.huggingface_token_arns[region_name],
                     secrets.key_arns[region_name]) if reads_token else None)
        # The gateways' state: one peer key for the whole stack, and each region's own stores (README: Gateway
        # state stores).
        key_arns = {r: zone_secrets[cfg.zone_of(r)].key_arns[r] for r in regions}
        peer_key = PeerKey("gateway-peer-key", PeerKeyArgs(
            stack=cfg.stack, regions=list(regions), key_arns=dict(key_arns),
            reader_role_arns=[rs.gateway_role.arn for rs in regions.values()],
            recovery_window_days=recovery_window), providers, here)
        # Batch files: one bucket per zone, in its first region, used by every gateway of the zone (README: Batch
        # files); each of those gateway roles, and no other, gets access.
        batch_files: dict[str, BatchFiles] = {}
        batch_grants: dict[str, list[pulumi.Resource]] = {r: [] for r in regions}
        if cfg.gateway.batch is not None:
            for zone in cfg.zones:
                home = cfg.regions_in(zone)[0].name
                files = batch_files[zone] = BatchFiles(f"{zone}-batch-files", BatchFilesArgs(
                    stack=cfg.stack, zone=zone, region=home, kms_key_arn=key_arns[home],
                    retention_days=cfg.gateway.batch.retention_days, budget_gib=cfg.gateway.batch.budget_gib,
                    protected=cfg.environment == "prod", tags=regions[home].tags), regions[home].provider, here)
                for member in cfg.regions_in(zone):
                    batch_grants[member.name].append(files.grant(
                        f"{member.name}-gateway-batch-files", regions[member.name].gateway_role, iam, self))
        for region_name, rs in regions.items():
            for alias, missing in dropped_ladders(cfg, rs.region):
                pulumi.log.warn(f"gateway.ladders {alias}: not offered in {region_name}: its zone "
                                f"{rs.region.residency!r} serves no {', '.join(missing)} (a gateway never calls "
                                f"another zone's models)")
            zone_files = batch_files.get(rs.region.residency)
            stores = GatewayStores(f"{region_name}-gateway-stores", GatewayStoresArgs(
                stack=cfg.stack, region=region_name, environment=cfg.environment, vpc_id=rs.network.vpc_id,
                private_subnet_ids=rs.network.private_subnet_ids,
                cluster_security_group_id=rs.cluster.eks.vpc_config.cluster_security_group_id,
                kms_key_arn=key_arns[region_name], reader_role_arn=rs.gateway_role.arn, tags=rs.tags,
                recovery_window_days=recovery_window), rs.provider, here)
            secrets = zone_secrets[cfg.zone_of(region_name)]
            gateway = Gateway(f"{region_name}-gateway", GatewayArgs(
                cfg=cfg, region=rs.region, role=rs.gateway_role,
                secret_arns=[*secrets.arns[region_name], stores.redis_url_secret_arn,
                             stores.ledger_password_secret_arn, peer_key.arns[region_name]],
                key_arn=key_arns[region_name],
                config=gateway_config(cfg, rs.region, StoreRefs(
                    stores.ledger_dsn, stores.ledger_password_secret_arn,
                    s3_settings(zone_files.bucket, zone_files.region, key_arns[zone_files.region])
                    if zone_files else None)),
                certificate_arn=rs.certificate_arn, tags=rs.tags,
                load_balancer_controller=rs.load_balancer.release, image_repository=images[region_name],
                store_endpoints=[stores.redis_endpoint],
                spool_storage=[rs.monitoring.ebs_csi, rs.monitoring.storage_class]),
                rs.cluster.kubernetes, iam,
                pulumi.ResourceOptions(parent=self, depends_on=[rs.addons, rs.autoscaling, rs.monitoring.stack,
                                                                stores, peer_key,
                                                                *batch_grants[region_name]]))
            dns.add_region(region_name, load_balancer_hostname(
                f"{region_name}-gateway-lb", f"{GATEWAY_RELEASE}-public", gateway.release,
                rs.cluster.kubernetes, gateway))
        self.register_outputs({"regions": list(regions), "domain": cfg.gateway.domain})
