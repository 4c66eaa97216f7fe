"""Control cluster-hardening: EKS APIs are private or allow-listed, Kubernetes Secrets are KMS-encrypted, control planes
log, and only the gateway is exposed, through a TLS-only NLB."""
from __future__ import annotations

import shutil
from pathlib import Path

from infra.config import ROOT
from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    gateway_release,
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
    clusters = [e for e in res.evidence if "endpoint_private" in e]
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


def test_the_gateways_spend_spool_is_on_an_encrypted_volume_in_every_region(stack_plan):
    res = result(stack_plan, "cluster-hardening")
    spools = [e for e in res.evidence if "spool_storage_class" in e]
    assert len(spools) == len(stack_plan.config.regions)
    assert all(e["encrypted"] == "true" for e in spools)


def test_a_gateway_spool_on_the_default_or_an_unencrypted_storage_class_is_rejected(prod_plan):
    def default_class(rs):
        find(rs, STACK_RELEASE, "us-east-1-gateway").inputs["values"]["spool"]["storageClassName"] = ""
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, default_class), "cluster-hardening"),
                    "the gateway's spool volume in us-east-1 claims StorageClass (default), which the stack does not "
                    "create there")

    def plain_gp3(rs):
        find(rs, STORAGE_CLASS, "eu-west-2-monitoring-gp3").inputs["parameters"]["encrypted"] = "false"
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, plain_gp3), "cluster-hardening"),
                    "the gateway's spool volume in eu-west-2 claims StorageClass gp3-encrypted: not a class")


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


# -- what lets traffic in: the rendered Services and Ingresses ------------------------------------
RELEASE = "kubernetes:helm.sh/v3:Release"


def _chart_copy(tmp_path: Path, chart: str, template: str, text: str) -> str:
    """charts/<chart> with one more template: the program's chart as a careless change would leave it."""
    copy = tmp_path / "charts" / chart
    shutil.copytree(ROOT / "charts" / chart, copy)
    (copy / "templates" / template).write_text(text)
    return str(copy)


def _lb_values(resources: list, region: str) -> dict:
    return gateway_release(resources, region).inputs["values"]["service"]["loadBalancer"]


def test_each_gateway_is_exposed_by_exactly_one_tls_only_internet_facing_nlb(stack_plan):
    res = result(stack_plan, "cluster-hardening")
    assert_passes(res)
    lbs = [e for e in res.evidence if "load_balancer_class" in e]
    assert sorted(e["region"] for e in lbs) == sorted(r.name for r in stack_plan.config.regions)
    for e in lbs:
        assert e["service"] == "llm-gateway/gateway-public"
        assert (e["load_balancer_class"], e["lb_type"], e["target_type"], e["scheme"]) == \
            ("service.k8s.aws/nlb", "external", "ip", "internet-facing")
        assert e["ports"] == [443] and e["tls_ports"] == ["https"]
        assert e["ssl_policy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
        assert e["certificate"].startswith(f"arn:aws:acm:{e['region']}:")


def test_gateway_nlb_with_a_plaintext_listener_is_rejected(prod_plan, tmp_path):
    """Program bug (simulated): the gateway chart gains a port 80 on its LoadBalancer Service, which the controller
    turns into a plain TCP listener on the internet."""
    chart = _chart_copy(tmp_path, "gateway", "service.yaml", (ROOT / "charts/gateway/templates/service.yaml")
                        .read_text().replace("  ports:\n    - name: https\n", "  ports:\n    - name: plain\n"
                                             "      port: 80\n      targetPort: http\n    - name: https\n"))
    resources = mutated(prod_plan, lambda rs: gateway_release(rs, "us-east-1").inputs.update(chart=chart))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "Service llm-gateway/gateway-public of us-east-1-gateway (us-east-1) has a plaintext listener on "
                    "plain")


def test_gateway_nlb_negotiating_tls_1_0_is_rejected(prod_plan):
    """Broken values: a TLS 1.3 policy that still accepts TLS 1.0 (the chart's schema lets any TLS13 policy by)."""
    resources = mutated(prod_plan, lambda rs: _lb_values(rs, "eu-west-2").update(
        sslPolicy="ELBSecurityPolicy-TLS13-1-0-2021-06"))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "negotiates TLS with ELBSecurityPolicy-TLS13-1-0-2021-06, not ELBSecurityPolicy-TLS13-1-2-2021-06")


def test_gateway_nlb_that_is_internal_is_rejected(prod_plan):
    """Broken values: an internal NLB answers only inside the VPC; DNS would point the world at it."""
    resources = mutated(prod_plan, lambda rs: _lb_values(rs, "us-west-2").update(scheme="internal"))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "gateway-public of us-west-2-gateway (us-west-2) has scheme internal")


def test_gateway_without_a_load_balancer_is_rejected(prod_plan):
    resources = mutated(prod_plan, lambda rs: _lb_values(rs, "eu-north-1").update(enabled=False))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "the gateway release eu-north-1-gateway (eu-north-1) renders 0 Services of type LoadBalancer")


def test_another_service_of_type_load_balancer_is_rejected(prod_plan, tmp_path):
    """Program bug (simulated): a model release renders a LoadBalancer Service (the vLLM schema refuses the value,
    so the template itself is changed)."""
    chart = _chart_copy(tmp_path, "vllm", "exposed.yaml", """apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}-exposed
  namespace: {{ .Release.Namespace }}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 8000, targetPort: http}]
  selector: {app: vllm}
""")
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "us-east-1-llama-3-1-8b").inputs.update(chart=chart))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "Service llm-serving/vllm-llama-3-1-8b-exposed of us-east-1-llama-3-1-8b (us-east-1) is of type "
                    "LoadBalancer: only the gateway is exposed through a load balancer")


def test_model_server_with_an_ingress_is_rejected(prod_plan, tmp_path):
    """Program bug (simulated): the model chart gains an Ingress again; the controller would make an ALB for it."""
    chart = _chart_copy(tmp_path, "vllm", "ingress.yaml", """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ .Release.Name }}
  namespace: {{ .Release.Namespace }}
spec:
  ingressClassName: alb
  defaultBackend: {service: {name: {{ .Release.Name }}, port: {name: http}}}
""")
    resources = mutated(prod_plan, lambda rs: find(rs, RELEASE, "eu-north-1-mistral-small-24b").inputs.update(
        chart=chart))
    assert_rejected(result_of_resources(prod_plan, resources, "cluster-hardening"),
                    "eu-north-1-mistral-small-24b (eu-north-1) renders Ingress llm-serving/vllm-mistral-small-24b")


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
