"""Control `capacity-fit`: every pod the rendered manifests would run is placed on its pool's nodes, at min and max
scale, and every rolling update can finish."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from infra.catalog import InstanceType, load_catalog
from infra.plan.cost import RecordedPool, recorded_pools
from infra.plan.manifests import eks_addon_objects, render_release
from infra.policy.rules.base import (
    EKS_CLUSTER,
    HELM_RELEASE,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
)
from infra.policy.rules.workloads import HOSTNAME, PodTemplate, Request, Taint, pod_templates, rollout_fenceposts
from infra.sizing import is_node_autoscaler_chart

# Charts that add nodes when pods are pending (infra/sizing.py: Karpenter, in every cluster). Without one recorded
# in a region its pools stay at their desired size (their min), so every HPA at its max and every rollout must fit
# there; once one is recorded, that region's pools may grow to max (a NodePool's max: what its limits admit).
EKS_ADDONS = "EKS default add-ons"

DESCRIPTION = (
    "Judged on the rendered manifests, not the config: every Helm release the program records is rendered by "
    "real Helm with its recorded values (the add-on charts from vendored copies of exactly their pinned "
    "versions), and the pods EKS itself runs (aws-node, kube-proxy, CoreDNS; dated facts in "
    "infra/plan/eks_addons.yaml) are added. Each node group and each Karpenter NodePool is a pool of nodes of "
    "its smallest instance type, with the catalog's allocatable CPU and memory (AL2023 nodeadm reservations), "
    "GPUs and max pods, and the pool's labels and taints (a NodePool's template labels and taints, and those "
    "Karpenter adds); a NodePool's max nodes are what its GPU and CPU limits admit of that type, its min nodes "
    "the floor the program records on it. Karpenter's own controller is one of the pods placed. DaemonSets "
    "take their share of every node whose taints they tolerate and whose "
    "labels they select, first. Every other pod must tolerate the taints and select the labels of some pool, "
    "and fit one of its nodes; then all replicas are packed first-fit decreasing (a pod whose required pod "
    "anti-affinity on the hostname selects its own replicas, as Karpenter's controller does, at most one per "
    "node; topology spread over zones is not judged) at min scale (min nodes, "
    "min replicas) and at max scale (HPA max replicas on min nodes while no node autoscaler is installed, "
    "which is the most nodes a pool ever has then; on max nodes once one is), counting pods per node. A "
    "Deployment whose rolling update may not take a pod down first (maxUnavailable 0) needs room for one more "
    "pod beside every replica at max scale. A violation names the pod, the pool and the missing resource with "
    "both numbers.")


@dataclass
class Pool:
    """One node group, as nodes of its smallest instance type."""
    group: Resource
    name: str
    instance: InstanceType
    labels: dict[str, str]
    taints: list[Taint]
    min_nodes: int
    max_nodes: int
    daemon_share: Request = field(default_factory=Request)
    daemon_pods: int = 0
    daemons: list[str] = field(default_factory=list)

    @property
    def allocatable(self) -> Request:
        return Request(self.instance.allocatable_cpu_millicores, self.instance.allocatable_memory_mib * 2 ** 20,
                       self.instance.gpus)

    @property
    def free(self) -> Request:
        """What one node has left for other pods once the DaemonSets run on it."""
        return self.allocatable - self.daemon_share

    @property
    def free_pods(self) -> int:
        return self.instance.max_pods - self.daemon_pods

    def node(self) -> str:
        return f"pool {self.name} node {self.instance.name}"


def _smallest(types: Iterable[str]) -> InstanceType | None:
    catalog = load_catalog()
    known = [catalog.instance(t) for t in types if t in catalog.instances]
    return min(known, key=lambda i: (i.gpus, i.vcpus, i.memory_gib)) if known else None


def _pool(recorded: RecordedPool, found: Findings) -> Pool | None:
    group = recorded.resource
    types = recorded.instance_types
    instance = _smallest(types)
    if instance is None:
        found.fail(f"{'node group' if recorded.kind == 'node-group' else 'NodePool'} {group.name} ({group.region}): "
                   f"none of its instance types {list(types)} is in the catalog, so nothing is known of its nodes' "
                   f"capacity")
        return None
    arm = "ARM" in str(group.inputs.get("amiType") or "")
    # The labels the kubelet puts on every node (https://kubernetes.io/docs/reference/labels-annotations-taints/),
    # and those EKS puts on a managed node group's (managed-node-groups.html) or Karpenter on its own
    # (karpenter.sh/nodepool and the single-valued requirements: website docs/concepts/scheduling.md @ v1.14.1),
    # beside the pool's own.
    labels = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64" if arm else "amd64",
              "node.kubernetes.io/instance-type": instance.name}
    if recorded.kind == "node-group":
        labels |= {"eks.amazonaws.com/nodegroup": str(group.inputs.get("nodeGroupName") or group.name),
                   "eks.amazonaws.com/capacityType": str(group.inputs.get("capacityType") or "ON_DEMAND")}
    else:
        labels |= {"karpenter.sh/nodepool": str((group.inputs.get("metadata") or {}).get("name") or group.name),
                   "karpenter.sh/capacity-type": recorded.capacity}
    labels |= recorded.labels
    taints = [Taint(key, value, effect) for key, value, effect in recorded.taints]
    return Pool(group, recorded.name, instance, labels, taints, recorded.min_nodes, recorded.max_nodes or 0)


def _why_not(pod: PodTemplate, pool: Pool) -> list[str]:
    why = [f"does not tolerate its taint {t}" for t in pod.untolerated(pool.taints)]
    return why + [f"its nodes do not match the pod's {w}" for w in pod.unselected(pool.labels)]


def _lands_on(pod: PodTemplate, pool: Pool) -> bool:
    return not _why_not(pod, pool)


@dataclass
class _Node:
    pool: Pool
    free: Request
    slots: int
    holds: set[str] = field(default_factory=set)  # the pods placed here, by label


def _pack(pools: list[Pool], grown: bool, pods: list[tuple[PodTemplate, int]],
          extra: PodTemplate | None = None) -> tuple[dict[str, int], list[_Node], bool]:
    """First-fit decreasing: place `count` replicas of each pod on the pools' nodes (max nodes if `grown`, else
    min nodes), then `extra` (one more pod of it, a rolling update's surge) beside them. Returns the replicas
    left unplaced per pod, the nodes as left, and whether `extra` found room."""
    nodes = [_Node(p, p.free, p.free_pods) for p in pools for _ in range(p.max_nodes if grown else p.min_nodes)]
    replicas = sorted(((pod, i) for pod, count in pods for i in range(count)),
                      key=lambda pi: pi[0].request.size, reverse=True)

    def place(pod: PodTemplate) -> bool:
        for node in nodes:
            if pod.one_per_node and pod.label in node.holds:
                continue  # its required hostname anti-affinity: never two of its replicas on one node
            if node.slots > 0 and _lands_on(pod, node.pool) and pod.request.fits(node.free):
                node.free, node.slots = node.free - pod.request, node.slots - 1
                node.holds.add(pod.label)
                return True
        return False

    unplaced: dict[str, int] = {}
    for pod, _ in replicas:
        if not place(pod):
            unplaced[pod.label] = unplaced.get(pod.label, 0) + 1
    return unplaced, nodes, extra is None or place(extra)


def _shortage(pod: PodTemplate, nodes: list[_Node]) -> str:
    """What the pod lacks on the roomiest node it may land on."""
    candidates = [n for n in nodes if _lands_on(pod, n.pool)]
    if not candidates:
        return "no pool that admits it has a node at this scale"
    if pod.one_per_node:
        free = [n for n in candidates if pod.label not in n.holds]
        if not free:
            return (f"each of the {len(candidates)} node(s) it may land on already runs one of its replicas "
                    f"(required pod anti-affinity on {HOSTNAME})")
        candidates = free
    best = min(candidates, key=lambda n: (len(pod.request.shortfalls(n.free)) + (n.slots <= 0),
                                          -n.free.gpus, -n.free.cpu_m, -n.free.memory))
    lacks = pod.request.shortfalls(best.free) + (
        [f"pods: node is at its max of {best.pool.instance.max_pods}"] if best.slots <= 0 else [])
    return f"{best.pool.node()}, the roomiest it may land on, is short of " + "; ".join(lacks)


def node_autoscaled(resources: Resources, region: str) -> bool:
    """Whether the record installs a node autoscaler in `region` (a cluster-autoscaler or Karpenter release)."""
    return any(r.region == region and is_node_autoscaler_chart(str(r.inputs.get("chart")))
               for r in resources.of_type(HELM_RELEASE))


def _workloads(resources: Resources, region: str, found: Findings) -> list[PodTemplate]:
    pods: list[PodTemplate] = []
    for release in resources.of_type(HELM_RELEASE):
        if release.region != region:
            continue
        rendered = render_release(release)
        found.judged(None, release=f"{rendered.namespace}/{rendered.name}", region=region, chart=rendered.chart,
                     rendered_objects=len(rendered.objects), values_unknown_at_preview=rendered.had_unknowns)
        if rendered.error:
            found.fail(f"Helm release {rendered.namespace}/{rendered.name} ({region}) cannot be rendered, so its "
                       f"pods cannot be placed: {rendered.error}")
            continue
        pods += pod_templates(rendered.objects, region, rendered.name, rendered.namespace)
    if any(c.region == region for c in resources.of_type(EKS_CLUSTER)):
        pods += pod_templates(eks_addon_objects(), region, EKS_ADDONS)
    return pods


def _place_daemonsets(pools: list[Pool], daemonsets: list[PodTemplate], found: Findings) -> None:
    for pool in pools:
        for ds in daemonsets:
            if not _lands_on(ds, pool):
                continue
            lacks = ds.request.shortfalls(pool.free) + (
                [f"pods: node is at its max of {pool.instance.max_pods}"] if pool.free_pods <= 0 else [])
            if lacks:  # it stays pending there: reported once, and takes nothing
                found.fail(f"DaemonSet {ds.label} cannot run on {pool.node()} beside the DaemonSets before it "
                           f"({', '.join(pool.daemons) or 'none'}): short of " + "; ".join(lacks))
                continue
            pool.daemon_share, pool.daemon_pods = pool.daemon_share + ds.request, pool.daemon_pods + 1
            pool.daemons.append(f"{ds.namespace}/{ds.name}")


def _fits_some_node(pod: PodTemplate, pools: list[Pool], region: str, found: Findings) -> bool:
    """A pod no node could ever take fails here: no pool admits it, or it is larger than every admitting node."""
    admitting = [p for p in pools if _lands_on(pod, p)]
    if not admitting:
        reasons = "; ".join(f"pool {p.name} {', '.join(_why_not(pod, p))}" for p in pools) or "no node group"
        found.fail(f"{pod.kind} {pod.label} can never be scheduled: no pool in {region} admits it ({reasons})")
        return False
    if any(pod.request.fits(p.free) and p.free_pods > 0 for p in admitting):
        return True
    for p in admitting:
        lacks = pod.request.shortfalls(p.free) or [f"pods: {p.daemon_pods} DaemonSet pods fill its "
                                                   f"{p.instance.max_pods}"]
        found.fail(f"{pod.kind} {pod.label} can never be scheduled: it needs {pod.request.describe()}; "
                   f"{p.node()} has {p.free.describe()} allocatable after DaemonSets "
                   f"({', '.join(p.daemons) or 'none'}): short of " + "; ".join(lacks))
    return False


def _check_rollouts(pools: list[Pool], pods: list[PodTemplate], autoscaled: bool, found: Findings) -> None:
    # An update may start at any scale the HPAs reach: judged with every Deployment at its HPA max, on the most
    # nodes the pools can have (min nodes while nothing adds nodes).
    busiest = [(p, p.max_replicas) for p in pods]
    for pod in pods:
        # Only a Deployment surges: a StatefulSet's rolling update deletes a pod before it creates the replacement
        # (https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/#rolling-updates), so it always
        # has room (the gateway's pods, each on its own spool volume).
        if pod.kind != "Deployment":
            continue
        # Percentages resolve against the replicas running; the surge needs room if at any count the rollout may
        # not take a pod down first.
        counts = sorted({pod.min_replicas, pod.max_replicas})
        posts = [p for n in counts if (p := rollout_fenceposts(pod.strategy, n)) is not None and p[1] == 0
                 and p[0] > 0]
        if not posts:
            continue  # Recreate, or old pods may go first: the update always makes progress
        # With maxUnavailable 0 an old pod goes only once a new one is ready, so one surge pod must fit beside
        # every replica; a second surge pod may wait for the first old pod to go (deployment_util.go,
        # NewRSNewReplicas and the rolling updater's scale-down of old replica sets).
        unplaced, nodes, ok = _pack(pools, autoscaled, busiest, extra=pod)
        if unplaced.get(pod.label):
            continue  # its replicas do not fit even before the update: reported as such
        found.judged(None, rollout=pod.label, max_surge=posts[0][0], max_unavailable=0,
                     replicas=pod.max_replicas, scale="max nodes" if autoscaled else "min nodes",
                     surge_pod_fits=ok)
        if not ok:
            size = ("its pools' min = desired size (no node autoscaler is installed)" if not autoscaled
                    else "its pools' max size")
            found.fail(f"rolling update of Deployment {pod.label} can never finish: maxSurge {posts[0][0]} / "
                       f"maxUnavailable 0 needs one more pod ({pod.request.describe()}) beside its "
                       f"{pod.max_replicas} replica(s) at their HPA max and every other pod at its max, before "
                       f"any old pod goes, but at {size} " + _shortage(pod, nodes))


def check(resources: Resources, policy: PolicyConfig, node_autoscaler: bool | None = None) -> Findings:
    """`node_autoscaler`: whether pools grow to their max when pods are pending; None reads it from the record
    (a cluster-autoscaler or Karpenter release in the region)."""
    found = Findings()
    recorded = recorded_pools(resources.all)
    regions = sorted({p.region for p in recorded} | {r.region for r in resources.of_type(HELM_RELEASE)})
    for region in regions:
        pools = [p for g in recorded if g.region == region if (p := _pool(g, found))]
        pods = _workloads(resources, region, found)
        autoscaled = node_autoscaled(resources, region) if node_autoscaler is None else node_autoscaler
        _place_daemonsets(pools, [p for p in pods if p.kind == "DaemonSet"], found)
        for pool in pools:
            found.judged(pool.group, pool=pool.name, node=pool.instance.name, min_nodes=pool.min_nodes,
                         max_nodes=pool.max_nodes, allocatable=pool.allocatable.describe(),
                         after_daemonsets=pool.free.describe(), max_pods=pool.instance.max_pods,
                         daemonsets=list(pool.daemons))
        placeable = [p for p in pods if p.kind != "DaemonSet" and _fits_some_node(p, pools, region, found)]
        lasting = [p for p in placeable if p.kind != "Job"]  # a hook Job runs alone for a moment: fitting is enough
        for pod in placeable:
            found.judged(None, pod=pod.label, kind=pod.kind, source=pod.source, requests=pod.request.describe(),
                         replicas=[pod.min_replicas, pod.max_replicas],
                         pools=[p.name for p in pools if _lands_on(pod, p)])
        for scale in ("min", "max"):
            counts = [(p, p.min_replicas if scale == "min" else p.max_replicas) for p in lasting]
            unplaced, nodes, _ = _pack(pools, scale == "max" and autoscaled, counts)
            for pod, wanted in counts:
                if unplaced.get(pod.label):
                    where = ("" if scale == "min" or autoscaled else
                             " (on min nodes: no node autoscaler is installed, so pools never grow)")
                    found.fail(f"at {scale} scale{where} {unplaced[pod.label]} of {wanted} replicas of {pod.kind} "
                               f"{pod.label} cannot be placed ({pod.request.describe()} each): "
                               + _shortage(pod, nodes))
        _check_rollouts(pools, lasting, autoscaled, found)
    return found



def nodes_at_min_scale(resources: Resources, region: str) -> list[tuple[str, list[str]]]:
    """Each node of `region`'s pools at min scale (min nodes, min replicas) as the control packs it: its pool's name
    and the pods placed on it, by label. What a reader checks a placement rule against (spread, anti-affinity)."""
    found = Findings()
    pools = [p for g in recorded_pools(resources.all) if g.region == region if (p := _pool(g, found))]
    pods = _workloads(resources, region, found)
    _place_daemonsets(pools, [p for p in pods if p.kind == "DaemonSet"], found)
    lasting = [p for p in pods if p.kind not in ("DaemonSet", "Job") and _fits_some_node(p, pools, region, found)]
    _, nodes, _ = _pack(pools, False, [(p, p.min_replicas) for p in lasting])
    return [(n.pool.name, sorted(n.holds)) for n in nodes]
