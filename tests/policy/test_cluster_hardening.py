"""Control cluster-hardening: EKS APIs are private or allow-listed, Kubernetes Secrets are KMS-encrypted, control planes
log."""
from __future__ import annotations

from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    mutated,
    plan_of,
    result,
    result_of_resources,
    stack_raw,
)

CLUSTER = "aws:eks/cluster:Cluster"


def test_cluster_endpoints_are_allow_listed_encrypted_and_logged(stack_plan):
    res = result(stack_plan, "cluster-hardening")
    assert_passes(res)
    clusters = [e for e in res.evidence if e["type"] == CLUSTER]
    assert len(clusters) == len(stack_plan.config.regions)
    for e in clusters:
        assert e["endpoint_private"] and not e["endpoint_public"] and e["public_access_cidrs"] == []
        assert e["encrypted_resources"] == ["secrets"] and e["secrets_encryption_key"].startswith(
            f"arn:aws:kms:{e['region']}:")
        assert {"api", "audit", "authenticator"} <= set(e["control_plane_logs"])


def test_api_endpoint_open_to_half_the_internet_is_rejected():
    """Broken config: config validation refuses 0.0.0.0/0, but two /1 blocks open the API to everyone just the same."""
    raw = stack_raw("preview")
    raw["cluster"]["public_access_cidrs"] = ["0.0.0.0/1", "128.0.0.0/1"]
    assert_rejected(result(plan_of(raw, "preview"), "cluster-hardening"),
                    "opens its public API endpoint to 0.0.0.0/1 (2,147,483,648 addresses)",
                    "128.0.0.0/1")


def test_carrier_grade_nat_range_allow_list_is_rejected():
    """Broken config: a /10 "allow-list" admits four million addresses."""
    raw = stack_raw("preview")
    raw["cluster"]["public_access_cidrs"] = ["100.64.0.0/10"]
    assert_rejected(result(plan_of(raw, "preview"), "cluster-hardening"),
                    "100.64.0.0/10 (4,194,304 addresses); allow-list entries may be at most /16")


def test_public_endpoint_without_allow_list_is_rejected(prod_plan):
    """Program bug (simulated): the cluster in eu-west-2 is public with no allow-list (EKS then admits 0.0.0.0/0)."""
    resources = mutated(prod_plan, lambda rs: find(rs, CLUSTER, "eu-west-2")
                        .inputs["vpcConfig"].update(endpointPublicAccess=True, publicAccessCidrs=None))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "EKS cluster eu-west-2 in eu-west-2 has a public API endpoint open to the whole internet")


def test_cluster_without_secrets_encryption_is_rejected(prod_plan):
    """Program bug (simulated): the cluster in us-west-2 is created without an encryption config."""
    resources = mutated(prod_plan, lambda rs: find(rs, CLUSTER, "us-west-2").inputs.pop("encryptionConfig"))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "EKS cluster us-west-2 in us-west-2 does not envelope-encrypt Kubernetes Secrets with KMS")


def test_cluster_without_audit_logs_is_rejected(prod_plan):
    """Program bug (simulated): control plane logging keeps only the scheduler."""
    resources = mutated(prod_plan, lambda rs: find(rs, CLUSTER, "us-east-1").inputs.update(
        enabledClusterLogTypes=["scheduler"]))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "EKS cluster us-east-1 in us-east-1 does not log api, audit, authenticator from its control plane")


def test_karpenters_interruption_queue_is_encrypted_and_refuses_plain_http(stack_plan):
    res = result(stack_plan, "cluster-hardening")
    queues = [e for e in res.evidence if e.get("type") == "aws:sqs/queue:Queue"]
    assert len(queues) == len(stack_plan.config.regions)
    assert all(e["encrypted_at_rest"] and e["denies_plain_http"] for e in queues)


def test_interruption_queue_without_encryption_or_tls_policy_is_rejected(prod_plan):
    """Program bug (simulated): us-west-2's queue loses SSE and its queue policy."""
    def weaken(rs):
        find(rs, "aws:sqs/queue:Queue", "us-west-2-karpenter-interruption").inputs.pop("sqsManagedSseEnabled")
        rs.remove(find(rs, "aws:sqs/queuePolicy:QueuePolicy", "us-west-2-karpenter-interruption"))
    res = result_of_resources(prod_plan, mutated(prod_plan, weaken), "cluster-hardening")
    assert_rejected(res, "SQS queue us-west-2-karpenter-interruption in us-west-2 is not encrypted at rest",
                    "SQS queue us-west-2-karpenter-interruption in us-west-2 has no queue policy denying requests "
                    "without TLS")
