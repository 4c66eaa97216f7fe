"""Control data-stores: each region's gateway stores (ElastiCache for limits, RDS PostgreSQL for keys and the spend
ledger) are encrypted, authenticated, private, reachable only from their cluster, and in prod survive a zone."""
from __future__ import annotations

from infra.plan.mocks import PlannedResource
from tests.policy.helpers import assert_passes, assert_rejected, find, mutated, result, result_of_resources

REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
LEDGER = "aws:rds/instance:Instance"
PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"
DB_SUBNET_GROUP = "aws:rds/subnetGroup:SubnetGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SUBNET = "aws:ec2/subnet:Subnet"
CLUSTER = "aws:eks/cluster:Cluster"


def _stores(res, kind: str) -> list[dict]:
    return [e for e in res.evidence if e.get("store") == kind]


def _regions(plan) -> list[str]:
    return [r.name for r in plan.config.regions]


def test_every_gateway_has_its_own_redis_and_ledger_in_its_region(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    per_region = {e["gateway_region"]: e for e in res.evidence if "gateway_region" in e}
    assert sorted(per_region) == sorted(_regions(stack_plan))
    for region, seen in per_region.items():
        assert seen["redis"] == [f"{region}-gateway-redis"] and seen["ledger"] == [f"{region}-gateway-ledger"]
    assert sorted(e["region"] for e in _stores(res, "redis")) == sorted(_regions(stack_plan))
    assert sorted(e["region"] for e in _stores(res, "ledger")) == sorted(_regions(stack_plan))


def test_gateway_stores_are_encrypted_in_transit_and_at_rest(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    keys = {r.outputs["arn"]: r.region for r in stack_plan.resources
            if r.type in ("aws:kms/key:Key", "aws:kms/replicaKey:ReplicaKey")}
    for redis in _stores(res, "redis"):
        assert redis["transit_encryption"] and redis["transit_encryption_mode"] in (None, "required")
        assert redis["at_rest_encryption"] and keys.get(redis["kms_key"], redis["region"]) == redis["region"]
    for ledger in _stores(res, "ledger"):
        assert ledger["storage_encrypted"] and ledger["force_ssl"]
        assert keys.get(ledger["kms_key"], ledger["region"]) == ledger["region"]


def test_gateway_stores_take_a_token_or_a_managed_password_and_force_tls(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    assert all(r["auth_token"] and r["engine"] in ("valkey", "redis") for r in _stores(res, "redis"))
    for ledger in _stores(res, "ledger"):
        assert ledger["managed_password"] and ledger["engine"] == "postgres"
        # RDS's own secret, in the ledger's region (arn:aws:secretsmanager:<region>:...:secret:rds!db-...)
        assert [arn.split(":")[3] for arn in ledger["managed_secret"]] == [ledger["region"]]
        assert "rds!db-" in ledger["managed_secret"][0]


def test_gateway_stores_admit_only_the_cluster_security_group_on_their_port(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    clusters = {c.region: c.outputs["vpcConfig"]["clusterSecurityGroupId"] for c in stack_plan.of_type(CLUSTER)}
    for redis in _stores(res, "redis"):
        (group,) = redis["security_groups"]
        rules = [r for r in stack_plan.of_type(INGRESS) if r.inputs["securityGroupId"] == group]
        assert [(r.inputs["referencedSecurityGroupId"], r.inputs["fromPort"], r.inputs["toPort"]) for r in rules] \
            == [(clusters[redis["region"]], 6379, 6379)]
    assert all(not e["publicly_accessible"] for e in _stores(res, "ledger"))


def test_prod_stores_are_multi_az_protected_and_backed_up(prod_plan, preview_plan):
    prod = result(prod_plan, "data-stores")
    assert_passes(prod)
    assert all(e["multi_az"] and e["nodes"] >= 2 for e in _stores(prod, "redis"))
    assert all(e["multi_az"] and e["deletion_protection"] and e["final_snapshot"] and e["backup_retention_days"] >= 7
               for e in _stores(prod, "ledger"))
    preview = result(preview_plan, "data-stores")
    assert_passes(preview)  # a preview is single-AZ and destroys cleanly, but still keeps a day of backups
    assert all(e["backup_retention_days"] >= 1 for e in _stores(preview, "ledger"))


def test_a_gateway_without_its_stores_is_rejected(prod_plan):
    """Program bug (simulated): eu-west-2's gateway is deployed with neither Redis nor a ledger (the stateless
    gateway this control exists to prevent: limits per replica, no keys, no spend records)."""
    def drop(rs):
        rs[:] = [r for r in rs if not (r.region == "eu-west-2" and r.type in (REDIS, LEDGER))]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, drop), "data-stores"),
                    "the gateway in eu-west-2 has no Redis (limits)",
                    "the gateway in eu-west-2 has no PostgreSQL ledger")


def test_redis_without_transit_encryption_or_accepting_plaintext_is_rejected(prod_plan):
    plain = mutated(prod_plan, lambda rs: find(rs, REDIS, "us-east-1-gateway-redis").inputs.update(
        transitEncryptionEnabled=False, atRestEncryptionEnabled=False))
    assert_rejected(result_of_resources(prod_plan, plain, "data-stores"),
                    "Redis us-east-1-gateway-redis in us-east-1 does not encrypt in transit",
                    "does not encrypt at rest")
    preferred = mutated(prod_plan, lambda rs: find(rs, REDIS, "us-east-1-gateway-redis").inputs.update(
        transitEncryptionMode="preferred"))
    assert_rejected(result_of_resources(prod_plan, preferred, "data-stores"),
                    "transitEncryptionMode 'preferred', which also accepts plaintext connections")


def test_redis_without_an_auth_token_is_rejected(prod_plan):
    resources = mutated(prod_plan, lambda rs: find(rs, REDIS, "eu-north-1-gateway-redis").inputs.pop("authToken"))
    assert_rejected(result_of_resources(prod_plan, resources, "data-stores"),
                    "Redis eu-north-1-gateway-redis in eu-north-1 has no AUTH token")


def test_ledger_with_a_program_password_or_without_force_ssl_is_rejected(prod_plan):
    def own_password(rs):
        find(rs, LEDGER, "us-west-2-gateway-ledger").inputs.update(manageMasterUserPassword=False,
                                                                   password="in-the-state-file")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, own_password), "data-stores"),
                    "PostgreSQL us-west-2-gateway-ledger in us-west-2 does not let RDS manage its master password")

    def plain_allowed(rs):
        find(rs, PARAMETER_GROUP, "us-west-2-gateway-ledger-postgres17").inputs["parameters"] = [
            {"name": "rds.force_ssl", "value": "0", "applyMethod": "immediate"}]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, plain_allowed), "data-stores"),
                    "PostgreSQL us-west-2-gateway-ledger in us-west-2 accepts plaintext connections")


