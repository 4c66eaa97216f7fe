"""Karpenter in every cluster: its releases render from the vendored charts, every NodePool and EC2NodeClass the
program records is valid against Karpenter's own CRDs, and create, update, failure and delete behave."""
from __future__ import annotations

import json
from typing import Any

import boto3
import pulumi
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.components.cluster import NODE_POLICIES
from infra.components.karpenter import CHART, CRD_CHART, INTERRUPTION_EVENTS, VERSION, controller_policy
from infra.components.node_pool import AMI_ALIAS, TERMINATION_GRACE_SECONDS
from infra.config import ROOT
from infra.plan.manifests import chart_directory
from infra.plan.mocks import PlanMocks
from infra.plan.run import Plan, ProgramError, run_program
from tests.charts.custom_resources import validate
from tests.charts.rendering import render
from tests.stacks import stack_raw

RELEASE = "kubernetes:helm.sh/v3:Release"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
QUEUE = "aws:sqs/queue:Queue"
RULE = "aws:cloudwatch/eventRule:EventRule"
TARGET = "aws:cloudwatch/eventTarget:EventTarget"
ACCESS_ENTRY = "aws:eks/accessEntry:AccessEntry"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
VENDORED = ROOT / "infra/plan/vendor/charts"


def _custom(plan: Plan, typ: str) -> list[dict[str, Any]]:
    return [dict(r.inputs) for r in plan.of_type(typ)]


def _karpenter(plan: Plan, region: str) -> Any:
    return next(r for r in plan.of_type(RELEASE) if r.name == f"{region}-karpenter")


# -- what it installs -----------------------------------------------------------------------------------------

def test_every_cluster_gets_karpenter_and_its_crds_at_the_pinned_version(prod_plan: Plan) -> None:
    for region in prod_plan.config.regions:
        release = _karpenter(prod_plan, region.name)
        crds = next(r for r in prod_plan.of_type(RELEASE) if r.name == f"{region.name}-karpenter-crd")
        assert (release.inputs["chart"], release.inputs["version"]) == (CHART, VERSION)
        assert (crds.inputs["chart"], crds.inputs["version"]) == (CRD_CHART, VERSION)
        # The controller chart leaves CRDs to the karpenter-crd chart, which Helm upgrades like any template.
        assert release.inputs.get("skipCrds") is True
        values = release.inputs["values"]
        assert values["settings"]["interruptionQueue"] == f"llmp-prod-{region.name}-karpenter"
        assert values["settings"]["clusterName"] == f"llmp-prod-{region.name}"
        assert values["replicas"] == 2 and values["nodeSelector"]["llm-platform/pool"] == "system"
        assert values["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
            "arn:aws:iam::123456789012:role/llm-platform/prod/")


def test_the_vendored_charts_are_the_pinned_release() -> None:
    for chart in (CHART, CRD_CHART):
        directory = chart_directory({"chart": chart, "version": VERSION})
        assert directory is not None and directory.parent == VENDORED, chart
        assert (directory / "LICENSE").is_file() and (directory / "NOTICE").is_file()
    crds = VENDORED / f"karpenter-crd-{VERSION}/templates"
    for name in ("karpenter.sh_nodepools.yaml", "karpenter.k8s.aws_ec2nodeclasses.yaml"):
        # The CRDs validated against in tests/charts/crds are the ones the chart installs.
        vendored = (ROOT / "tests/charts/crds" / name).read_text()
        assert vendored.split("spec:", 1)[1] == (crds / name).read_text().split("spec:", 1)[1], name


