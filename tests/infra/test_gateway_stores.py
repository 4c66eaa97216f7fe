"""The gateway's state stores, as Pulumi's mock engine sees the program create them: per region an ElastiCache
(Valkey) for limits and an RDS PostgreSQL for keys and spend, reachable only from the cluster, their credentials in
secrets only the region's gateway reads, and a rendered config that turns governance on with them."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from gateway.config.loading import load_config
from gateway.config.native import GatewayConfig
from infra.chart_values import GATEWAY_CHART
from infra.components.gateway_stores import LEDGER_SSLMODE, TOKEN_LENGTH, VALKEY_VERSION
from infra.components.network import private_subnet_cidrs
from infra.components.providers import TAG_REGION, TAG_STACK
from infra.components.secrets import secret_names
from infra.plan.mocks import PlanMocks
from infra.plan.run import Plan
from tests.infra.rendered_sections import gateway_parsable
from tests.policy.test_secret_scope_iam import LEDGER_PASSWORD, Account, account_with

CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
DB = "aws:rds/instance:Instance"
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROD_REGIONS = ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2"]


def one(plan: Plan, typ: str, name: str) -> Any:
    (found,) = [r for r in plan.of_type(typ) if r.name == name]
    return found


def gateway_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    return {r.region: r.inputs["values"]["config"] for r in plan.of_type(RELEASE)
            if r.inputs["chart"] == str(GATEWAY_CHART)}


def stack_key(plan: Plan, region: str) -> str:
    """The stack's secrets key in `region` (its zone's key, or that key's replica there)."""
    keys = [k for k in plan.of_type("aws:kms/key:Key") + plan.of_type("aws:kms/replicaKey:ReplicaKey")
            if k.region == region and k.name.startswith("llm-platform-secrets-")]
    (key,) = keys
    arn: str = key.outputs["arn"]
    return arn


def cluster_sg(plan: Plan, region: str) -> str:
    (cluster,) = [c for c in plan.of_type("aws:eks/cluster:Cluster") if c.region == region]
    sg: str = cluster.outputs["vpcConfig"]["clusterSecurityGroupId"]
    return sg


# -- what each region gets ------------------------------------------------------------------------

def test_each_prod_region_has_one_redis_and_one_ledger_that_survive_a_zone(prod_plan: Plan) -> None:
    for typ in (CACHE, DB):
        assert sorted(r.region for r in prod_plan.of_type(typ)) == sorted(PROD_REGIONS), typ
    for region in PROD_REGIONS:
        redis = one(prod_plan, CACHE, f"{region}-gateway-redis").inputs
        assert (redis["engine"], redis["engineVersion"]) == ("valkey", VALKEY_VERSION)
        assert redis["nodeType"] == "cache.r7g.large" and redis["numCacheClusters"] == 2
        assert redis["automaticFailoverEnabled"] is True and redis["multiAzEnabled"] is True
        assert redis["transitEncryptionEnabled"] is True and redis["atRestEncryptionEnabled"] is True
        assert redis["kmsKeyId"] == stack_key(prod_plan, region)
        assert redis["applyImmediately"] is False  # changes wait for the maintenance window

        db = one(prod_plan, DB, f"{region}-gateway-ledger")
        i = db.inputs
        assert (i["engine"], i["engineVersion"]) == ("postgres", "17")
        assert i["instanceClass"] == "db.r7g.large" and i["multiAz"] is True
        assert i["storageType"] == "gp3" and i["storageEncrypted"] is True
        assert i["kmsKeyId"] == i["masterUserSecretKmsKeyId"] == stack_key(prod_plan, region)
        assert i["manageMasterUserPassword"] is True and "password" not in i
        assert i["publiclyAccessible"] is False
        assert i["backupRetentionPeriod"] == 7
        assert i["deletionProtection"] is True and i["skipFinalSnapshot"] is False
        assert i["finalSnapshotIdentifier"] == f"llmp-prod-{region}-gateway-ledger-final"
        assert i["applyImmediately"] is False
        assert db.tags[TAG_STACK] == "prod" and db.tags[TAG_REGION] == region