def test_unencrypted_ledger_or_one_on_another_regions_key_is_rejected(prod_plan):
    us_key = find(prod_plan.resources, "aws:kms/key:Key", region="us-east-1").outputs["arn"]

    def weaken(rs):
        find(rs, LEDGER, "eu-north-1-gateway-ledger").inputs.update(storageEncrypted=False)
        find(rs, LEDGER, "eu-west-2-gateway-ledger").inputs.update(kmsKeyId=us_key, masterUserSecretKmsKeyId=us_key)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, weaken), "data-stores"),
                    "PostgreSQL eu-north-1-gateway-ledger in eu-north-1 does not encrypt its storage",
                    f"ledger eu-west-2-gateway-ledger in eu-west-2 encrypts its storage with {us_key}",
                    "encrypts its master password secret with")


def test_publicly_accessible_ledger_or_one_in_public_subnets_is_rejected(prod_plan):
    public_subnets = [s.outputs["id"] for s in prod_plan.of_type(SUBNET)
                      if s.region == "us-east-1" and "-public-" in s.name]

    def expose(rs):
        find(rs, LEDGER, "us-east-1-gateway-ledger").inputs.update(publiclyAccessible=True)
        find(rs, DB_SUBNET_GROUP, "us-east-1-gateway-ledger").inputs.update(subnetIds=public_subnets)
    assert public_subnets
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, expose), "data-stores"),
                    "PostgreSQL us-east-1-gateway-ledger in us-east-1 is publicly accessible",
                    "whose subnets", "route to an internet gateway")


