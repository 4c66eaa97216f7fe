"""The Kubernetes objects each recorded Helm release would apply, rendered by real Helm, and the EKS add-ons' own."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from pulumi_policy.proxy import UnknownValueError

from infra.config import ROOT
from infra.plan.operator_pods import OPERATOR_KINDS, operator_statefulsets

VENDORED_CHARTS = Path(__file__).resolve().parent / "vendor" / "charts"
# Pods EKS itself runs on every cluster (no Helm release records them): dated, cited facts.
EKS_ADDONS_FILE = Path(__file__).resolve().parent / "eks_addons.yaml"
# Stands in for a value the engine cannot know yet (a `pulumi preview` before the role or certificate exists):
# every such value in the program's releases is an ARN (IRSA role ARNs, which the charts' schemas check and
# require, and the gateway NLB's certificate, an annotation), none a size, count or scheduling field. A role ARN
# in AWS's documentation account.
UNKNOWN = "arn:aws:iam::123456789012:role/unknown-at-preview"
# Only the objects the scheduler reads are parsed (the gateway's rendered config alone is thousands of YAML
# nodes): a document's own kind is its one unindented `kind:` line.
# Prometheus and Alertmanager objects become StatefulSets through the Prometheus Operator (infra/plan/operator_pods.py).
SCHEDULED_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "HorizontalPodAutoscaler", "ScaledObject",
                   *OPERATOR_KINDS)
# And the objects that let traffic in (the cluster-hardening control reads them).
EXPOSING_KINDS = ("Service", "Ingress")
_DOCUMENT = re.compile(r"^---.*$", re.MULTILINE)
# libyaml's parser when PyYAML has it.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class RenderedRelease:
    """One Helm release as Helm renders it: the objects the scheduler reads (SCHEDULED_KINDS), or why it could
    not be rendered."""
    release: str  # the Pulumi resource name
    region: str
    name: str  # the Helm release name
    namespace: str
    chart: str  # where the chart came from (a local directory or a vendored copy)
    objects: tuple[dict[str, Any], ...]
    error: str = ""
    had_unknowns: bool = False


def chart_directory(inputs: Mapping[str, Any]) -> Path | None:
    """The chart a release installs: the project's own (charts/<name>), or the vendored copy of exactly the
    pinned version of a repository chart (infra/plan/vendor/charts/<chart>-<version>)."""
    chart = str(inputs.get("chart") or "")
    if not chart:
        return None
    if chart.startswith("oci://"):  # an OCI chart (Karpenter's): vendored as <its last path segment>-<version>
        chart = chart.rstrip("/").rsplit("/", 1)[-1]
    local = Path(chart)
    if local.is_absolute() or "/" in chart:
        if local.is_dir():
            return local
        own = ROOT / "charts" / local.name  # recorded on another machine's checkout
        return own if own.is_dir() else None
    vendored = VENDORED_CHARTS / f"{chart}-{inputs.get('version')}"
    return vendored if vendored.is_dir() else None


def plain(value: Any) -> tuple[Any, bool]:
    """`value` as plain JSON data, and whether a value unknown at preview had to be stood in for.
    A CrossGuard resource hands its properties over as proxies that raise on a value unknown during preview."""
    seen = False

    def walk(v: Any) -> Any:
        nonlocal seen
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for key in list(v.keys()):
                try:
                    out[str(key)] = walk(v[key])
                except UnknownValueError:
                    seen = True
                    out[str(key)] = UNKNOWN
            return out
        if isinstance(v, Sequence) and not isinstance(v, (str, bytes)):
            items = []
            for i in range(len(v)):
                try:
                    items.append(walk(v[i]))
                except UnknownValueError:
                    seen = True
                    items.append(UNKNOWN)
            return items
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        seen = True  # an Output or other engine value the chart could not read either
        return UNKNOWN

    return walk(value), seen


@cache
def _kind_line(kinds: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(rf"^kind:\s*({'|'.join(kinds)})\s*$", re.MULTILINE)


@lru_cache(maxsize=256)
def _helm(chart: str, values_json: str, name: str, namespace: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """Helm's render of one release, every file (cached: one render per release, whichever kinds are read)."""
    import helm_python as helm

    try:
        with helm.Chart.load(Path(chart)) as loaded:
            manifests = loaded.render(values=json.loads(values_json), name=name, namespace=namespace,
                                      is_install=True)
    except helm.HelmError as exc:
        return (), str(exc)
    return tuple(sorted(manifests.items())), ""


@lru_cache(maxsize=512)
def _render(chart: str, values_json: str, name: str, namespace: str,
            kinds: tuple[str, ...] = SCHEDULED_KINDS) -> tuple[tuple[dict[str, Any], ...], str]:
    """The objects of `kinds` in Helm's render of one release (parsed once per kinds: every control and every
    test reads the same releases)."""
    manifests, error = _helm(chart, values_json, name, namespace)
    if error:
        return (), error
    objects: list[dict[str, Any]] = []
    for path, text in manifests:
        if path.endswith(".txt"):  # NOTES.txt: text for the operator, not objects
            continue
        for part in _DOCUMENT.split(text):
            if _kind_line(kinds).search(part):
                objects.extend(doc for doc in yaml.load_all(part, Loader=_LOADER) if isinstance(doc, dict))
    return tuple(objects + operator_statefulsets(objects)), ""


def render_release(resource: Any, kinds: tuple[str, ...] = SCHEDULED_KINDS) -> RenderedRelease:
    """Render a recorded `kubernetes:helm.sh/v3:Release` with its recorded values, name and namespace (the objects
    of `kinds`; none for `()`, which only fills Helm's cache)."""
    inputs = resource.inputs
    name = str(inputs.get("name") or resource.name)
    namespace = str(inputs.get("namespace") or "default")
    chart = chart_directory(inputs)
    if chart is None:
        return RenderedRelease(resource.name, resource.region, name, namespace, str(inputs.get("chart")), (),
                               error=f"chart {inputs.get('chart')} {inputs.get('version') or ''} is neither one "
                                     f"of the project's charts nor vendored in {VENDORED_CHARTS.relative_to(ROOT)}")
    values, unknowns = plain(inputs.get("values") or {})
    values_json = json.dumps(values, sort_keys=True)
    if kinds:
        objects, error = _render(str(chart), values_json, name, namespace, kinds)
    else:  # Helm's render only, cached for whichever kinds are read later (infra/plan/progress.py)
        objects, error = (), _helm(str(chart), values_json, name, namespace)[1]
    return RenderedRelease(resource.name, resource.region, name, namespace, str(chart.relative_to(ROOT))
                           if chart.is_relative_to(ROOT) else str(chart), objects, error, unknowns)


@cache
def eks_addon_objects() -> tuple[dict[str, Any], ...]:
    """The workloads EKS runs in every cluster outside any Helm release (see the file's sources)."""
    docs = yaml.safe_load_all(EKS_ADDONS_FILE.read_text())
    return tuple(d for d in docs if isinstance(d, dict) and d.get("kind"))
