"""The gateway's NLB: the AWS Load Balancer Controller per region (release, IRSA role, policy), the order it is
created and destroyed in relative to the gateway's Service, and the DNS names that point at the NLB."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest
from moto import mock_aws
from pulumi.runtime.rpc import UNKNOWN

from infra.chart_values import GATEWAY_NAMESPACE
from infra.components.gateway import (
    NAMESPACE_DELETE_TIMEOUT,
    READINESS_GATE_LABEL,
    TARGET_HEALTHY_SECONDS,
    rollout_timeout_seconds,
)
from infra.components.load_balancer import (
    CONTROLLER_CHART,
    CONTROLLER_NAMESPACE,
    IAM_POLICY_FILE,
    _hostname,
    controller_service_account_subject,
    region_fence,
    upstream_policy,
)
from infra.components.network import public_subnet_cidrs
from infra.config import ROOT
from infra.plan.manifests import VENDORED_CHARTS
from infra.plan.mocks import PlanMocks
from infra.plan.run import Plan, run_program
from tests.charts.rendering import KUBE_VERSION, render
from tests.stacks import stack_raw

RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
RECORD = "aws:route53/record:Record"
PROD_REGIONS = ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2"]
# IAM quotas (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html): a role's inline
# policies together, whitespace not counted.
ROLE_INLINE_POLICY_CHARS = 10_240


def controllers(plan: Plan) -> dict[str, object]:
    return {r.region: r for r in plan.of_type(RELEASE) if r.inputs["chart"] == CONTROLLER_CHART[0]}


# -- the release ----------------------------------------------------------------------------------

def test_each_region_runs_the_pinned_controller_with_two_replicas_on_the_system_nodes(prod_plan: Plan) -> None:
    clusters = {c.region: c for c in prod_plan.of_type("aws:eks/cluster:Cluster")}
    vpcs = {v.region: v for v in prod_plan.of_type("aws:ec2/vpc:Vpc")}
    found = controllers(prod_plan)
    assert sorted(found) == sorted(PROD_REGIONS)
    for region, release in found.items():
        assert (release.inputs["version"], release.inputs["repositoryOpts"]["repo"]) == CONTROLLER_CHART[1:]
        assert release.inputs["namespace"] == CONTROLLER_NAMESPACE and release.inputs["atomic"] is True
        values = release.inputs["values"]
        assert values["clusterName"] == clusters[region].inputs["name"]
        assert (values["region"], values["vpcId"]) == (region, vpcs[region].outputs["id"])
        assert values["replicaCount"] == 2 and values["nodeSelector"] == {"llm-platform/pool": "system"}
        assert values["createIngressClassResource"] is False
        # No webhook that every Service in the cluster waits on (its failurePolicy is Fail).
        assert values["enableServiceMutatorWebhook"] is False


def test_the_vendored_chart_is_the_pinned_version_and_renders_only_built_in_kinds(prod_plan: Plan) -> None:
    """No custom resource (IngressClassParams, TargetGroupBinding) is rendered, so none needs a CRD here; every
    object is valid Kubernetes 1.32, strictly. The CRDs themselves ship in the chart's crds/ directory."""
    chart = VENDORED_CHARTS / f"{CONTROLLER_CHART[0]}-{CONTROLLER_CHART[1]}"
    assert f"version: {CONTROLLER_CHART[1]}" in (chart / "Chart.yaml").read_text()
    assert (chart / "LICENSE").is_file()
    release = controllers(prod_plan)["us-east-1"]
    values = json.loads(json.dumps(release.inputs["values"]))
    rendered = render(chart, values, name=release.inputs["name"], namespace=CONTROLLER_NAMESPACE)
    kinds = sorted({o["kind"] for o in rendered.objects})
    assert "Deployment" in kinds and "MutatingWebhookConfiguration" in kinds
    hooks = [h["name"] for w in rendered.all("MutatingWebhookConfiguration") for h in w["webhooks"]]
    assert "mservice.elbv2.k8s.aws" not in hooks and "mpod.elbv2.k8s.aws" in hooks
    assert not {"IngressClass", "IngressClassParams", "TargetGroupBinding"} & set(kinds)
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["serviceAccount"][
        "annotations"]["eks.amazonaws.com/role-arn"]
    assert f"system:serviceaccount:{CONTROLLER_NAMESPACE}:{account['metadata']['name']}" == \
        controller_service_account_subject()


# -- its role -------------------------------------------------------------------------------------