def test_store_security_group_open_to_a_cidr_or_another_port_is_rejected(prod_plan):
    group = find(prod_plan.resources, SECURITY_GROUP, "eu-north-1-gateway-redis-sg").outputs["id"]

    def widen(rs):
        rs.append(PlannedResource(INGRESS, "eu-north-1-gateway-redis-sg-from-vpc", "eu-north-1", {
            "securityGroupId": group, "ipProtocol": "tcp", "fromPort": 0, "toPort": 65535,
            "cidrIpv4": "10.0.0.0/8"}))
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "data-stores"),
                    "security group eu-north-1-gateway-redis-sg admits tcp 0-65535; only TCP 6379",
                    "admits CIDR 10.0.0.0/8; only the cluster security group")

    def no_group(rs):
        find(rs, LEDGER, "eu-north-1-gateway-ledger").inputs["vpcSecurityGroupIds"] = []
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, no_group), "data-stores"),
                    "ledger eu-north-1-gateway-ledger in eu-north-1 names no security group")


def test_prod_ledger_without_standby_protection_or_final_snapshot_is_rejected(prod_plan):
    resources = mutated(prod_plan, lambda rs: find(rs, LEDGER, "eu-west-2-gateway-ledger").inputs.update(
        multiAz=False, deletionProtection=False, skipFinalSnapshot=True))
    assert_rejected(result_of_resources(prod_plan, resources, "data-stores"),
                    "PostgreSQL eu-west-2-gateway-ledger in eu-west-2 is not Multi-AZ",
                    "has no deletion protection", "takes no final snapshot when deleted")


def test_prod_redis_on_one_node_is_rejected(prod_plan):
    resources = mutated(prod_plan, lambda rs: find(rs, REDIS, "us-west-2-gateway-redis").inputs.update(
        numCacheClusters=1, automaticFailoverEnabled=False, multiAzEnabled=False))
    assert_rejected(result_of_resources(prod_plan, resources, "data-stores"),
                    "Redis us-west-2-gateway-redis in us-west-2 is not Multi-AZ")


def test_ledger_without_backups_is_rejected(preview_plan):
    resources = mutated(preview_plan, lambda rs: find(rs, LEDGER, "us-east-1-gateway-ledger").inputs.update(
        backupRetentionPeriod=0))
    assert_rejected(result_of_resources(preview_plan, resources, "data-stores"),
                    "keeps automated backups 0 day(s) (backupRetentionPeriod); at least 1 in preview")


def test_gateway_connects_to_its_ledger_over_tls_without_a_password_in_its_config(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    seen = [e for e in res.evidence if "ledger_sslmode" in e]
    assert len(seen) == len(stack_plan.config.regions)
    assert all(e["ledger_sslmode"] in ("require", "verify-ca", "verify-full") and not e["ledger_password_in_dsn"]
               for e in seen)


def test_gateway_config_that_lets_libpq_fall_back_to_plaintext_or_carries_the_password_is_rejected(prod_plan):
    def weaken(rs):
        release = next(r for r in rs if r.type == "kubernetes:helm.sh/v3:Release" and r.region == "us-west-2"
                       and str(r.inputs.get("chart", "")).endswith("charts/gateway"))
        ledger = release.inputs["values"]["config"]["ledger"]
        ledger["store"] = ledger["store"].replace("llmp@", "llmp:hunter2@").split("?")[0] + "?sslmode=prefer"
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, weaken), "data-stores"),
                    "the gateway in us-west-2 connects to its ledger with sslmode=prefer",
                    "the gateway in us-west-2 has its ledger password in the rendered DSN")
