"""The CrossGuard pack: built from the same controls, judging the mock run's resources as the engine hands them over."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import jsonschema
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import (
    EnforcementLevel,
    PolicyProviderResource,
    PolicyResource,
    ReportViolation,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from infra.config import load_file, stack_file
from infra.plan.run import Plan
from infra.policy.pack import CONFIG_DIR, CONFIG_SCHEMA, pack_config, policies, to_planned
from infra.policy.rules import CONTROLS, DEPLOY_CONTROLS
from tests.policy.helpers import find, mutated

PACK_DIR = Path(__file__).resolve().parents[2] / "infra" / "policy"


def _engine_props(r) -> dict:
    """A resource's properties as the engine reports them to a stack policy: inputs, outputs, tagsAll."""
    props = {**r.inputs, **r.outputs}
    if r.type.startswith("aws:"):
        props["tagsAll"] = dict(r.tags)
    return props


def _provider_of(r, providers) -> object | None:
    package = r.type.split(":")[0]
    return next((p for p in providers if p.type == f"pulumi:providers:{package}" and p.region == r.region), None)


def _urn(stack: str, r) -> str:
    return f"urn:pulumi:{stack}::llm-platform::{r.type}::{r.name}"


def crossguard_resources(stack: str, resources: list, props=_engine_props) -> list[PolicyResource]:
    providers = [r for r in resources if r.type.startswith("pulumi:providers:")]
    out = []
    for r in resources:
        provider = None if r in providers else _provider_of(r, providers)
        out.append(PolicyResource(
            r.type, unknown_checking_proxy(props(r)), _urn(stack, r), r.name, None,  # resource options: unused
            PolicyProviderResource(provider.type, unknown_checking_proxy(dict(provider.inputs)),
                                   _urn(stack, provider), provider.name) if provider else None,
            None, [], {}))
    return out


def run_pack(plan: Plan, resources: list | None = None, stack: str | None = None) -> dict[str, list[str]]:
    """Each policy's violations, the policy called exactly as the analyzer calls it."""
    config = pack_config(plan.config)
    records = crossguard_resources(stack or plan.stack, resources if resources is not None else plan.resources)
    out = {}
    for policy in policies():
        found: list[str] = []
        policy.validate(StackValidationArgs(records, config[policy.name]), collect_into(found))
        out[policy.name] = found
    return out


def collect_into(found: list[str]) -> ReportViolation:
    """A report_violation callback that keeps each message in `found`."""
    def report(msg: str, urn: str | None = None) -> None:
        found.append(msg)
    return report


def test_pack_has_one_mandatory_stack_policy_per_control():
    pack = policies()
    assert [p.name for p in pack] == [c.id for c in [*CONTROLS, *DEPLOY_CONTROLS]]
    assert all(isinstance(p, StackValidationPolicy) for p in pack)
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in pack)
    assert all(p.config_schema is CONFIG_SCHEMA for p in pack)


def test_pack_sees_the_same_regions_as_the_offline_plan(prod_plan):
    records = [to_planned(r) for r in crossguard_resources("prod", prod_plan.resources)]
    assert [(r.type, r.name, r.region) for r in records] == \
        [(r.type, r.name, r.region) for r in prod_plan.resources]


def test_pack_passes_prod_and_preview(stack_plan):
    """Every control passes; prod, as shipped, is blocked only for its example reservation ids (next test)."""
    violations = run_pack(stack_plan)
    assert {c.id: violations[c.id] for c in CONTROLS} == {c.id: [] for c in CONTROLS}
    if stack_plan.stack == "preview":
        assert violations["no-example-values"] == []


