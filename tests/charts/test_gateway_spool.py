"""charts/gateway's spend spool: a StatefulSet whose every pod spools on its own encrypted volume, mounted where the
gateway's config says, that a replacement pod (same name) re-attaches; rendered by real Helm with the program's
values for each prod region."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from gateway.config.native import parse_native
from infra.catalog import load_catalog
from infra.chart_values import GATEWAY_CHART, GATEWAY_NAMESPACE, GATEWAY_RELEASE, SPOOL_STORAGE_CLASS
from infra.components.gateway import TARGET_HEALTHY_SECONDS, rollout_timeout_seconds, termination_grace_seconds
from infra.components.monitoring import STORAGE_CLASS
from infra.config import StackConfig
from infra.plan.cost import estimate, gateway_spool_gib
from tests.charts.rendering import (
    PROD_REGIONS,
    Rendered,
    install_error,
    merged,
    prod_gateway_values,
    render,
    render_prod_gateway,
)

REGIONS = pytest.mark.parametrize("region", PROD_REGIONS)
# The one place the spool's path is written (the program's config leaves ledger.spool_dir to the chart).
DEFAULT_SPOOL = yaml.safe_load((GATEWAY_CHART / "values.yaml").read_text())["spool"]["path"]
KEY = "sk-llmp-chart-0123456789abcdef0123456789abcdef"
MODELS = [{"alias": "m", "deployments": [{"name": "m-1", "model": "m", "api_base": "http://vllm-m:8000/v1"}]}]


def _defaults(values: dict | None = None) -> Rendered:
    return render(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)


def _config(r: Rendered) -> dict:
    return yaml.safe_load(r.one("ConfigMap")["data"]["config.yaml"])


def _spool_mount(r: Rendered) -> str:
    (container,) = r.pod_spec()["containers"]
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "spool")


@REGIONS
def test_each_gateway_pod_spools_on_its_own_encrypted_volume_where_its_config_says(prod: StackConfig, region):
    r = render_prod_gateway(prod, region)
    assert r.all("Deployment") == []
    (claim,) = r.one("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    # The encrypted gp3 class the program makes in every cluster (infra/components/monitoring.py); the release
    # waits for it through the monitoring stack (infra/platform.py), so a first deploy's claims bind.
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                             "resources": {"requests": {"storage": "1Gi"}}}
    assert SPOOL_STORAGE_CLASS == STORAGE_CLASS
    config = _config(r)
    expected = (config.get("ledger") or {}).get("spool_dir", DEFAULT_SPOOL)
    assert _spool_mount(r) == expected
    # fsGroup makes the fresh volume writable by the non-root gateway.
    pod = r.pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["fsGroup"] == pod["runAsUser"]


def test_a_ledger_that_names_no_spool_dir_spools_on_the_pods_volume():
    """The gateway's own default (./llmp-spool under its working directory) is on the read-only root filesystem:
    the chart gives the ledger the volume's path, and the gateway reads it from the config it mounts."""
    config = {"version": 1, "gateway": {"master_key": KEY}, "models": MODELS,
              "ledger": {"store": "postgresql://llmp@ledger.example:5432/llmp"}}
    r = _defaults({"config": config})
    rendered = _config(r)
    assert rendered["ledger"] == {**config["ledger"], "spool_dir": DEFAULT_SPOOL}
    assert parse_native(rendered).ledger.spool_dir == _spool_mount(r) == DEFAULT_SPOOL
    moved = _defaults({"config": merged(config, {"ledger": {"spool_dir": "/data/spool"}})})
    assert _spool_mount(moved) == "/data/spool" and _config(moved)["ledger"]["spool_dir"] == "/data/spool"
    # No ledger: the config is passed on as given (no governance, nothing to spool; the volume is there for later,
    # since a StatefulSet's claim templates can never be added to).
    plain = _defaults({"config": {"version": 1, "gateway": {"master_key": KEY}, "models": MODELS}})
    assert "ledger" not in _config(plain) and _spool_mount(plain) == DEFAULT_SPOOL


