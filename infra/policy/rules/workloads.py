"""The pods rendered objects would run, as the Kubernetes scheduler sees them: requests, node selection, tolerations,
replica counts and rollout strategy."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from infra.scheduling import GPU_RESOURCE

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
GIB = 1024 ** 3
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(10) ** 3,
            "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15,
            "E": Decimal(10) ** 18}
# Taint effects that keep a pod off a node it does not tolerate; PreferNoSchedule only discourages.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("500m", "32Gi", "1e3", 4) as a number of base units."""
    text = str(value).strip()
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[:-2]) * factor
    if text and text[-1] in _DECIMAL and not text[-1].isdigit():
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from exc


@dataclass(frozen=True)
class Request:
    """What a pod (or what is left of a node) holds: CPU in millicores, memory in bytes, GPUs."""
    cpu_m: int = 0
    memory: int = 0
    gpus: int = 0

    @classmethod
    def of(cls, resources: Mapping[str, Any]) -> Request:
        return cls(cpu_m=math.ceil(quantity(resources.get("cpu", 0)) * 1000),
                   memory=math.ceil(quantity(resources.get("memory", 0))),
                   gpus=math.ceil(quantity(resources.get(GPU_RESOURCE, 0))))

    def __add__(self, other: Request) -> Request:
        return Request(self.cpu_m + other.cpu_m, self.memory + other.memory, self.gpus + other.gpus)

    def __sub__(self, other: Request) -> Request:
        return Request(self.cpu_m - other.cpu_m, self.memory - other.memory, self.gpus - other.gpus)

    def top(self, other: Request) -> Request:
        return Request(max(self.cpu_m, other.cpu_m), max(self.memory, other.memory), max(self.gpus, other.gpus))

    def fits(self, free: Request) -> bool:
        return self.cpu_m <= free.cpu_m and self.memory <= free.memory and self.gpus <= free.gpus

    def shortfalls(self, free: Request) -> list[str]:
        """Each resource this request lacks in `free`, with both numbers."""
        out = []
        if self.cpu_m > free.cpu_m:
            out.append(f"CPU: needs {cores(self.cpu_m)}, has {cores(free.cpu_m)}")
        if self.memory > free.memory:
            out.append(f"memory: needs {gib(self.memory)}, has {gib(free.memory)}")
        if self.gpus > free.gpus:
            out.append(f"{GPU_RESOURCE}: needs {self.gpus}, has {max(0, free.gpus)}")
        return out

    def describe(self) -> str:
        text = f"{cores(self.cpu_m)} CPU, {gib(self.memory)} memory"
        return f"{text}, {self.gpus} GPU" if self.gpus else text

    @property
    def size(self) -> tuple[int, int, int]:
        return self.gpus, self.cpu_m, self.memory


def cores(millicores: int) -> str:
    return f"{millicores / 1000:.2f}".rstrip("0").rstrip(".")


def gib(memory: int) -> str:
    return f"{memory / GIB:.2f} GiB"


def container_request(container: Mapping[str, Any]) -> Request:
    # A container that sets only a limit requests that limit: "If you specify a limit for a resource, but do not
    # specify any request, ... Kubernetes copies the limit you specified and uses it as the requested value"
    # (https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/).
    resources = container.get("resources") or {}
    return Request.of({**(resources.get("limits") or {}), **(resources.get("requests") or {})})


def pod_request(spec: Mapping[str, Any]) -> Request:
    """The pod's effective request, as the scheduler computes it: the sum of its containers (and sidecar init
    containers) or the largest ordinary init container, whichever is larger, plus the pod overhead
    (https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#resource-sharing-within-containers,
    https://kubernetes.io/docs/concepts/scheduling-eviction/pod-overhead/)."""
    inits = list(spec.get("initContainers") or [])
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    total = Request()
    for c in [*(spec.get("containers") or []), *sidecars]:
        total = total + container_request(c)
    for c in inits:
        if c.get("restartPolicy") != "Always":
            total = total.top(container_request(c))
    return total + Request.of(spec.get("overhead") or {})


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> bool:
    """core/v1 Toleration.ToleratesTaint: effect empty or equal; Exists matches any value of the key (an empty
    key with Exists matches every taint); Equal (the default) needs the value too."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.effect:
            continue
        key = t.get("key") or ""
        if key and key != taint.key:
            continue
        operator = t.get("operator") or "Equal"
        if operator == "Exists" or (operator == "Equal" and str(t.get("value") or "") == taint.value):
            return True
    return False


def _matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), [str(v) for v in expr.get("values") or []]
    has = key in labels
    if op == "In":
        return has and labels[str(key)] in values
    if op == "NotIn":
        return not has or labels[str(key)] not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    if op in ("Gt", "Lt") and has and values:
        try:
            node, bound = int(labels[str(key)]), int(values[0])
        except ValueError:
            return False
        return node > bound if op == "Gt" else node < bound
    return False


@dataclass(frozen=True)
class PodTemplate:
    """One workload's pod template and how many of it run."""
    region: str
    source: str  # the Helm release that renders it, or where the facts come from
    kind: str
    namespace: str
    name: str
    request: Request
    node_selector: Mapping[str, str]
    required_terms: tuple[tuple[Mapping[str, Any], ...], ...] | None  # None: no required node affinity
    tolerations: tuple[Mapping[str, Any], ...]
    min_replicas: int
    max_replicas: int
    strategy: Mapping[str, Any] = field(default_factory=dict)
    # A required pod anti-affinity on the node's hostname against its own pods: no two replicas share a node.
    one_per_node: bool = False

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name} ({self.region})"

    def untolerated(self, taints: Iterable[Taint]) -> list[Taint]:
        return [t for t in taints if t.effect in BLOCKING_EFFECTS and not tolerates(self.tolerations, t)]

    def unselected(self, labels: Mapping[str, str]) -> list[str]:
        """Why a node with these labels is not one this pod selects (empty: it is)."""
        why = [f"nodeSelector {k}={v}" for k, v in self.node_selector.items() if labels.get(k) != str(v)]
        if self.required_terms is not None and not any(
                all(_matches(e, labels) for e in term) for term in self.required_terms):
            why.append("required node affinity")
        return why