def test_the_ledger_refuses_connections_without_tls(prod_plan: Plan, preview_plan: Plan) -> None:
    for plan in (prod_plan, preview_plan):
        groups = {g.outputs.get("name") or g.name: g for g in plan.of_type("aws:rds/parameterGroup:ParameterGroup")}
        for db in plan.of_type(DB):
            group = groups[db.inputs["parameterGroupName"]]
            assert group.inputs["family"] == "postgres17"
            assert {p["name"]: p["value"] for p in group.inputs["parameters"]} == {"rds.force_ssl": "1"}


def test_a_preview_gets_small_stores_that_destroy_cleanly(preview_plan: Plan) -> None:
    (redis,) = preview_plan.of_type(CACHE)
    assert redis.inputs["nodeType"] == "cache.t4g.small" and redis.inputs["numCacheClusters"] == 1
    assert redis.inputs["automaticFailoverEnabled"] is False and redis.inputs["multiAzEnabled"] is False
    assert redis.inputs["transitEncryptionEnabled"] is True and redis.inputs["atRestEncryptionEnabled"] is True
    (db,) = preview_plan.of_type(DB)
    assert db.inputs["instanceClass"] == "db.t4g.small" and db.inputs["multiAz"] is False
    assert db.inputs["backupRetentionPeriod"] == 1
    # `pulumi destroy` of a pr-<n> stack: no protection to lift, no snapshot left behind, secrets gone at once.
    assert db.inputs["deletionProtection"] is False and db.inputs["skipFinalSnapshot"] is True
    assert "finalSnapshotIdentifier" not in db.inputs
    for secret in preview_plan.of_type(SECRET):
        if secret.inputs["name"].endswith(("/gateway/redis-url", "/gateway/peer-key")):
            assert secret.inputs["recoveryWindowInDays"] == 0, secret.name


def test_the_ledger_pins_the_major_only_so_rds_minor_upgrades_never_fight_the_program(prod_plan: Plan,
                                                                                      preview_plan: Plan) -> None:
    """RDS moves the minor in the maintenance window (auto minor upgrades); an engine_version naming a minor would
    make the next `up` try to downgrade and fail (hashicorp/terraform-provider-aws#49496). A new major is a
    change of the pinned major, which RDS applies only with allow_major_version_upgrade."""
    for plan in (prod_plan, preview_plan):
        for db in plan.of_type(DB):
            assert db.inputs["autoMinorVersionUpgrade"] is True
            assert db.inputs["engineVersion"].isdigit(), db.inputs["engineVersion"]  # "17", never "17.7"
            assert db.inputs["allowMajorVersionUpgrade"] is True


def test_a_new_postgres_major_gets_a_new_parameter_group_beside_the_old(prod_plan: Plan) -> None:
    """The group's family cannot change in place (a replacement), and the old group is in use until the instance
    moves: the family in the resource name makes the new major's group a new resource, created first."""
    for region in PROD_REGIONS:
        db = one(prod_plan, DB, f"{region}-gateway-ledger")
        group = one(prod_plan, "aws:rds/parameterGroup:ParameterGroup", f"{region}-gateway-ledger-postgres17")
        assert db.inputs["parameterGroupName"] == group.outputs["name"]


# -- network --------------------------------------------------------------------------------------

def test_stores_sit_in_the_private_subnets(prod_plan: Plan) -> None:
    for region in PROD_REGIONS:
        private = [s.outputs["id"] for s in prod_plan.of_type("aws:ec2/subnet:Subnet")
                   if s.region == region and s.tags.get("kubernetes.io/role/internal-elb") == "1"]
        for typ, name in (("aws:elasticache/subnetGroup:SubnetGroup", f"{region}-gateway-redis"),
                          ("aws:rds/subnetGroup:SubnetGroup", f"{region}-gateway-ledger")):
            group = one(prod_plan, typ, name)
            assert group.region == region and sorted(group.inputs["subnetIds"]) == sorted(private), name


