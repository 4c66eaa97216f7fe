"""Rendering and installing the charts with real Helm (helm-python-sdk carries Helm v4's library), offline."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from infra.chart_values import (
    GATEWAY_CHART,
    GATEWAY_NAMESPACE,
    GATEWAY_RELEASE,
    MODEL_NAMESPACE,
    VLLM_CHART,
    gateway_values,
    vllm_release_name,
    vllm_values,
)
from infra.components.model_weights import revision_prefix
from infra.components.providers import stack_tags
from infra.config import ROOT, StackConfig, load_file
from infra.gateway_config import gateway_config

KUBE_VERSION = "1.32"
CHECKOV = Path(os.environ.get("CHECKOV_BIN", ROOT / ".venv" / "checkov" / "bin" / "checkov"))
ROLE_ARN = "arn:aws:iam::123456789012:role/llm-gateway-us-east-1"
MODEL_ROLE_ARN = "arn:aws:iam::123456789012:role/llm-models-us-east-1"
# A region's weights bucket as the program names it (infra/components/model_weights.py): prefix and AWS's suffix.
WEIGHTS_BUCKET = "llmp-prod-weights-20261126004500000000000001"


def weights_source(model: Any) -> str:
    """Where the program points a model whose weights come from S3 (ignored for Hugging Face downloads)."""
    return f"s3://{WEIGHTS_BUCKET}/{revision_prefix(model)}"


@dataclass
class Rendered:
    """One release rendered by Helm: its objects (parsed) and its NOTES.txt."""

    name: str
    namespace: str
    objects: list[dict[str, Any]]
    notes: str
    manifests: dict[str, str] = field(repr=False, default_factory=dict)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def workload(self) -> dict[str, Any]:
        """The release's one Deployment or StatefulSet (the gateway runs as a StatefulSet, vLLM as a Deployment)."""
        found = self.all("Deployment") + self.all("StatefulSet")
        assert len(found) == 1, f"expected one workload, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload()["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.pod_spec()["containers"] if c["name"] == name)


def render(chart: Path, values: dict[str, Any] | None, *, name: str, namespace: str) -> Rendered:
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(values=values, name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(name, namespace, objects, notes, manifests)


def install_error(chart: Path, values: dict[str, Any], *, name: str, namespace: str) -> str:
    """What `helm install` says about these values (client dry run: no cluster), or '' when it accepts them."""
    with helm.Config(storage_driver="memory", namespace=namespace, kube_apiserver="http://127.0.0.1:9") as cfg:
        try:
            cfg.install(chart, name, values, namespace=namespace, dry_run="client")
        except helm.HelmError as exc:
            return str(exc)
    return ""


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def load_prod() -> StackConfig:
    return load_file(ROOT / "Pulumi.prod.yaml", "prod")


_PROD = load_prod()
# (region, model) for every vLLM release the prod stack deploys, and its regions.
PROD_MODEL_RELEASES = [(r.name, m.name) for r in _PROD.regions for m in _PROD.models_in(r.name)]
PROD_REGIONS = [r.name for r in _PROD.regions]


def render_prod_model(cfg: StackConfig, region: str, model: str) -> Rendered:
    """The release as the program installs it."""
    m = next(x for x in cfg.models if x.name == model)
    values = vllm_values(cfg, m, cfg.region(region), role_arn=MODEL_ROLE_ARN, weights_source=weights_source(m))
    return render(VLLM_CHART, values, name=vllm_release_name(m), namespace=MODEL_NAMESPACE)


def certificate_arn(region: str) -> str:
    """An ACM certificate ARN in `region`, shaped as ACM makes them (the program's is infra/components/dns.py's)."""
    return f"arn:aws:acm:{region}:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-acbdcedf0123"


def prod_gateway_values(cfg: StackConfig, region: str) -> dict[str, Any]:
    r = cfg.region(region)
    return gateway_values(cfg, r, role_arn=ROLE_ARN, config=gateway_config(cfg, r),
                          certificate_arn=certificate_arn(region), tags=stack_tags(cfg.stack, region, r.residency))


def render_prod_gateway(cfg: StackConfig, region: str) -> Rendered:
    return render(GATEWAY_CHART, prod_gateway_values(cfg, region), name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
