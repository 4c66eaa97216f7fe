"""What every control shares: the policy config a stack declares, the resource index a rule reads, and the result
record."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from infra.config import StackConfig

MANDATORY = "mandatory"
ADVISORY = "advisory"

# Resource types the rules read; the SDK's type tokens, as the engine records them.
BUDGET = "aws:budgets/budget:Budget"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
KMS_KEY = "aws:kms/key:Key"
KMS_REPLICA_KEY = "aws:kms/replicaKey:ReplicaKey"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_POLICY = "aws:secretsmanager/secretPolicy:SecretPolicy"
IAM_ROLE = "aws:iam/role:Role"
IAM_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
IAM_POLICY = "aws:iam/policy:Policy"
IAM_ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
HEALTH_CHECK = "aws:route53/healthCheck:HealthCheck"
DNS_RECORD = "aws:route53/record:Record"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_REPLICATION = "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
JOB = "kubernetes:batch/v1:Job"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
COMPONENT_LABEL = "app.kubernetes.io/component"
STAGER_COMPONENT = "weights-stager"  # infra/components/model_weights.py's staging Jobs

GLOBAL = "global"
TAG_STACK = "llm-platform:stack"
TAG_RESIDENCY = "llm-platform:residency"
TAG_REGION = "llm-platform:region"

# The Helm releases the program installs (charts/vllm as `vllm-<model>`, charts/gateway as `gateway`).
VLLM_CHART_DIR = "vllm"
GATEWAY_CHART_DIR = "gateway"
MODEL_LABEL = "llm-platform/model"  # on vLLM pods and on weights staging Jobs
TIER_LABEL = "llm-platform/tier"
POOL_LABEL = "llm-platform/pool"


class Resource(Protocol):
    """A resource the program would create: infra.plan.mocks.PlannedResource, or a CrossGuard resource adapted to it.
    The rules only read it (read-only members, so a PlannedResource's dicts fit these Mappings)."""
    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def inputs(self) -> Mapping[str, Any]: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def outputs(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ModelIntent:
    """What the stack declares about a model: the zone it is restricted to, and whether it tolerates spot."""
    residency: str | None
    batch_tolerant: bool


@dataclass(frozen=True)
class PolicyConfig:
    """The stack's declared intent the controls judge against; the CrossGuard pack receives the same as pack config.

    Topology (where models run, pools, replicas, secrets, policies) is never taken from here: the
    rules read it from the resources the program creates.
    """
    stack: str
    environment: str  # "prod" | "preview"
    budget_usd: float
    residency: dict[str, list[str]]  # zone -> regions it allows
    region_zones: dict[str, str]  # region -> the zone the stack declares it in
    min_regions_per_model: int
    models: dict[str, ModelIntent]
    # Every preview stack (and each pr-N copy of it) stays under this, whatever its own budget says.
    preview_cap_usd: float = 5000.0
    # The day the stack is judged on (version-support reads it); None: today in UTC, as a CrossGuard run is.
    plan_date: date | None = None

    @classmethod
    def from_stack(cls, cfg: StackConfig) -> PolicyConfig:
        return cls(
            stack=cfg.stack, environment=cfg.environment, budget_usd=float(cfg.budget.monthly_usd),
            residency={z: list(rs) for z, rs in cfg.residency.items()},
            region_zones={r.name: r.residency for r in cfg.regions},
            min_regions_per_model=cfg.failover.min_regions_per_model,
            models={m.name: ModelIntent(m.residency, m.batch_tolerant) for m in cfg.models})

    def as_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "environment": self.environment, "budget_usd": self.budget_usd,
                "preview_cap_usd": self.preview_cap_usd, "residency": self.residency,
                "region_zones": self.region_zones, "min_regions_per_model": self.min_regions_per_model,
                "restricted_models": {n: m.residency for n, m in self.models.items() if m.residency},
                "batch_models": sorted(n for n, m in self.models.items() if m.batch_tolerant),
                "models": sorted(self.models)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PolicyConfig:
        restricted = dict(raw.get("restricted_models") or {})
        batch = set(raw.get("batch_models") or [])
        names = list(raw.get("models") or []) or sorted({*restricted, *batch})
        return cls(
            stack=str(raw["stack"]), environment=str(raw["environment"]), budget_usd=float(raw["budget_usd"]),
            residency={str(z): [str(r) for r in rs] for z, rs in dict(raw["residency"]).items()},
            region_zones={str(r): str(z) for r, z in dict(raw["region_zones"]).items()},
            min_regions_per_model=int(raw["min_regions_per_model"]),
            models={n: ModelIntent(restricted.get(n), n in batch) for n in names},
            preview_cap_usd=float(raw.get("preview_cap_usd", cls.preview_cap_usd)))

    def zone_of(self, region: str) -> str | None:
        return self.region_zones.get(region)


@dataclass
class ControlResult:
    id: str
    title: str
    enforcement: str
    status: str  # "pass" | "fail"
    violations: list[str]
    evidence: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status, "enforcement": self.enforcement,
                "violations": list(self.violations), "evidence": list(self.evidence)}


@dataclass
class Findings:
    """What one control saw: the violations, and the resources and values it judged."""
    violations: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def judged(self, resource: Resource | None, **values: Any) -> None:
        item: dict[str, Any] = {}
        if resource is not None:
            item = {"resource": resource.name, "type": resource.type, "region": resource.region}
        item.update(values)
        self.evidence.append(item)


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    description: str
    enforcement: str
    check: Callable[[Resources, PolicyConfig], Findings]
    proven_by: list[str]


class Resources:
    """Index over the recorded resources, with the lookups the rules share."""

    def __init__(self, resources: Iterable[Resource]):
        self.all = [r for r in resources if not r.type.startswith("pulumi:providers:")]
        self.providers = [r for r in resources if r.type.startswith("pulumi:providers:")]

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.all if r.type == typ]

    def releases(self, chart_dir: str) -> list[Resource]:
        """Helm releases of one of the project's charts (chart is a path ending in charts/<dir>)."""
        return [r for r in self.of_type(HELM_RELEASE)
                if str(r.inputs.get("chart", "")).rstrip("/").endswith(f"charts/{chart_dir}")]

    def model_releases(self) -> list[tuple[Resource, str]]:
        """(release, model name) for every vLLM release."""
        out = []
        for r in self.releases(VLLM_CHART_DIR):
            values = r.inputs.get("values") or {}
            name = (values.get("podLabels") or {}).get(MODEL_LABEL) or (values.get("model") or {}).get("servedName")
            out.append((r, str(name or r.inputs.get("name", r.name)).removeprefix("vllm-")))
        return out

    def arn_index(self) -> dict[str, Resource]:
        return {str(r.outputs["arn"]): r for r in self.all if r.outputs.get("arn")}


def as_int(value: Any, default: int = 0) -> int:
    """Numbers arrive from the engine as floats (2.0); None means absent."""
    return default if value is None else int(value)


def policy_document(value: Any) -> dict[str, Any] | None:
    """A policy input as the program wrote it: JSON text (or an already decoded object)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            doc = json.loads(value)
        except json.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def statements(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    stmts = doc.get("Statement") or []
    return [dict(s) for s in ([stmts] if isinstance(stmts, Mapping) else stmts)]


def as_list(value: Any) -> list[Any]:
    """A value the engine may give as one item or a list (CrossGuard hands over list proxies, not lists)."""
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