@pytest.mark.parametrize("plan_name", ["prod_plan", "preview_plan"])
def test_security_groups_admit_only_the_cluster_on_the_store_port(plan_name: str,
                                                                  request: pytest.FixtureRequest) -> None:
    plan: Plan = request.getfixturevalue(plan_name)
    for region in {r.region for r in plan.of_type(CACHE)}:
        for store, port, users in (("redis", 6379, (CACHE, "securityGroupIds")),
                                   ("ledger", 5432, (DB, "vpcSecurityGroupIds"))):
            sg = one(plan, SG, f"{region}-gateway-{store}-sg")
            # No inline rules: the provider then removes AWS's default allow-all egress.
            assert not sg.inputs.get("ingress") and not sg.inputs.get("egress")
            (vpc,) = [v for v in plan.of_type("aws:ec2/vpc:Vpc") if v.region == region]
            assert sg.inputs["vpcId"] == vpc.outputs["id"]
            rules = [r for r in plan.of_type(INGRESS) if r.inputs["securityGroupId"] == sg.outputs["id"]]
            assert [(r.inputs["referencedSecurityGroupId"], r.inputs["ipProtocol"], r.inputs["fromPort"],
                     r.inputs["toPort"]) for r in rules] == [(cluster_sg(plan, region), "tcp", port, port)]
            assert not any(r.inputs.get("cidrIpv4") or r.inputs.get("cidrIpv6") for r in rules)
            typ, field = users
            (user,) = [u for u in plan.of_type(typ) if u.region == region]
            assert user.inputs[field] == [sg.outputs["id"]]


# -- credentials ----------------------------------------------------------------------------------

def test_the_redis_url_secret_holds_the_token_and_the_primary_endpoint(prod_plan: Plan) -> None:
    for region in PROD_REGIONS:
        redis = one(prod_plan, CACHE, f"{region}-gateway-redis")
        secret = one(prod_plan, SECRET, f"{region}-gateway-redis-url")
        assert secret.region == region and secret.inputs["name"] == "llm-platform/prod/gateway/redis-url"
        assert secret.inputs["kmsKeyId"] == stack_key(prod_plan, region) and not secret.inputs.get("replicas")
        version = one(prod_plan, VERSION, f"{region}-gateway-redis-url")
        assert version.inputs["secretId"] == secret.outputs["arn"]
        token, address = redis.inputs["authToken"]["value"], redis.outputs["primaryEndpointAddress"]
        assert version.inputs["secretString"]["value"] == f"rediss://:{token}@{address}:6379/0"
        policy = one(prod_plan, "aws:secretsmanager/secretPolicy:SecretPolicy", f"{region}-gateway-redis-url")
        (stmt,) = json.loads(policy.inputs["policy"])["Statement"]
        gateway_role = one(prod_plan, "aws:iam/role:Role", f"{region}-gateway").outputs["arn"]
        assert stmt["Effect"] == "Deny" and stmt["Condition"]["StringNotEquals"]["aws:PrincipalArn"] == [gateway_role]


def test_one_peer_key_for_the_stack_replicated_to_every_region(prod_plan: Plan) -> None:
    (key,) = [s for s in prod_plan.of_type(SECRET) if s.name == "gateway-peer-key"]
    assert key.inputs["name"] == "llm-platform/prod/gateway/peer-key"
    copies = {key.region: key.inputs["kmsKeyId"], **{r["region"]: r["kmsKeyId"] for r in key.inputs["replicas"]}}
    assert copies == {region: stack_key(prod_plan, region) for region in PROD_REGIONS}
    version = one(prod_plan, VERSION, "gateway-peer-key-value")
    assert len(version.inputs["secretString"]["value"]) >= 32
    policy = one(prod_plan, "aws:secretsmanager/secretPolicy:SecretPolicy", "gateway-peer-key")
    (stmt,) = json.loads(policy.inputs["policy"])["Statement"]
    roles = sorted(one(prod_plan, "aws:iam/role:Role", f"{r}-gateway").outputs["arn"] for r in PROD_REGIONS)
    assert stmt["Condition"]["StringNotEquals"]["aws:PrincipalArn"] == roles


