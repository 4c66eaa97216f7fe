"""Control `version-support`: every cluster runs a Kubernetes version EKS supports well past the plan's date, node
groups pinned to it."""
from __future__ import annotations

from datetime import UTC, date, datetime

from infra.catalog import VersionSupport, load_catalog
from infra.plan.cost import EC2_NODE_CLASS
from infra.policy.rules.base import EKS_CLUSTER, HELM_RELEASE, NODE_GROUP, Findings, PolicyConfig, Resources, as_list

# EKS announces the end of standard support at least 60 days ahead (kubernetes-versions.html, "Amazon EKS
# version FAQs"); an upgrade needs that long to be planned, tested on preview and rolled out.
MIN_DAYS_LEFT = 60

# The oldest Karpenter release that supports each Kubernetes version (website/content/en/docs/upgrading/
# compatibility.md, "Compatibility Matrix", aws/karpenter-provider-aws @ 1d927085, the v1.14.1 docs).
KARPENTER_SUPPORTS = {"1.30": "0.37", "1.31": "1.0.5", "1.32": "1.2", "1.33": "1.5", "1.34": "1.6", "1.35": "1.9",
                      "1.36": "1.13"}
KARPENTER_CHART = "karpenter"

DESCRIPTION = (
    "Every EKS cluster runs a Kubernetes version listed in the EKS version calendar (infra/catalog.yaml, from the "
    "EKS user guide), and its support (standard support, the program's upgrade policy) lasts at least "
    f"{MIN_DAYS_LEFT} days past the plan's date. When support ends EKS upgrades the control plane itself, and the "
    "next deploy would try to set the old version back, a downgrade EKS refuses; a failure names the version to "
    "upgrade to and its end date. Every managed node group is pinned to its cluster's version. Every Karpenter "
    "release supports its cluster's Kubernetes version (Karpenter's compatibility matrix), and every "
    "EC2NodeClass pins its AMI to a release (an alias family@vYYYYMMDD, never @latest, which moves under a "
    "running pool; Karpenter picks that release's image for the cluster's own Kubernetes version).")


def _version(value: object) -> str:
    return str(value) if value is not None else ""


def _support_ends(support: VersionSupport, support_type: str) -> date:
    return support.standard_until if support_type == "STANDARD" else support.extended_until


def _upgrade_path(version: str, calendar: dict[str, VersionSupport], support_type: str, today: date) -> str:
    newer = sorted((v for v in calendar if _key(v) > _key(version)), key=_key)
    good = [v for v in newer if (_support_ends(calendar[v], support_type) - today).days >= MIN_DAYS_LEFT]
    if not good:
        return "no newer version in infra/catalog.yaml lasts long enough: refresh the calendar (`llmp catalog refresh`)"
    nxt = good[0]
    return (f"upgrade to {nxt} (supported until {_support_ends(calendar[nxt], support_type).isoformat()}), one "
            f"minor version at a time from {version}")


def _key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    today = policy.plan_date or datetime.now(UTC).date()
    calendar = load_catalog().kubernetes_versions
    clusters = resources.of_type(EKS_CLUSTER)
    if not clusters:
        found.fail("the stack creates no EKS cluster to judge")
    versions: dict[str, str] = {}
    for cluster in clusters:
        version = _version(cluster.inputs.get("version"))
        versions[cluster.region] = version
        # EKS's default upgrade policy is EXTENDED (kubernetes-versions.html, "extended support FAQs").
        support_type = str((cluster.inputs.get("upgradePolicy") or {}).get("supportType") or "EXTENDED")
        support = calendar.get(version)
        ends = _support_ends(support, support_type) if support else None
        found.judged(cluster, version=version or None, support_type=support_type, plan_date=today.isoformat(),
                     support_ends=ends.isoformat() if ends else None,
                     days_left=(ends - today).days if ends else None)
        if not version:
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} does not pin a Kubernetes version: EKS "
                       f"picks its default, and the next deploy may differ from the last")
        elif ends is None:  # not in the calendar
            known = ", ".join(sorted(calendar, key=_key))
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} runs Kubernetes {version}, which is not in "
                       f"the EKS version calendar (infra/catalog.yaml knows {known})")
        elif (ends - today).days < MIN_DAYS_LEFT:
            kind = "standard" if support_type == "STANDARD" else "extended"
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} runs Kubernetes {version}, whose {kind} "
                       f"support ends {ends.isoformat()}, {(ends - today).days} days after the plan's date "
                       f"{today.isoformat()} (at least {MIN_DAYS_LEFT} needed): EKS will then upgrade the cluster "
                       f"itself and the next deploy would ask for a downgrade; "
                       f"{_upgrade_path(version, calendar, support_type, today)}")
    _karpenter(resources, versions, found)
    for group in resources.of_type(NODE_GROUP):
        version = _version(group.inputs.get("version"))
        want = versions.get(group.region)
        found.judged(group, version=version or None, cluster_version=want)
        if want and version != want:
            found.fail(f"node group {group.name} in {group.region} is "
                       f"{'not pinned to a version' if not version else f'pinned to {version}'}; pin it to its "
                       f"cluster's {want} (EKS never upgrades managed node groups on its own)")
    return found


def _karpenter(resources: Resources, versions: dict[str, str], found: Findings) -> None:
    for release in resources.of_type(HELM_RELEASE):
        chart = str(release.inputs.get("chart") or "").rstrip("/").rsplit("/", 1)[-1]
        if chart != KARPENTER_CHART:
            continue
        version, kubernetes = str(release.inputs.get("version") or ""), versions.get(release.region, "")
        oldest = KARPENTER_SUPPORTS.get(kubernetes)
        found.judged(release, karpenter=version or None, kubernetes=kubernetes or None, oldest_supported=oldest)
        if not version:
            found.fail(f"Karpenter release {release.name} in {release.region} pins no chart version")
        elif kubernetes and oldest is None:
            found.fail(f"Karpenter's compatibility matrix (infra/policy/rules/versions.py) does not list Kubernetes "
                       f"{kubernetes}, which {release.region}'s cluster runs: check that Karpenter {version} "
                       f"supports it and add it")
        elif oldest is not None and _key(version) < _key(oldest):
            found.fail(f"Karpenter {version} in {release.region} does not support Kubernetes {kubernetes} "
                       f"(Karpenter {oldest} or newer does): upgrade Karpenter before the cluster")
    for node_class in resources.of_type(EC2_NODE_CLASS):
        spec = node_class.inputs.get("spec") or {}
        aliases = [str(t.get("alias")) for t in as_list(spec.get("amiSelectorTerms")) if t.get("alias")]
        found.judged(node_class, ami_aliases=aliases)
        for alias in aliases:
            pinned = alias.split("@", 1)[1] if "@" in alias else ""
            if not pinned or pinned == "latest":
                found.fail(f"EC2NodeClass {node_class.name} in {node_class.region} selects AMI alias {alias!r}: "
                           f"pin a release (e.g. al2023@v20260714), or every new AMI rolls the pool's nodes "
                           f"unreviewed")