def test_the_controller_chart_renders_with_the_programs_values(prod_plan: Plan) -> None:
    release = _karpenter(prod_plan, "eu-west-2")
    rendered = render(VENDORED / f"karpenter-{VERSION}", dict(release.inputs["values"]), name="karpenter",
                      namespace="kube-system")
    deployment = rendered.one("Deployment", "karpenter")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "llm-platform/pool": "system"}
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["INTERRUPTION_QUEUE"] == "llmp-prod-eu-west-2-karpenter"
    assert env["CLUSTER_NAME"] == "llmp-prod-eu-west-2"
    assert "ReservedCapacity=true" in env["FEATURE_GATES"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    account = rendered.one("ServiceAccount", "karpenter")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == \
        release.inputs["values"]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
    crds = render(VENDORED / f"karpenter-crd-{VERSION}", None, name="karpenter-crd", namespace="kube-system")
    kinds = {o["spec"]["names"]["kind"] for o in crds.all("CustomResourceDefinition")}
    assert {"NodePool", "EC2NodeClass", "NodeClaim"} <= kinds


def test_a_one_node_system_group_runs_one_controller(preview_plan: Plan) -> None:
    """The chart keeps replicas on distinct nodes (required podAntiAffinity on the hostname)."""
    assert preview_plan.config.cluster.system_nodes == 1
    assert _karpenter(preview_plan, "us-east-1").inputs["values"]["replicas"] == 1


# -- the pools -------------------------------------------------------------------------------------------------

def test_every_recorded_nodepool_and_nodeclass_is_valid_against_karpenters_crds(prod_plan: Plan,
                                                                               preview_plan: Plan) -> None:
    for plan in (prod_plan, preview_plan):
        objects = _custom(plan, NODE_POOL) + _custom(plan, NODE_CLASS)
        assert len(objects) == 2 * sum(len(r.pools) for r in plan.config.regions)
        for obj in objects:
            validate(json.loads(json.dumps(obj)))


def test_a_nodepool_that_breaks_the_crd_is_caught(prod_plan: Plan) -> None:
    import jsonschema
    pool = json.loads(json.dumps(_custom(prod_plan, NODE_POOL)[0]))
    pool["spec"]["disruption"]["consolidationPolicy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(pool)
    node_class = json.loads(json.dumps(_custom(prod_plan, NODE_CLASS)[0]))
    node_class["spec"]["metadataOptions"]["httpTokens"] = "sometimes"
    with pytest.raises(jsonschema.ValidationError):
        validate(node_class)


def test_each_pool_launches_its_types_capacity_and_zones_from_a_pinned_ami(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    pools = {(r.region, r.inputs["metadata"]["name"]): r.inputs["spec"] for r in prod_plan.of_type(NODE_POOL)}
    classes = {(r.region, r.inputs["metadata"]["name"]): r.inputs["spec"] for r in prod_plan.of_type(NODE_CLASS)}
    for region in cfg.regions:
        for pool in region.pools:
            spec, node_class = pools[(region.name, pool.name)], classes[(region.name, pool.name)]
            requirements = {r["key"]: r["values"] for r in spec["template"]["spec"]["requirements"]}
            assert requirements["node.kubernetes.io/instance-type"] == pool.instance_types
            assert requirements["karpenter.sh/capacity-type"] == [pool.capacity]
            if pool.reservation:
                assert requirements["topology.k8s.aws/zone-id"] == [pool.reservation.availability_zone]
                assert node_class["capacityReservationSelectorTerms"] == [{"id": pool.reservation.id}]
                assert spec["template"]["spec"]["expireAfter"] == "Never"
            assert len(node_class["subnetSelectorTerms"]) == len(requirements["topology.k8s.aws/zone-id"])
            assert node_class["amiSelectorTerms"] == [{"alias": AMI_ALIAS}] and "@latest" not in AMI_ALIAS
            assert node_class["blockDeviceMappings"][0]["ebs"] == {
                "volumeSize": f"{pool.disk_gib}Gi", "volumeType": "gp3", "encrypted": True,
                "deleteOnTermination": True}
            assert node_class["metadataOptions"]["httpTokens"] == "required"
            assert node_class["tags"]["llm-platform:stack"] == "prod"
            assert spec["template"]["spec"]["terminationGracePeriod"] == f"{TERMINATION_GRACE_SECONDS}s"
            policy = spec["disruption"]["consolidationPolicy"]
            assert policy == ("WhenEmptyOrUnderutilized" if pool.spot else "WhenEmpty")


def test_limits_are_max_nodes_of_the_largest_type(prod_plan: Plan) -> None:
    limits = {(r.region, r.inputs["metadata"]["name"]): r.inputs["spec"]["limits"]
              for r in prod_plan.of_type(NODE_POOL)}
    assert limits[("us-east-1", "h100")] == {"nvidia.com/gpu": "16", "cpu": "384"}  # 2 x p5.48xlarge
    assert limits[("us-east-1", "batch")] == {"nvidia.com/gpu": "6", "cpu": "48"}  # 6 x g6.2xlarge's 8 vCPUs
    assert limits[("eu-north-1", "mid")] == {"nvidia.com/gpu": "16", "cpu": "192"}  # 4 x g6e.12xlarge


def test_no_gpu_managed_node_group_remains(prod_plan: Plan) -> None:
    """Two autoscalers on one pool fight: only the system node group stays a managed node group."""
    assert [g.inputs["labels"]["llm-platform/pool"] for g in prod_plan.of_type(NODE_GROUP)] == \
        ["system"] * len(prod_plan.config.regions)


# -- IAM, access, interruption --------------------------------------------------------------------------------

def test_karpenters_nodes_join_through_their_own_role_and_an_ec2_linux_access_entry(prod_plan: Plan) -> None:
    entries = [e for e in prod_plan.of_type(ACCESS_ENTRY) if e.inputs.get("type") == "EC2_LINUX"]
    assert {e.region for e in entries} == {r.name for r in prod_plan.config.regions}
    roles = {r.outputs["arn"]: r for r in prod_plan.of_type(ROLE)}
    system_roles = {g.inputs["nodeRoleArn"] for g in prod_plan.of_type(NODE_GROUP)}
    for entry in entries:
        role = roles[entry.inputs["principalArn"]]
        assert role.name.endswith("-karpenter-nodes")
        assert entry.inputs["principalArn"] not in system_roles  # EKS maps those itself
    node_classes = {r.inputs["spec"]["role"] for r in prod_plan.of_type(NODE_CLASS)}
    assert node_classes <= {r.outputs["name"] for r in roles.values() if r.name.endswith("-karpenter-nodes")}


def test_the_controller_role_trusts_only_karpenters_service_account(prod_plan: Plan) -> None:
    role = next(r for r in prod_plan.of_type(ROLE) if r.name == "us-west-2-karpenter")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    assert [v for k, v in condition.items() if k.endswith(":sub")] == [["system:serviceaccount:kube-system:karpenter"]]


def test_the_controller_policy_is_upstreams_scoped_to_its_cluster_and_region(prod_plan: Plan) -> None:
    policy = next(r for r in prod_plan.of_type(ROLE_POLICY) if r.name == "eu-north-1-karpenter")
    text = policy.inputs["policy"]
    assert len(text) < 10240  # IAM's limit on a role's inline policies
    doc = json.loads(text)
    sids = {s["Sid"]: s for s in doc["Statement"]}
    assert sids["AllowScopedDeletion"]["Condition"]["StringEquals"] == {
        "aws:ResourceTag/kubernetes.io/cluster/llmp-prod-eu-north-1": "owned"}
    assert sids["AllowRegionalReadActions"]["Condition"] == {"StringEquals": {"aws:RequestedRegion": "eu-north-1"}}
    node_role = next(r for r in prod_plan.of_type(ROLE) if r.name == "eu-north-1-karpenter-nodes")
    assert sids["AllowPassingInstanceRole"]["Resource"] == node_role.outputs["arn"]
    queue = next(q for q in prod_plan.of_type(QUEUE) if q.region == "eu-north-1")
    assert sids["AllowInterruptionQueueActions"]["Resource"] == queue.outputs["arn"]
    assert all("eu-north-1" in str(s["Resource"]) or s["Resource"] == "*" or "iam::" in str(s["Resource"])
               for s in doc["Statement"])


def test_every_interruption_event_reaches_the_encrypted_queue(prod_plan: Plan) -> None:
    for region in prod_plan.config.regions:
        queue = next(q for q in prod_plan.of_type(QUEUE) if q.region == region.name)
        assert queue.inputs["sqsManagedSseEnabled"] is True
        rules = [r for r in prod_plan.of_type(RULE) if r.region == region.name]
        patterns = sorted((p["source"], p["detail-type"]) for p in (json.loads(r.inputs["eventPattern"])
                                                                     for r in rules))
        assert patterns == sorted(([s], [d]) for s, d in INTERRUPTION_EVENTS.values())
        targets = [t for t in prod_plan.of_type(TARGET) if t.region == region.name]
        assert len(targets) == len(rules) and all(t.inputs["arn"] == queue.outputs["arn"] for t in targets)


def test_controller_policy_names_no_other_cluster() -> None:
    doc = json.dumps(controller_policy("llmp-a-us-east-1", "us-east-1", "123456789012",
                                       "arn:aws:iam::123456789012:role/n", "arn:aws:sqs:us-east-1:123456789012:q"))
    assert "llmp-a-us-east-1" in doc and "llmp-b" not in doc and "us-west-2" not in doc


# -- create, update, failure, delete ----------------------------------------------------------------------------

def _options(raw: dict[str, Any]) -> dict[tuple[str, str], pulumi.ResourceOptions]:
    seen: dict[tuple[str, str], pulumi.ResourceOptions] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        seen[(args.type_, args.name)] = args.opts

    run_program(raw, "prod", observe=observe)
    return seen


def _names(resources: Any) -> set[str]:
    return {getattr(r, "_name", "") for r in (resources or [])}


def test_pools_are_created_after_and_deleted_before_the_controller() -> None:
    """Pulumi deletes a resource before what it depends on: NodePools and EC2NodeClasses go while the controller
    still runs to drain and terminate their nodes (its finalizers wait for that)."""
    seen = _options(stack_raw("prod"))
    for (typ, name), opts in seen.items():
        if typ in (NODE_POOL, NODE_CLASS):
            region = name.split("-h100")[0].split("-mid")[0].split("-batch")[0]
            assert f"{region}-karpenter" in _names(opts.depends_on), name
        if typ == NODE_POOL:
            assert f"{name}-nodeclass" in _names(opts.depends_on), name
    controller = seen[(RELEASE, "us-east-1-karpenter")]
    assert {"us-east-1-karpenter-crd", "us-east-1-karpenter", "us-east-1-system"} <= _names(controller.depends_on)


def test_pools_are_created_after_and_deleted_before_their_nodes_role_policies() -> None:
    """A node Karpenter launches needs its role's ECR, CNI and worker policies from its first second, and keeps them
    while a destroy drains it: every NodePool and EC2NodeClass depends on each of the node role's attachments."""
    seen = _options(stack_raw("prod"))
    attachments = {name for (typ, name) in seen if typ == "aws:iam/rolePolicyAttachment:RolePolicyAttachment"}
    pools = [(name, opts) for (typ, name), opts in seen.items() if typ in (NODE_POOL, NODE_CLASS)]
    assert pools
    for name, opts in pools:
        region = name.split("-h100")[0].split("-mid")[0].split("-batch")[0]
        wanted = {a for a in attachments if a.startswith(f"{region}-karpenter-nodes-")}
        assert len(wanted) == len(NODE_POLICIES), (region, wanted)
        assert wanted <= _names(opts.depends_on), name


def test_a_pools_size_change_patches_its_nodepool_in_place() -> None:
    """Only spec changes: the NodePool keeps its name (no replacement, so its nodes are not all drained at once);
    Karpenter applies new limits and requirements to its NodeClaims as drift, within the disruption budget."""
    before = run_program(stack_raw("prod"), "prod")
    raw = stack_raw("prod")
    next(p for p in raw["regions"][0]["pools"] if p["name"] == "mid")["max_nodes"] = 3
    after = run_program(raw, "prod")
    old = next(r for r in before.of_type(NODE_POOL) if r.name == "us-east-1-mid").inputs
    new = next(r for r in after.of_type(NODE_POOL) if r.name == "us-east-1-mid").inputs
    assert (old["apiVersion"], old["kind"], old["metadata"]) == (new["apiVersion"], new["kind"], new["metadata"])
    assert old["spec"]["limits"] != new["spec"]["limits"]
    assert {k: v for k, v in old["spec"].items() if k != "limits"} == \
        {k: v for k, v in new["spec"].items() if k != "limits"}
    seen = _options(raw)
    assert not seen[(NODE_POOL, "us-east-1-mid")].replace_on_changes
    assert not seen[(NODE_POOL, "us-east-1-mid")].delete_before_replace


class RefusedNodePool(PlanMocks):
    """A cluster that refuses one NodePool (its admission, or a CRD that is not there yet)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.refused = name

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ == NODE_POOL and args.name == self.refused:
            raise RuntimeError(f"creating NodePool {args.name}: admission webhook denied the request")
        return super().new_resource(args)


def test_a_refused_nodepool_fails_only_its_own_models() -> None:
    raw = stack_raw("prod")
    mocks = RefusedNodePool("us-west-2-h100")
    with pytest.raises(ProgramError, match="denied"):
        run_program(raw, "prod", mocks=mocks)
    releases = {r.name for r in mocks.resources if r.type == RELEASE}
    assert "us-west-2-karpenter" in releases and "us-west-2-gateway" in releases
    assert "us-west-2-llama-3-3-70b" not in releases  # the h100 pool's model
    assert {"us-west-2-llama-3-1-8b", "us-west-2-qwen2-5-7b-batch", "us-east-1-llama-3-3-70b"} <= releases


# -- what AWS accepts --------------------------------------------------------------------------------------------

@mock_aws
def test_iam_and_sqs_accept_the_policies_the_program_writes(prod_plan: Plan) -> None:
    """moto's IAM validates a policy document as IAM does (elements, condition operators, ARNs, unique Sids);
    its SQS stores the queue policy and the SSE setting the program asks for."""
    iam = boto3.client("iam", region_name="us-east-1")
    role = next(r for r in prod_plan.of_type(ROLE) if r.name == "eu-west-2-karpenter")
    iam.create_role(RoleName="karpenter", Path=role.inputs["path"],
                    AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])
    policy = next(r for r in prod_plan.of_type(ROLE_POLICY) if r.name == "eu-west-2-karpenter")
    iam.put_role_policy(RoleName="karpenter", PolicyName="controller", PolicyDocument=policy.inputs["policy"])
    stored = iam.get_role_policy(RoleName="karpenter", PolicyName="controller")["PolicyDocument"]
    written = json.loads(policy.inputs["policy"])["Statement"]
    assert {s["Sid"] for s in stored["Statement"]} == {s["Sid"] for s in written}
    with pytest.raises(ClientError):  # and it would refuse a malformed one
        iam.put_role_policy(RoleName="karpenter", PolicyName="broken",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": "*",
                                 "Condition": {"NoSuchOperator": {"aws:SecureTransport": "true"}}}]}))
    queue = next(q for q in prod_plan.of_type(QUEUE) if q.region == "eu-west-2")
    sqs = boto3.client("sqs", region_name="eu-west-2")
    url = sqs.create_queue(QueueName=queue.inputs["name"], Attributes={
        "MessageRetentionPeriod": str(int(queue.inputs["messageRetentionSeconds"])),
        "SqsManagedSseEnabled": "true"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert arn == queue.outputs["arn"]  # the mock engine names it as SQS does
    queue_policy = next(p for p in prod_plan.of_type("aws:sqs/queuePolicy:QueuePolicy") if p.region == "eu-west-2")
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": queue_policy.inputs["policy"]})
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert json.loads(attributes["Policy"])["Statement"][1]["Sid"] == "DenyHTTP"
    assert attributes["SqsManagedSseEnabled"] == "true"
