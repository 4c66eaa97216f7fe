"""The Autoscaling component (KEDA and metrics-server) as Pulumi's mock engine sees the program create it, and the
vendored charts it installs rendered by real Helm with the values it records."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
import yaml

from infra.chart_values import vllm_values
from infra.components.autoscaling import (
    HA_REPLICAS,
    KEDA,
    KEDA_NAMESPACE,
    METRICS_SERVER,
    METRICS_SERVER_NAMESPACE,
    PROMETHEUS_URL,
)
from infra.components.cluster import SYSTEM_POOL
from infra.config import ROOT, ConfigError, parse
from infra.plan.manifests import VENDORED_CHARTS
from infra.plan.run import Plan, run_program
from infra.scheduling import POOL_LABEL
from tests.charts.rendering import Rendered, render
from tests.stacks import stack_raw

RELEASE = "kubernetes:helm.sh/v3:Release"
COMPONENT = "llm-platform:cluster:Autoscaling"
KEDA_DEPLOYMENTS = {"keda-operator", "keda-operator-metrics-apiserver", "keda-admission-webhooks"}


def _releases(plan: Plan, chart: str) -> dict[str, object]:
    return {r.region: r for r in plan.of_type(RELEASE) if r.inputs["chart"] == chart}


def _rendered(plan: Plan, chart: tuple[str, str, str]) -> Rendered:
    release = next(iter(_releases(plan, chart[0]).values()))
    inputs = release.inputs  # type: ignore[attr-defined]
    return render(VENDORED_CHARTS / f"{chart[0]}-{chart[1]}", inputs["values"], name=inputs["name"],
                  namespace=inputs["namespace"])


@pytest.fixture(scope="module")
def keda(prod_plan: Plan) -> Rendered:
    return _rendered(prod_plan, KEDA)


@pytest.fixture(scope="module")
def metrics_server(prod_plan: Plan) -> Rendered:
    return _rendered(prod_plan, METRICS_SERVER)


# --- first create: in every cluster, pinned, before what needs it ----------------------------------------------

def test_every_cluster_gets_keda_and_metrics_server_at_their_pinned_versions(prod_plan: Plan) -> None:
    regions = {r.name for r in prod_plan.config.regions}
    for (chart, version, repo), namespace in ((KEDA, KEDA_NAMESPACE), (METRICS_SERVER, METRICS_SERVER_NAMESPACE)):
        releases = _releases(prod_plan, chart)
        assert set(releases) == regions, chart
        for release in releases.values():
            inputs = release.inputs  # type: ignore[attr-defined]
            assert (inputs["version"], inputs["repositoryOpts"]["repo"]) == (version, repo)
            assert inputs["namespace"] == namespace and inputs["atomic"] is True
            # The offline plan renders exactly this version: its vendored copy, with its licence.
            vendored = VENDORED_CHARTS / f"{chart}-{version}"
            pinned = yaml.safe_load((vendored / "Chart.yaml").read_text())
            assert (pinned["name"], str(pinned["version"])) == (chart, version)
            assert (vendored / "LICENSE").is_file()
            assert f"`charts/{chart}-{version}`" in (VENDORED_CHARTS.parent / "README.md").read_text()


def _observed(stack: str) -> dict[str, pulumi.ResourceOptions]:
    seen: dict[str, pulumi.ResourceOptions] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        seen[f"{args.type_} {args.name}"] = args.opts

    run_program(stack_raw(stack), stack, observe=observe)
    return seen


def _names(resources: object) -> set[str]:
    return {getattr(d, "_name", "") for d in (resources or [])}  # type: ignore[attr-defined]


def test_model_and_gateway_releases_wait_for_kedas_crds_and_webhook() -> None:
    """A ScaledObject applied before KEDA's CRD exists fails the release; one applied before the webhook is up
    skips KEDA's checks (failurePolicy Ignore)."""
    seen = _observed("preview")
    region = stack_raw("preview")["regions"][0]["name"]
    models = [o for key, o in seen.items() if key.startswith("llm-platform:serving:ModelServing ")]
    gateways = [o for key, o in seen.items() if key.startswith("llm-platform:gateway:Gateway ")]
    assert models and gateways
    for opts in [*models, *gateways]:
        assert region in _names(opts.depends_on)
        assert any(type(d).__name__ == "Autoscaling" for d in opts.depends_on or [])  # type: ignore[union-attr]


def test_the_releases_are_children_of_the_component_and_wait_for_the_system_nodes() -> None:
    seen = _observed("preview")
    component = next(o for key, o in seen.items() if key.startswith(f"{COMPONENT} "))
    assert any("system" in n for n in _names(component.depends_on)), _names(component.depends_on)
    for chart in (KEDA[0], METRICS_SERVER[0]):
        opts = next(o for key, o in seen.items() if key.startswith(RELEASE) and key.endswith(f"-{chart}"))
        assert type(opts.parent).__name__ == "Autoscaling"
        assert opts.provider is not None  # the region's cluster, never an ambient kubeconfig


# --- what runs: HA on the system nodes ----------------------------------------------------------------------------

