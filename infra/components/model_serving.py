"""ModelServing: one vLLM release (charts/vllm) serving one model in one region."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.chart_values import MODEL_NAMESPACE, VLLM_CHART, rollout_timeout_seconds, vllm_release_name, vllm_values
from infra.config import Model, Region, StackConfig


@dataclass(frozen=True)
class ModelServingArgs:
    cfg: StackConfig
    model: Model
    region: Region
    role_arn: Any = None  # pulumi.Input[str]: the region's model server role (HF token or weights from S3)
    weights_source: Any = None  # pulumi.Input[str]: s3://<bucket>/<model>, when the weights come from S3


class ModelServing(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelServingArgs, kubernetes: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:serving:ModelServing", name, None, opts)
        values = vllm_values(args.cfg, args.model, args.region, role_arn=args.role_arn,
                             weights_source=args.weights_source)
        self.release = k8s.helm.v3.Release(
            name,
            name=vllm_release_name(args.model),
            chart=str(VLLM_CHART),
            namespace=MODEL_NAMESPACE,
            create_namespace=True,
            values=values,
            # Awaited: a rollout that cannot finish (a replica that never gets its GPUs, a server that crashes
            # at start) fails the deploy instead of passing unseen. The timeout covers every replica's drain,
            # image pull and weight load in turn. Not atomic: rolling back a half-done roll on a full pool
            # would take another replica down and reload weights for minutes; the operator decides, with the
            # failed deploy in front of them.
            skip_await=False,
            timeout=rollout_timeout_seconds(values),
            opts=pulumi.ResourceOptions(parent=self, provider=kubernetes),
        )
        self.register_outputs({"release": self.release.name})
