"""How the model releases scale: KEDA ScaledObjects on vLLM's own gauges, rendered by real Helm with the values the
program computes for prod, and checked against KEDA's CRD (strictly) and KEDA's own admission rules."""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest

from gateway.observability.metrics import GatewayMetrics
from infra.chart_values import GATEWAY_NAMESPACE, MODEL_NAMESPACE, VLLM_CHART, vllm_release_name
from infra.components.autoscaling import PROMETHEUS_URL
from infra.config import StackConfig
from tests.charts import custom_resources
from tests.charts.rendering import PROD_MODEL_RELEASES, Rendered, load_prod, render, render_prod_model

_TIERS = {m.name: m.tier for m in load_prod().models}


def _releases(tier: str | None = None) -> pytest.MarkDecorator:
    chosen = [(r, m) for r, m in PROD_MODEL_RELEASES if tier is None or _TIERS[m] == tier]
    assert chosen, f"prod has {tier} models"
    return pytest.mark.parametrize(("region", "model"), chosen, ids=[f"{r}/{m}" for r, m in chosen])


INTERACTIVE = _releases("interactive")
BATCH = _releases("batch")
_RENDERED: dict[tuple[str, str], Rendered] = {}
# A PromQL instant selector's label matchers: name="value" pairs (the charts quote with Go's %q).
_MATCHER = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _prod(cfg: StackConfig, region: str, model: str) -> Rendered:
    if (region, model) not in _RENDERED:
        _RENDERED[region, model] = render_prod_model(cfg, region, model)
    return _RENDERED[region, model]


def _model(cfg: StackConfig, name: str):
    return next(m for m in cfg.models if m.name == name)


def _scaled(r: Rendered) -> dict | None:
    found = r.all("ScaledObject")
    return found[0] if found else None


def _triggers(scaled: dict) -> dict[str, dict]:
    return {t["name"]: t for t in scaled["spec"]["triggers"]}


def _selectors(query: str) -> list[dict[str, str]]:
    """The label matchers of each `metric{...}` selector in a query."""
    return [dict(_MATCHER.findall(body)) for body in re.findall(r"[\w:]+\{([^}]*)\}", query)]


def _metric_names(query: str) -> set[str]:
    return set(re.findall(r"([\w:]+)\{", query))


def _scaled_releases(prod: StackConfig) -> list[tuple[str, str, dict]]:
    return [(region, model, s) for region, model in PROD_MODEL_RELEASES
            if (s := _scaled(_prod(prod, region, model))) is not None]


# --- what KEDA itself accepts -------------------------------------------------------------------

def test_every_prod_scaled_object_passes_kedas_crd_schema_strictly(prod):
    releases = _scaled_releases(prod)
    assert releases, "prod scales some model"
    for _, _, scaled in releases:
        custom_resources.validate(scaled)


