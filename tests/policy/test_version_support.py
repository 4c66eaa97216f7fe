"""Control version-support: clusters run a Kubernetes version EKS supports at least 60 days past the plan's date."""
from __future__ import annotations

import dataclasses
from datetime import date

from infra.policy.rules import PolicyConfig, evaluate_resources
from tests.policy.helpers import assert_passes, assert_rejected, find, mutated, plan_of, result, stack_raw

CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"


def on(plan, resources, day: date):
    policy = dataclasses.replace(PolicyConfig.from_stack(plan.config), plan_date=day)
    return next(r for r in evaluate_resources(resources, policy) if r.id == "version-support")


def test_every_cluster_runs_a_supported_version_and_pins_its_node_groups(stack_plan):
    res = result(stack_plan, "version-support")
    assert_passes(res)
    clusters = [e for e in res.evidence if e["type"] == CLUSTER]
    assert len(clusters) == len(stack_plan.config.regions)
    for e in clusters:
        assert (e["version"], e["support_type"], e["support_ends"]) == ("1.35", "STANDARD", "2027-03-27")
        assert e["plan_date"] == "2026-11-25" and e["days_left"] == 122
    assert all(e["version"] == "1.35" for e in res.evidence if e["type"] == NODE_GROUP)


def test_version_whose_standard_support_ends_within_60_days_is_rejected():
    """Broken config: 1.34 on standard support; EKS ends it on 2026-12-02, a week after the plan."""
    raw = stack_raw("preview")
    raw["cluster"]["kubernetes_version"] = "1.34"
    plan = plan_of(raw, "preview")
    plan.date = date(2026, 11, 25)
    assert_rejected(result(plan, "version-support"),
                    "runs Kubernetes 1.34, whose standard support ends 2026-12-02, 7 days after the plan's date "
                    "2026-11-25 (at least 60 needed)",
                    "upgrade to 1.35 (supported until 2027-03-27)")


def test_the_plan_date_decides_not_the_clock(prod_plan):
    """The same stack, judged 54 days before 1.35's standard support ends: no newer version is known yet."""
    assert_passes(on(prod_plan, prod_plan.resources, date(2027, 1, 25)))
    assert_rejected(on(prod_plan, prod_plan.resources, date(2027, 2, 1)),
                    "runs Kubernetes 1.35, whose standard support ends 2027-03-27, 54 days after",
                    "no newer version in infra/catalog.yaml lasts long enough")


def test_unknown_version_is_rejected(prod_plan):
    """Program bug (simulated): a cluster asks for a version the calendar has never heard of."""
    resources = mutated(prod_plan, lambda rs: find(rs, CLUSTER, "us-west-2").inputs.update(version="1.99"))
    assert_rejected(on(prod_plan, resources, date(2026, 11, 25)),
                    "EKS cluster us-west-2 in us-west-2 runs Kubernetes 1.99, which is not in the EKS version calendar")


def test_node_group_not_pinned_to_its_cluster_version_is_rejected(prod_plan):
    """Program bug (simulated): one system node group loses its version, another lags a version."""
    def change(rs):
        find(rs, NODE_GROUP, "eu-north-1-system").inputs.pop("version")
        find(rs, NODE_GROUP, "eu-west-2-system").inputs["version"] = "1.34"
    assert_rejected(on(prod_plan, mutated(prod_plan, change), date(2026, 11, 25)),
                    "node group eu-north-1-system in eu-north-1 is not pinned to a version; pin it to its "
                    "cluster's 1.35",
                    "node group eu-west-2-system in eu-west-2 is pinned to 1.34")


def test_karpenter_supports_its_clusters_version_and_pins_the_gpu_nodes_ami(stack_plan):
    res = result(stack_plan, "version-support")
    releases = [e for e in res.evidence if "karpenter" in e]
    assert len(releases) == len(stack_plan.config.regions)
    assert all((e["karpenter"], e["kubernetes"], e["oldest_supported"]) == ("1.14.1", "1.35", "1.9")
               for e in releases)
    classes = [e for e in res.evidence if "ami_aliases" in e]
    assert classes and all(e["ami_aliases"] == ["al2023@v20260714"] for e in classes)


def test_karpenter_older_than_its_clusters_version_needs_is_rejected(prod_plan):
    """Program bug (simulated): us-east-1 pins Karpenter 1.8.0, which predates Kubernetes 1.35 support (1.9)."""
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "us-east-1-karpenter").inputs.update(version="1.8.0"))
    assert_rejected(on(prod_plan, resources, date(2026, 11, 25)),
                    "Karpenter 1.8.0 in us-east-1 does not support Kubernetes 1.35 (Karpenter 1.9 or newer does)")


def test_nodeclass_following_the_latest_ami_is_rejected(prod_plan):
    """Program bug (simulated): a node class follows al2023@latest, so any new AMI would roll the H100 nodes."""
    resources = mutated(prod_plan, lambda rs: find(rs, NODE_CLASS, "us-west-2-h100-nodeclass").inputs["spec"]
                        .update(amiSelectorTerms=[{"alias": "al2023@latest"}]))
    assert_rejected(on(prod_plan, resources, date(2026, 11, 25)),
                    "EC2NodeClass us-west-2-h100-nodeclass in us-west-2 selects AMI alias 'al2023@latest'")