def test_keda_runs_two_of_each_component_on_the_system_nodes_with_disruption_budgets(keda: Rendered) -> None:
    deployments = {d["metadata"]["name"]: d for d in keda.all("Deployment")}
    assert set(deployments) == KEDA_DEPLOYMENTS
    for name, d in deployments.items():
        assert d["spec"]["replicas"] == HA_REPLICAS, name
        assert d["spec"]["template"]["spec"]["nodeSelector"][POOL_LABEL] == SYSTEM_POOL, name
        preferred = d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    budgets = {p["metadata"]["name"]: p["spec"] for p in keda.all("PodDisruptionBudget")}
    assert len(budgets) == 3 and all(b["minAvailable"] == 1 for b in budgets.values())


def test_metrics_server_runs_two_replicas_on_the_system_nodes_behind_the_resource_metrics_api(
        metrics_server: Rendered) -> None:
    (deployment,) = metrics_server.all("Deployment")
    assert deployment["spec"]["replicas"] == HA_REPLICAS
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {POOL_LABEL: SYSTEM_POOL}
    (api,) = metrics_server.all("APIService")
    assert api["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    (budget,) = metrics_server.all("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1


def test_keda_serves_the_external_metrics_api_and_admits_scaled_objects(keda: Rendered) -> None:
    assert [a["metadata"]["name"] for a in keda.all("APIService")] == ["v1beta1.external.metrics.k8s.io"]
    (webhook,) = keda.all("ValidatingWebhookConfiguration")
    rules = {r for w in webhook["webhooks"] for rule in w["rules"] for r in rule["resources"]}
    assert "scaledobjects" in rules


# --- update and deletion: CRDs move with the chart, and outlive it ----------------------------------------------

def test_kedas_crds_are_chart_templates_that_helm_upgrades_and_keeps_on_uninstall(keda: Rendered) -> None:
    """Templates (not crds/): `helm upgrade` applies a new CRD version with the chart. The keep policy stops an
    uninstall from deleting the CRDs and, through them, every ScaledObject in the cluster."""
    crds = {c["metadata"]["name"]: c for c in keda.all("CustomResourceDefinition")}
    assert {"scaledobjects.keda.sh", "scaledjobs.keda.sh", "triggerauthentications.keda.sh",
            "clustertriggerauthentications.keda.sh"} <= set(crds)
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
    assert not (VENDORED_CHARTS / f"{KEDA[0]}-{KEDA[1]}" / "crds").exists()


def test_the_crds_the_chart_specs_validate_against_are_the_ones_keda_installs(keda: Rendered) -> None:
    vendored = Path(ROOT / "tests/charts/crds/scaledobjects.keda.sh.yaml")
    ours = yaml.safe_load(vendored.read_text())
    installed = next(c for c in keda.all("CustomResourceDefinition")
                     if c["metadata"]["name"] == ours["metadata"]["name"])
    assert ours["spec"] == installed["spec"]


# --- the one Prometheus -----------------------------------------------------------------------------------------

def test_every_scaled_release_queries_the_in_cluster_prometheus(prod_plan: Plan) -> None:
    scaled = [r for r in prod_plan.of_type(RELEASE) if (r.inputs["values"].get("autoscaling") or {}).get("enabled")]
    assert {r.inputs["name"] for r in scaled} >= {"gateway", "vllm-qwen2-5-7b-batch"}
    for release in scaled:
        assert release.inputs["values"]["autoscaling"]["prometheus"]["serverAddress"] == PROMETHEUS_URL
    assert PROMETHEUS_URL == "http://prometheus-stack-prometheus.monitoring.svc:9090"


# --- who idles at zero ---------------------------------------------------------------------------------------

def _autoscaling(raw: dict, model: str) -> dict:
    cfg = parse(raw, "prod")
    m = next(x for x in cfg.models if x.name == model)
    return vllm_values(cfg, m, cfg.region("us-east-1"), role_arn="arn:aws:iam::123456789012:role/models",
                       weights_source=f"s3://weights/{model}")["autoscaling"]


def test_only_a_batch_model_allowed_zero_replicas_idles_at_zero() -> None:
    raw = stack_raw("prod")
    batch = _autoscaling(raw, "qwen2-5-7b-batch")
    assert (batch["enabled"], batch["idleReplicas"], batch["minReplicas"]) == (True, 0, 1)
    assert batch["wake"] == {"gatewayNamespace": "llm-gateway", "alias": "qwen2-5-7b-batch", "window": "10m"}
    # A batch model whose config keeps a replica keeps it.
    next(m for m in raw["models"] if m["name"] == "qwen2-5-7b-batch")["replicas"]["min"] = 1
    for region in raw["regions"]:  # its pool then keeps the replica's node
        next(p for p in region["pools"] if p["name"] == "batch")["min_nodes"] = 1
    assert "idleReplicas" not in _autoscaling(raw, "qwen2-5-7b-batch")
    # An interactive model is never allowed zero (a caller would wait minutes for a replica to load): refused by
    # the config with that reason, not raised to one in silence.
    raw = stack_raw("prod")
    next(m for m in raw["models"] if m["name"] == "llama-3-3-70b")["replicas"]["min"] = 0
    with pytest.raises(ConfigError) as refused:
        parse(raw, "prod")
    # (the pools whose min_nodes its replica filled are named too: every problem is reported at once)
    assert ("llm-platform:models[0].replicas.min",
            "0 is only for `tier: batch` models, which scale to zero while idle; an interactive model keeps one "
            "replica warm, since a caller would wait minutes for one to load: write min: 1, or tier: batch") \
        in refused.value.problems