# -- the rendered config --------------------------------------------------------------------------

def _loaded(config: dict[str, Any], path: Path) -> GatewayConfig:
    """The gateway's own loader on the rendered config, `peers` included."""
    path.write_text(yaml.safe_dump(gateway_parsable(config)))
    return load_config(path)


@pytest.mark.parametrize("plan_name", ["prod_plan", "preview_plan"])
def test_every_regional_gateway_config_turns_governance_on_with_its_own_stores(
        plan_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    plan: Plan = request.getfixturevalue(plan_name)
    configs = gateway_configs(plan)
    assert sorted(configs) == sorted(r.name for r in plan.config.regions)
    for region, raw in configs.items():
        db = one(plan, DB, f"{region}-gateway-ledger")
        config = _loaded(raw, tmp_path / f"{region}.yaml")
        assert config.redis is not None and config.redis.url == "secret/gateway/redis-url"
        assert config.ledger is not None
        assert config.ledger.store == \
            f"postgresql://llmp@{db.outputs['address']}:5432/llmp?sslmode={LEDGER_SSLMODE}"
        assert config.ledger.store_password_secret == db.outputs["masterUserSecrets"][0]["secretArn"]
        # The chart fills it with its volume's path (tests/charts/test_gateway_spool.py): one place says where.
        assert "spool_dir" not in raw["ledger"]
        assert config.keys.refresh_seconds == 2
        others = [r.name for r in plan.config.regions if r.name != region]
        assert (config.peers.urls if config.peers else []) == [f"https://{o}.{plan.config.gateway.domain}"
                                                                for o in others]


def test_every_prod_gateway_syncs_with_every_other_region(prod_plan: Plan) -> None:
    for region, config in gateway_configs(prod_plan).items():
        assert config["peers"] == {
            "urls": [f"https://{other}.api.llm.example.com" for other in PROD_REGIONS if other != region],
            "key": "secret/gateway/peer-key", "interval": 5}


def test_a_one_region_stack_has_no_peers(preview_plan: Plan) -> None:
    assert [("peers" in c) for c in gateway_configs(preview_plan).values()] == [False]


def test_the_network_policy_reaches_the_stores_in_the_private_subnets_only(prod_plan: Plan) -> None:
    for release in (r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)):
        policy = release.inputs["values"]["networkPolicy"]
        private = private_subnet_cidrs(prod_plan.config.vpc_cidr(release.region))
        assert policy["redis"] == {"cidrs": private, "port": 6379}
        assert policy["postgres"] == {"cidrs": private, "port": 5432}


# -- the gateway role (IAM enforcement, moto) -----------------------------------------------------

