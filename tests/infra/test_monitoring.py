"""The metrics stack of every region: what it scrapes, how it stores, where alerts go, and that every dashboard
panel and alert rule asks for metrics that really exist (parsed by PromQL's grammar, checked against each
metric's source)."""
from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml

from gateway.observability.metrics import GatewayMetrics
from infra.alert_rules import alert_rules
from infra.components.monitoring import (
    ALERTMANAGER_SERVICE_ACCOUNT,
    DASHBOARD_LABEL,
    DASHBOARDS,
    DCGM_EXPORTER,
    NAMESPACE,
    PROMETHEUS_STACK,
    PROMETHEUS_URL,
    RELEASE,
    STORAGE_CLASS,
    MonitoringArgs,
    dcgm_values,
    karpenter_service_monitor,
    prometheus_stack_values,
)
from infra.plan.manifests import VENDORED_CHARTS
from infra.plan.run import Plan
from infra.scheduling import GPU_TAINT_KEY, SPOT_TAINT_KEY, pool_taints
from tests.charts import custom_resources
from tests.charts.rendering import Rendered, render

TOPIC = "arn:aws:sns:eu-west-2:123456789012:llmp-prod-alerts-eu-west-2"
ROLE = "arn:aws:iam::123456789012:role/alertmanager"
RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",)}


def _args(region: str = "eu-west-2") -> MonitoringArgs:
    return MonitoringArgs(stack="prod", region=region, iam_path="/llm-platform/prod/", tags={},
                          oidc_provider_arn="arn", oidc_issuer="issuer", cluster_name="c",
                          alert_emails=("ops@example.com",), monthly_budget_usd=500_000, regions=4)


@cache
def stack() -> Rendered:
    chart = VENDORED_CHARTS / f"{PROMETHEUS_STACK[0]}-{PROMETHEUS_STACK[1]}"
    return render(chart, prometheus_stack_values(_args(), TOPIC, ROLE), name=RELEASE, namespace=NAMESPACE)


@cache
def dcgm() -> Rendered:
    chart = VENDORED_CHARTS / f"{DCGM_EXPORTER[0]}-{DCGM_EXPORTER[1]}"
    return render(chart, dcgm_values(), name=DCGM_EXPORTER[0], namespace="gpu-monitoring")


# -- which metrics exist ----------------------------------------------------------------------------------------

def _exposed(kind: str, names: list[str]) -> set[str]:
    return {name + suffix for name in names for suffix in SUFFIXES[kind]}


@cache
def known_metrics() -> dict[str, set[str]]:
    """Metric names by source, as Prometheus stores them."""
    out: dict[str, set[str]] = {"gateway": set()}
    for family in GatewayMetrics().registry.collect():
        out["gateway"] |= _exposed(family.type, [family.name])
    sources = yaml.safe_load((DASHBOARDS / "metric_sources.yaml").read_text())
    for source, kinds in sources.items():
        out[source] = set().union(*(_exposed(kind, names) for kind, names in kinds.items()))
    counters = dcgm().one("ConfigMap", "exporter-metrics-config-map")["data"]["metrics"]
    out["dcgm"] = {line.split(",")[0].strip() for line in counters.splitlines()
                   if line.strip() and not line.lstrip().startswith("#") and line.split(",")[1].strip() != "label"}
    return out


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects; raises ValueError when it does not parse."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if type(node).__name__ == "VectorSelector":
            found.add(node.name)
        for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list) else [child]:
                if type(c).__module__.startswith("promql_parser"):
                    walk(c)

    walk(promql_parser.parse(expr))
    return found


def unknown(expr: str) -> set[str]:
    everything = set().union(*known_metrics().values())
    return metric_names(expr) - everything


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    board = json.loads(path.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))


