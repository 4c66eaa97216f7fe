"""Gateway: the regional gateway release (charts/gateway) and its IRSA role (stack secrets, Bedrock calls)."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra import bedrock
from infra.chart_values import (
    GATEWAY_CHART,
    GATEWAY_NAMESPACE,
    GATEWAY_RELEASE,
    gateway_service_account_subject,
    gateway_values,
    live_replicas,
)
from infra.config import BEDROCK, Region, StackConfig


def irsa_trust_policy(oidc_provider_arn: str, issuer: str, subjects: list[str] | None = None) -> dict:
    """Only the named ServiceAccounts (by default the gateway's) in its cluster may assume the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": oidc_provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{issuer}:sub": subjects or gateway_service_account_subject(),
                f"{issuer}:aud": "sts.amazonaws.com",
            }},
        }],
    }


def secret_read_policy(region: str, secret_arns: list[str], key_arn: str) -> dict:
    """The gateway of `region` reads exactly its stack's secrets in its own region, nothing else: its zone's
    provider keys and master key, the region's Redis URL, the peer key's copy there, and RDS's own secret of the
    region's ledger (infra/components/gateway_stores.py), all encrypted with `key_arn`."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadStackSecrets", "Effect": "Allow",
             "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
             "Resource": sorted(secret_arns)},
            {"Sid": "DecryptStackSecrets", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn,
             "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}}},
        ],
    }


def bedrock_models(config: dict) -> list[str]:
    """The Bedrock model and inference profile ids a rendered gateway config calls."""
    return sorted({str(d["model"]) for m in config.get("models", []) for d in m.get("deployments", [])
                   if d.get("provider") == BEDROCK})


def bedrock_invoke_policy(region: str, account: str, model_ids: list[str]) -> dict:
    """The gateway of `region` may call (Converse, ConverseStream) exactly the Bedrock models its config names,
    there. A cross-region profile: the profile in this region, and its foundation model in each destination
    region only through that profile (the `bedrock:InferenceProfileArn` condition, AWS's documented setup:
    docs.aws.amazon.com/bedrock/latest/userguide/geographic-cross-region-inference.html), so the role cannot
    call the model directly in a region the profile merely routes to."""
    statements: list[dict[str, object]] = []
    for i, model_id in enumerate(model_ids):
        arns = bedrock.invoke_arns(model_id, region, account)
        if bedrock.geography(model_id) is None:
            statements.append({"Sid": f"InvokeModel{i}", "Effect": "Allow", "Action": bedrock.INVOKE_ACTIONS,
                               "Resource": arns})
            continue
        profile, models = arns[0], arns[1:]
        statements += [
            {"Sid": f"InvokeProfile{i}", "Effect": "Allow", "Action": bedrock.INVOKE_ACTIONS, "Resource": profile},
            {"Sid": f"InvokeModelThroughProfile{i}", "Effect": "Allow", "Action": bedrock.INVOKE_ACTIONS,
             "Resource": models, "Condition": {"StringEquals": {"bedrock:InferenceProfileArn": profile}}},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


# The AWS Load Balancer Controller's pod webhook (`mpod.elbv2.k8s.aws`, chart templates/webhook.yaml@3.5.0, installed
# whatever enableServiceMutatorWebhook says) selects namespaces with this label and gives their new pods a readiness
# gate `target-health.elbv2.k8s.aws/...`: Ready only once the NLB's target group reports the pod healthy
# (docs/deploy/pod_readiness_gate.md@v3.5.0), so a rolling update never removes an old target before its
# replacement serves.
READINESS_GATE_LABEL = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}
# How long a new gateway pod may take, once started, to become a healthy NLB target: registration ("can take a few
# minutes", and slower on an NLB than an ALB: kubernetes-sigs/aws-load-balancer-controller#3621), then the health
# check's healthy threshold (3 checks 10 s apart, the controller's defaults for a Service: annotations.md@v3.5.0).
TARGET_HEALTHY_SECONDS = 300
# Deleting the namespace waits for the release's pods to end: each may take its whole terminationGracePeriodSeconds.
NAMESPACE_DELETE_TIMEOUT = "20m"


def termination_grace_seconds(values: dict[str, Any]) -> int:
    """The pod's terminationGracePeriodSeconds as the chart computes it (charts/gateway/templates/_helpers.tpl):
    preStop sleep + the gateway's shutdown_grace (50 s unset, gateway/config/limits.py) + margin."""
    drain = {**yaml.safe_load((GATEWAY_CHART / "values.yaml").read_text())["drain"], **values.get("drain", {})}
    grace = ((values.get("config") or {}).get("gateway") or {}).get("front_door", {}).get("shutdown_grace", 50)
    return int(drain["preStopSeconds"]) + math.ceil(float(grace)) + int(drain["marginSeconds"])


