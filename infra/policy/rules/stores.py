"""Control `data-stores`: each region's gateway stores (ElastiCache for limits, PostgreSQL for keys and the spend
ledger) are encrypted in transit and at rest, authenticated, private, reachable only from their cluster, and, in
prod, survive a zone's loss and a mistaken delete; and the lookups the other controls share about these stores."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.policy.rules import batch_files
from infra.policy.rules.base import (
    EKS_CLUSTER,
    GATEWAY_CHART_DIR,
    KMS_KEY,
    KMS_REPLICA_KEY,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_int,
    as_list,
)

# The SDK's type tokens, as the engine records them.
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
CACHE_SUBNET_GROUP = "aws:elasticache/subnetGroup:SubnetGroup"
GLOBAL_REPLICATION_GROUP = "aws:elasticache/globalReplicationGroup:GlobalReplicationGroup"
DB_INSTANCE = "aws:rds/instance:Instance"
DB_CLUSTER = "aws:rds/cluster:Cluster"
DB_PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"
DB_SUBNET_GROUP = "aws:rds/subnetGroup:SubnetGroup"
DB_SNAPSHOT_COPY = "aws:rds/snapshotCopy:SnapshotCopy"
DB_BACKUP_REPLICATION = "aws:rds/instanceAutomatedBackupsReplication:InstanceAutomatedBackupsReplication"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE_TABLE_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"

REDIS_PORT = 6379
POSTGRES_PORT = 5432
CACHE_ENGINES = ("valkey", "redis")
# RDS keeps automated backups this many days in prod (the ledger is the record of spend; a week covers a weekend's
# mistake found on Monday); a preview keeps at least one.
PROD_BACKUP_DAYS = 7

DESCRIPTION = (
    "Every region that runs a gateway has its own stores, in that region: one ElastiCache replication group (Valkey "
    "or Redis OSS) for limits and one RDS PostgreSQL instance for keys and the spend ledger. The replication group "
    "encrypts in transit (transitEncryptionEnabled, with transitEncryptionMode not 'preferred', which would also "
    "accept plaintext clients: CreateReplicationGroup API reference) and at rest, and requires an AUTH token; the "
    "instance encrypts its storage, lets RDS manage the master password in Secrets Manager "
    "(manageMasterUserPassword, no password in the program) and refuses plaintext connections through a parameter "
    "group with rds.force_ssl=1. Each store's KMS key is AWS-managed or a key this stack creates in the store's "
    "region. Neither store is publicly accessible: the instance is not publiclyAccessible, both sit in subnet groups "
    "of subnets with no route to an internet gateway, and each has security groups that admit only the region's EKS "
    f"cluster security group, over TCP on the store's port ({REDIS_PORT} for Redis, {POSTGRES_PORT} for "
    "PostgreSQL), and nothing else. The ledger keeps automated backups (at least one day; in prod at least "
    f"{PROD_BACKUP_DAYS}). In prod both stores are Multi-AZ (a replication group of at least two nodes with automatic "
    "failover; an instance with a synchronous standby), and the ledger has deletion protection and takes a final "
    "snapshot when deleted. Redis needs no backups: it holds counters the gateway raises again from the ledger and "
    "its peers (gateway/governance/budget_sync.py) and rate windows that expire within a minute. Each gateway's "
    "rendered config connects to its ledger with an sslmode that never sends in the clear (require, verify-ca or "
    "verify-full; libpq's default, prefer, would fall back to plaintext) and carries no password in its DSN: the "
    "gateway reads it from RDS's secret." + batch_files.STORES_DESCRIPTION)


def redis_url_secret_name(stack: str) -> str:
    """The secret, one per region, holding the full rediss:// URL (with its AUTH token) of that region's Redis."""
    return f"llm-platform/{stack}/gateway/redis-url"


def peer_key_secret_name(stack: str) -> str:
    """The stack-wide token gateways authenticate each other with, replicated to every region of the stack."""
    return f"llm-platform/{stack}/gateway/peer-key"


def managed_secret_arns(db: Resource) -> list[str]:
    """The secret RDS creates for an instance's master password (manageMasterUserPassword), by its ARN."""
    return [str(s.get("secretArn")) for s in as_list(db.outputs.get("masterUserSecrets"))
            if hasattr(s, "get") and s.get("secretArn")]


def managed_secrets(resources: Resources) -> dict[str, Resource]:
    """ARN of every RDS-managed master password secret -> its instance."""
    return {arn: db for db in resources.of_type(DB_INSTANCE) for arn in managed_secret_arns(db)}