def test_the_controllers_role_trusts_only_its_service_account_in_its_own_cluster(prod_plan: Plan) -> None:
    oidc = {o.outputs.get("arn") for o in prod_plan.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")}
    roles = [r for r in prod_plan.of_type(ROLE) if r.name.endswith("-lb-controller")]
    assert len(roles) == len(PROD_REGIONS)
    for role in roles:
        region = role.name.removesuffix("-lb-controller")
        (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        condition = statement["Condition"]["StringEquals"]
        issuer = next(k for k in condition if k.endswith(":sub")).removesuffix(":sub")
        assert condition[f"{issuer}:sub"] == [controller_service_account_subject()]
        assert condition[f"{issuer}:aud"] == "sts.amazonaws.com"
        federated = statement["Principal"]["Federated"]
        assert federated in oidc and f"/oidc.eks.{region}.amazonaws.com/" in federated


def test_the_role_carries_upstreams_policy_verbatim_and_its_region_fence(prod_plan: Plan) -> None:
    published = json.loads(IAM_POLICY_FILE.read_text())
    for region in PROD_REGIONS:
        grants = next(p for p in prod_plan.of_type(ROLE_POLICY) if p.name == f"{region}-lb-controller")
        fence = next(p for p in prod_plan.of_type(ROLE_POLICY) if p.name == f"{region}-lb-controller-region")
        assert json.loads(grants.inputs["policy"]) == published == upstream_policy()
        assert json.loads(fence.inputs["policy"]) == region_fence(region)
        size = sum(len("".join(p.inputs["policy"].split())) for p in (grants, fence))
        assert size <= ROLE_INLINE_POLICY_CHARS, size


def test_the_vendored_policy_is_the_one_published_for_the_pinned_version() -> None:
    """The attribution names the tag; the policy is upstream's file, untouched, and grants nothing to read secrets."""
    attribution = (ROOT / "infra/plan/vendor/README.md").read_text()
    assert "docs/install/iam_policy.json" in attribution and f"v{CONTROLLER_CHART[1]}" in attribution
    assert (IAM_POLICY_FILE.parent / "LICENSE").is_file()
    actions = {a for s in upstream_policy()["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                                     else s["Action"])}
    assert not [a for a in actions if a.split(":")[0] in {"secretsmanager", "kms", "s3", "ssm"}]


@mock_aws
def test_iam_accepts_the_controllers_policy_documents() -> None:
    """moto's IAM validates both documents as IAM's PutRolePolicy does (grammar, effects, condition blocks)."""
    iam = boto3.client("iam", region_name="us-east-1")
    role = iam.create_role(RoleName="lb-controller", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]
    iam.put_role_policy(RoleName="lb-controller", PolicyName="grants", PolicyDocument=json.dumps(upstream_policy()))
    iam.put_role_policy(RoleName="lb-controller", PolicyName="region",
                        PolicyDocument=json.dumps(region_fence("eu-north-1")))
    names = iam.list_role_policies(RoleName="lb-controller")["PolicyNames"]
    assert sorted(names) == ["grants", "region"] and role["Arn"].endswith(":role/lb-controller")


# -- order: controller before the Service, Service gone before the controller ---------------------

def _options_seen() -> dict[tuple[str, str], pulumi.ResourceOptions]:
    seen: dict[tuple[str, str], pulumi.ResourceOptions] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        seen[(args.type_, args.name)] = args.opts

    run_program(stack_raw("prod"), "prod", observe=observe)
    return seen


@pytest.fixture(scope="module")
def options() -> dict[tuple[str, str], pulumi.ResourceOptions]:
    return _options_seen()


def _names(resources: object) -> set[str]:
    return {r._name for r in (resources or [])}  # type: ignore[attr-defined]


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_the_gateways_service_depends_on_the_controller_so_a_destroy_removes_it_first(options, region) -> None:
    """Create: the controller (and its webhook) serves before the gateway's LoadBalancer Service exists. Destroy:
    Pulumi deletes a dependent before what it depends on, and an atomic release's delete waits until its objects
    are gone, so the Service (held by the controller's finalizer until the NLB is deleted) is gone before the
    controller is uninstalled: no NLB leaks."""
    gateway = options[(RELEASE, f"{region}-gateway")]
    assert f"{region}-aws-load-balancer-controller" in _names(gateway.depends_on)
    controller = options[(RELEASE, f"{region}-aws-load-balancer-controller")]
    assert {f"{region}-lb-controller", f"{region}-lb-controller-region"} <= _names(controller.depends_on)
    component = options[("llm-platform:cluster:LoadBalancerController", region)]
    assert f"{region}-system" in _names(component.depends_on)  # its pods run on the system nodes


# -- readiness gates: the gateway's namespace ------------------------------------------------------

NAMESPACE = "kubernetes:core/v1:Namespace"


def test_the_controllers_pod_webhook_selects_the_labelled_namespace_even_without_the_service_webhook(
        prod_plan: Plan) -> None:
    """`mpod.elbv2.k8s.aws` (templates/webhook.yaml@3.5.0) is rendered with the Service webhook off, selects
    namespaces by the readiness-gate label, and ignores its own failures (a pod created while no controller replica
    answers gets no gate and is Ready on its probe alone, as before: a degraded rollout, never a blocked scale-up)."""
    chart = VENDORED_CHARTS / f"{CONTROLLER_CHART[0]}-{CONTROLLER_CHART[1]}"
    release = controllers(prod_plan)["us-east-1"]
    values = json.loads(json.dumps(release.inputs["values"]))
    rendered = render(chart, values, name=release.inputs["name"], namespace=CONTROLLER_NAMESPACE)
    (hook,) = [h for w in rendered.all("MutatingWebhookConfiguration") for h in w["webhooks"]
               if h["name"] == "mpod.elbv2.k8s.aws"]
    (label, value), = READINESS_GATE_LABEL.items()
    assert hook["namespaceSelector"] == {"matchExpressions": [{"key": label, "operator": "In", "values": [value]}]}
    assert hook["failurePolicy"] == "Ignore"
    assert [r["operations"] for r in hook["rules"]] == [["CREATE"]] and hook["rules"][0]["resources"] == ["pods"]


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_the_program_owns_the_gateways_namespace_labelled_for_readiness_gates(prod_plan: Plan, region) -> None:
    (namespace,) = [n for n in prod_plan.of_type(NAMESPACE) if n.name == f"{region}-gateway-namespace"]
    metadata = namespace.inputs["metadata"]
    assert metadata["name"] == GATEWAY_NAMESPACE
    assert metadata["labels"] == READINESS_GATE_LABEL == {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}
    release = next(r for r in prod_plan.of_type(RELEASE) if r.name == f"{region}-gateway")
    # Helm neither labels nor deletes a namespace it creates: the release must not make its own.
    assert release.inputs["namespace"] == GATEWAY_NAMESPACE and not release.inputs.get("createNamespace")


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_the_release_comes_after_its_namespace_and_the_namespace_goes_before_the_controller(options, region) -> None:
    """Create: namespace (labelled), then the release, whose pods the controller's webhook (serving: its atomic
    release is done) gates. Destroy, in reverse: the release (its atomic delete waits for its objects), then the
    namespace (waiting up to its delete timeout for the pods' drain), then the controller, still there to lift its
    finalizers on the Service and the TargetGroupBinding in that namespace, so nothing is left terminating."""
    gateway = options[(RELEASE, f"{region}-gateway")]
    assert {f"{region}-gateway-namespace", f"{region}-aws-load-balancer-controller"} <= _names(gateway.depends_on)
    namespace = options[(NAMESPACE, f"{region}-gateway-namespace")]
    assert f"{region}-aws-load-balancer-controller" in _names(namespace.depends_on)
    assert namespace.custom_timeouts is not None and namespace.custom_timeouts.delete == NAMESPACE_DELETE_TIMEOUT


def test_the_namespace_delete_timeout_outlasts_the_gateways_drain(prod_plan: Plan) -> None:
    minutes = int(NAMESPACE_DELETE_TIMEOUT.removesuffix("m"))
    for region in PROD_REGIONS:
        release = next(r for r in prod_plan.of_type(RELEASE) if r.name == f"{region}-gateway")
        rendered = render(ROOT / "charts/gateway", json.loads(json.dumps(release.inputs["values"])),
                          name=release.inputs["name"], namespace=GATEWAY_NAMESPACE)
        grace = rendered.pod_spec()["terminationGracePeriodSeconds"]
        assert minutes * 60 >= 2 * grace, (region, grace)


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_the_release_waits_long_enough_for_every_replica_to_become_a_healthy_target(prod_plan: Plan, region) -> None:
    """With readiness gates a new pod counts only once the NLB reports it healthy; Pulumi's default 300 s would
    roll an atomic release back mid-rollout."""
    release = next(r for r in prod_plan.of_type(RELEASE) if r.name == f"{region}-gateway")
    values = release.inputs["values"]
    timeout = release.inputs["timeout"]
    assert timeout == rollout_timeout_seconds(values)
    replicas = max(values["replicaCount"], values["autoscaling"]["maxReplicas"])
    assert timeout >= replicas * TARGET_HEALTHY_SECONDS > 300


@pytest.mark.parametrize("region", PROD_REGIONS)
def test_dns_reads_the_nlb_hostname_from_the_gateways_public_service_after_its_release(options, region) -> None:
    read = options[("kubernetes:core/v1:Service", f"{region}-gateway-lb")]
    # An Output of the release (a literal id with depends_on would be read at preview, before the Service exists).
    assert isinstance(read.id, pulumi.Output)
    assert _names(read.depends_on) == {f"{region}-gateway"}


class _ServiceReads(PlanMocks):
    """Records the id of every Service the program reads. `creating_gateway` plays `pulumi preview` of a stack whose
    gateway release is being created (or changed): the provider leaves its status unknown until the apply."""

    def __init__(self, creating_gateway: bool) -> None:
        super().__init__()
        self.creating_gateway = creating_gateway
        self.service_reads: dict[str, str] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ == "kubernetes:core/v1:Service" and args.resource_id:
            self.service_reads[args.name] = args.resource_id
        rid, state = super().new_resource(args)
        if self.creating_gateway and args.typ == RELEASE and args.inputs.get("name") == "gateway":
            state = {**state, "status": UNKNOWN}
        return rid, state


def test_preview_skips_reading_the_service_while_the_gateway_release_is_created() -> None:
    """On the prod stack whose cluster exists but whose gateway-public Service does not yet, preview must not read
    the Service: its id derives from the release's status, unknown while the release is created or changed, and the
    engine skips reads of unknown ids (pulumi/pulumi#1124) instead of failing "resource ... does not exist"."""
    mocks = _ServiceReads(creating_gateway=True)
    run_program(stack_raw("prod"), "prod", mocks=mocks, preview=True)
    assert mocks.service_reads == {f"{region}-gateway-lb": UNKNOWN for region in PROD_REGIONS}


def test_up_reads_the_service_in_the_namespace_the_release_reports() -> None:
    mocks = _ServiceReads(creating_gateway=False)
    run_program(stack_raw("prod"), "prod", mocks=mocks)
    assert mocks.service_reads == {f"{region}-gateway-lb": "llm-gateway/gateway-public" for region in PROD_REGIONS}


def test_every_regional_name_points_at_its_own_regions_nlb(prod_plan: Plan) -> None:
    direct = {r.name.removesuffix("-direct").rsplit("-dns-", 1)[-1]: r for r in prod_plan.of_type(RECORD)
              if r.name.endswith("-direct")}
    assert sorted(direct) == sorted(PROD_REGIONS)
    for region, record in direct.items():
        (hostname,) = record.inputs["records"]
        assert hostname.endswith(f".elb.{region}.amazonaws.com"), hostname


def test_a_service_without_its_load_balancer_yet_fails_naming_it() -> None:
    status = k8s.core.v1.outputs.ServiceStatus(load_balancer=k8s.core.v1.outputs.LoadBalancerStatus(ingress=[]))
    with pytest.raises(ValueError, match="Service llm-gateway/gateway-public has no load balancer hostname"):
        _hostname(status, "llm-gateway/gateway-public")


# -- where the NLB sits ---------------------------------------------------------------------------

@pytest.mark.parametrize("region", PROD_REGIONS)
def test_the_nlb_sits_in_the_tagged_public_subnets_the_gateway_admits(prod_plan: Plan, region) -> None:
    """The controller places an internet-facing NLB in subnets tagged kubernetes.io/role/elb
    (docs/deploy/subnet_discovery.md@v3.5.0); the gateway's NetworkPolicy admits exactly those blocks."""
    public = sorted(s.inputs["cidrBlock"] for s in prod_plan.of_type("aws:ec2/subnet:Subnet")
                    if s.region == region and s.inputs["tags"].get("kubernetes.io/role/elb") == "1")
    assert public == sorted(public_subnet_cidrs(prod_plan.config.vpc_cidr(region)))
    gateway = next(r for r in prod_plan.of_type(RELEASE) if r.name == f"{region}-gateway")
    assert gateway.inputs["values"]["networkPolicy"]["loadBalancerCidrs"] == public_subnet_cidrs(
        prod_plan.config.vpc_cidr(region))


def test_no_ingress_nginx_is_left() -> None:
    assert not list(VENDORED_CHARTS.glob("ingress-nginx-*"))
    assert not Path(ROOT / "charts/gateway/templates/ingress.yaml").exists()
    assert not Path(ROOT / "charts/vllm/templates/ingress.yaml").exists()