def test_the_three_dashboards_are_there() -> None:
    assert [p.name for p in DASHBOARD_FILES] == ["gateway.json", "gpu.json", "vllm.json"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_dashboard_query_parses_and_names_only_real_metrics(path: Path) -> None:
    queries = dashboard_queries(path)
    assert queries
    for title, expr in queries:
        assert metric_names(expr), f"{path.name} {title!r} selects no metric"
        assert not unknown(expr), f"{path.name} {title!r}: no source exports {sorted(unknown(expr))}"


def test_the_dashboards_show_what_operators_asked_for() -> None:
    def names(stem: str) -> set[str]:
        return set().union(*(metric_names(e) for _, e in dashboard_queries(DASHBOARDS / f"{stem}.json")))
    assert {"llmp_gateway_requests_total", "llmp_gateway_request_seconds_bucket", "llmp_gateway_spend_usd_total",
            "llmp_gateway_time_to_first_token_seconds_bucket", "llmp_gateway_upstream_errors_total"} <= names("gateway")
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:generation_tokens_total"} <= names("vllm")
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_XID_ERRORS"} <= names("gpu")


def test_every_alert_rule_parses_and_names_only_real_metrics() -> None:
    rules = [r for group in alert_rules("eu-west-2", 500_000, 4) for r in group["rules"]]
    assert {r["alert"] for r in rules} == {"GatewayDown", "GatewayNoSuccessfulCalls", "GpuNodePoolAtLimit",
                                          "SpotInterruptionsHigh", "VllmQueueBackingUp", "GpuXidError", "BudgetBurn"}
    for rule in rules:
        assert not unknown(rule["expr"]), f"{rule['alert']}: no source exports {sorted(unknown(rule['expr']))}"


def test_the_metric_check_catches_a_misspelt_metric_and_a_broken_query() -> None:
    assert unknown("sum(rate(llmp_gateway_requests[5m]))") == {"llmp_gateway_requests"}  # counters end in _total
    assert unknown("vllm:gpu_cache_usage_percent > 0.9") == {"vllm:gpu_cache_usage_percent"}
    assert unknown("DCGM_FI_DEV_XID_ERROR > 0") == {"DCGM_FI_DEV_XID_ERROR"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(llmp_gateway_requests_total[5m])")


def _xid_selections(node: Any, inside: str | None = None) -> list[str | None]:
    """For every selection of the XID gauge in a parsed query: the function it is an argument of (None: none)."""
    if type(node).__name__ == "VectorSelector" and node.name == "DCGM_FI_DEV_XID_ERRORS":
        return [inside]
    if type(node).__name__ == "Call":
        return [s for arg in node.args for s in _xid_selections(arg, node.func.name)]
    found: list[str | None] = []
    for attr in ("lhs", "rhs", "expr", "vector_selector"):
        child = getattr(node, attr, None)
        if type(child).__module__.startswith("promql_parser"):
            found += _xid_selections(child, inside if attr == "vector_selector" else None)
    return found


def test_gpu_xid_error_fires_on_a_new_xid_and_resolves_when_none_came_for_ten_minutes() -> None:
    """DCGM's XID field holds the last XID a GPU reported, not a count: an alert on its value alone never resolves.
    The rule must look at the gauge's changes over a window, keeping the value only to show which XID it was."""
    rule = next(r for g in alert_rules("us-east-1", 400_000, 4) for r in g["rules"] if r["alert"] == "GpuXidError")
    assert _xid_selections(promql_parser.parse(rule["expr"])) == [None, "changes"]
    assert "changes(DCGM_FI_DEV_XID_ERRORS[10m])" in rule["expr"]
    assert _xid_selections(promql_parser.parse("max by (Hostname, gpu) (DCGM_FI_DEV_XID_ERRORS) > 0")) == [None]


def test_budget_burn_compares_the_regions_projected_month_with_its_share_of_the_budget() -> None:
    rule = next(r for g in alert_rules("us-east-1", 400_000, 4) for r in g["rules"] if r["alert"] == "BudgetBurn")
    assert rule["expr"].endswith("* 2592000 > 100000.00")
    assert "llmp_gateway_spend_usd_total" in metric_names(rule["expr"])


# -- the objects the component creates are valid against the operator's CRDs -------------------------------------

def _listed(rendered: Rendered, kind: str) -> list[dict[str, Any]]:
    """Objects of `kind`, those a chart renders inside a `kind: List` included."""
    items = [i for lst in rendered.all("List") for i in lst["items"]]
    return rendered.all(kind) + [i for i in items if i["kind"] == kind]


def test_the_stack_renders_the_alert_rules_and_karpenters_service_monitor_as_valid_custom_resources() -> None:
    rule = stack().one("PrometheusRule", f"{RELEASE}-llm-platform")
    assert rule["spec"]["groups"] == alert_rules("eu-west-2", 500_000, 4)
    custom_resources.validate(rule)
    monitor = next(m for m in _listed(stack(), "ServiceMonitor") if m["metadata"]["name"] == "karpenter")
    assert monitor["spec"]["selector"] == karpenter_service_monitor()["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    custom_resources.validate(monitor)
    broken = json.loads(json.dumps(rule))
    broken["spec"]["groups"][0]["rules"][0]["expression"] = broken["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        custom_resources.validate(broken)


def test_every_service_monitor_the_stack_and_the_exporter_render_is_valid() -> None:
    monitors = _listed(stack(), "ServiceMonitor") + dcgm().all("ServiceMonitor")
    assert len(monitors) > 5
    for monitor in monitors:
        custom_resources.validate(monitor)


# -- kube-prometheus-stack as rendered --------------------------------------------------------------------------

def test_prometheus_answers_where_keda_asks_and_selects_every_monitor_and_rule_in_the_cluster() -> None:
    service = stack().one("Service", f"{RELEASE}-prometheus")
    assert f"http://{service['metadata']['name']}.{NAMESPACE}.svc:9090" == PROMETHEUS_URL
    assert PROMETHEUS_URL == "http://prometheus-stack-prometheus.monitoring.svc:9090"  # what KEDA's triggers name
    assert 9090 in [p["port"] for p in service["spec"]["ports"]]
    spec = stack().one("Prometheus")["spec"]
    for selector in ("serviceMonitor", "podMonitor", "rule", "probe", "scrapeConfig"):
        # An empty selector in every namespace matches every object (the operator's API docs).
        assert spec[f"{selector}Selector"] == {}, selector
        assert spec.get(f"{selector}NamespaceSelector", {}) == {}, selector
    assert spec["scrapeInterval"] == "15s"


def test_prometheus_keeps_fifteen_days_on_an_encrypted_gp3_volume() -> None:
    spec = stack().one("Prometheus")["spec"]
    assert spec["retention"] == "15d" and spec["retentionSize"] == "40GB"
    claim = spec["storage"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == STORAGE_CLASS and claim["resources"]["requests"]["storage"] == "50Gi"


def test_destroying_prometheus_deletes_its_volume_and_scaling_it_down_keeps_it() -> None:
    """Kubernetes retains a StatefulSet's PVCs unless told otherwise: without the policy, every destroy leaks each
    region's 50 GiB gp3 volume. Alertmanager has no volume claim at all (emptyDir), so nothing of its leaks."""
    spec = stack().one("Prometheus")["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    # The field is in the CRD the chart installs (operator v0.93.1), checked strictly: an unknown field would fail.
    crd = yaml.safe_load((VENDORED_CHARTS / f"{PROMETHEUS_STACK[0]}-{PROMETHEUS_STACK[1]}" / "charts/crds/crds"
                          / "crd-prometheuses.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["served"]]
    schema = custom_resources._strict(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator(schema).validate(stack().one("Prometheus"))
    alertmanager = stack().one("Alertmanager")["spec"]
    assert "storage" not in alertmanager or "volumeClaimTemplate" not in alertmanager["storage"]


def test_control_plane_components_eks_hides_are_not_scraped() -> None:
    names = {m["metadata"]["name"] for m in stack().all("ServiceMonitor")}
    for hidden in ("kube-scheduler", "kube-controller-manager", "kube-etcd", "kube-proxy"):
        assert f"{RELEASE}-{hidden}" not in names
    assert f"{RELEASE}-apiserver" in names and f"{RELEASE}-kubelet" in names


def test_node_exporter_runs_on_every_gpu_node_spot_included() -> None:
    tolerations = stack().one("DaemonSet")["spec"]["template"]["spec"]["tolerations"]
    keys = {t["key"] for t in tolerations if t.get("operator") == "Exists"}
    assert {t["key"] for t in pool_taints(spot=True)} <= keys


def test_alertmanager_sends_every_alert_but_the_watchdog_to_the_regions_sns_topic_as_its_irsa_role() -> None:
    secret = stack().one("Secret", f"alertmanager-{RELEASE}-alertmanager")
    config = yaml.safe_load(base64.b64decode(secret["data"]["alertmanager.yaml"]))
    sns = next(r for r in config["receivers"] if r["name"] == "sns")["sns_configs"][0]
    assert sns["topic_arn"] == TOPIC and sns["sigv4"] == {"region": "eu-west-2"}
    assert "access_key" not in sns["sigv4"] and "secret_key" not in sns["sigv4"]
    assert config["route"]["receiver"] == "sns"
    account = stack().one("ServiceAccount", ALERTMANAGER_SERVICE_ACCOUNT)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE
    assert stack().one("Alertmanager")["spec"]["serviceAccountName"] == ALERTMANAGER_SERVICE_ACCOUNT


def test_the_grafana_sidecar_loads_the_dashboard_config_maps() -> None:
    grafana = stack().one("Deployment", f"{RELEASE}-grafana")["spec"]["template"]["spec"]
    sidecar = next(c for c in grafana["containers"] if c["name"] == "grafana-sc-dashboard")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["LABEL"] == DASHBOARD_LABEL[0] and env["LABEL_VALUE"] == DASHBOARD_LABEL[1]
    assert env["NAMESPACE"] == NAMESPACE  # only ConfigMaps beside it, where the component puts them


# -- the DCGM exporter ------------------------------------------------------------------------------------------

def test_dcgm_exporter_runs_on_gpu_nodes_only_whatever_their_taints() -> None:
    pod = dcgm().one("DaemonSet")["spec"]["template"]["spec"]
    keys = {t["key"] for t in pod["tolerations"]}
    assert {GPU_TAINT_KEY, SPOT_TAINT_KEY} <= keys
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "llm-platform/pool", "operator": "NotIn", "values": ["system"]}]
    assert dcgm().one("ServiceMonitor")["spec"]["endpoints"][0]["interval"] == "15s"


# -- what the program creates -----------------------------------------------------------------------------------

def test_every_region_gets_the_stack_the_exporter_an_encrypted_topic_and_an_alertmanager_role(prod_plan: Plan):
    regions = {r.region for r in prod_plan.of_type("aws:eks/cluster:Cluster")}
    releases = [r for r in prod_plan.of_type(RELEASE_TYPE) if r.inputs.get("chart") in
                (PROMETHEUS_STACK[0], DCGM_EXPORTER[0])]
    for region in regions:
        mine = {r.inputs["chart"]: r for r in releases if r.region == region}
        assert mine[PROMETHEUS_STACK[0]].inputs["version"] == PROMETHEUS_STACK[1]
        assert mine[PROMETHEUS_STACK[0]].inputs["name"] == RELEASE
        assert mine[PROMETHEUS_STACK[0]].inputs["namespace"] == NAMESPACE
        assert mine[DCGM_EXPORTER[0]].inputs["version"] == DCGM_EXPORTER[1]
        topics = [t for t in prod_plan.of_type("aws:sns/topic:Topic") if t.region == region]
        assert len(topics) == 1 and topics[0].inputs["kmsMasterKeyId"] == "alias/aws/sns"
        addons = [a for a in prod_plan.of_type("aws:eks/addon:Addon") if a.region == region]
        assert "aws-ebs-csi-driver" in {a.inputs["addonName"] for a in addons}
    subs = prod_plan.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert {s.inputs["protocol"] for s in subs} == {"email"} and len(subs) >= len(regions)


def test_the_vllm_and_gateway_releases_render_their_service_monitors(prod_plan: Plan) -> None:
    from infra.chart_values import GATEWAY_CHART, VLLM_CHART
    for release in prod_plan.of_type(RELEASE_TYPE):
        if Path(str(release.inputs.get("chart"))).name in (VLLM_CHART.name, GATEWAY_CHART.name):
            assert release.inputs["values"]["metrics"]["serviceMonitor"]["enabled"] is True, release.name


def test_the_cost_estimate_prices_each_regions_prometheus_volume(prod_plan: Plan) -> None:
    """The volume bills (about 4 USD a month for 50 GiB of gp3 in us-east-1); the SNS topic does not, to speak of
    (e-mail deliveries of a few alerts a day are within SNS' free tier)."""
    from infra.catalog import load_catalog
    from infra.plan.cost import estimate, prometheus_volume_gib
    catalog = load_catalog()
    releases = [r for r in prod_plan.of_type(RELEASE_TYPE) if r.inputs.get("chart") == PROMETHEUS_STACK[0]]
    assert {prometheus_volume_gib(r) for r in releases} == {50}
    with_volumes = estimate(prod_plan.resources, 1.0, catalog)
    without = estimate([r for r in prod_plan.resources if r not in releases], 1.0, catalog)
    for release in releases:
        added = with_volumes.fixed_monthly_usd[release.region] - without.fixed_monthly_usd[release.region]
        assert added == pytest.approx(catalog.fixed_monthly_usd("ebs_gp3_gib", release.region, 50))
        assert 3 < added < 6


def test_capacity_fit_places_the_pods_the_operator_makes_for_prometheus_and_alertmanager(prod_plan: Plan) -> None:
    """The operator, not Helm, creates their StatefulSets: the placement check must see them anyway, sidecar and all
    (Prometheus' 500m / 3Gi plus the config reloader's 10m / 50Mi)."""
    from infra.policy.rules import evaluate
    res = next(r for r in evaluate(prod_plan) if r.id == "capacity-fit")
    assert res.status == "pass", res.violations
    pods = {e["pod"]: e for e in res.evidence if "pod" in e}
    for region in ("us-east-1", "eu-west-2"):
        prometheus = pods[f"{NAMESPACE}/prometheus-{RELEASE}-prometheus ({region})"]
        assert prometheus["kind"] == "StatefulSet" and prometheus["pools"] == ["system"]
        assert prometheus["requests"] == "0.51 CPU, 3.05 GiB memory"
        assert pods[f"{NAMESPACE}/alertmanager-{RELEASE}-alertmanager ({region})"]["pools"] == ["system"]


def test_keda_queries_this_prometheus_for_metrics_that_exist() -> None:
    """What the ScaledObjects of prod's releases ask the region's Prometheus for is scraped there."""
    from infra.components.autoscaling import PROMETHEUS_URL as KEDA_PROMETHEUS
    from tests.charts.rendering import PROD_MODEL_RELEASES, load_prod, render_prod_gateway, render_prod_model
    assert KEDA_PROMETHEUS == PROMETHEUS_URL
    cfg = load_prod()
    region, model = PROD_MODEL_RELEASES[0]
    queries = []
    for rendered in (render_prod_model(cfg, region, model), render_prod_gateway(cfg, region)):
        for scaled in rendered.all("ScaledObject"):
            for trigger in scaled["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    assert trigger["metadata"]["serverAddress"] == PROMETHEUS_URL
                    queries.append(trigger["metadata"]["query"])
    assert queries
    for query in queries:
        assert not unknown(query), f"{query}: no source exports {sorted(unknown(query))}"
