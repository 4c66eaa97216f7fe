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


STACK_RELEASE = "kubernetes:helm.sh/v3:Release"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
TOPIC = "aws:sns/topic:Topic"


def test_metrics_are_stored_on_encrypted_volumes_and_alerts_in_encrypted_topics(stack_plan):
    res = result(stack_plan, "cluster-hardening")
    volumes = [e for e in res.evidence if "prometheus_storage_class" in e]
    topics = [e for e in res.evidence if e["type"] == TOPIC]
    assert len(volumes) == len(topics) == len(stack_plan.config.regions)
    assert all(e["encrypted"] == "true" and e["volume_type"] == "gp3" for e in volumes)
    assert all(e["kms_master_key_id"] == "alias/aws/sns" for e in topics)


def test_prometheus_on_an_unencrypted_storage_class_is_rejected(prod_plan):
    def plain_gp3(rs):
        find(rs, STORAGE_CLASS, "us-east-1-monitoring-gp3").inputs["parameters"]["encrypted"] = "false"
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, plain_gp3), "cluster-hardening"),
                    "StorageClass 'gp3-encrypted' in us-east-1 (Prometheus' volume) does not encrypt")

    def no_volume(rs):
        spec = find(rs, STACK_RELEASE, "us-east-1-monitoring-prometheus-stack").inputs["values"]["prometheus"]
        del spec["prometheusSpec"]["storageSpec"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, no_volume), "cluster-hardening"),
                    "keeps its data on the node's disk")


def test_an_unencrypted_alert_topic_is_rejected(prod_plan):
    def plain_topic(rs):
        del find(rs, TOPIC, region="eu-west-2").inputs["kmsMasterKeyId"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, plain_topic), "cluster-hardening"),
                    "SNS topic llmp-prod-alerts-eu-west-2 in eu-west-2 is not encrypted at rest")
