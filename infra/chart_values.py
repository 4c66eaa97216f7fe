"""The Helm values the Pulumi program passes to `charts/vllm` and `charts/gateway`, computed from the stack config.

Release names and namespaces are part of the contract (the gateway's upstream URLs and the IRSA trust
policy depend on them): the program installs `vllm-<model>` in `llm-serving` and `gateway` in
`llm-gateway`; the vLLM chart names its Service after the release, so the gateway reaches a model at
`http://vllm-<model>.llm-serving.svc.cluster.local:8000/v1`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from infra.catalog import load_catalog
from infra.components.autoscaling import PROMETHEUS_URL
from infra.components.dns import regional_host, zone_host
from infra.components.gateway_stores import POSTGRES_PORT, REDIS_PORT
from infra.components.network import private_subnet_cidrs, public_subnet_cidrs
from infra.components.secrets import huggingface_token_name
from infra.config import ROOT, Model, Pool, Region, StackConfig
from infra.scheduling import GPU_RESOURCE, pool_node_selector, pool_tolerations
from infra.sizing import model_resources, replica_ranges

VLLM_CHART: Path = ROOT / "charts" / "vllm"
GATEWAY_CHART: Path = ROOT / "charts" / "gateway"

MODEL_NAMESPACE = "llm-serving"
GATEWAY_NAMESPACE = "llm-gateway"
GATEWAY_RELEASE = "gateway"
GATEWAY_SERVICE_ACCOUNT = "llm-gateway"

VLLM_PORT = 8000
GATEWAY_PORT = 4000

# Pinned: a tag, never `latest`. Bump deliberately; the chart's appVersion says the same. v0.18.0 is the first
# release whose `vllm serve --shutdown-timeout` drains in-flight requests on SIGTERM instead of aborting them
# (vllm-project/vllm#34730; llm-d/llm-d#927); v0.33.0 is the newest stable release (PyPI, 2026-11).
VLLM_IMAGE = {"repository": "vllm/vllm-openai", "tag": "v0.33.0"}

# The drain contract of a model server (charts/vllm `drain`). The gateway watches EndpointSlices: a
# terminating replica keeps serving for PRESTOP seconds while its endpoint's removal reaches the gateway and
# every kube-proxy, then vLLM gets DRAIN seconds to finish what it holds before it exits.
VLLM_PRESTOP_SECONDS = 15
VLLM_DRAIN_SECONDS = 120
# The rollout budget of one replica on top of its startup probe: pulling the vLLM image (about 10 GB) onto
# a fresh node, and the old replica's drain on a full pool, where the new one waits for its GPUs.
IMAGE_PULL_SECONDS = 900
# charts/vllm adds this to preStop + drain for terminationGracePeriodSeconds: the engine's own exit after the
# last request.
DRAIN_MARGIN_SECONDS = 15


def vllm_release_name(model: Model) -> str:
    return f"vllm-{model.name}"


def model_base_url(model: Model) -> str:
    """Where the gateway reaches a model inside its cluster (the vLLM chart's ClusterIP Service)."""
    return f"http://{vllm_release_name(model)}.{MODEL_NAMESPACE}.svc.cluster.local:{VLLM_PORT}/v1"


def gateway_service_account_subject() -> str:
    """The IRSA trust policy's `sub`: the gateway chart's ServiceAccount."""
    return f"system:serviceaccount:{GATEWAY_NAMESPACE}:{GATEWAY_SERVICE_ACCOUNT}"


def model_service_account(model: Model) -> str:
    """The vLLM chart's ServiceAccount for `model`: named after the release, one per model."""
    return vllm_release_name(model)


def model_service_account_subjects(cfg: StackConfig, region: str) -> list[str]:
    """The IRSA trust policy's `sub`s for the model servers' role of `region`: each model's ServiceAccount."""
    return [f"system:serviceaccount:{MODEL_NAMESPACE}:{model_service_account(m)}" for m in cfg.models_in(region)]


def vllm_values(cfg: StackConfig, model: Model, region: Region, *, role_arn: Any = None,
                weights_source: Any = None) -> dict[str, Any]:
    """Values for the `vllm-<model>` release serving `model` in `region`. `role_arn` (may be a Pulumi
    Output) is the region's model server role, needed when the stack reads a Hugging Face token or the
    weights come from S3; `weights_source` is the model's `s3://<bucket>/<model>` when they do."""
    pool = region.pool(model.pool)
    if pool is None:
        raise ValueError(f"model {model.name} uses pool {model.pool!r}, which region {region.name} does not have")
    # KEDA scales the release (charts/vllm scaledobject.yaml) from its floor, at least one replica, up to its
    # ceiling: the most its pool holds beside the pool's other models while no node autoscaler adds nodes
    # (infra/sizing.py).
    scale = replica_ranges(cfg, region, load_catalog())[model.name]
    min_replicas, max_replicas = scale.floor, scale.ceiling
    size = model_resources(model, pool, load_catalog()).values()
    values: dict[str, Any] = {
        "image": dict(VLLM_IMAGE),
        "model": {
            "source": model.source,
            "servedName": model.name,
            "maxModelLen": model.max_model_len,
            "gpuMemoryUtilization": model.gpu_memory_utilization,
            "quantization": model.quantization,
            "prefixCaching": True,
        },
        "gpus": model.gpus,
        "gpuResource": GPU_RESOURCE,
        "replicaCount": min_replicas,
        "autoscaling": model_autoscaling(model, min_replicas, max_replicas),
        # A share of the pool's smallest node (infra/sizing.py). The memory limit is the request: replicas
        # share nodes, and /dev/shm's pages count against it.
        "resources": {"requests": {"cpu": size["cpu"], "memory": size["memory"]},
                      "limits": {"memory": size["memory"]}},
        "shm": {"sizeLimit": size["shm"]},
        "strategy": rollout_strategy(cfg, model, region, pool),
        "drain": {"preStopSeconds": VLLM_PRESTOP_SECONDS, "timeoutSeconds": VLLM_DRAIN_SECONDS,
                  "marginSeconds": DRAIN_MARGIN_SECONDS},
        "nodeSelector": pool_node_selector(pool.name),
        "tolerations": pool_tolerations(pool.spot),
        "podLabels": {"llm-platform/model": model.name, "llm-platform/tier": model.tier},
        "serviceAccount": {"create": True, "name": model_service_account(model)},
        # Scraped by the region's Prometheus (infra/components/monitoring.py selects every ServiceMonitor); KEDA
        # scales on these series, so every 15 s.
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
    }
    if cfg.secrets.huggingface_token:
        if role_arn is None:
            raise ValueError(f"model {model.name} in {region.name}: the stack reads a Hugging Face token "
                             "(secrets.huggingface_token), so the release needs the model server role's ARN")
        # The pod mounts the region's copy through the Secrets Store CSI driver, as its own IRSA role.
        values["serviceAccount"]["roleArn"] = role_arn
        values["model"]["hfToken"] = {"secretsManager": {
            "secretId": huggingface_token_name(cfg.stack), "region": region.name}}
    _merge(values, weights_values(cfg, model, region, role_arn=role_arn, source=weights_source))
    return values


def model_autoscaling(model: Model, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """The vLLM release's `autoscaling` values: KEDA between the floor and ceiling, to zero when idle for batch."""
    idle = model.idles_at_zero
    return {
        "enabled": max_replicas > min_replicas or idle,
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        **({"idleReplicas": 0} if idle else {}),  # the chart's default, null: never below minReplicas
        "prometheus": {"serverAddress": PROMETHEUS_URL},
        "wake": {"gatewayNamespace": GATEWAY_NAMESPACE, "alias": model.name, "window": "10m"},
    }


def rollout_strategy(cfg: StackConfig, model: Model, region: Region, pool: Pool) -> dict[str, Any]:
    """Surge only where the pool has room at the model's busiest: the pool's nodes at their most (max_nodes where
    Karpenter grows the pool; min_nodes where no node autoscaler runs), and the HPA may have scaled every model of
    the pool to its ceiling (`replica_ranges`), so a surge replica needs GPUs beside all of them, or it waits Pending
    forever and the rollout never finishes. On a full pool a replica goes first (maxUnavailable 1): while it
    reloads, the gateway routes to the model's other replicas, or to the other region of the zone.

    A model whose floor is one replica is replaced with Recreate: Helm's wait counts a Deployment ready at
    replicas - maxUnavailable ready pods (helm pkg/kube/ready.go deploymentReady), which is none for one
    replica with maxUnavailable 1, and the full count for Recreate, so the awaited release sees the new pods.
    If the HPA had scaled it up, Recreate replaces every replica at once (all of them fit: the ceiling does);
    the model's other region of the zone serves meanwhile."""
    if pool.name != model.pool:
        raise ValueError(f"model {model.name} runs on pool {model.pool}, not {pool.name}")
    ranges = replica_ranges(cfg, region, load_catalog())
    scale = ranges[model.name]
    busiest = {m.name: ranges[m.name].ceiling for m in scale.pool.models}
    if scale.pool.holds({**busiest, model.name: scale.ceiling + 1}):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    if scale.floor == 1:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def live_replicas(values: dict[str, Any]) -> int:
    """The most replicas a model release can run: its ScaledObject's maximum, else replicaCount."""
    scaling = values.get("autoscaling") or {}
    count = int(values["replicaCount"])
    return max(count, int(scaling["maxReplicas"])) if scaling.get("enabled") else count


def rollout_timeout_seconds(values: dict[str, Any]) -> int:
    """How long `pulumi up` waits for a model release: each replica that can be live (the HPA may have scaled to
    its maximum before the update) in turn may drain its predecessor, pull the image and use its whole startup
    probe budget."""
    startup = values.get("probes", _chart_defaults(VLLM_CHART)["probes"])["startup"]
    drain = values["drain"]
    grace = int(drain["preStopSeconds"]) + int(drain["timeoutSeconds"]) + int(drain["marginSeconds"])
    per_replica = grace + IMAGE_PULL_SECONDS + int(startup["periodSeconds"]) * int(startup["failureThreshold"])
    return live_replicas(values) * per_replica + 300


def _chart_defaults(chart: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text())
    return values
# Startup budget (README: Weights). Run:ai's streamer measured 3.51 GiB/s from S3 to a g5.12xlarge's GPUs
# (run-ai/runai-model-streamer docs/src/benchmarks.md); budget a seventh of that. A Hugging Face download
# from one pod is budgeted at 50 MB/s. Then torch.compile, CUDA graph capture and warm-up: 10 minutes.
S3_LOAD_GB_PER_S = 0.5
HF_DOWNLOAD_GB_PER_S = 0.05
WARM_UP_SECONDS = 600
STARTUP_PERIOD_SECONDS = 10


def checkpoint_gb(model: Model, region: Region) -> float:
    """The checkpoint's size: `size_gb`, or at most what the replica's GPUs hold (twice that for fp8, which
    vLLM quantizes from a 16-bit checkpoint while loading)."""
    if model.size_gb is not None:
        return model.size_gb
    pool = region.pool(model.pool)
    catalog = load_catalog()
    per_gpu = max((catalog.instance(t).gpu_memory_gib for t in pool.instance_types if t in catalog.instances),
                  default=80) if pool else 80
    return model.gpus * per_gpu * (2 if model.quantization == "fp8" else 1)


def startup_failure_threshold(model: Model, region: Region, weights: str) -> int:
    """Startup probe failures allowed (every STARTUP_PERIOD_SECONDS): the load at a conservative rate plus warm-up."""
    rate = S3_LOAD_GB_PER_S if weights == "s3" else HF_DOWNLOAD_GB_PER_S
    return math.ceil((checkpoint_gb(model, region) / rate + WARM_UP_SECONDS) / STARTUP_PERIOD_SECONDS)


# Run:ai's streamer reads tensors into a CPU buffer on their way to the GPU. RUNAI_STREAMER_MEMORY_LIMIT (bytes)
# bounds that buffer; unset, it is unlimited (the size of the files read) in distributed streaming, which is on by
# default from object storage to CUDA devices, and 40 GB otherwise (run-ai/runai-model-streamer docs/src/env-vars.md;
# usage.md, "Distributed streaming" and "CPU Memory Capping"). Either can exceed a replica's share of its node,
# whose memory limit also holds /dev/shm: the limit is what the replica's memory request leaves once /dev/shm and
# the server's own processes (the API server; per GPU a worker with torch, its CUDA context and pinned buffers)
# have their share, divided among the GPU workers, each of which streams with a buffer of its own.
SERVER_PROCESS_MIB = 4096
GPU_WORKER_MIB = 6144
# The buffer cannot be smaller than the largest tensor (usage.md): an embedding of a 128k vocabulary at 8192
# dimensions in bf16 is 2 GiB.
STREAMER_MIN_MIB = 4096


def streamer_memory_limit(model: Model, region: Region) -> int:
    """RUNAI_STREAMER_MEMORY_LIMIT in bytes for one of `model`'s GPU workers in `region` (see above)."""
    pool = region.pool(model.pool)
    if pool is None:
        raise ValueError(f"model {model.name} uses pool {model.pool!r}, which region {region.name} does not have")
    size = model_resources(model, pool, load_catalog())
    room = size.memory_mib - size.shm_mib - SERVER_PROCESS_MIB - GPU_WORKER_MIB * model.gpus
    per_worker = room // model.gpus
    if per_worker < STREAMER_MIN_MIB:
        raise ValueError(f"model {model.name} in {region.name}: its replica's {size.memory_mib}Mi, less "
                         f"{size.shm_mib}Mi of /dev/shm and the server's processes, leaves {per_worker}Mi per GPU "
                         f"for Run:ai's read buffer, under {STREAMER_MIN_MIB}Mi; give it more memory "
                         f"(models[].resources.memory) or less /dev/shm")
    return per_worker * 1024 * 1024


def weights_values(cfg: StackConfig, model: Model, region: Region, *, role_arn: Any, source: Any) -> dict[str, Any]:
    """Where the release loads weights from, at which revision, and the startup budget that takes.

    S3: vLLM serves `s3://<bucket>/<model>/<revision>` with `--load-format runai_streamer`
    (https://docs.vllm.ai/en/stable/models/extensions/runai_model_streamer/), its read buffer capped by
    `streamer_memory_limit`. The streamer gets credentials through boto3 (run-ai/runai-model-streamer
    docs/src/usage.md, "S3 authentication"), whose chain reads the web identity token and role that EKS's IRSA
    webhook injects (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN) for the ServiceAccount's role: so the release
    always carries the role's ARN. IRSA needs STS and S3 over HTTPS, which the chart's NetworkPolicy allows
    (egress 443), and never the instance metadata endpoint, which it blocks; AWS_EC2_METADATA_DISABLED keeps the
    SDKs from falling back to the node's role. Hugging Face: vLLM downloads the pinned `revision`, if any.
    """
    weights = model.weights_from(cfg.environment)
    out: dict[str, Any] = {"probes": {"startup": {
        "periodSeconds": STARTUP_PERIOD_SECONDS,
        "failureThreshold": startup_failure_threshold(model, region, weights)}}}
    if weights != "s3":
        if model.revision is not None:
            out["model"] = {"extraArgs": [f"--revision={model.revision}", f"--tokenizer-revision={model.revision}"]}
        return out
    if source is None or role_arn is None:
        raise ValueError(f"model {model.name} in {region.name} loads its weights from S3: the release needs the "
                         "weights bucket's source and the model server role's ARN")
    out["model"] = {"source": source, "extraArgs": ["--load-format=runai_streamer"]}
    out["serviceAccount"] = {"roleArn": role_arn}
    out["extraEnv"] = [{"name": "AWS_REGION", "value": region.name},
                       {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
                       {"name": "RUNAI_STREAMER_MEMORY_LIMIT", "value": str(streamer_memory_limit(model, region))}]
    return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Nested dicts merge, lists extend, anything else is replaced."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key] = [*into[key], *value]
        else:
            into[key] = value


def gateway_values(cfg: StackConfig, region: Region, *, role_arn: Any, config: dict[str, Any],
                   certificate_arn: Any, tags: dict[str, str]) -> dict[str, Any]:
    """Values for the `gateway` release in `region`. `role_arn` and `certificate_arn` (the region's ACM
    certificate, infra/components/dns.py) may be Pulumi Outputs; `tags` go on the NLB (and what it makes)."""
    replicas = cfg.gateway.replicas
    discovered = _discovery_namespaces(config)
    repository, _, tag = cfg.gateway.image.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"gateway image {cfg.gateway.image!r} must be pinned as <repository>:<tag>")
    return {
        "image": {"repository": repository, "tag": tag},
        "replicaCount": max(1, replicas.min),
        "autoscaling": {
            "enabled": replicas.max > replicas.min,
            "minReplicas": max(1, replicas.min),
            "maxReplicas": max(1, replicas.max),
            "prometheus": {"serverAddress": PROMETHEUS_URL},
        },
        "serviceAccount": {"create": True, "name": GATEWAY_SERVICE_ACCOUNT, "roleArn": role_arn},
        "service": {"port": GATEWAY_PORT, "loadBalancer": {
            "enabled": True,
            "certificateArns": [certificate_arn],
            "hosts": [cfg.gateway.domain, regional_host(region.name, cfg.gateway.domain),
                      zone_host(region.residency, cfg.gateway.domain)],
            "tags": dict(tags),
        }},
        "networkPolicy": {
            "enabled": True,
            # The NLB sits in the public subnets and connects from its addresses there (charts/gateway
            # templates/networkpolicy.yaml says why).
            "loadBalancerCidrs": public_subnet_cidrs(cfg.vpc_cidr(region.name)),
            "modelNamespace": MODEL_NAMESPACE,
            "modelPort": VLLM_PORT,
            # The region's Redis (ElastiCache) and PostgreSQL (RDS) live in its private subnets
            # (infra/components/gateway_stores.py), and nowhere else: no store of another region is reachable.
            "redis": {"cidrs": private_subnet_cidrs(cfg.vpc_cidr(region.name)), "port": REDIS_PORT},
            "postgres": {"cidrs": private_subnet_cidrs(cfg.vpc_cidr(region.name)), "port": POSTGRES_PORT},
        },
        # The gateway reads EndpointSlices only in the namespaces its config discovers replicas in.
        "discovery": {"enabled": bool(discovered), "namespaces": discovered or [MODEL_NAMESPACE]},
        "region": region.name,
        "config": config,
        # Scraped by the region's Prometheus (infra/components/monitoring.py selects every ServiceMonitor).
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}},
    }


def _discovery_namespaces(config: Any) -> list[str]:
    """Namespaces named by `endpoint_slices` replica sources anywhere in the gateway config."""
    found: list[str] = []
    if isinstance(config, dict):
        slices = config.get("endpoint_slices")
        if isinstance(slices, dict) and isinstance(slices.get("namespace"), str):
            found.append(slices["namespace"])
        for value in config.values():
            found.extend(_discovery_namespaces(value))
    elif isinstance(config, list):
        for item in config:
            found.extend(_discovery_namespaces(item))
    return list(dict.fromkeys(found))
