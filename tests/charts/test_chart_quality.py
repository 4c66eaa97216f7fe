"""Both charts, every way the platform renders them: `helm lint` clean, every object valid against the
Kubernetes 1.32 schema (strict; custom resources against their vendored CRDs), and checkov clean apart
from the findings each chart accepts in writing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.chart_values import GATEWAY_CHART, GATEWAY_NAMESPACE, GATEWAY_RELEASE, MODEL_NAMESPACE, VLLM_CHART
from tests.charts import custom_resources
from tests.charts.rendering import (
    CHECKOV,
    KUBE_VERSION,
    MODEL_ROLE_ARN,
    PROD_MODEL_RELEASES,
    PROD_REGIONS,
    Rendered,
    load_prod,
    prod_gateway_values,
    render,
    weights_source,
)

DIGEST = "sha256:" + "0" * 64
# What each chart accepts from checkov, with the reason in the Deployment's checkov.io/skipN annotations.
ACCEPTED = {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_11", "CKV_K8S_38"}

VLLM_EVERYTHING_ON = {
    "image": {"digest": DIGEST, "pullPolicy": "Always"},
    "model": {"source": "/models/llama", "servedName": "llama", "quantization": "fp8",
              "hfToken": {"secretsManager": {"secretId": "llm-platform/demo/huggingface/token", "region": "eu-west-1"}},
              "extraArgs": ["--enable-chunked-prefill"]},
    "gpus": 4,
    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
    "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"cpu": "16", "memory": "128Gi"}},
    "modelCache": {"existingClaim": "weights", "s3": {"uri": "s3://weights-bucket/llama/",
                                                      "image": {"digest": DIGEST, "pullPolicy": "Always"}}},
    "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/models", "annotations": {"team": "platform"}},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "priorityClassName": "llm-serving",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "DoNotSchedule", "minDomains": 2}],
    "drain": {"preStopSeconds": 30, "timeoutSeconds": 600, "marginSeconds": 30},
    "extraEnv": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}],
    "tests": {"image": {"repository": "curlimages/curl", "tag": "8.16.0", "digest": DIGEST}},
}
VLLM_EVERYTHING_OFF = {"networkPolicy": {"enabled": False},
                       "podDisruptionBudget": {"enabled": False}, "metrics": {"podAnnotations": False},
                       "serviceAccount": {"create": False, "name": "models"}}
GATEWAY_EVERYTHING_ON = {
    "image": {"digest": DIGEST, "pullPolicy": "Always"},
    "region": "eu-west-1",
    "config": {"version": 1, "gateway": {"front_door": {"shutdown_grace": 120}}, "models": []},
    "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
    "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/gw", "annotations": {"team": "platform"}},
    "service": {"loadBalancer": {
        "enabled": True, "hosts": ["api.example.com", "eu-west-1.api.example.com"],
        "certificateArns": ["arn:aws:acm:eu-west-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-acbdcedf0123"],
        "tags": {"team": "platform"}}},
    "networkPolicy": {"redis": {"cidrs": ["10.40.0.0/16"]}, "loadBalancerCidrs": ["10.40.96.0/19"]},
    "discovery": {"enabled": True, "namespaces": ["llm-serving", "llm-batch"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "extraEnv": [{"name": "LOG_LEVEL", "value": "info"}],
    "drain": {"preStopSeconds": 15, "marginSeconds": 15},
    "tests": {"image": {"repository": "curlimages/curl", "tag": "8.16.0", "digest": DIGEST}},
}
GATEWAY_EVERYTHING_OFF = {"autoscaling": {"enabled": False}, "service": {"loadBalancer": {"enabled": False}},
                          "networkPolicy": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                          "serviceAccount": {"create": False, "name": "default"}}


def _vllm_scenarios() -> dict[str, tuple[dict[str, Any] | None, str]]:
    from infra.chart_values import vllm_release_name, vllm_values
    cfg = load_prod()
    out: dict[str, tuple[dict[str, Any] | None, str]] = {
        "defaults": (None, "vllm-demo"), "everything-on": (VLLM_EVERYTHING_ON, "vllm-llama"),
        "everything-off": (VLLM_EVERYTHING_OFF, "vllm-off"),
        "token-from-a-kubernetes-secret": ({"model": {"hfToken": {"secret": {"name": "hf-token"}}}}, "vllm-k8s")}
    for region, name in PROD_MODEL_RELEASES:
        model = next(m for m in cfg.models if m.name == name)
        out[f"prod-{region}-{name}"] = (vllm_values(cfg, model, cfg.region(region), role_arn=MODEL_ROLE_ARN,
                                                    weights_source=weights_source(model)),
                                        vllm_release_name(model))
    return out


def _gateway_scenarios() -> dict[str, tuple[dict[str, Any] | None, str]]:
    cfg = load_prod()
    out: dict[str, tuple[dict[str, Any] | None, str]] = {
        "defaults": (None, GATEWAY_RELEASE), "everything-on": (GATEWAY_EVERYTHING_ON, GATEWAY_RELEASE),
        "everything-off": (GATEWAY_EVERYTHING_OFF, GATEWAY_RELEASE)}
    for region in PROD_REGIONS:
        out[f"prod-{region}"] = (prod_gateway_values(cfg, region), GATEWAY_RELEASE)
    return out


CHARTS = {
    "vllm": (VLLM_CHART, MODEL_NAMESPACE, _vllm_scenarios()),
    "gateway": (GATEWAY_CHART, GATEWAY_NAMESPACE, _gateway_scenarios()),
}
CASES = [(chart, scenario) for chart, (_, _, scenarios) in CHARTS.items() for scenario in scenarios]
_RENDERED: dict[tuple[str, str], Rendered] = {}


def _render(chart: str, scenario: str) -> Rendered:
    if (chart, scenario) not in _RENDERED:
        path, namespace, scenarios = CHARTS[chart]
        values, release = scenarios[scenario]
        _RENDERED[chart, scenario] = render(path, values, name=release, namespace=namespace)
    return _RENDERED[chart, scenario]


@pytest.mark.parametrize(("chart", "scenario"), CASES, ids=[f"{c}:{s}" for c, s in CASES])
def test_helm_lint_finds_nothing_to_warn_about(chart, scenario):
    path, namespace, scenarios = CHARTS[chart]
    values, _ = scenarios[scenario]
    report = helm.lint(path, values, strict=True, namespace=namespace, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [], report
    assert report["total_charts_linted"] == 1
    # severity: 1 info, 2 warning, 3 error. Not even an info message (the icon is set, for one).
    assert report["messages"] == [], report["messages"]


@pytest.mark.parametrize(("chart", "scenario"), CASES, ids=[f"{c}:{s}" for c, s in CASES])
def test_every_rendered_object_is_valid_kubernetes_1_32_strictly(chart, scenario):
    rendered = _render(chart, scenario)
    assert rendered.objects
    for obj in rendered.objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if (obj["apiVersion"], obj["kind"]) in custom_resources.UNVENDORED:
            continue
        if custom_resources.is_custom(obj):
            try:
                custom_resources.validate(obj)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{chart}:{scenario} {where} at {'.'.join(map(str, exc.path))}: {exc.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{chart}:{scenario} {where} at {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{chart}:{scenario} {where}: {exc.message}")


def test_the_validator_would_catch_an_invalid_object():
    """The strict check is real: a misspelt field in a rendered Deployment is reported."""
    deployment = _render("vllm", "defaults").one("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_the_custom_resource_check_would_catch_an_invalid_secret_provider_class():
    """Rendered SecretProviderClasses are held to the driver's own CRD schema, strictly: a misspelt field or
    a parameter that is not a string is reported, and a kind without a vendored CRD is not waved through."""
    spc = _render("vllm", "everything-on").one("SecretProviderClass")
    custom_resources.validate(spc)
    misspelt = json.loads(json.dumps(spc))
    misspelt["spec"]["providers"] = misspelt["spec"].pop("provider")
    with pytest.raises(jsonschema.ValidationError, match="'providers' was unexpected"):
        custom_resources.validate(misspelt)
    not_a_string = json.loads(json.dumps(spc))
    not_a_string["spec"]["parameters"]["usePodIdentity"] = False
    with pytest.raises(jsonschema.ValidationError, match="False is not of type 'string'"):
        custom_resources.validate(not_a_string)
    with pytest.raises(custom_resources.UnknownCustomResource):
        custom_resources.validate({**spc, "apiVersion": "secrets-store.csi.x-k8s.io/v2"})


def _checkov(chart: str, tmp_path: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make checkov` (make test does it), "
                    "or point CHECKOV_BIN at a checkov executable")
    _, _, scenarios = CHARTS[chart]
    # "everything-off" turns safeguards off on purpose (no NetworkPolicy, for one): it is linted and
    # validated, not held to checkov.
    scenarios = [s for s in scenarios if s != "everything-off"]
    for scenario in scenarios:
        docs = _render(chart, scenario).objects
        (tmp_path / f"{scenario}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run(
        [str(CHECKOV), "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "BC_SKIP_MAPPING": "TRUE",
                                                          "HOME": str(tmp_path)})
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    results = report["results"]
    assert results["parsing_errors"] == []
    assert report["summary"]["resource_count"] >= len(scenarios) * 5
    return results


@pytest.mark.parametrize("chart", CHARTS)
def test_checkov_passes_every_rendering_apart_from_the_accepted_findings(chart, tmp_path):
    results = _checkov(chart, tmp_path)
    failed = sorted({(c["check_id"], c["resource"], Path(c["file_path"]).stem) for c in results["failed_checks"]})
    assert failed == [], "\n".join(f"{cid} {res} ({scenario})" for cid, res, scenario in failed)
    assert len(results["passed_checks"]) > 100
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped <= ACCEPTED, f"skipped without being accepted here: {skipped - ACCEPTED}"
    # Pinning by digest and setting a CPU limit turns the accepted findings into passes; a token is
    # mounted (and accepted) only for the gateway's EndpointSlice discovery.
    on = {c["check_id"] for c in results["skipped_checks"] if Path(c["file_path"]).stem == "everything-on"}
    assert on == ({"CKV_K8S_38"} if chart == "gateway" else set())
    for check in results["skipped_checks"]:
        assert check["check_result"]["suppress_comment"] not in ("", "No comment provided"), check["check_id"]