def stack_key_regions(resources: Resources) -> dict[str, str]:
    """ARN (and key id) of every KMS key this stack creates -> its region."""
    keys: dict[str, str] = {}
    for k in resources.of_type(KMS_KEY) + resources.of_type(KMS_REPLICA_KEY):
        for ref in (k.outputs.get("arn"), k.outputs.get("keyId")):
            if ref:
                keys[str(ref)] = k.region
    return keys


def _by_ref(resources: Resources, typ: str) -> dict[str, Resource]:
    """Resources of a type by every handle another resource may name them with: name, id, ARN."""
    out: dict[str, Resource] = {}
    for r in resources.of_type(typ):
        for ref in (r.inputs.get("name"), r.outputs.get("name"), r.outputs.get("id"), r.outputs.get("arn")):
            if ref:
                out[str(ref)] = r
    return out


def _referenced(refs: dict[str, Resource], ref: Any, store: Resource, typ: str) -> Resource | None:
    """The group a store names. An autonamed group's name is computed by the provider, so the mock engine records
    the store's reference as absent (a real preview knows it); then the group the same component made for the
    store, by the naming contract (the store's own name, or it with a suffix such as the parameter family, in its
    region), stands in."""
    if ref:
        return refs.get(str(ref))
    return next((r for r in refs.values() if r.type == typ and r.region == store.region
                 and (r.name == store.name or r.name.startswith(f"{store.name}-"))), None)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


class _Network:
    """What a store's network placement is judged against: each region's cluster security group, which subnets
    route to an internet gateway, and every ingress rule of every security group."""

    def __init__(self, resources: Resources):
        self.cluster_groups = {c.region: str((c.outputs.get("vpcConfig") or {}).get("clusterSecurityGroupId") or "")
                               for c in resources.of_type(EKS_CLUSTER)}
        self.groups = _by_ref(resources, SECURITY_GROUP)
        tables = {str(t.outputs.get("id")): t for t in resources.of_type(ROUTE_TABLE)}
        to_internet = {tid for tid, t in tables.items()
                       if any(str(r.get("gatewayId") or "").startswith("igw-")
                              for r in as_list(t.inputs.get("routes")))}
        to_internet |= {str(r.inputs.get("routeTableId")) for r in resources.of_type(ROUTE)
                        if str(r.inputs.get("gatewayId") or "").startswith("igw-")}
        self.public_subnets = {str(a.inputs.get("subnetId")) for a in resources.of_type(ROUTE_TABLE_ASSOCIATION)
                               if str(a.inputs.get("routeTableId")) in to_internet}
        # security group id -> its ingress rules as (protocol, from port, to port, sources)
        self.ingress: dict[str, list[tuple[str, int, int, list[str]]]] = {}
        for sg in resources.of_type(SECURITY_GROUP):
            for rule in as_list(sg.inputs.get("ingress")):
                sources = ([f"security group {g}" for g in as_list(rule.get("securityGroups"))]
                           + [f"CIDR {c}" for c in as_list(rule.get("cidrBlocks"))
                              + as_list(rule.get("ipv6CidrBlocks"))]
                           + [f"prefix list {p}" for p in as_list(rule.get("prefixListIds"))]
                           + (["the group itself"] if _truthy(rule.get("self")) else []))
                self._add(str(sg.outputs.get("id")), rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"),
                          sources)
        for rule in resources.of_type(INGRESS_RULE):
            i = rule.inputs
            sources = [f"security group {i['referencedSecurityGroupId']}"] if i.get("referencedSecurityGroupId") else []
            sources += [f"CIDR {i[k]}" for k in ("cidrIpv4", "cidrIpv6") if i.get(k)]
            sources += [f"prefix list {i['prefixListId']}"] if i.get("prefixListId") else []
            self._add(str(i.get("securityGroupId")), i.get("ipProtocol"), i.get("fromPort"), i.get("toPort"), sources)
        for rule in resources.of_type(SECURITY_GROUP_RULE):
            i = rule.inputs
            if i.get("type") != "ingress":
                continue
            sources = [f"security group {i['sourceSecurityGroupId']}"] if i.get("sourceSecurityGroupId") else []
            sources += [f"CIDR {c}" for c in as_list(i.get("cidrBlocks")) + as_list(i.get("ipv6CidrBlocks"))]
            sources += [f"prefix list {p}" for p in as_list(i.get("prefixListIds"))]
            sources += ["the group itself"] if _truthy(i.get("self")) else []
            self._add(str(i.get("securityGroupId")), i.get("protocol"), i.get("fromPort"), i.get("toPort"), sources)

    def _add(self, group: str, protocol: Any, low: Any, high: Any, sources: list[str]) -> None:
        self.ingress.setdefault(group, []).append((str(protocol).lower(), as_int(low, -1), as_int(high, -1), sources))

    def fence(self, what: str, store: Resource, group_ids: list[str], port: int, found: Findings) -> None:
        """The store's security groups admit the region's cluster security group on `port` over TCP, and nothing
        else."""
        cluster = self.cluster_groups.get(store.region, "")
        if not group_ids:
            found.fail(f"{what} {store.name} in {store.region} names no security group: it would get the VPC's "
                       f"default group, which admits every member of it")
        admitted = False
        for gid in group_ids:
            if gid not in self.groups:
                found.fail(f"{what} {store.name} in {store.region} uses security group {gid}, which this stack does "
                           f"not create: what it admits cannot be judged")
                continue
            for protocol, low, high, sources in self.ingress.get(gid, []):
                wrong = [s for s in sources if s != f"security group {cluster}"]
                if protocol not in ("tcp", "6") or (low, high) != (port, port):
                    found.fail(f"{what} {store.name} in {store.region}: security group {self.groups[gid].name} admits "
                               f"{protocol} {low}-{high}; only TCP {port} may reach the store")
                if wrong or not sources:
                    found.fail(f"{what} {store.name} in {store.region}: security group {self.groups[gid].name} admits "
                               f"{', '.join(wrong) or 'an unnamed source'}; only the cluster security group "
                               f"{cluster or '(none recorded)'} may reach the store")
                admitted = admitted or (not wrong and bool(sources) and (low, high) == (port, port))
        if group_ids and not admitted:
            found.fail(f"{what} {store.name} in {store.region}: no security group of it admits the cluster security "
                       f"group {cluster or '(none recorded)'} on {port}: the gateway could not reach it")

    def private(self, what: str, store: Resource, group: Resource | None, group_name: Any, found: Findings) -> None:
        if group is None:
            found.fail(f"{what} {store.name} in {store.region} is placed by subnet group {group_name!r}, which this "
                       f"stack does not create: its subnets cannot be shown to be private")
            return
        public = [str(s) for s in as_list(group.inputs.get("subnetIds")) if str(s) in self.public_subnets]
        if public or not as_list(group.inputs.get("subnetIds")):
            found.fail(f"{what} {store.name} in {store.region} sits in subnet group {group.name}, whose subnets "
                       f"{', '.join(public) or '(none)'} route to an internet gateway; stores live in the private "
                       f"subnets only")


