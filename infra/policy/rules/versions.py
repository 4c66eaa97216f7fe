"""Control `version-support`: every cluster runs a Kubernetes version EKS supports well past the plan's date, node
groups pinned to it."""
from __future__ import annotations

from datetime import UTC, date, datetime

from infra.catalog import VersionSupport, load_catalog
from infra.policy.rules.base import EKS_CLUSTER, NODE_GROUP, Findings, PolicyConfig, Resources

# EKS announces the end of standard support at least 60 days ahead (kubernetes-versions.html, "Amazon EKS
# version FAQs"); an upgrade needs that long to be planned, tested on preview and rolled out.
MIN_DAYS_LEFT = 60

DESCRIPTION = (
    "Every EKS cluster runs a Kubernetes version listed in the EKS version calendar (infra/catalog.yaml, from the "
    "EKS user guide), and its support (standard support, the program's upgrade policy) lasts at least "
    f"{MIN_DAYS_LEFT} days past the plan's date. When support ends EKS upgrades the control plane itself, and the "
    "next deploy would try to set the old version back, a downgrade EKS refuses; a failure names the version to "
    "upgrade to and its end date. Every managed node group is pinned to its cluster's version.")


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
    for group in resources.of_type(NODE_GROUP):
        version = _version(group.inputs.get("version"))
        want = versions.get(group.region)
        found.judged(group, version=version or None, cluster_version=want)
        if want and version != want:
            found.fail(f"node group {group.name} in {group.region} is "
                       f"{'not pinned to a version' if not version else f'pinned to {version}'}; pin it to its "
                       f"cluster's {want} (EKS never upgrades managed node groups on its own)")
    return found