def test_the_strict_check_refuses_a_field_kedas_crd_does_not_declare(prod):
    """The API server would prune it silently: a misspelt `idleReplicas` would leave a batch model awake."""
    _, _, scaled = _scaled_releases(prod)[0]
    bad = copy.deepcopy(scaled)
    bad["spec"]["idleReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError, match="idleReplicas"):
        custom_resources.validate(bad)


def test_replica_bounds_pass_kedas_admission_rule(prod):
    """KEDA's webhook refuses min > max and an idleReplicaCount not below minReplicaCount
    (apis/keda/v1alpha1/scaledobject_types.go@v2.20.2, CheckReplicaCountBoundsAreValid), and an HPA name over 63
    characters (scaledobject_webhook.go, verifyName)."""
    for region, model, scaled in _scaled_releases(prod):
        spec = scaled["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"], (region, model)
        if "idleReplicaCount" in spec:
            assert spec["idleReplicaCount"] < spec["minReplicaCount"], (region, model)
        assert len(spec["advanced"]["horizontalPodAutoscalerConfig"]["name"]) <= 63


# --- interactive and batch ----------------------------------------------------------------------

@INTERACTIVE
def test_interactive_models_never_scale_below_one_replica(prod, region, model):
    scaled = _scaled(_prod(prod, region, model))
    if scaled is not None:
        assert scaled["spec"]["minReplicaCount"] >= 1
        assert "idleReplicaCount" not in scaled["spec"]
        assert "gateway-calls" not in _triggers(scaled)


@BATCH
def test_batch_models_idle_at_zero_replicas_and_wake_at_one(prod, region, model):
    spec = _scaled(_prod(prod, region, model))["spec"]
    # Zero only through idleReplicaCount: KEDA's rule wants it below a minReplicaCount of at least one.
    assert spec["idleReplicaCount"] == 0
    assert spec["minReplicaCount"] >= 1
    # Idle only after a quiet spell, and not straight after the release created its first replica.
    assert spec["cooldownPeriod"] >= 600
    assert spec["initialCooldownPeriod"] >= 300


@BATCH
def test_an_idle_batch_model_wakes_on_calls_this_regions_gateways_got_for_it(prod, region, model):
    """With no pod, vLLM's gauges do not exist: the gateway's count of calls answered for the alias (503s too)
    says work is waiting. Any call within the window activates; the trigger holds one replica, never more."""
    wake = _triggers(_scaled(_prod(prod, region, model)))["gateway-calls"]
    query = wake["metadata"]["query"]
    assert _selectors(query) == [{"namespace": GATEWAY_NAMESPACE, "model": model}]
    assert wake["metadata"]["activationThreshold"] == "0"
    assert query.startswith("clamp_max(") and query.endswith(", 1)") and wake["metadata"]["threshold"] == "1"
    # The series exists under this name once the gateway has answered a call for the alias.
    metrics = GatewayMetrics()
    metrics.call(model, f"{model}-{region}", 503).inc()
    assert f'llmp_gateway_requests_total{{deployment="{model}-{region}",model="{model}",status="503"}} 1.0' \
        in metrics.render().decode()
    assert _metric_names(query) == {"llmp_gateway_requests_total"}


# --- what the triggers read ---------------------------------------------------------------------

def test_vllm_triggers_select_only_this_releases_pods(prod):
    for region, model, scaled in _scaled_releases(prod):
        _triggers_select_the_release(prod, _prod(prod, region, model), model, scaled)


def _triggers_select_the_release(prod: StackConfig, r: Rendered, model: str, scaled: dict) -> None:
    triggers = _triggers(scaled)
    service = r.one("Service", vllm_release_name(_model(prod, model)))
    # The ServiceMonitor scrapes the ClusterIP Service the triggers name, in the release's namespace.
    for name, metric in (("waiting-requests", "vllm:num_requests_waiting"),
                         ("kv-cache-usage", "vllm:kv_cache_usage_perc")):
        query = triggers[name]["metadata"]["query"]
        assert _metric_names(query) == {metric}
        assert _selectors(query) == [{"namespace": MODEL_NAMESPACE, "service": service["metadata"]["name"]}]
        assert triggers[name]["metricType"] == "AverageValue"
        assert triggers[name]["metadata"]["serverAddress"] == PROMETHEUS_URL


def test_two_releases_never_read_each_others_pods(prod):
    """The 8B model and mistral share the EU mid pool: each ScaledObject reads its own Service's series."""
    seen: dict[str, set[str]] = {}
    for region, model, scaled in _scaled_releases(prod):
        if region != "eu-north-1":
            continue
        for t in scaled["spec"]["triggers"]:
            for selector in _selectors(t["metadata"]["query"]):
                if "service" in selector:
                    seen.setdefault(model, set()).add(selector["service"])
    assert len(seen) >= 2
    assert all(services == {vllm_release_name(_model(prod, m))} for m, services in seen.items())


def test_the_kv_cache_gauge_is_the_renamed_one_not_the_deprecated_gpu_cache_usage(prod):
    for _, _, scaled in _scaled_releases(prod):
        queries = " ".join(t["metadata"]["query"] for t in scaled["spec"]["triggers"])
        assert "vllm:gpu_cache_usage_perc" not in queries
        assert "vllm:kv_cache_usage_perc" in queries


def test_a_replica_is_added_before_the_kv_cache_fills_and_preemption_starts(prod):
    for _, _, scaled in _scaled_releases(prod):
        triggers = _triggers(scaled)
        assert 0 < float(triggers["kv-cache-usage"]["metadata"]["threshold"]) < 1
        assert float(triggers["waiting-requests"]["metadata"]["threshold"]) >= 1


# --- failure and slow starts --------------------------------------------------------------------

def test_with_prometheus_down_every_model_keeps_its_current_replicas(prod):
    """`currentReplicas` makes each failing trigger report the running count (keda pkg/fallback/fallback.go,
    doFallback); a non-zero `replicas` keeps KEDA from taking an erroring, inactive batch model to idle
    (pkg/scaling/executor/scale_scaledobjects.go@v2.20.2, RequestScale)."""
    for _, _, scaled in _scaled_releases(prod):
        fallback = scaled["spec"]["fallback"]
        assert fallback["behavior"] == "currentReplicas"
        assert fallback["failureThreshold"] >= 1
        assert fallback["replicas"] >= 1


def test_gpu_replicas_are_given_back_slowly_and_not_started_for_a_blip(prod):
    for _, _, scaled in _scaled_releases(prod):
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600
        assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 60


def test_an_upgrade_from_the_charts_old_hpa_hands_it_to_keda(prod):
    """Helm creates the ScaledObject before it deletes the HPA of the same name the chart rendered before; KEDA's
    webhook lets that through only with the transfer annotation and the HPA named (scaledobject_webhook.go)."""
    for _, model, scaled in _scaled_releases(prod):
        assert scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
        assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == \
            vllm_release_name(_model(prod, model))


def test_the_chart_alone_renders_no_wake_trigger_without_idle_replicas():
    r = render(VLLM_CHART, {"autoscaling": {"enabled": True, "maxReplicas": 3}}, name="vllm-demo",
               namespace=MODEL_NAMESPACE)
    scaled = r.one("ScaledObject")
    assert set(_triggers(scaled)) == {"waiting-requests", "kv-cache-usage"}
    assert "idleReplicaCount" not in scaled["spec"]
    custom_resources.validate(scaled)