def _key(what: str, store: Resource, ref: Any, keys: Mapping[str, str], found: Findings, label: str) -> None:
    """A store's KMS key: AWS-managed (none named) or one this stack creates in the store's region."""
    if ref and keys.get(str(ref)) != store.region:
        found.fail(f"{what} {store.name} in {store.region} encrypts its {label} with {ref}, which is not a KMS key "
                   f"this stack creates in {store.region}")


def _redis(rg: Resource, policy: PolicyConfig, net: _Network, subnets: dict[str, Resource], keys: Mapping[str, str],
           found: Findings) -> None:
    i, what = rg.inputs, "Redis"
    nodes = as_int(i.get("numCacheClusters")) or (as_int(i.get("numNodeGroups"), 1)
                                                  * (as_int(i.get("replicasPerNodeGroup")) + 1))
    multi_az = _truthy(i.get("multiAzEnabled")) and _truthy(i.get("automaticFailoverEnabled")) and nodes >= 2
    port = as_int(i.get("port"), REDIS_PORT)
    found.judged(rg, store="redis", engine=i.get("engine"), engine_version=i.get("engineVersion"),
                 node_type=i.get("nodeType"), nodes=nodes, multi_az=multi_az, port=port,
                 transit_encryption=_truthy(i.get("transitEncryptionEnabled")),
                 transit_encryption_mode=i.get("transitEncryptionMode"),
                 at_rest_encryption=_truthy(i.get("atRestEncryptionEnabled")),
                 kms_key=i.get("kmsKeyId") or "aws-managed",
                 auth_token=bool(i.get("authToken") or i.get("authTokenWo")),
                 security_groups=[str(g) for g in as_list(i.get("securityGroupIds"))])
    where = f"{what} {rg.name} in {rg.region}"
    if str(i.get("engine") or "redis") not in CACHE_ENGINES:
        found.fail(f"{where} runs engine {i.get('engine')!r}; the gateway speaks Valkey or Redis OSS")
    if not _truthy(i.get("transitEncryptionEnabled")):
        found.fail(f"{where} does not encrypt in transit (transitEncryptionEnabled): the AUTH token and every counter "
                   f"would cross the VPC in the clear")
    elif str(i.get("transitEncryptionMode") or "required") != "required":
        found.fail(f"{where} sets transitEncryptionMode {i.get('transitEncryptionMode')!r}, which also accepts "
                   f"plaintext connections; it must be 'required'")
    if not _truthy(i.get("atRestEncryptionEnabled")):
        found.fail(f"{where} does not encrypt at rest (atRestEncryptionEnabled)")
    _key(what, rg, i.get("kmsKeyId"), keys, found, "data at rest")
    if not (i.get("authToken") or i.get("authTokenWo")):
        found.fail(f"{where} has no AUTH token: any client that reaches it may read and reset every limit")
    if port != REDIS_PORT:
        found.fail(f"{where} listens on {port}; the gateway's NetworkPolicy opens {REDIS_PORT} only")
    net.fence(what, rg, [str(g) for g in as_list(i.get("securityGroupIds"))], port, found)
    net.private(what, rg, _referenced(subnets, i.get("subnetGroupName"), rg, CACHE_SUBNET_GROUP),
                i.get("subnetGroupName"), found)
    if policy.environment == "prod" and not multi_az:
        found.fail(f"{where} is not Multi-AZ (at least two nodes, automaticFailoverEnabled and multiAzEnabled): in "
                   f"prod, losing its zone would stop every gateway limit check in {rg.region}")