@pytest.fixture
def account(prod_plan: Plan, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    with account_with(monkeypatch, prod_plan) as acct:
        yield acct


def _ledger_secret(plan: Plan, region: str) -> str:
    arn: str = one(plan, DB, f"{region}-gateway-ledger").outputs["masterUserSecrets"][0]["secretArn"]
    return arn.split(":secret:", 1)[1][:-7]


def test_a_gateway_reads_its_regions_stores_credentials_and_no_other_regions(account: Account) -> None:
    stores = ("llm-platform/prod/gateway/redis-url", "llm-platform/prod/gateway/peer-key")
    for reader in PROD_REGIONS:
        gateway = ("prod", reader)
        for name in stores:
            assert account.read(gateway, "prod", name, reader) == f"prod:{name}:{reader}"
        assert json.loads(account.read(gateway, "prod", LEDGER_PASSWORD, reader))["password"] == f"prod:{reader}"
        for region in (r for r in PROD_REGIONS if r != reader):
            for name in (*stores, LEDGER_PASSWORD):
                assert account.denied(gateway, "prod", name, region), f"the {reader} gateway read {name} in {region}"


def test_the_gateway_role_names_exactly_its_secrets(prod_plan: Plan) -> None:
    """Nothing more than the zone's provider keys and master key, and the three new ones, all in its region."""
    for region in PROD_REGIONS:
        (policy,) = [p for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy")
                     if p.name == f"{region}-gateway-secrets"]
        (read, decrypt) = json.loads(policy.inputs["policy"])["Statement"]
        names = sorted(arn.split(":secret:", 1)[1] for arn in read["Resource"])
        assert all(f":secretsmanager:{region}:" in arn for arn in read["Resource"])
        stack = sorted(n[:-7] for n in names if n.startswith("llm-platform/"))
        assert stack == sorted([*secret_names("prod", prod_plan.config.secrets.providers),
                                "llm-platform/prod/gateway/peer-key", "llm-platform/prod/gateway/redis-url"])
        assert [n[:-7] for n in names if not n.startswith("llm-platform/")] == [_ledger_secret(prod_plan, region)]
        assert decrypt["Resource"] == stack_key(prod_plan, region)


# -- first create and update ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def options() -> dict[tuple[str, str], Any]:
    """Each resource's options as the program gives them, by (type, name)."""

    from infra.plan.run import run_program
    from tests.stacks import stack_raw

    seen: dict[tuple[str, str], Any] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        seen[(args.type_, args.name)] = args.opts

    run_program(stack_raw("prod"), "prod", observe=observe)
    return seen


def test_each_gateway_starts_only_once_its_stores_and_the_peer_key_exist(options: dict[tuple[str, str], Any]) -> None:
    """The gateway reads the Redis URL and the peer key at start and refuses to start without them."""
    for region in PROD_REGIONS:
        after = {getattr(r, "_name", None) for r in options[("llm-platform:gateway:Gateway", f"{region}-gateway")]
                 .depends_on}
        assert {f"{region}-gateway-stores", "gateway-peer-key"} <= after, region


def test_an_update_keeps_the_redis_token_and_the_url_follows_the_store(options: dict[tuple[str, str], Any]) -> None:
    """GetRandomPassword draws anew at every `up`: the group keeps its first token (the engine keeps the old input
    of an ignored property), and the peer key's value is never rewritten."""
    for region in PROD_REGIONS:
        assert options[(CACHE, f"{region}-gateway-redis")].ignore_changes == ["authToken"]
        assert not options[(VERSION, f"{region}-gateway-redis-url")].ignore_changes
    assert options[(VERSION, "gateway-peer-key-value")].ignore_changes == ["secretString", "versionStages"]


class _SecondUp(PlanMocks):
    """A later `up`: GetRandomPassword draws `draw`, while each replication group's state keeps the token it was
    created with (what the engine hands back for an ignored input)."""

    STORED = "tokenTheGroupWasCreatedWith0123456789abcdefABCDEF0123456789abcd"

    def __init__(self, draw: str) -> None:
        super().__init__()
        self.draw = draw
        self.asked: list[dict[str, Any]] = []

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        if args.token == "aws:secretsmanager/getRandomPassword:getRandomPassword":
            self.asked.append(dict(args.args))
            return {"randomPassword": self.draw, "id": self.draw}, []
        return super().call(args)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        rid, state = super().new_resource(args)
        if args.typ == CACHE:
            state = {**state, "authToken": self.STORED}
        return rid, state


def _secret_string(version: Any) -> str:
    value = version.inputs["secretString"]
    return str(value["value"] if isinstance(value, dict) else value)


@pytest.mark.parametrize("draw", ["firstDrawOf64" * 4 + "abcdefghijkl", "secondDrawOf64" * 4 + "abcdefgh"])
def test_the_redis_url_carries_the_groups_stored_token_whatever_a_new_up_draws(draw: str) -> None:
    """Two `up`s drawing different passwords write the same URL: the one built from the group's own token. Built
    from the draw instead, every `up` would hand the gateways a token the group refuses."""
    from infra.plan.run import run_program
    from tests.stacks import stack_raw

    mocks = _SecondUp(draw)
    plan = run_program(stack_raw("prod"), "prod", mocks=mocks)
    for region in PROD_REGIONS:
        url = _secret_string(one(plan, VERSION, f"{region}-gateway-redis-url"))
        assert url.startswith(f"rediss://:{_SecondUp.STORED}@master.") and draw not in url, region
    # What is asked of Secrets Manager: a token ElastiCache's AUTH accepts (16-128 characters, no punctuation
    # that would need escaping in the URL: docs.aws.amazon.com/AmazonElastiCache/latest/dg/auth.html).
    tokens = [a for a in mocks.asked if a.get("passwordLength") == TOKEN_LENGTH]
    assert len(tokens) == len(PROD_REGIONS) and 16 <= TOKEN_LENGTH <= 128
    assert all(a.get("excludePunctuation") is True for a in tokens)


def test_prod_refuses_to_replace_its_stores_at_preview_and_a_preview_destroys_freely(
        options: dict[tuple[str, str], Any]) -> None:
    """A replacement of the prod ledger creates the new instance, then fails deleting the old (deletion
    protection): `protect` makes `pulumi preview` refuse it before anything is created (README says how to
    replace one deliberately). The Redis group likewise: its replacement moves the endpoint under every gateway."""
    from infra.plan.run import run_program
    from tests.stacks import stack_raw

    for region in PROD_REGIONS:
        assert options[(DB, f"{region}-gateway-ledger")].protect is True
        assert options[(CACHE, f"{region}-gateway-redis")].protect is True
    preview: dict[tuple[str, str], Any] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        preview[(args.type_, args.name)] = args.opts

    run_program(stack_raw("preview"), "preview", observe=observe)
    stores = [opts for (typ, _), opts in preview.items() if typ in (DB, CACHE)]
    assert len(stores) == 2 and not any(opts.protect for opts in stores)


def test_each_gateway_release_follows_its_regions_redis_endpoint(prod_plan: Plan) -> None:
    """The release's values carry the Redis primary endpoint the URL secret names (hashed into the pod template by
    the chart): a replaced group rolls that region's gateways and no other's."""
    releases = {r.region: r for r in prod_plan.of_type(RELEASE) if r.inputs["chart"] == str(GATEWAY_CHART)}
    for region in PROD_REGIONS:
        redis = one(prod_plan, CACHE, f"{region}-gateway-redis")
        assert releases[region].inputs["values"]["storeEndpoints"] == [redis.outputs["primaryEndpointAddress"]]


def test_a_destroy_removes_the_gateway_namespace_while_the_ebs_csi_driver_still_runs(
        options: dict[tuple[str, str], Any]) -> None:
    """Pulumi deletes a resource before what it depends on. The namespace (whose deletion waits for the spool PVCs,
    deleted with the StatefulSet: whenDeleted Delete) depends on the EBS CSI add-on and the StorageClass, so the
    driver is still there to delete each released volume; the release depends on the namespace."""
    for region in PROD_REGIONS:
        namespace = options[("kubernetes:core/v1:Namespace", f"{region}-gateway-namespace")]
        after = {getattr(r, "_name", None) for r in namespace.depends_on}
        assert {f"{region}-monitoring-ebs-csi", f"{region}-monitoring-gp3"} <= after, region
        assert namespace.custom_timeouts.delete
        release = options[(RELEASE, f"{region}-gateway")]
        assert any(getattr(r, "_name", None) == f"{region}-gateway-namespace" for r in release.depends_on)
