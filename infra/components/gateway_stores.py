"""GatewayStores: one region's gateway state stores: ElastiCache (Valkey) for limits, RDS PostgreSQL for keys and spend.

Per region, not per zone (README: Gateway state stores): a region's outage never takes another region's ledger,
spend rows never leave their region, and no database traffic crosses regions. Both stores sit in the region's
private subnets, and only the EKS cluster security group (the gateway pods' ENIs carry it) reaches them.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

from infra.components.providers import child_opts
from infra.components.secrets import deny_all_but

REDIS_PORT = 6379
POSTGRES_PORT = 5432
# Pinned: a major version change is a deliberate update (ElastiCache and RDS never upgrade a major on their own).
# Valkey 8.1 is offered by ElastiCache for node-based clusters (docs.aws.amazon.com/AmazonElastiCache/latest/dg/
# engine-versions.html). PostgreSQL is pinned to the major only: with auto_minor_version_upgrade RDS moves the
# minor in the maintenance window, and a pinned minor (e.g. "17.7") would make the next `up` try to go back and
# fail (hashicorp/terraform-provider-aws#49496). The provider accepts a major prefix for exactly this
# (pulumi_aws 7.51.1 rds.Instance engine_version: "If `auto_minor_version_upgrade` is enabled, you can provide a
# prefix of the version such as `8.0` (for `8.0.36`)"; the version running is `engine_version_actual`).
VALKEY_VERSION = "8.1"
POSTGRES_VERSION = "17"
# The parameter group's family follows the major; the group's resource name carries it, so a new major creates a
# new group (next to the old one, which the instance still uses) instead of replacing the group in place.
POSTGRES_FAMILY = f"postgres{POSTGRES_VERSION}"
LEDGER_DB = "llmp"
LEDGER_USER = "llmp"
# `require`: TLS always (the parameter group refuses plain connections), without checking the server's
# certificate: the RDS CA bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem) is not in
# the gateway image yet. With the bundle at a fixed path in the image, this becomes
# `verify-full&sslrootcert=<path>` (asyncpg reads both from the DSN).
LEDGER_SSLMODE = "require"
# AUTH token rules (docs.aws.amazon.com/AmazonElastiCache/latest/dg/auth.html): 16-128 printable characters, a
# few punctuation marks only; letters and digits keep it URL-safe in the rediss:// URL too.
TOKEN_LENGTH = 64
REDIS_URL_NAME = "gateway/redis-url"


@dataclass(frozen=True)
class StoreSize:
    """What each environment runs: prod survives a zone (replica + failover, Multi-AZ standby, deletion
    protection, a final snapshot); a preview is small and destroys cleanly."""

    cache_node_type: str
    cache_nodes: int
    db_instance_class: str
    db_storage_gb: int
    db_max_storage_gb: int
    backup_days: int
    # Survive the loss of a zone: a Redis replica with automatic failover, and an RDS Multi-AZ standby.
    multi_az: bool
    # Deletion protection, a final snapshot, changes in the maintenance window, and Pulumi's `protect` (a
    # replacement is refused at preview instead of failing halfway: README, Gateway state stores).
    protected: bool


SIZES: dict[str, StoreSize] = {
    "prod": StoreSize("cache.r7g.large", 2, "db.r7g.large", 100, 1000, 7, multi_az=True, protected=True),
    "preview": StoreSize("cache.t4g.small", 1, "db.t4g.small", 20, 100, 1, multi_az=False, protected=False),
}


@dataclass(frozen=True)
class GatewayStoresArgs:
    stack: str
    region: str
    environment: Literal["prod", "preview"]
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    cluster_security_group_id: pulumi.Input[str]  # the only source admitted to either store
    kms_key_arn: pulumi.Input[str] | None  # the stack's key in this region; None: the AWS-managed keys
    reader_role_arn: pulumi.Input[str]  # this region's gateway role: the only reader of the Redis URL
    tags: dict[str, str]
    recovery_window_days: int = 7  # of the Redis URL secret; 0 for previews (re-creatable at once)


def redis_url(token: str, address: str) -> str:
    return f"rediss://:{token}@{address}:{REDIS_PORT}/0"


def ledger_dsn(address: str) -> str:
    """The ledger store without its password: the gateway reads that from RDS's own secret."""
    return f"postgresql://{LEDGER_USER}@{address}:{POSTGRES_PORT}/{LEDGER_DB}?sslmode={LEDGER_SSLMODE}"