def _force_ssl(group: Resource | None) -> bool:
    return group is not None and any(str(p.get("name")) == "rds.force_ssl" and str(p.get("value")) == "1"
                                     for p in as_list(group.inputs.get("parameters")))


def _ledger(db: Resource, policy: PolicyConfig, net: _Network, subnets: dict[str, Resource],
            parameters: dict[str, Resource], keys: Mapping[str, str], found: Findings) -> None:
    i, what = db.inputs, "ledger"
    where = f"PostgreSQL {db.name} in {db.region}"
    group = _referenced(parameters, i.get("parameterGroupName"), db, DB_PARAMETER_GROUP)
    backups = as_int(i.get("backupRetentionPeriod"))
    found.judged(db, store="ledger", engine=i.get("engine"), engine_version=i.get("engineVersion"),
                 instance_class=i.get("instanceClass"), multi_az=_truthy(i.get("multiAz")),
                 storage_gib=as_int(i.get("allocatedStorage")), max_storage_gib=as_int(i.get("maxAllocatedStorage")),
                 storage_encrypted=_truthy(i.get("storageEncrypted")), kms_key=i.get("kmsKeyId") or "aws-managed",
                 managed_password=_truthy(i.get("manageMasterUserPassword")), force_ssl=_force_ssl(group),
                 publicly_accessible=_truthy(i.get("publiclyAccessible")), backup_retention_days=backups,
                 deletion_protection=_truthy(i.get("deletionProtection")),
                 final_snapshot=not _truthy(i.get("skipFinalSnapshot")) and bool(i.get("finalSnapshotIdentifier")),
                 managed_secret=managed_secret_arns(db))
    if str(i.get("engine") or "") != "postgres":
        found.fail(f"{where} runs engine {i.get('engine')!r}; the ledger is PostgreSQL")
    if i.get("replicateSourceDb"):
        return  # a read replica: judged by region-residency; it takes its settings from its source
    if not _truthy(i.get("storageEncrypted")):
        found.fail(f"{where} does not encrypt its storage (storageEncrypted)")
    _key(what, db, i.get("kmsKeyId"), keys, found, "storage")
    if not _truthy(i.get("manageMasterUserPassword")) or i.get("password") or i.get("passwordWo"):
        found.fail(f"{where} does not let RDS manage its master password (manageMasterUserPassword, no password "
                   f"input): the password would live in the program's state and never rotate")
    _key(what, db, i.get("masterUserSecretKmsKeyId"), keys, found, "master password secret")
    if not _force_ssl(group):
        found.fail(f"{where} accepts plaintext connections: its parameter group "
                   f"{i.get('parameterGroupName') or '(default)'} does not set rds.force_ssl=1")
    if _truthy(i.get("publiclyAccessible")):
        found.fail(f"{where} is publicly accessible: it would get a public DNS name and address")
    port = as_int(i.get("port"), POSTGRES_PORT)
    if port != POSTGRES_PORT:
        found.fail(f"{where} listens on {port}; the gateway's NetworkPolicy opens {POSTGRES_PORT} only")
    net.fence(what, db, [str(g) for g in as_list(i.get("vpcSecurityGroupIds"))], port, found)
    net.private(what, db, _referenced(subnets, i.get("dbSubnetGroupName"), db, DB_SUBNET_GROUP),
                i.get("dbSubnetGroupName"), found)
    least = PROD_BACKUP_DAYS if policy.environment == "prod" else 1
    if backups < least:
        found.fail(f"{where} keeps automated backups {backups} day(s) (backupRetentionPeriod); at least {least} "
                   f"in {policy.environment}")
    if policy.environment == "prod":
        if not _truthy(i.get("multiAz")):
            found.fail(f"{where} is not Multi-AZ: in prod, losing its zone would stop key lookups and spend records "
                       f"in {db.region}")
        if not _truthy(i.get("deletionProtection")):
            found.fail(f"{where} has no deletion protection: in prod one mistaken `pulumi destroy` deletes the ledger")
        if _truthy(i.get("skipFinalSnapshot")) or not i.get("finalSnapshotIdentifier"):
            found.fail(f"{where} takes no final snapshot when deleted (skipFinalSnapshot false and a "
                       f"finalSnapshotIdentifier): in prod, deleting it would lose the spend ledger")


