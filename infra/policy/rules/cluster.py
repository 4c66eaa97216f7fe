"""Control `cluster-hardening`: EKS API endpoints are private or allow-listed, secrets are envelope-encrypted, the
control plane logs, only the gateway is exposed, through a TLS-only NLB, and the metrics stack's volume and alert
topic are encrypted."""
from __future__ import annotations

import ipaddress

from infra.plan.manifests import render_release
from infra.policy.rules.base import (
    EKS_CLUSTER,
    GATEWAY_CHART_DIR,
    HELM_RELEASE,
    KMS_KEY,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_list,
    policy_document,
    statements,
)
from infra.policy.rules.load_balancers import NLB_CLASS, TLS_POLICY, check_exposure

REQUIRED_LOGS = ("api", "audit", "authenticator")
# The widest public allow-list entry accepted: a /16 is already 65,536 addresses; CI egress ranges are far smaller.
WIDEST_PUBLIC_PREFIX = {4: 16, 6: 48}

DESCRIPTION = (
    "Every EKS cluster's API endpoint is private, or public only to an allow-list of CIDR blocks none wider "
    f"than a /{WIDEST_PUBLIC_PREFIX[4]} (IPv4) or /{WIDEST_PUBLIC_PREFIX[6]} (IPv6); private access stays on. "
    "Kubernetes Secrets are envelope-encrypted with a KMS key this stack creates in the cluster's region. "
    f"Control plane logging is on for at least {', '.join(REQUIRED_LOGS)}. "
    "Judged on the rendered manifests: each gateway release renders exactly one Service of type LoadBalancer, of "
    f"the AWS Load Balancer Controller's class ({NLB_CLASS}, type external, IP targets), internet-facing, with a "
    f"TLS listener on every port (no plaintext listener), an ACM certificate and the {TLS_POLICY} policy; no other "
    "release renders a LoadBalancer Service, and no release renders an Ingress (the model servers are "
    "cluster-internal). Every SQS queue (Karpenter's "
    "interruption queue, which carries the cluster's instance events) is encrypted at rest (SQS-managed SSE or a "
    "KMS key) and its queue policy denies every request not made over TLS. Prometheus stores its data on a volume of "
    "a StorageClass the stack creates in the same cluster with EBS encryption on, so does every spend spool volume "
    "the gateway's rendered StatefulSet claims, and every alert topic (SNS) is "
    "encrypted with a KMS key.")

SNS_TOPIC = "aws:sns/topic:Topic"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
PROMETHEUS_STACK_CHART = "kube-prometheus-stack"
SQS_QUEUE = "aws:sqs/queue:Queue"
SQS_QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"


def _queues(resources: Resources, found: Findings) -> None:
    policies = {str(p.inputs.get("queueUrl")): p for p in resources.of_type(SQS_QUEUE_POLICY)}
    for queue in resources.of_type(SQS_QUEUE):
        encrypted = bool(queue.inputs.get("sqsManagedSseEnabled") or queue.inputs.get("kmsMasterKeyId"))
        doc = policy_document(policies[url].inputs.get("policy")) if (url := str(queue.outputs.get("url"))) \
            in policies else None
        tls_only = any(s.get("Effect") == "Deny" and str((s.get("Condition") or {}).get("Bool", {})
                                                          .get("aws:SecureTransport")).lower() == "false"
                       for s in statements(doc or {}))
        found.judged(queue, encrypted_at_rest=encrypted, denies_plain_http=tls_only)
        if not encrypted:
            found.fail(f"SQS queue {queue.name} in {queue.region} is not encrypted at rest (neither "
                       f"sqsManagedSseEnabled nor a kmsMasterKeyId)")
        if not tls_only:
            found.fail(f"SQS queue {queue.name} in {queue.region} has no queue policy denying requests without TLS "
                       f"(aws:SecureTransport false)")


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    keys = {str(k.outputs.get("arn")): k.region for k in resources.of_type(KMS_KEY) if k.outputs.get("arn")}
    clusters = resources.of_type(EKS_CLUSTER)
    if not clusters:
        found.fail("the stack creates no EKS cluster to judge")
    for cluster in clusters:
        vpc = cluster.inputs.get("vpcConfig") or {}
        public = bool(vpc.get("endpointPublicAccess", True))  # EKS's default is a public endpoint
        cidrs = [str(c) for c in as_list(vpc.get("publicAccessCidrs"))]
        encryption = cluster.inputs.get("encryptionConfig") or {}
        key = str((encryption.get("provider") or {}).get("keyArn") or "")
        logs = [str(t) for t in as_list(cluster.inputs.get("enabledClusterLogTypes"))]
        found.judged(cluster, endpoint_public=public, endpoint_private=bool(vpc.get("endpointPrivateAccess")),
                     public_access_cidrs=cidrs, secrets_encryption_key=key or None,
                     encrypted_resources=list(as_list(encryption.get("resources"))), control_plane_logs=logs)
        if public:
            if not cidrs:
                found.fail(f"EKS cluster {cluster.name} in {cluster.region} has a public API endpoint open to the "
                           f"whole internet (no publicAccessCidrs allow-list)")
            for cidr in cidrs:
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    found.fail(f"EKS cluster {cluster.name}: {cidr!r} is not a CIDR block")
                    continue
                if net.prefixlen < WIDEST_PUBLIC_PREFIX[net.version]:
                    found.fail(f"EKS cluster {cluster.name} in {cluster.region} opens its public API endpoint to "
                               f"{cidr} ({net.num_addresses:,} addresses); allow-list entries may be at most "
                               f"/{WIDEST_PUBLIC_PREFIX[net.version]}")
        if not vpc.get("endpointPrivateAccess"):
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} has private endpoint access off: nodes "
                       f"reach the API over the internet")
        if "secrets" not in as_list(encryption.get("resources")) or not key:
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} does not envelope-encrypt Kubernetes "
                       f"Secrets with KMS")
        elif keys.get(key) != cluster.region:
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} encrypts Secrets with {key}, which is not "
                       f"a KMS key this stack creates in {cluster.region}")
        missing = [t for t in REQUIRED_LOGS if t not in logs]
        if missing:
            found.fail(f"EKS cluster {cluster.name} in {cluster.region} does not log {', '.join(missing)} from "
                       f"its control plane")
    check_exposure(resources, found)
    _queues(resources, found)
    _metrics_at_rest(resources, found)
    return found


def _storage_class_name(release: Resource) -> str:
    spec = ((release.inputs.get("values") or {}).get("prometheus") or {}).get("prometheusSpec") or {}
    claim = ((spec.get("storageSpec") or {}).get("volumeClaimTemplate") or {}).get("spec") or {}
    return str(claim.get("storageClassName") or "")


def _metrics_at_rest(resources: Resources, found: Findings) -> None:
    """Prometheus' TSDB (it holds model names, teams and spend) on an encrypted EBS volume; alerts in an encrypted
    topic. EBS encrypts a volume the CSI driver makes when the class says `encrypted: "true"`
    (kubernetes-sigs/aws-ebs-csi-driver docs/parameters.md)."""
    classes = {(c.region, str((c.inputs.get("metadata") or {}).get("name"))): c
               for c in resources.of_type(STORAGE_CLASS)}
    for release in resources.of_type(HELM_RELEASE):
        if release.inputs.get("chart") != PROMETHEUS_STACK_CHART:
            continue
        name = _storage_class_name(release)
        cls = classes.get((release.region, name))
        params = (cls.inputs.get("parameters") or {}) if cls is not None else {}
        found.judged(release, prometheus_storage_class=name or None, encrypted=params.get("encrypted"),
                     volume_type=params.get("type"))
        if not name:
            found.fail(f"Prometheus of release {release.name} in {release.region} keeps its data on the node's disk "
                       "(no storageSpec): it is lost with the pod and not on an encrypted volume")
        elif cls is None:
            found.fail(f"Prometheus of release {release.name} in {release.region} claims StorageClass {name!r}, "
                       "which the stack does not create there")
        elif str(params.get("encrypted")).lower() != "true":
            found.fail(f"StorageClass {name!r} in {release.region} (Prometheus' volume) does not encrypt its EBS "
                       "volumes (parameters.encrypted is not \"true\")")
    # The gateway's spend spool (who spent what on which model, until the store has it): every volume its rendered
    # StatefulSet claims is of an encrypted class the stack creates in that region.
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        rendered = render_release(gateway, ("StatefulSet",))
        claims = [c for o in rendered.objects for c in (o.get("spec") or {}).get("volumeClaimTemplates") or []]
        for claim in claims:
            name = str((claim.get("spec") or {}).get("storageClassName") or "")
            cls = classes.get((gateway.region, name))
            params = (cls.inputs.get("parameters") or {}) if cls is not None else {}
            found.judged(gateway, spool_storage_class=name or None, encrypted=params.get("encrypted"))
            if cls is None or str(params.get("encrypted")).lower() != "true":
                found.fail(f"the gateway's spool volume in {gateway.region} claims StorageClass {name or '(default)'}"
                           f"{', which the stack does not create there' if cls is None else ''}: not a class the "
                           "stack makes with EBS encryption on")
    for topic in resources.of_type(SNS_TOPIC):
        key = topic.inputs.get("kmsMasterKeyId")
        found.judged(topic, topic=topic.inputs.get("name"), kms_master_key_id=key)
        if not key:
            found.fail(f"SNS topic {topic.inputs.get('name') or topic.name} in {topic.region} is not encrypted at rest "
                       "(no kmsMasterKeyId)")