def test_a_relative_spool_dir_is_refused_by_name():
    error = install_error(GATEWAY_CHART, {"config": {"ledger": {"spool_dir": "llmp-spool"}}},
                          name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert "config.ledger.spool_dir: llmp-spool is not an absolute path" in error


@pytest.mark.parametrize(("values", "field"), [
    ({"spool": {"size": "1GB"}}, "/spool/size"),
    ({"spool": {"path": "spool"}}, "/spool/path"),
    ({"spool": {"retention": {"whenScaled": "Keep"}}}, "/spool/retention/whenScaled"),
])
def test_bad_spool_values_are_refused_by_name(prod: StackConfig, values, field):
    error = install_error(GATEWAY_CHART, merged(prod_gateway_values(prod, "us-east-1"), values),
                          name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert field in error


def test_the_claim_template_stays_the_same_across_chart_versions():
    """Kubernetes refuses any change to a StatefulSet's volumeClaimTemplates: labels that carry the chart's version
    would make every chart upgrade fail."""
    r = _defaults()
    (claim,) = r.one("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["labels"] == r.one("StatefulSet")["spec"]["selector"]["matchLabels"]
    assert not any("version" in k or "chart" in k for k in claim["metadata"]["labels"])


@REGIONS
def test_pods_replace_one_at_a_time_keep_their_volume_on_scale_down_and_lose_it_with_the_release(
        prod: StackConfig, region):
    r = render_prod_gateway(prod, region)
    spec = r.one("StatefulSet")["spec"]
    assert spec["serviceName"] == r.one("Service", GATEWAY_RELEASE)["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}  # no maxUnavailable: one pod at a time
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    target = r.one("ScaledObject")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "StatefulSet", GATEWAY_RELEASE)


@REGIONS
def test_the_release_waits_for_every_pod_to_drain_before_its_replacement_starts(prod: StackConfig, region):
    """A StatefulSet creates a pod's replacement only once the old pod is gone, so each replica costs the old
    one's whole grace period on top of its start and its NLB registration."""
    values = prod_gateway_values(prod, region)
    grace = render_prod_gateway(prod, region).pod_spec()["terminationGracePeriodSeconds"]
    assert termination_grace_seconds(values) == grace
    replicas = max(values["replicaCount"], values["autoscaling"]["maxReplicas"])
    assert rollout_timeout_seconds(values) >= replicas * (grace + TARGET_HEALTHY_SECONDS)


def test_the_cost_estimate_prices_every_spool_volume_the_gateway_may_keep(prod: StackConfig):
    """One volume per replica the release may ever run (a scale-down keeps them), of the chart's size, at the
    catalog's gp3 price: pennies, but the budget sees every volume the stack makes."""
    values = prod_gateway_values(prod, "us-east-1")
    release = SimpleNamespace(type="kubernetes:helm.sh/v3:Release", name="us-east-1-gateway", region="us-east-1",
                              tags={}, inputs={"chart": str(GATEWAY_CHART), "values": values})
    assert gateway_spool_gib(release) == prod.gateway.replicas.max * 1
    catalog = load_catalog()
    added = estimate([release], 1.0, catalog).fixed_monthly_usd["us-east-1"]
    assert added == pytest.approx(catalog.fixed_monthly_usd("ebs_gp3_gib", "us-east-1", prod.gateway.replicas.max))
    assert gateway_spool_gib(SimpleNamespace(**{**vars(release), "inputs": {"chart": "vllm", "values": values}})) == 0


# -- the switch from a Deployment, and KEDA owning the count afterwards ------------------------------

@REGIONS
def test_the_first_rollout_of_the_statefulset_starts_at_the_autoscaling_floor(prod: StackConfig, region):
    """The upgrade that replaces the Deployment deletes its pods: a StatefulSet created without replicas would
    start with Kubernetes' default of 1. With no StatefulSet to look up (the first rollout; also every
    `helm template` and dry run) the chart renders minReplicas."""
    values = prod_gateway_values(prod, region)
    assert values["autoscaling"]["enabled"] is True
    r = render_prod_gateway(prod, region)
    assert r.one("StatefulSet")["spec"]["replicas"] == values["autoscaling"]["minReplicas"]
    assert r.one("ScaledObject")["spec"]["minReplicaCount"] == values["autoscaling"]["minReplicas"]


def _replicas_given(tmp_path, existing: dict | None, minimum: int) -> str:
    """The chart's replica helper, given what `lookup` would answer: rendered by Helm in a copy of the chart with
    one more template (lookup itself needs a cluster)."""
    import shutil

    chart = tmp_path / "gateway"
    shutil.copytree(GATEWAY_CHART, chart)
    (chart / "templates" / "probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\ndata:\n"
        "  replicas: {{ include \"gateway.autoscaledReplicas\" (dict \"minReplicas\" .Values.probe.minimum "
        "\"existing\" .Values.probe.existing) | quote }}\n")
    schema = json.loads((chart / "values.schema.json").read_text())
    schema["properties"]["probe"] = {"type": "object"}
    (chart / "values.schema.json").write_text(json.dumps(schema))
    r = render(chart, {"probe": {"existing": existing or {}, "minimum": minimum}}, name=GATEWAY_RELEASE,
               namespace=GATEWAY_NAMESPACE)
    value: str = r.one("ConfigMap", "probe")["data"]["replicas"]
    return value


def test_once_the_statefulset_exists_the_chart_keeps_the_count_keda_set(tmp_path):
    """Afterwards KEDA's HPA owns the count: the chart renders the live value back. Leaving the field out would
    not leave it alone: Helm's three-way merge removes a field the previous manifest had (the first rollout's
    floor), and Kubernetes then defaults it to 1."""
    assert _replicas_given(tmp_path, {"kind": "StatefulSet", "spec": {"replicas": 7}}, 2) == "7"
    assert _replicas_given(tmp_path / "none", None, 2) == "2"


# -- a replaced store rolls the pods ------------------------------------------------------------------

def test_a_new_store_endpoint_rolls_the_gateway_pods():
    """The gateway reads the Redis URL secret at start only: the endpoint's hash is in the pod template, so a Redis
    group replaced under a new address makes a new revision."""
    def annotation(endpoints: list[str]) -> str | None:
        values = {"storeEndpoints": endpoints} if endpoints else None
        meta = _defaults(values).one("StatefulSet")["spec"]["template"]["metadata"]
        found: str | None = meta["annotations"].get("checksum/stores")
        return found

    one = annotation(["master.a-redis.abc123.use1.cache.amazonaws.com"])
    other = annotation(["master.a-redis.def456.use1.cache.amazonaws.com"])
    assert one and other and one != other
    assert annotation([]) is None  # no stores given: nothing to follow