# libpq's sslmode values that never send a byte without TLS (https://www.postgresql.org/docs/current/
# libpq-ssl.html#LIBPQ-SSL-PROTECTION); verify-full also checks the server is the ledger it names.
TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def _gateway_connections(resources: Resources, found: Findings) -> None:
    """The rendered gateway config connects to its ledger over TLS whatever the server allows."""
    for release in resources.releases(GATEWAY_CHART_DIR):
        ledger = ((release.inputs.get("values") or {}).get("config") or {}).get("ledger") or {}
        dsn = str(ledger.get("store") or "")
        if not dsn.startswith(("postgresql://", "postgres://")):
            continue
        query = dict(part.partition("=")[::2] for part in dsn.partition("?")[2].split("&") if part)
        mode = query.get("sslmode") or "prefer"  # libpq's default: TLS only if the server offers it
        authority = dsn.split("://", 1)[1].partition("/")[0]
        password_in_dsn = "@" in authority and ":" in authority.rpartition("@")[0]
        found.judged(release, ledger_sslmode=mode, ledger_password_in_dsn=password_in_dsn)
        if mode not in TLS_SSLMODES:
            found.fail(f"the gateway in {release.region} connects to its ledger with sslmode={mode}; it must be one "
                       f"of {', '.join(TLS_SSLMODES)} (libpq sends in the clear otherwise)")
        if password_in_dsn:
            found.fail(f"the gateway in {release.region} has its ledger password in the rendered DSN; it reads it "
                       f"from RDS's secret (store_password_secret)")


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    _gateway_connections(resources, found)
    net = _Network(resources)
    keys = stack_key_regions(resources)
    cache_subnets = _by_ref(resources, CACHE_SUBNET_GROUP)
    db_subnets = _by_ref(resources, DB_SUBNET_GROUP)
    parameters = _by_ref(resources, DB_PARAMETER_GROUP)
    caches = resources.of_type(REPLICATION_GROUP)
    ledgers = [db for db in resources.of_type(DB_INSTANCE) if not db.inputs.get("replicateSourceDb")]
    for rg in caches:
        _redis(rg, policy, net, cache_subnets, keys, found)
    for db in resources.of_type(DB_INSTANCE):
        _ledger(db, policy, net, db_subnets, parameters, keys, found)
    for cluster in resources.of_type(DB_CLUSTER):
        found.fail(f"RDS cluster {cluster.name} in {cluster.region}: the ledger is one RDS PostgreSQL instance per "
                   f"region; this control does not judge Aurora clusters")
    for region in sorted({r.region for r in resources.releases(GATEWAY_CHART_DIR)}):
        here = ([c.name for c in caches if c.region == region], [d.name for d in ledgers if d.region == region])
        found.judged(None, gateway_region=region, redis=here[0], ledger=here[1])
        for names, store in zip(here, ("Redis (limits)", "PostgreSQL ledger (keys, spend)")):
            if len(names) != 1:
                found.fail(f"the gateway in {region} has {len(names) or 'no'} {store} in its region "
                           f"({', '.join(names) or 'none'}); it needs exactly one of its own")
    batch_files.judge_stores(resources, policy, keys, found)
    return found