def rollout_timeout_seconds(values: dict[str, Any]) -> int:
    """How long `pulumi up` waits for the gateway's atomic release. The gateway is a StatefulSet: a rolling update
    replaces one pod at a time, highest ordinal first, and creates the replacement only once the old pod is gone
    (https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/#rolling-updates), so each replica that
    can be live costs its predecessor's whole drain (terminationGracePeriodSeconds), its startup probe's budget and,
    with readiness gates, becoming a healthy NLB target; Helm waits for every pod of the update revision to be ready
    (helm pkg/kube/ready.go, statefulSetReady)."""
    startup = values.get("probes", {}).get("startup", {"periodSeconds": 2, "failureThreshold": 30})
    per_pod = (termination_grace_seconds(values) + int(startup["periodSeconds"]) * int(startup["failureThreshold"])
               + TARGET_HEALTHY_SECONDS)
    return live_replicas(values) * per_pod + 300


def gateway_role(name: str, region: str, path: str, tags: dict[str, str], oidc_provider_arn: pulumi.Input[str],
                 issuer: pulumi.Input[str], iam: aws.Provider, parent: pulumi.Resource) -> aws.iam.Role:
    return aws.iam.Role(
        name,
        path=path,
        description=f"llm-platform gateway in {region}",
        assume_role_policy=pulumi.Output.all(oidc_provider_arn, issuer).apply(
            lambda a: json.dumps(irsa_trust_policy(*a))),
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent, provider=iam))


@dataclass(frozen=True)
class GatewayArgs:
    cfg: StackConfig
    region: Region
    role: aws.iam.Role
    secret_arns: Sequence[pulumi.Input[str]]
    key_arn: pulumi.Input[str]
    config: dict
    certificate_arn: pulumi.Input[str]  # the region's ACM certificate, for the NLB's TLS listener
    tags: dict[str, str]  # on the NLB, so the budget's tag filter sees its hours and traffic
    # The AWS Load Balancer Controller's release: it must serve before the release's LoadBalancer Service
    # exists, and outlive it on destroy (infra/components/load_balancer.py says why).
    load_balancer_controller: pulumi.Resource | None = None
    # The region's ECR repository URL of the gateway image (infra/components/registry.py); the digest is the stack's.
    image_repository: pulumi.Input[str] | None = None
    # The region's store addresses (the Redis primary endpoint): hashed into a pod annotation, so a replaced store
    # rolls the pods, which read the Redis URL secret only at start (charts/gateway values `storeEndpoints`).
    store_endpoints: Sequence[pulumi.Input[str]] = ()
    # What provisions and deletes the spool volumes (the EBS CSI add-on, the StorageClass): the namespace depends on
    # them, so a destroy deletes the release and the namespace (which waits for the PVCs) while the driver still
    # runs to delete each PV's EBS volume (README: The spool on destroy).
    spool_storage: Sequence[pulumi.Resource] = ()


class Gateway(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayArgs, kubernetes: k8s.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:gateway:Gateway", name, None, opts)
        region = args.region.name
        policy = aws.iam.RolePolicy(
            f"{name}-secrets",
            role=args.role.name,
            policy=pulumi.Output.all(args.key_arn, *args.secret_arns).apply(
                lambda a: json.dumps(secret_read_policy(region, list(a[1:]), a[0]))),
            opts=pulumi.ResourceOptions(parent=self, provider=iam))
        policies = [policy]
        models = bedrock_models(args.config)
        if models:
            # The account is the one the stack's secrets live in (arn:aws:secretsmanager:<region>:<account>:...).
            policies.append(aws.iam.RolePolicy(
                f"{name}-bedrock",
                role=args.role.name,
                policy=pulumi.Output.from_input(args.secret_arns[0]).apply(
                    lambda arn: json.dumps(bedrock_invoke_policy(region, str(arn).split(":")[4], models))),
                opts=pulumi.ResourceOptions(parent=self, provider=iam)))
        controller = [args.load_balancer_controller] if args.load_balancer_controller else []
        # The program owns the namespace (not the release's create_namespace, which Helm neither labels nor
        # deletes). Create: the label only matters when a pod is created, and the release's pods come after the
        # controller, whose webhook then serves. Destroy: Pulumi deletes dependents first, so the release goes
        # (its atomic delete waits for its objects), then the namespace (waiting for the pods' drain), then the
        # controller, which is still there to lift the finalizers it put on the Service and its TargetGroupBinding
        # in this namespace (`service.k8s.aws/resources`, `elbv2.k8s.aws/resources`): nothing is left stuck
        # terminating.
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=GATEWAY_NAMESPACE, labels=READINESS_GATE_LABEL),
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes,
                                        depends_on=[*controller, *args.spool_storage],
                                        custom_timeouts=pulumi.CustomTimeouts(delete=NAMESPACE_DELETE_TIMEOUT)))
        values = gateway_values(args.cfg, args.region, role_arn=args.role.arn, config=args.config,
                                certificate_arn=args.certificate_arn, tags=args.tags,
                                image_repository=args.image_repository)
        if args.store_endpoints:
            values["storeEndpoints"] = list(args.store_endpoints)
        self.release = k8s.helm.v3.Release(
            name,
            name=GATEWAY_RELEASE,
            chart=str(GATEWAY_CHART),
            namespace=GATEWAY_NAMESPACE,
            atomic=True,
            timeout=rollout_timeout_seconds(values),
            values=values,
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[
                *policies, self.namespace, *controller]))
        self.register_outputs({"role_arn": args.role.arn})