class GatewayStores(pulumi.ComponentResource):
    """`redis_url_secret_arn` and `ledger_password_secret_arn` are what the gateway role reads; `ledger_dsn` goes in
    the rendered config."""

    redis_url_secret_arn: pulumi.Output[str]
    redis_endpoint: pulumi.Output[str]  # the primary endpoint's address: a new one (a replacement) rolls the gateways
    ledger_password_secret_arn: pulumi.Output[str]
    ledger_dsn: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayStoresArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:gateway:GatewayStores", name, None, opts)
        size = SIZES[args.environment]
        region = args.region
        child = child_opts(self, provider)
        redis_sg = self._security_group(f"{region}-gateway-redis-sg", "Gateway Redis (ElastiCache)", REDIS_PORT,
                                        args, provider)
        ledger_sg = self._security_group(f"{region}-gateway-ledger-sg", "Gateway ledger (RDS PostgreSQL)",
                                         POSTGRES_PORT, args, provider)

        # -- Redis: limits and budget counters. Nothing here is the only copy: budget counters are raised again
        # from the ledger (gateway/governance/budget_sync.py), rate windows refill; so no snapshots.
        cache_subnets = aws.elasticache.SubnetGroup(
            f"{region}-gateway-redis", description=f"llm-platform {args.stack} gateway Redis ({region})",
            subnet_ids=list(args.private_subnet_ids), tags=args.tags, opts=child)
        token = aws.secretsmanager.get_random_password_output(
            password_length=TOKEN_LENGTH, exclude_punctuation=True,
            opts=pulumi.InvokeOutputOptions(provider=provider, parent=self))
        self.redis = aws.elasticache.ReplicationGroup(
            f"{region}-gateway-redis",
            description=f"llm-platform {args.stack} gateway limits ({region})",
            engine="valkey", engine_version=VALKEY_VERSION, node_type=size.cache_node_type,
            num_cache_clusters=size.cache_nodes, port=REDIS_PORT,
            automatic_failover_enabled=size.multi_az, multi_az_enabled=size.multi_az,
            subnet_group_name=cache_subnets.name, security_group_ids=[redis_sg.id],
            transit_encryption_enabled=True, at_rest_encryption_enabled=True, kms_key_id=args.kms_key_arn,
            auth_token=pulumi.Output.secret(token.random_password),
            apply_immediately=not size.protected, auto_minor_version_upgrade=True, tags=args.tags,
            # The invoke draws a new password at every `up`: only the first one is used. Ignoring the input keeps
            # the token in state (on update and replacement alike: the engine substitutes the old input before
            # diffing), and the URL below is built from that state value, so it never drifts from the token.
            opts=child_opts(self, provider, ignore_changes=["authToken"], additional_secret_outputs=["authToken"],
                            protect=size.protected))
        url_secret = aws.secretsmanager.Secret(
            f"{region}-gateway-redis-url", name=f"llm-platform/{args.stack}/{REDIS_URL_NAME}",
            description=f"rediss:// URL of the gateway's Redis in {region} (written by the program)",
            kms_key_id=args.kms_key_arn, recovery_window_in_days=args.recovery_window_days, opts=child)
        aws.secretsmanager.SecretPolicy(
            f"{region}-gateway-redis-url", secret_arn=url_secret.arn, block_public_policy=True,
            policy=pulumi.Output.all(url_secret.arn, args.reader_role_arn).apply(
                lambda a: json.dumps(deny_all_but([a[1]], [a[0]]))),
            opts=child)
        # The gateway reads it at start only: a new endpoint or token takes a rollout (README says when).
        aws.secretsmanager.SecretVersion(
            f"{region}-gateway-redis-url", secret_id=url_secret.id,
            # Secret: the token output is (additional_secret_outputs), and apply keeps it so.
            secret_string=pulumi.Output.all(self.redis.auth_token, self.redis.primary_endpoint_address).apply(
                lambda a: redis_url(a[0], a[1])),
            opts=child)
        self.redis_url_secret_arn = url_secret.arn
        self.redis_endpoint = self.redis.primary_endpoint_address

        # -- PostgreSQL: keys, teams, users and the spend ledger: the durable record.
        db_subnets = aws.rds.SubnetGroup(
            f"{region}-gateway-ledger", description=f"llm-platform {args.stack} gateway ledger ({region})",
            subnet_ids=list(args.private_subnet_ids), tags=args.tags, opts=child)
        params = aws.rds.ParameterGroup(
            f"{region}-gateway-ledger-{POSTGRES_FAMILY}", family=POSTGRES_FAMILY,
            description=f"llm-platform {args.stack} gateway ledger: TLS only",
            # Refuses every connection without TLS (docs.aws.amazon.com/AmazonRDS/latest/UserGuide/
            # PostgreSQL.Concepts.General.SSL.html); dynamic, so no reboot.
            parameters=[aws.rds.ParameterGroupParameterArgs(name="rds.force_ssl", value="1",
                                                            apply_method="immediate")],
            tags=args.tags, opts=child)
        self.ledger = aws.rds.Instance(
            f"{region}-gateway-ledger",
            engine="postgres", engine_version=POSTGRES_VERSION, instance_class=size.db_instance_class,
            db_name=LEDGER_DB, username=LEDGER_USER,
            # RDS keeps the password in a secret of its own and rotates it (every 7 days by default:
            # docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-secrets-manager.html); the program never sees it.
            manage_master_user_password=True, master_user_secret_kms_key_id=args.kms_key_arn,
            allocated_storage=size.db_storage_gb, max_allocated_storage=size.db_max_storage_gb, storage_type="gp3",
            storage_encrypted=True, kms_key_id=args.kms_key_arn,
            multi_az=size.multi_az, db_subnet_group_name=db_subnets.name, vpc_security_group_ids=[ledger_sg.id],
            parameter_group_name=params.name, publicly_accessible=False, port=POSTGRES_PORT,
            backup_retention_period=size.backup_days, copy_tags_to_snapshot=True,
            deletion_protection=size.protected, skip_final_snapshot=not size.protected,
            final_snapshot_identifier=f"llmp-{args.stack}-{region}-gateway-ledger-final" if size.protected else None,
            apply_immediately=not size.protected, auto_minor_version_upgrade=True,
            # A change of POSTGRES_VERSION's major is refused by RDS without it (InvalidParameterCombination); it
            # takes effect in the maintenance window in prod (README: Gateway state stores).
            allow_major_version_upgrade=True, tags=args.tags,
            # Prod: deletion protection makes a replacement fail after the new instance exists; `protect` refuses
            # it at preview instead (README says how to replace it deliberately).
            opts=child_opts(self, provider, protect=size.protected))
        self.ledger_password_secret_arn = self.ledger.master_user_secrets.apply(_secret_arn)
        self.ledger_dsn = self.ledger.address.apply(ledger_dsn)
        self.register_outputs({"redis_url_secret_arn": self.redis_url_secret_arn, "redis_endpoint": self.redis_endpoint,
                               "ledger_password_secret_arn": self.ledger_password_secret_arn,
                               "ledger_dsn": self.ledger_dsn})

    def _security_group(self, name: str, what: str, port: int, args: GatewayStoresArgs,
                        provider: aws.Provider) -> aws.ec2.SecurityGroup:
        """No rule but ingress on `port` from the cluster security group. No egress rule: the provider removes
        the default allow-all egress of a new VPC security group, and neither store opens connections."""
        sg = aws.ec2.SecurityGroup(name, vpc_id=args.vpc_id, description=f"llm-platform {what}",
                                   tags={**args.tags, "Name": name}, opts=child_opts(self, provider))
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-cluster", security_group_id=sg.id,
            referenced_security_group_id=args.cluster_security_group_id, ip_protocol="tcp",
            from_port=port, to_port=port, description="from the EKS cluster security group",
            opts=child_opts(self, provider))
        return sg


def _secret_arn(secrets: Sequence[aws.rds.outputs.InstanceMasterUserSecret]) -> str:
    if not secrets or not secrets[0].secret_arn:
        raise ValueError("RDS returned no master user secret for the gateway ledger")
    return secrets[0].secret_arn