def test_a_real_deploy_of_shipped_prod_is_blocked_until_its_reservations_are_its_own(prod_plan):
    """The offline plan judges the example stack as shipped; a real preview must refuse to start an update that
    EC2 would fail in the middle, on reservation ids no account has."""
    reserved = [r for r in prod_plan.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
                if r.inputs["spec"].get("capacityReservationSelectorTerms")]
    assert len(reserved) == len(prod_plan.config.regions)  # one reserved H100 pool per region
    blocked = [v for v in run_pack(prod_plan)["no-example-values"] if "reservation" in v]  # the image: its own test
    assert len(blocked) == len(reserved)
    assert all("the example reservation id the stack file ships" in v for v in blocked)

    def own_reservations(rs):
        for i, r in enumerate(r for r in rs if r.type == "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
                              and r.inputs["spec"].get("capacityReservationSelectorTerms")):
            r.inputs["spec"]["capacityReservationSelectorTerms"] = [{"id": f"cr-0f1e2d3c4b5a6978{i}"}]
    assert [v for v in run_pack(prod_plan, mutated(prod_plan, own_reservations))["no-example-values"]
            if "reservation" in v] == []


def test_pack_blocks_a_stack_missing_a_health_check_and_a_taint(prod_plan):
    """Program bugs (simulated): the same broken resources the offline tests use, through the pack."""
    def break_it(rs):
        rs.remove(find(rs, "aws:route53/healthCheck:HealthCheck", "llm-platform-dns-us-west-2"))
        find(rs, "kubernetes:karpenter.sh/v1:NodePool", "eu-north-1-h100").inputs["spec"]["template"]["spec"].pop(
            "taints")
    violations = run_pack(prod_plan, mutated(prod_plan, break_it))
    assert violations["failover-topology"] == [
        f"Route53 record llm-platform-dns-us-west-2-{record} for the gateway in us-west-2 has no health check: DNS "
        "keeps sending traffic to us-west-2 when it is down" for record in ("latency", "zone-latency")]
    assert violations["gpu-pool-hygiene"] == [
        "GPU NodePool eu-north-1-h100 in eu-north-1 lacks the taint nvidia.com/gpu=present:NoSchedule: any pod "
        "could land on its GPUs"]
    assert not any(violations[c] for c in ("budget-cap", "region-residency", "secret-scope", "cluster-hardening"))


def test_pack_judges_a_pr_stack_with_the_preview_config(preview_plan):
    """A pr-<n> stack is the preview stack under another name: the pack reads the name from the providers' tags,
    so its budget filter must name pr-42, not preview."""
    def rename(rs):
        for r in rs:
            if r.type == "pulumi:providers:aws":
                tags = json.loads(r.inputs["defaultTags"])
                tags["tags"]["llm-platform:stack"] = "pr-42"
                r.inputs["defaultTags"] = json.dumps(tags)
            elif r.type.startswith("aws:"):  # what the renamed default tags stamp on each resource
                r.tags["llm-platform:stack"] = "pr-42"
            if r.type != "pulumi:providers:aws":  # tags the program writes out itself (launch templates, NLBs)
                text = json.dumps(r.inputs).replace('"llm-platform:stack": "preview"', '"llm-platform:stack": "pr-42"')
                r.inputs = json.loads(text.replace("llm-platform:stack=preview", "llm-platform:stack=pr-42"))
    violations = run_pack(preview_plan, mutated(preview_plan, rename), stack="pr-42")
    assert violations["budget-cap"] == [
        "no AWS Budgets budget covers stack pr-42: expected a COST budget filtered on TagKeyValue "
        "user:llm-platform:stack$pr-42"]


def test_values_unknown_during_preview_stop_the_policy_instead_of_passing_it(preview_plan):
    """During a first `pulumi preview`, ARNs are unknown: a policy that needs one raises UnknownValueError,
    which CrossGuard reports as "can't run policy during preview" rather than a silent pass."""
    def unknown_key(r):
        props = _engine_props(r)
        if r.type == "aws:secretsmanager/secret:Secret":
            props["kmsKeyId"] = UNKNOWN_STRING_VALUE
        return props
    records = crossguard_resources("preview", preview_plan.resources, props=unknown_key)
    secret_scope = next(p for p in policies() if p.name == "secret-scope")
    with pytest.raises(UnknownValueError):
        secret_scope.validate(StackValidationArgs(records, pack_config(preview_plan.config)["secret-scope"]),
                              lambda msg, urn=None: None)