def _replicas(obj: Mapping[str, Any], hpas: Mapping[tuple[str, str], tuple[int, int]]) -> tuple[int, int]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "Job":
        n = int(spec.get("parallelism", 1))
        return n, n
    scaled = hpas.get((obj["kind"], obj["metadata"]["name"]))
    if scaled is not None:
        return scaled
    n = int(spec.get("replicas", 1))
    return n, n


def scaling_ranges(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, name) of each scaled workload -> (min, max) replicas: from an HPA, or from a KEDA ScaledObject, which
    creates the HPA at run time from its minReplicaCount (KEDA's default 0) and maxReplicaCount (default 100)
    (https://keda.sh/docs/2.20/reference/scaledobject-spec/). With an idleReplicaCount the workload rests there while
    every trigger reads zero (a batch model idling at zero), so that is its min: once woken it scales between
    minReplicaCount and its max, which the max scale judges (a node autoscaler grows the pool for it)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for obj in objects:
        spec = obj.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        if obj.get("kind") == "HorizontalPodAutoscaler":
            out[(str(target["kind"]), str(target["name"]))] = (int(spec.get("minReplicas", 1)),
                                                               int(spec["maxReplicas"]))
        elif obj.get("kind") == "ScaledObject" and str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            rest = spec.get("idleReplicaCount", spec.get("minReplicaCount", 0))
            out[(str(target.get("kind") or "Deployment"), str(target["name"]))] = (
                int(rest), int(spec.get("maxReplicaCount", 100)))
    return out


HOSTNAME = "kubernetes.io/hostname"


def _one_per_node(pod: Mapping[str, Any], own_labels: Mapping[str, str]) -> bool:
    """Whether a required podAntiAffinity term on the hostname selects the pod's own labels (in its own namespace:
    no `namespaces` or `namespaceSelector`), so the scheduler puts no two of its replicas on one node
    (https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#inter-pod-affinity-and-anti-affinity).
    Karpenter's chart renders one (values.yaml `affinity`, with its pod selector labels patched in)."""
    terms = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or []
    for term in terms:
        selector = term.get("labelSelector") or {}
        if term.get("topologyKey") != HOSTNAME or not selector or term.get("namespaces") \
                or term.get("namespaceSelector") is not None:
            continue
        if all(own_labels.get(str(k)) == str(v) for k, v in (selector.get("matchLabels") or {}).items()) and \
                all(_matches(e, own_labels) for e in selector.get("matchExpressions") or []):
            return True
    return False


def pod_templates(objects: Iterable[Mapping[str, Any]], region: str, source: str,
                  namespace: str = "default") -> list[PodTemplate]:
    """The workloads among rendered objects (Helm test hooks left out: they run on `helm test` only)."""
    objects = list(objects)
    hpas = scaling_ranges(objects)
    out = []
    for obj in objects:
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        meta = obj.get("metadata") or {}
        if "test" in str((meta.get("annotations") or {}).get("helm.sh/hook", "")):
            continue
        spec = obj.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        own_labels = {str(k): str(v) for k, v in (((spec.get("template") or {}).get("metadata") or {})
                                                  .get("labels") or {}).items()}
        required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution")
        terms = None if required is None else tuple(
            tuple(t.get("matchExpressions") or []) for t in required.get("nodeSelectorTerms") or [])
        lo, hi = _replicas(obj, hpas)
        # A DaemonSet's and a StatefulSet's rollout is `updateStrategy`, a Deployment's `strategy`.
        strategy = spec.get("updateStrategy" if obj["kind"] in ("DaemonSet", "StatefulSet") else "strategy") or {}
        out.append(PodTemplate(
            region=region, source=source, kind=str(obj["kind"]), namespace=str(meta.get("namespace") or namespace),
            name=str(meta["name"]), request=pod_request(pod),
            node_selector={str(k): str(v) for k, v in (pod.get("nodeSelector") or {}).items()},
            required_terms=terms, tolerations=tuple(pod.get("tolerations") or []),
            min_replicas=lo, max_replicas=hi, strategy=strategy, one_per_node=_one_per_node(pod, own_labels)))
    return out


def _scaled(value: Any, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = Decimal(value[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def rollout_fenceposts(strategy: Mapping[str, Any], replicas: int) -> tuple[int, int] | None:
    """(maxSurge, maxUnavailable) as pods for a Deployment of `replicas`, or None for Recreate. Kubernetes
    rounds a surge percentage up and an unavailable percentage down, and makes unavailable 1 when both come
    to 0 (pkg/controller/deployment/util/deployment_util.go, ResolveFenceposts); both default to 25%."""
    if strategy.get("type") == "Recreate":
        return None
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable
