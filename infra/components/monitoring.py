"""Monitoring: a region's metrics stack (kube-prometheus-stack), GPU metrics (DCGM exporter), what Prometheus scrapes
beyond the charts' own ServiceMonitors (Karpenter), the Grafana dashboards, the alert rules and where alerts go (an
SNS topic in the region)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.alert_rules import alert_rules
from infra.components.gateway import irsa_trust_policy
from infra.components.releases import helm_release
from infra.config import ROOT
from infra.scheduling import GPU_TAINT_KEY, POOL_LABEL, SPOT_TAINT_KEY

NAMESPACE = "monitoring"
RELEASE = "prometheus-stack"
# kube-prometheus-stack 88.5.3 (Prometheus Operator v0.93.1), the newest release in
# prometheus-community/helm-charts (tag kube-prometheus-stack-88.5.3, 2026-08); vendored for the offline plan.
PROMETHEUS_STACK = ("kube-prometheus-stack", "88.5.3", "https://prometheus-community.github.io/helm-charts")
# NVIDIA's own chart (NVIDIA/dcgm-exporter deployment/, tag 4.5.3-4.8.2), not the GPU Operator: the EKS NVIDIA
# AMI already carries the driver and container toolkit and the device plugin is installed on its own
# (infra/components/addons.py), so the operator would manage nothing but this exporter.
DCGM_EXPORTER = ("dcgm-exporter", "4.8.2", "https://nvidia.github.io/dcgm-exporter/helm-charts")
DCGM_NAMESPACE = "gpu-monitoring"
# What KEDA (infra/components/keda, another branch) queries: `fullnameOverride` fixes the Service's name.
PROMETHEUS_URL = f"http://{RELEASE}-prometheus.{NAMESPACE}.svc:9090"
ALERTMANAGER_SERVICE_ACCOUNT = f"{RELEASE}-alertmanager"
DASHBOARDS = ROOT / "dashboards"
# The Grafana sidecar loads every ConfigMap carrying this label (kube-prometheus-stack values.yaml,
# grafana.sidecar.dashboards.label / labelValue).
DASHBOARD_LABEL = ("grafana_dashboard", "1")
STORAGE_CLASS = "gp3-encrypted"
# 15 days: the alert windows are at most 6 hours and the dashboards look back a week or two; a month-over-month
# view belongs in the spend ledger, not here. At the scale of one region (tens of nodes, a few thousand GPU and
# vLLM series) that is a few GiB of TSDB blocks; the volume leaves room for 4x and retentionSize keeps
# Prometheus from filling it whatever the series count does.
RETENTION = "15d"
VOLUME_GIB = 50
RETENTION_SIZE = "40GB"
PVC_RETENTION = {"whenDeleted": "Delete", "whenScaled": "Retain"}
KARPENTER_RELEASE = ("kube-system", "karpenter")  # where the karpenter branch installs it; metrics on 8080
SYSTEM_POOL = "system"
GPU_TOLERATIONS = [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                   {"key": SPOT_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]


@dataclass(frozen=True)
class MonitoringArgs:
    stack: str
    region: str
    iam_path: str
    tags: dict[str, str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    alert_emails: tuple[str, ...]
    monthly_budget_usd: float
    regions: int
    dashboards: tuple[Path, ...] = field(default_factory=lambda: tuple(sorted(DASHBOARDS.glob("*.json"))))


def _on_system_nodes(resources: dict[str, Any]) -> dict[str, Any]:
    return {"nodeSelector": {POOL_LABEL: SYSTEM_POOL}, "resources": resources}


def prometheus_stack_values(args: MonitoringArgs, topic_arn: Any, alertmanager_role_arn: Any) -> dict[str, Any]:
    """kube-prometheus-stack's values (charts' keys from its values.yaml at 88.5.3)."""
    return {
        "fullnameOverride": RELEASE,
        # The alert rules and Karpenter's ServiceMonitor are rendered by this release, not created as objects of
        # their own: Helm installs the chart's CRDs (its crds subchart's crds/) before its templates, so they never
        # reach a cluster that does not know their kinds yet, and the rendered-manifest checks see them.
        "additionalPrometheusRulesMap": {"llm-platform": {
            "groups": alert_rules(args.region, args.monthly_budget_usd, args.regions)}},
        # EKS runs the control plane: its scheduler, controller manager and etcd are not reachable from the nodes
        # (https://docs.aws.amazon.com/eks/latest/userguide/prometheus.html lists only the API server's metrics).
        # EKS's kube-proxy binds its metrics to 127.0.0.1:10249 (its kube-proxy-config), out of Prometheus' reach.
        "kubeScheduler": {"enabled": False},
        "kubeControllerManager": {"enabled": False},
        "kubeEtcd": {"enabled": False},
        "kubeProxy": {"enabled": False},
        "prometheusOperator": {
            **_on_system_nodes({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}),
            "admissionWebhooks": {"patch": {"nodeSelector": {POOL_LABEL: SYSTEM_POOL}}},
            # Passed to the operator as --config-reloader-*: the sidecar in Prometheus' and Alertmanager's pods.
            "prometheusConfigReloader": {"resources": {"requests": {"cpu": "10m", "memory": "50Mi"},
                                                       "limits": {"memory": "50Mi"}}},
        },
        "prometheus": {"prometheusSpec": {
            **_on_system_nodes({"requests": {"cpu": "500m", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}),
            # Every ServiceMonitor, PodMonitor, Probe, ScrapeConfig and PrometheusRule in the cluster, not only
            # those labelled with this release (values.yaml: "*SelectorNilUsesHelmValues: false").
            "serviceMonitorSelectorNilUsesHelmValues": False,
            "podMonitorSelectorNilUsesHelmValues": False,
            "ruleSelectorNilUsesHelmValues": False,
            "probeSelectorNilUsesHelmValues": False,
            "scrapeConfigSelectorNilUsesHelmValues": False,
            # KEDA scales on these series: 15 s keeps its view fresh (KEDA polls every 30 s by default).
            "scrapeInterval": "15s",
            "evaluationInterval": "15s",
            "retention": RETENTION,
            "retentionSize": RETENTION_SIZE,
            # The StatefulSet's PVC goes with it (Kubernetes keeps a StatefulSet's PVCs by default; the policy is GA
            # since 1.32: https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/
            # #persistentvolumeclaim-retention), and with the PVC its 50 GiB gp3 volume (the StorageClass's
            # reclaimPolicy Delete): a destroy or a
            # removed region leaks no volume. A scale-down keeps it, so scaling back up finds the data. The field is
            # in the Prometheus CRD of operator v0.93.1 (the chart's crd-prometheuses.yaml), which the operator copies
            # onto the StatefulSet.
            "persistentVolumeClaimRetentionPolicy": PVC_RETENTION,
            "storageSpec": {"volumeClaimTemplate": {"spec": {
                "storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": f"{VOLUME_GIB}Gi"}}}}},
        }, "additionalServiceMonitors": [{"name": "karpenter", **karpenter_service_monitor()}]},
        "alertmanager": {
            "serviceAccount": {"create": True, "name": ALERTMANAGER_SERVICE_ACCOUNT,
                               "annotations": {"eks.amazonaws.com/role-arn": alertmanager_role_arn}},
            # No `storage`: Alertmanager keeps its silences and notification log on an emptyDir (the chart's
            # alertmanagerSpec.storage is {}), so it has no PVC to leak; a restart forgets silences, which live in
            # the alert rules' `for` windows here, not in hand-made silences.
            "alertmanagerSpec": _on_system_nodes({"requests": {"cpu": "50m", "memory": "128Mi"},
                                                  "limits": {"memory": "256Mi"}}),
            "config": alertmanager_config(args.region, topic_arn),
        },
        "grafana": {
            **_on_system_nodes({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}),
            # The dashboards' ConfigMaps live beside Grafana: the sidecar reads only its own namespace's (the
            # stack's default is ALL, every ConfigMap in the cluster, the gateway's config included).
            "sidecar": {"dashboards": {"enabled": True, "label": DASHBOARD_LABEL[0], "labelValue": DASHBOARD_LABEL[1],
                                       "searchNamespace": NAMESPACE}},
        },
        "kube-state-metrics": _on_system_nodes({"requests": {"cpu": "50m", "memory": "128Mi"},
                                                "limits": {"memory": "256Mi"}}),
        "prometheus-node-exporter": {
            # Every node, GPU and spot pools included (their only taints; the chart's default, any NoSchedule
            # taint, would do too: named here so a new taint on the pools is a decision, not an accident).
            "tolerations": GPU_TOLERATIONS,
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        },
    }


def alertmanager_config(region: str, topic_arn: Any) -> dict[str, Any]:
    """Every alert to the region's SNS topic, signed with SigV4 by the pod's IRSA role (Alertmanager's sns_configs,
    https://prometheus.io/docs/alerting/latest/configuration/#sns_config: without access_key/secret_key the AWS SDK's
    default chain is used, which reads the web identity token EKS's IRSA webhook injects)."""
    return {
        "route": {"receiver": "sns", "group_by": ["alertname", "region"], "group_wait": "30s",
                  "group_interval": "5m", "repeat_interval": "4h",
                  # The chart's Watchdog alert always fires (it proves the pipeline); it must not page anyone.
                  "routes": [{"receiver": "null", "matchers": ['alertname = "Watchdog"']}]},
        "receivers": [
            {"name": "null"},
            {"name": "sns", "sns_configs": [{
                "topic_arn": topic_arn, "sigv4": {"region": region}, "send_resolved": True,
                "subject": "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} in " + region}]},
        ],
    }


def dcgm_values() -> dict[str, Any]:
    """The exporter runs on GPU nodes only (the pools' label `llm-platform/pool` exists and is not `system`),
    whatever their taints."""
    return {
        "tolerations": GPU_TOLERATIONS,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": POOL_LABEL, "operator": "NotIn", "values": [SYSTEM_POOL]}]}]}}},
        "serviceMonitor": {"enabled": True, "interval": "15s"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def karpenter_service_monitor() -> dict[str, Any]:
    """Karpenter's controller metrics (Service `karpenter`, port `http-metrics`, in its chart at 1.14.1)."""
    namespace, release = KARPENTER_RELEASE
    return {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "karpenter", "app.kubernetes.io/instance": release}},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [{"port": "http-metrics", "path": "/metrics", "interval": "15s"}],
    }


def alert_publish_policy(topic_arn: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn}]}


class Monitoring(pulumi.ComponentResource):
    """One region's metrics, dashboards and alerts."""

    def __init__(self, name: str, args: MonitoringArgs, kubernetes: k8s.Provider, provider: aws.Provider,
                 iam: aws.Provider, opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:monitoring:Monitoring", name, None, opts)
        aws_child = pulumi.ResourceOptions(parent=self, provider=provider)
        iam_child = pulumi.ResourceOptions(parent=self, provider=iam)

        # Prometheus' volume: EKS provisions EBS volumes only through the EBS CSI driver
        # (https://docs.aws.amazon.com/eks/latest/userguide/ebs-csi.html), which runs as its own IRSA role.
        csi_role = aws.iam.Role(
            f"{name}-ebs-csi", path=args.iam_path, description=f"llm-platform EBS CSI driver in {args.region}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(irsa_trust_policy(a[0], a[1], [
                    "system:serviceaccount:kube-system:ebs-csi-controller-sa"]))),
            tags=args.tags, opts=iam_child)
        csi_policy = aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi", role=csi_role.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy", opts=iam_child)
        self.ebs_csi = aws.eks.Addon(
            f"{name}-ebs-csi", cluster_name=args.cluster_name, addon_name="aws-ebs-csi-driver",
            service_account_role_arn=csi_role.arn,
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[csi_policy]))
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-gp3", metadata=k8s.meta.v1.ObjectMetaArgs(name=STORAGE_CLASS),
            provisioner="ebs.csi.aws.com", volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True, reclaim_policy="Delete",
            # Encrypted with the account's EBS key (aws/ebs) unless a kmsKeyId is given (ebs-csi-driver
            # docs/parameters.md); tagged so the budget's tag filter sees the volume.
            parameters={"type": "gp3", "encrypted": "true",
                        **{f"tagSpecification_{i}": f"{k}={v}" for i, (k, v) in
                           enumerate(sorted(args.tags.items()), start=1)}},
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[self.ebs_csi]))

        # Alerts leave the cluster through SNS in the region (residency: alert text names models and regions only).
        self.topic = aws.sns.Topic(
            f"{name}-alerts", name=f"llmp-{args.stack}-alerts-{args.region}",
            kms_master_key_id="alias/aws/sns", tags=args.tags, opts=aws_child)
        for i, email in enumerate(args.alert_emails):
            aws.sns.TopicSubscription(f"{name}-alerts-{i}", topic=self.topic.arn, protocol="email",
                                      endpoint=email, opts=aws_child)
        self.alertmanager_role = aws.iam.Role(
            f"{name}-alertmanager", path=args.iam_path, description=f"llm-platform Alertmanager in {args.region}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(irsa_trust_policy(a[0], a[1], [
                    f"system:serviceaccount:{NAMESPACE}:{ALERTMANAGER_SERVICE_ACCOUNT}"]))),
            tags=args.tags, opts=iam_child)
        publish = aws.iam.RolePolicy(
            f"{name}-alertmanager-publish", role=self.alertmanager_role.name,
            policy=self.topic.arn.apply(lambda arn: json.dumps(alert_publish_policy(arn))), opts=iam_child)

        self.stack = helm_release(
            f"{name}-prometheus-stack", PROMETHEUS_STACK, NAMESPACE,
            prometheus_stack_values(args, self.topic.arn, self.alertmanager_role.arn),
            pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[self.storage_class, publish]),
            release_name=RELEASE)
        # The exporter renders a ServiceMonitor: after the stack, which brings its CRD.
        after_crds = pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[self.stack])
        self.dcgm = helm_release(f"{name}-dcgm-exporter", DCGM_EXPORTER, DCGM_NAMESPACE, dcgm_values(), after_crds)
        self.dashboards = [
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{path.stem}",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=f"dashboard-{path.stem}", namespace=NAMESPACE,
                                                    labels={DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]}),
                data={path.name: path.read_text()}, opts=after_crds)
            for path in args.dashboards]
        self.register_outputs({"prometheus_url": PROMETHEUS_URL, "alerts_topic_arn": self.topic.arn})