@pytest.mark.parametrize("stack", ["prod", "preview"])
def test_pack_config_files_match_the_stacks_and_the_schema(stack):
    on_disk = json.loads((CONFIG_DIR / f"{stack}.json").read_text())
    assert on_disk == pack_config(load_file(stack_file(stack), stack)), \
        f"infra/policy/config/{stack}.json is stale: regenerate it with `python -m infra.policy.pack`"
    schema = {"type": "object", "properties": CONFIG_SCHEMA.properties, "required": CONFIG_SCHEMA.required}
    for policy_config in on_disk.values():
        jsonschema.validate(policy_config, schema)


def test_the_pack_entry_point_serves_the_analyzer_protocol(preview_plan):
    """Start infra/policy/__main__.py the way the Pulumi CLI does, then speak the analyzer gRPC protocol to it:
    list the policies, configure them with config/preview.json, and analyze the preview stack."""
    server = subprocess.Popen([sys.executable, "__main__.py"], cwd=PACK_DIR, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().strip())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            analyzer = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert [p.name for p in info.policies] == [c.id for c in [*CONTROLS, *DEPLOY_CONTROLS]]
            config = json.loads((CONFIG_DIR / "preview.json").read_text())
            request = analyzer_pb2.ConfigureAnalyzerRequest()
            for name, values in config.items():
                request.policyConfig[name].properties.update(values)
                request.policyConfig[name].enforcementLevel = analyzer_pb2.MANDATORY
            analyzer.Configure(request, timeout=30)

            def proto(r):
                providers = [p for p in preview_plan.resources if p.type.startswith("pulumi:providers:")]
                provider = _provider_of(r, providers)
                resource = analyzer_pb2.AnalyzerResource(
                    type=r.type, urn=_urn("preview", r), name=r.name,
                    properties=json_format.ParseDict(_engine_props(r), struct_pb2.Struct()))
                if provider and not r.type.startswith("pulumi:providers:"):
                    resource.provider.CopyFrom(analyzer_pb2.AnalyzerProviderResource(
                        type=provider.type, urn=_urn("preview", provider), name=provider.name,
                        properties=json_format.ParseDict(dict(provider.inputs), struct_pb2.Struct())))
                return resource

            clean = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(
                resources=[proto(r) for r in preview_plan.resources]), timeout=60)
            assert list(clean.diagnostics) == []
            broken = mutated(preview_plan, lambda rs: rs.remove(find(rs, "aws:budgets/budget:Budget")))
            blocked = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[proto(r) for r in broken]),
                                            timeout=60)
            assert [(d.policyName, d.enforcementLevel) for d in blocked.diagnostics] == [
                ("budget-cap", analyzer_pb2.MANDATORY)]
            assert "no AWS Budgets budget covers stack preview" in blocked.diagnostics[0].message
    finally:
        server.kill()
        server.wait(timeout=10)


GATEWAY_IMAGE_BUILT = "sha256:" + "5e" * 32


def test_a_real_deploy_of_prod_is_blocked_until_its_gateway_image_is_built(prod_plan: Plan, preview_plan: Plan) -> None:
    """The stack file ships the all-zero digest ("not built yet"): the offline plan judges it as shipped, a real
    preview of prod refuses it for every region's gateway, and passes once the digest is a built image's. Previews
    pull prod's image and are not judged on it."""
    gateway_regions = [r.region for r in prod_plan.of_type("kubernetes:helm.sh/v3:Release")
                       if r.inputs.get("name") == "gateway"]
    blocked = [v for v in run_pack(prod_plan)["no-example-values"] if "image digest" in v]
    assert len(blocked) == len(gateway_regions) == len(prod_plan.config.regions)
    assert all("llm-platform:gateway.image_digest" in v for v in blocked)

    def built(rs):
        for r in rs:
            if r.type == "kubernetes:helm.sh/v3:Release" and r.inputs.get("name") == "gateway":
                assert r.inputs["values"]["image"]["digest"] == "sha256:" + "0" * 64
                r.inputs["values"]["image"]["digest"] = GATEWAY_IMAGE_BUILT
    assert not [v for v in run_pack(prod_plan, mutated(prod_plan, built))["no-example-values"] if "image digest" in v]
    assert run_pack(preview_plan)["no-example-values"] == []
