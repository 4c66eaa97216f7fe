"""The stack config: one typed, validated model of the `llm-platform:*` keys of a Pulumi stack.

Validation runs once, before any resource exists. Every problem is reported with the key path a
user would edit (`llm-platform:models[1].pool`) and what is wrong, all problems at once.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic_core import ErrorDetails

from infra import bedrock
from infra.catalog import Catalog, load_catalog
from infra.placement import placement_problems
from infra.sizing import fit_problems, parse_cpu, parse_memory
from infra.sizing import nodes_for as _nodes_for

NAMESPACE = "llm-platform"
PREVIEW_TEMPLATE = "preview"
PR_STACK = re.compile(r"^pr-([1-9][0-9]*)$")
ROOT = Path(__file__).resolve().parent.parent
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# Prod models this large (GB on disk) load from the region's weights bucket unless `weights` says otherwise.
S3_WEIGHTS_MIN_GB = 10.0
# A full git commit id, as the Hugging Face Hub names a repo's revisions (`ModelInfo.sha`).
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# RFC 5737's documentation blocks: never routed on the internet, so no runner ever has such an address.
DOCUMENTATION_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))

# Kubernetes object names are DNS-1123 labels; model and pool names end up in them.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Hostname = Annotated[str, StringConstraints(pattern=r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$")]


class ConfigError(Exception):
    """Invalid stack config: a list of (key path, problem)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {problem}" for path, problem in problems)
        super().__init__(f"invalid stack config {source}:\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Hosted providers a model may fall back to, as "<provider>/<upstream model>": wire protocol and base URL.
HOSTED_PROVIDERS: dict[str, tuple[str, str]] = {
    "openai": ("openai", "https://api.openai.com/v1"),
    "anthropic": ("anthropic", "https://api.anthropic.com/v1"),
    "together": ("openai", "https://api.together.xyz/v1"),
    "groq": ("openai", "https://api.groq.com/openai/v1"),
}


# Amazon Bedrock (Converse API): called with the gateway's own IAM role, so no key in Secrets Manager; its
# endpoint is the gateway's region's (infra/bedrock.py: model ids, inference profiles, ARNs).
BEDROCK = "bedrock"


def hosted_fallback(spec: str) -> tuple[str, str, str, str]:
    """'together/meta-llama/X' -> (provider, wire protocol, api_base, upstream model). Bedrock has no fixed base
    URL (''): each region's gateway calls Bedrock in its own region."""
    provider, _, upstream = spec.partition("/")
    if provider == BEDROCK and upstream:
        bedrock.geography(upstream)  # raises for what is not a model or profile id, and for global profiles
        return provider, BEDROCK, "", upstream
    if provider not in HOSTED_PROVIDERS or not upstream:
        known = ", ".join([*HOSTED_PROVIDERS, BEDROCK])
        raise ValueError(f"{spec!r} must be <provider>/<model> with provider one of {known}")
    protocol, api_base = HOSTED_PROVIDERS[provider]
    return provider, protocol, api_base, upstream


class Budget(_Model):
    monthly_usd: float = Field(gt=0)
    # AWS allows five notifications per budget; the program adds a forecast alert at 100%.
    alert_thresholds_pct: list[Annotated[int, Field(gt=0, le=200)]] = Field(min_length=1, max_length=4)
    alert_emails: list[Email] = Field(min_length=1)
    # Activation is account-wide and works only in the payer account: infra/components/budget.py.
    activate_cost_allocation_tag: bool = True


class Reservation(_Model):
    """Reserved GPU capacity a pool launches into: a Capacity Block for ML or an On-Demand Capacity Reservation."""
    kind: Literal["capacity-block", "odcr"]
    id: Annotated[str, StringConstraints(pattern=r"^cr-[0-9a-f]{17}$")]
    # The zone ID (use1-az4), not the name (us-east-1a): names map to different zones in every account.
    availability_zone: str


class Pool(_Model):
    name: Slug
    instance_types: list[str] = Field(min_length=1)
    capacity: Literal["on-demand", "spot", "reserved"]
    min_nodes: int = Field(ge=0)
    max_nodes: int = Field(ge=1)
    disk_gib: int = Field(default=400, ge=50)
    reservation: Reservation | None = None

    @property
    def spot(self) -> bool:
        return self.capacity == "spot"

    @property
    def reserved(self) -> bool:
        return self.capacity == "reserved"


class Region(_Model):
    name: str
    residency: str
    pools: list[Pool] = Field(min_length=1)
    # The region's VPC block; unset: the region's index-th block of network.cidr's size after it.
    cidr: str | None = None

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)


class Replicas(_Model):
    min: int = Field(ge=0)
    max: int = Field(ge=1)


class ModelResources(_Model):
    """What one replica requests, when the share of its pool's node that infra/sizing.py computes is not right."""
    cpu: str | float | None = None  # Kubernetes quantity: 4, 0.5, "3500m"
    memory: str | None = None  # "24Gi", "16384Mi"
    shm: str | None = None  # /dev/shm, memory-backed: part of `memory`, not added to it

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | float | None) -> str | float | None:
        if value is not None and parse_cpu(value) <= 0:
            raise ValueError(f"{value!r} must be above zero")
        return value

    @field_validator("memory", "shm")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and parse_memory(value) <= 0:
            raise ValueError(f"{value!r} must be at least 1Mi")
        return value


class Model(_Model):
    name: Slug
    source: str = Field(min_length=1)  # Hugging Face repo id or s3:// prefix
    pool: str
    gpus: int = Field(ge=1)
    quantization: Literal["fp8", "awq", "gptq", "bitsandbytes"] | None = None
    max_model_len: int = Field(ge=256)
    replicas: Replicas
    regions: list[str] = Field(min_length=1)
    tier: Literal["interactive", "batch"] = "interactive"
    residency: str | None = None  # set: the model is restricted to this zone (data may not leave it)
    gpu_memory_utilization: float = Field(default=0.90, gt=0.1, le=0.98)
    # Unset: a share of the pool's smallest node proportional to `gpus` (infra/sizing.py).
    resources: ModelResources | None = None
    # Where replicas load weights from: `s3` (the region's weights bucket, staged once from Hugging Face,
    # streamed by Run:ai's streamer) or `huggingface` (each replica downloads). Unset: see `weights_from`.
    weights: Literal["s3", "huggingface"] | None = None
    # The checkpoint's size on disk (its safetensors, GB): sizes the startup probe and picks the default `weights`.
    size_gb: float | None = Field(default=None, gt=0)
    # The Hugging Face revision served: a commit sha (required for weights from S3, whose prefix in the bucket is
    # named after it, README: Weights), or for Hugging Face downloads also a branch or tag. Unset: the repo's main.
    revision: str | None = Field(default=None, min_length=1)

    @property
    def batch_tolerant(self) -> bool:
        """Batch models accept spot interruptions; only they may run on spot pools."""
        return self.tier == "batch"

    @property
    def idles_at_zero(self) -> bool:
        """A batch model whose config allows zero replicas gives its GPUs back while nobody calls it: KEDA scales it
        to zero (idleReplicaCount 0, below its floor of one) and back up when the gateway sees calls for it.
        Interactive models never do: a caller would wait minutes for a replica to load."""
        return self.tier == "batch" and self.replicas.min == 0

    @property
    def floor(self) -> int:
        """Replicas the model keeps while idle: none for a model that idles at zero, else its minimum (one at
        least, since validation refuses `replicas.min: 0` for any model that does not idle at zero)."""
        return 0 if self.idles_at_zero else self.replicas.min

    def weights_from(self, environment: str) -> Literal["s3", "huggingface"]:
        """`weights`, or by default: S3 for prod models of S3_WEIGHTS_MIN_GB or more (a replica then loads them
        from its own region in seconds, and Hugging Face is asked once per region, not per replica); Hugging
        Face for small models, models of unknown size, and previews (no bucket to stage for a short-lived stack)."""
        if self.weights is not None:
            return self.weights
        large = self.size_gb is not None and self.size_gb >= S3_WEIGHTS_MIN_GB
        return "s3" if environment == "prod" and large else "huggingface"


class Failover(_Model):
    min_regions_per_model: int = Field(ge=1)
    # model name -> hosted provider models ("together/meta-llama/...") the gateway may fall back to
    hosted_fallbacks: dict[str, list[str]] = Field(default_factory=dict)


# The gateway image's digest, as a registry prints it (the OCI image spec's `sha256:` descriptor digest).
IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# All zeros: no image built yet. Accepted, so that the offline plan runs and a stack's first `up` creates the
# repository the first image is pushed to; the program warns, and a pod cannot pull it (README: The gateway image).
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


# -- the gateway's cost features (issue 19): the shapes of the gateway's own `ladders`, `cache`, `batch` sections
# (gateway/config/ladders.py, cache.py, batch.py); infra/gateway_config.py renders them per region.
EscalateOn = Literal["error", "invalid_json", "length", "empty"]
ESCALATE_ON_ALL: list[EscalateOn] = ["error", "invalid_json", "length", "empty"]


class LadderRule(_Model):
    """A request rule: a call matching it starts at `start_at` instead of the cheapest rung."""
    prompt_tokens_over: int | None = Field(default=None, ge=0)
    tools: bool | None = None
    start_at: str


class LadderPins(_Model):
    teams: dict[str, str] = Field(default_factory=dict)  # team_id -> rung
    keys: dict[str, str] = Field(default_factory=dict)  # key_alias -> rung


class Ladder(_Model):
    """A cheap-then-expensive alias: `rungs` are model names, cheapest first."""
    alias: Slug
    rungs: list[str] = Field(min_length=2)
    escalate_on: list[EscalateOn] = Field(default_factory=lambda: list(ESCALATE_ON_ALL))
    rules: list[LadderRule] = Field(default_factory=list)
    pins: LadderPins = LadderPins()


class ResponseCache(_Model):
    """The gateway's response cache, in the region's Redis (its `redis` section)."""
    ttl_seconds: int = Field(default=3600, ge=1)
    max_entry_bytes: int = Field(default=1 << 20, ge=1, le=512 << 20)  # 512 MiB: Redis's largest string value
    max_bytes: int = Field(default=256 << 20, ge=1)
    hit_cost_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    scope: Literal["team", "key"] = "team"
    models: list[str] = Field(default_factory=list)  # model names, or "*"
    teams: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)
    temperature_above_zero: bool = False


class Batch(_Model):
    """OpenAI's Files and Batch API on the gateway; files in the zone's bucket (infra/components/batch_files.py)."""
    price_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    concurrency: int = Field(default=8, ge=1)
    yield_to_interactive: int = Field(default=1, ge=0)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)  # OpenAI's 200 MB
    max_lines: int = Field(default=50_000, ge=1)  # OpenAI's 50,000 requests per batch
    models: dict[str, str] = Field(default_factory=dict)  # model a line names -> the `tier: batch` model it runs on
    # Infra only (not rendered): the bucket's lifecycle expires files this many days after upload, and the storage
    # the budget reserves per zone's bucket (S3 has no size cap: the budget prices this much).
    retention_days: int = Field(default=30, ge=1, le=3650)
    budget_gib: float = Field(default=100.0, gt=0)


class Gateway(_Model):
    domain: Hostname
    zone: Hostname
    replicas: Replicas
    # The image in the stack's ECR repository, by digest only: the registry host holds the account id, so the
    # program composes `<registry>/llm-platform/<stack>/gateway@<digest>` from the repository it creates (previews:
    # prod's). The gateway-image workflow prints the line to put here.
    image_digest: str
    # Replaced by image_digest; kept as a field only to say so by name.
    image: str | None = None
    ladders: list[Ladder] = Field(default_factory=list)
    cache: ResponseCache | None = None
    batch: Batch | None = None

    @field_validator("image_digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not IMAGE_DIGEST.match(value):
            kind = "a tag" if ":" not in value and "@" not in value else "not a digest"
            raise ValueError(f"{value!r} is {kind}: write the digest the gateway-image workflow printed, "
                             "sha256: and 64 lowercase hex digits (an image is pinned by digest, never by tag)")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(f"{value!r}: no longer supported; write gateway.image_digest: sha256:<64 hex> (the "
                             "program takes the repository from the ECR repository it creates)")
        return value


# An IAM role name (resolved in the deploying account) or a role ARN: whoever may administer the clusters.
IamRole = Annotated[str, StringConstraints(
    pattern=r"^([A-Za-z0-9+=,.@_-]{1,64}|arn:aws(-[a-z]+)*:iam::[0-9]{12}:role/([A-Za-z0-9+=,.@_-]+/)*[A-Za-z0-9+=,.@_-]{1,64})$")]


class Cluster(_Model):
    # Pinned, for the control plane and every node group: the newest version on EKS standard support on
    # 2026-11-25 (infra/catalog.yaml kubernetes_versions); the version-support control says when to move.
    kubernetes_version: str = "1.35"
    # EKS access entries with the cluster-admin access policy: the operators' way into every cluster
    # (besides the identity that created it). Authentication mode API: no aws-auth ConfigMap.
    admin_roles: list[IamRole] = Field(default_factory=list)
    # Empty: the API endpoint is private only, and `pulumi up` must run inside the VPC.
    public_access_cidrs: list[str] = Field(default_factory=list)
    system_instance_type: str = "m7i.xlarge"
    system_nodes: int = Field(default=2, ge=1)


class Network(_Model):
    # The first region's VPC block, and the base the other regions' default blocks count up from.
    cidr: str = "10.40.0.0/16"
    nat_gateways: Literal["per-az", "single"] = "per-az"


class Deploy(_Model):
    """The deploy runner in the first region's VPC (README: Deploy path)."""
    repository: str = "llm-platform/llm-platform"  # GitHub owner/name the runner's webhook is on
    runner_compute_type: Literal["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_MEDIUM", "BUILD_GENERAL1_LARGE"] = \
        "BUILD_GENERAL1_MEDIUM"


class Secrets(_Model):
    providers: list[Slug] = Field(default_factory=lambda: ["openai", "anthropic"])
    # Gated models need a Hugging Face token: true creates the secret llm-platform/<stack>/huggingface/token
    # in each zone, which the model pods mount through their own IRSA role. The program never writes
    # the token's value (it must not land in Pulumi state).
    huggingface_token: bool = False


class Preview(_Model):
    ttl_hours: int = Field(default=72, ge=1, le=24 * 14)
    # Set on ephemeral pr-<n> stacks by `llmp preview-config`; the reaper destroys the stack after it.
    expires_at: datetime | None = None


class StackConfig(_Model):
    stack: str
    environment: Literal["prod", "preview"]
    budget: Budget
    residency: dict[str, list[str]] = Field(min_length=1)
    regions: list[Region] = Field(min_length=1)
    models: list[Model] = Field(min_length=1)
    failover: Failover
    gateway: Gateway
    cluster: Cluster = Cluster()
    network: Network = Network()
    deploy: Deploy = Deploy()
    secrets: Secrets = Secrets()
    preview: Preview = Preview()

    @property
    def pr_number(self) -> int | None:
        """The pull request an ephemeral `pr-<n>` stack belongs to."""
        match = PR_STACK.match(self.stack)
        return int(match.group(1)) if match else None

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def zone_of(self, region: str) -> str:
        return self.region(region).residency

    def models_in(self, region: str) -> list[Model]:
        return [m for m in self.models if region in m.regions]

    @property
    def zones(self) -> list[str]:
        """Residency zones that have at least one region in this stack, in config order."""
        return list(dict.fromkeys(r.residency for r in self.regions))

    def regions_in(self, zone: str) -> list[Region]:
        return [r for r in self.regions if r.residency == zone]

    @property
    def deploy_hub(self) -> Region:
        """The region whose VPC runs the deploy runner; every other region's VPC is peered with it."""
        return self.regions[0]

    def vpc_cidr(self, region: str) -> str:
        """The region's VPC block: its own `cidr`, or the next blocks after `network.cidr` by region index."""
        index = next(i for i, r in enumerate(self.regions) if r.name == region)
        return self.regions[index].cidr or default_vpc_cidr(self.network.cidr, index)


def default_vpc_cidr(base: str, index: int) -> str:
    """The index-th block of base's size from base (10.40.0.0/16 -> 10.41.0.0/16 for index 1): distinct
    blocks, because peered VPCs may not overlap."""
    net = ipaddress.IPv4Network(base)
    return str(ipaddress.IPv4Network((int(net.network_address) + index * net.num_addresses, net.prefixlen)))


# --- loading ------------------------------------------------------------------------------------

def parse(raw: dict[str, Any], stack: str, source: str = "<config>") -> StackConfig:
    """Validate `llm-platform:*` values (namespace already stripped) into a StackConfig."""
    try:
        cfg = StackConfig.model_validate({**raw, "stack": stack})
    except ValidationError as exc:
        raise ConfigError(source, [(_key_path(e["loc"]), _describe(e)) for e in exc.errors()]) from None
    problems = cross_check(cfg, load_catalog())
    if problems:
        raise ConfigError(source, problems)
    return cfg


def stack_file(stack: str, root: Path = ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def read_stack(stack: str, root: Path = ROOT, now: datetime | None = None) -> tuple[dict[str, Any], str]:
    """A stack's values and where they came from: its own file, or for a `pr-<n>` stack without one,
    the preview template made into that PR's config."""
    own = stack_file(stack, root)
    if own.exists() or not PR_STACK.match(stack):
        if not own.exists():
            raise ConfigError(str(own), [("(stack)", no_such_stack(stack, root))])
        return read_stack_file(own), str(own)
    template = stack_file(PREVIEW_TEMPLATE, root)
    return preview_config(read_stack_file(template), stack, now), f"{template} (as {stack})"


def existing_stacks(root: Path = ROOT) -> list[str]:
    """Stacks with a file of their own (Pulumi.<stack>.yaml), besides which any pr-<n> stack exists."""
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def no_such_stack(stack: str, root: Path = ROOT) -> str:
    stacks = existing_stacks(root)
    close = difflib.get_close_matches(stack, stacks, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (f"no stack {stack!r}: there is no {stack_file(stack, root).name}. Stacks here: {', '.join(stacks)}, and "
            f"pr-<number> (made from {stack_file(PREVIEW_TEMPLATE, root).name}){hint}")


def preview_config(template: dict[str, Any], stack: str, now: datetime | None = None) -> dict[str, Any]:
    """The config an ephemeral `pr-<n>` stack gets from the preview template: its own DNS name
    under the preview domain (in the preview's zone), and an expiry `ttl_hours` from now."""
    if not PR_STACK.match(stack):
        raise ConfigError(stack, [("(stack)", "ephemeral stacks are named pr-<number>, e.g. pr-123")])
    raw: dict[str, Any] = json.loads(json.dumps(template))  # a deep copy of plain data
    if raw.get("environment") != "preview":
        raise ConfigError(PREVIEW_TEMPLATE, [(f"{NAMESPACE}:environment", "the preview template must be 'preview'")])
    gateway = raw.setdefault("gateway", {})
    if "domain" in gateway:
        gateway["domain"] = f"{stack}.{gateway['domain']}"  # records in the preview zone, never a zone of its own
    preview = raw.setdefault("preview", {})
    ttl = preview.get("ttl_hours", Preview().ttl_hours)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
        raise ConfigError(PREVIEW_TEMPLATE, [(f"{NAMESPACE}:preview.ttl_hours", f"{ttl!r} is not a number of hours")])
    start = (now or datetime.now(UTC)).replace(microsecond=0)
    preview["expires_at"] = (start + timedelta(hours=ttl)).isoformat().replace("+00:00", "Z")
    return raw


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `llm-platform:*` values of a Pulumi.<stack>.yaml, namespace stripped; a key meant for this project
    under another namespace, or none, is refused by name rather than left out."""
    prefix = NAMESPACE + ":"
    config_map = {normalise_key(str(k)): v for k, v in read_config_map(path).items()}
    problems, _ = namespace_problems(config_map)
    if problems:
        raise ConfigError(str(path), problems)
    return {k[len(prefix):]: v for k, v in config_map.items() if k.startswith(prefix)}


# Namespaces of other packages whose keys a stack file may carry: the engine's own and the providers'.
# Pulumi reads `pulumi:disable-default-providers` (both shipped stacks set it) and `<provider>:<key>` for a default
# provider (https://www.pulumi.com/docs/iac/concepts/config/#provider-configuration-options).
OTHER_NAMESPACES = frozenset({"pulumi", "aws", "kubernetes", "policy"})
# Namespaces taken for ours: within this many edits of `llm-platform` (`llm_platform`, `llm-platfrom`), or the
# project's other name (its CLI). A provider's namespace is never this close (`azure:environment` is a real key).
NAMESPACE_EDITS = 3
OUR_OTHER_NAMES = frozenset({"llmp"})
LEGACY_KEY = re.compile(r"^(?P<namespace>[^:]+):config:(?P<name>.+)$")


def normalise_key(key: str) -> str:
    """`<namespace>:config:<name>`, the old form Pulumi still accepts, as the `<namespace>:<name>` it is read as
    (pulumi/pulumi sdk/go/common/resource/config/key.go, ParseKey; sdk/nodejs/runtime/config.ts, cleanKey)."""
    match = LEGACY_KEY.match(key)
    return f"{match['namespace']}:{match['name']}" if match else key


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, one character each."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def spelled_like_ours(namespace: str) -> bool:
    return namespace in OUR_OTHER_NAMES or edit_distance(namespace, NAMESPACE) <= NAMESPACE_EDITS


def namespace_problems(config_map: dict[str, Any], strict: bool = True) -> tuple[list[tuple[str, str]],
                                                                                  list[tuple[str, str]]]:
    """(problems, warnings) for the keys of a stack's config that the program would never read.

    Pulumi hands the program `<namespace>:<key>` pairs and `pulumi.Config("llm-platform")` reads only its own
    namespace, so `gatway:` or `llm-platfrom:gateway` would be silently ignored. Refused: an llm-platform key that
    closely matches a field (a typo) and a namespace spelled like ours. Strict (a stack file, read offline): also a
    key without a namespace and any unknown llm-platform key. Not strict (the keys the engine hands a running
    program, which include an ESC environment's `pulumiConfig`, whose un-namespaced keys land in the project's
    namespace: https://www.pulumi.com/docs/esc/integrations/infrastructure/pulumi-iac/): those are warnings."""
    fields = [f for f in StackConfig.model_fields if f != "stack"]
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for key in config_map:
        namespace, sep, name = normalise_key(str(key)).partition(":")
        if not sep:
            if key in fields:
                problems.append((str(key), f"a key without its namespace is not read: write `{NAMESPACE}:{key}`"))
            else:
                (problems if strict else warnings).append(
                    (str(key), f"a key without a namespace is not read: write `<namespace>:{key}` "
                               f"(`{NAMESPACE}:` for this project's settings)"))
        elif namespace == NAMESPACE:
            top = name.split(".", 1)[0].split("[", 1)[0]
            if top not in fields:
                close = difflib.get_close_matches(top, fields, n=1)
                if close:
                    problems.append((str(key), f"unknown key; did you mean {NAMESPACE}:{close[0]}?"))
                else:
                    (problems if strict else warnings).append(
                        (str(key), f"unknown key, not read by llm-platform (keys: {', '.join(fields)})"))
        elif namespace not in OTHER_NAMESPACES and spelled_like_ours(namespace):
            problems.append((str(key), f"namespace {namespace!r} is not this project's: write `{NAMESPACE}:{name}` "
                                       f"(the program reads only {NAMESPACE}:*)"))
    return problems, warnings


def read_config_map(path: Path) -> dict[str, Any]:
    """The whole `config:` mapping of a Pulumi.<stack>.yaml, every namespace."""
    source = str(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(source, [("(file)", f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("(file)", f"not valid YAML: {exc}")]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(source, [("config", "the file has no `config:` mapping")])
    config: dict[str, Any] = doc["config"]
    return config


def load_file(path: Path, stack: str) -> StackConfig:
    return parse(read_stack_file(path), stack, str(path))


def to_pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """Stack values as the Pulumi engine hands them to the program: namespaced, objects as JSON."""
    return {f"{NAMESPACE}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def from_pulumi() -> StackConfig:
    """The running stack's config, read through the Pulumi SDK (used by infra/__main__.py)."""
    import pulumi
    from pulumi.runtime.config import CONFIG

    # The language host hands the program every key of the stack, namespaced (pulumi-language-python-exec:
    # set_all_config(get_config_env())); one the program would never read is refused by name.
    # A typo of ours is refused; a key only an ESC environment or a tool put there is named in a warning.
    problems, warnings = namespace_problems(dict(CONFIG.get()), strict=False)
    if problems:
        raise ConfigError(f"stack {pulumi.get_stack()}", problems)
    for key, why in warnings:
        pulumi.log.warn(f"{key}: {why}")
    config = pulumi.Config(NAMESPACE)
    given = {normalise_key(k): v for k, v in CONFIG.get().items()}  # the engine normalises too; a test may not
    raw: dict[str, Any] = {}
    for key in StackConfig.model_fields:
        if key == "stack":
            continue
        value = given.get(f"{NAMESPACE}:{key}", config.get(key))
        if value is not None:
            raw[key] = _maybe_json(value)
    return parse(raw, pulumi.get_stack(), f"stack {pulumi.get_stack()}")


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _key_path(loc: tuple[Any, ...]) -> str:
    path = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if i else "") + str(part)
    return path


# Keys that once existed, with what to write instead.
REPLACED_KEYS: dict[tuple[int | str, ...], str] = {
    ("secrets", "huggingface_token_secret"):
        "no longer supported: the token now comes from Secrets Manager, not a Kubernetes Secret; write "
        f"`{NAMESPACE}:secrets.huggingface_token: true` and put the token in llm-platform/<stack>/huggingface/token",
}


def _describe(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden" and tuple(error["loc"]) in REPLACED_KEYS:
        return REPLACED_KEYS[tuple(error["loc"])]
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling)"
    if error["type"] == "string_pattern_mismatch" and error["loc"][-2:-1] == ("admin_roles",):
        return f"{error['input']!r} is neither an IAM role name nor a role ARN (arn:aws:iam::<account>:role/<name>)"
    if error["type"] == "string_pattern_mismatch":
        if error["loc"][-2:] == ("reservation", "id"):
            return f"{error['input']!r} is not a capacity reservation id (cr- and 17 hex digits)"
        return f"{error['input']!r} is not a valid name (lowercase letters, digits and '-')"
    return f"{error['msg']} (got {error['input']!r})"


# --- cross-field checks -------------------------------------------------------------------------

def cross_check(cfg: StackConfig, catalog: Catalog) -> list[tuple[str, str]]:
    """Problems that span keys: each with the key path to fix."""
    problems: list[tuple[str, str]] = []
    add = lambda path, msg: problems.append((f"{NAMESPACE}:{path}", msg))  # noqa: E731

    if cfg.stack == "prod" and cfg.environment != "prod":
        add("environment", "the prod stack must have environment 'prod'")
    if cfg.pr_number is not None:
        if cfg.environment != "preview":
            add("environment", f"ephemeral stack {cfg.stack} must have environment 'preview'")
        if cfg.preview.expires_at is None:
            add("preview.expires_at", f"ephemeral stack {cfg.stack} needs an expiry: write its config with "
                                      f"`llmp preview-config {cfg.stack}`")
    for zone, regions in cfg.residency.items():
        for listed in regions:
            # A zone may allow a real region that runs no pool (a Bedrock profile's destination, a future region):
            # only a name that is no commercial region at all is a mistake here.
            if listed not in catalog.commercial_regions and not catalog.knows_region(listed):
                add(f"residency.{zone}", catalog.region_problem(listed) or f"unknown AWS region {listed!r}")

    region_names = [r.name for r in cfg.regions]
    for i, region in enumerate(cfg.regions):
        at = f"regions[{i}]"
        if region_names.count(region.name) > 1:
            add(f"{at}.name", f"region {region.name!r} is listed more than once")
        if (problem := catalog.region_problem(region.name)) is not None:
            add(f"{at}.name", problem)
        allowed = cfg.residency.get(region.residency)
        if allowed is None:
            add(f"{at}.residency", f"zone {region.residency!r} is not defined in {NAMESPACE}:residency "
                                   f"(defined: {', '.join(cfg.residency)})")
        elif region.name not in allowed:
            add(f"{at}.name", f"region {region.name} is outside residency zone {region.residency!r}, "
                              f"which allows only {', '.join(allowed)}")
        pool_names = [p.name for p in region.pools]
        for j, pool in enumerate(region.pools):
            pat = f"{at}.pools[{j}]"
            if pool_names.count(pool.name) > 1:
                add(f"{pat}.name", f"pool {pool.name!r} is defined twice in region {region.name}")
            if pool.min_nodes > pool.max_nodes:
                add(f"{pat}.min_nodes", f"min_nodes ({pool.min_nodes}) is above max_nodes ({pool.max_nodes})")
            for k, itype in enumerate(pool.instance_types):
                if itype not in catalog.instances:
                    add(f"{pat}.instance_types[{k}]", f"unknown instance type {itype!r}")
                elif catalog.instance(itype).gpus == 0:
                    add(f"{pat}.instance_types[{k}]", f"{itype} has no GPU; GPU pools need GPU instances")
        if catalog.knows_region(region.name):
            problems.extend((f"{NAMESPACE}:{path}", msg) for path, msg in placement_problems(cfg, i, catalog))
    if catalog.instances.get(cfg.cluster.system_instance_type) is None:
        add("cluster.system_instance_type", f"unknown instance type {cfg.cluster.system_instance_type!r}")
    admins = cfg.cluster.admin_roles
    for k, role in enumerate(admins):
        if admins.index(role) != k:
            add(f"cluster.admin_roles[{k}]", f"{role} is listed twice")
    for k, cidr in enumerate(cfg.cluster.public_access_cidrs):
        if not _is_cidr(cidr):
            add(f"cluster.public_access_cidrs[{k}]", f"{cidr!r} is not a CIDR block")
        elif ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
            add(f"cluster.public_access_cidrs[{k}]",
                "0.0.0.0/0 opens the API to the internet; list your CI egress ranges")
        elif is_documentation_range(cidr):
            add(f"cluster.public_access_cidrs[{k}]",
                f"{cidr} is a documentation range (RFC 5737) that no client has; "
                f"list real egress ranges, or none (the deploy runner is in the VPC)")
    problems.extend(_check_network(cfg))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", cfg.deploy.repository):
        add("deploy.repository", f"{cfg.deploy.repository!r} is not a GitHub repository as owner/name")
    thresholds = cfg.budget.alert_thresholds_pct
    if len(set(thresholds)) != len(thresholds):
        add("budget.alert_thresholds_pct", f"{thresholds} lists a threshold twice")

    model_names = [m.name for m in cfg.models]
    for i, model in enumerate(cfg.models):
        problems.extend(_check_model(cfg, catalog, i, model, model_names))

    for name in cfg.failover.hosted_fallbacks:
        fallback = next((m for m in cfg.models if m.name == name), None)
        if fallback is None:
            add(f"failover.hosted_fallbacks.{name}", f"no model named {name!r}")
        elif fallback.residency is not None:
            add(f"failover.hosted_fallbacks.{name}",
                f"model {name} is restricted to zone {fallback.residency!r}; it may not fall back to a hosted provider")
        for k, spec in enumerate(cfg.failover.hosted_fallbacks[name]):
            try:
                provider = hosted_fallback(spec)[0]
            except ValueError as exc:
                add(f"failover.hosted_fallbacks.{name}[{k}]", str(exc))
                continue
            if provider == BEDROCK:
                problems.extend(_check_bedrock_fallback(cfg, name, k, spec))
            elif provider not in cfg.secrets.providers:
                add(f"failover.hosted_fallbacks.{name}[{k}]",
                    f"provider {provider!r} has no key in {NAMESPACE}:secrets.providers "
                    f"({', '.join(cfg.secrets.providers)})")
    if not cfg.gateway.domain.endswith("." + cfg.gateway.zone) and cfg.gateway.domain != cfg.gateway.zone:
        add("gateway.domain", f"{cfg.gateway.domain} is not inside the DNS zone {cfg.gateway.zone}")
    if cfg.gateway.replicas.min > cfg.gateway.replicas.max:
        add("gateway.replicas.min", f"min ({cfg.gateway.replicas.min}) is above max ({cfg.gateway.replicas.max})")

    problems.extend(_check_pool_capacity(cfg, catalog))
    problems.extend(check_gateway_features(cfg, catalog))
    return problems


def ladder_zones(cfg: StackConfig, ladder: Ladder) -> list[str]:
    """The zones where every rung of `ladder` is served (a gateway offers a model served in its own zone only)."""
    known = {m.name: m for m in cfg.models}
    zones = []
    for zone in cfg.zones:
        members = {r.name for r in cfg.regions_in(zone)}
        if all(rung in known and members & set(known[rung].regions) for rung in ladder.rungs):
            zones.append(zone)
    return zones


def check_gateway_features(cfg: StackConfig, catalog: Catalog) -> list[tuple[str, str]]:
    """`gateway.ladders`, `gateway.cache` and `gateway.batch` name models the stack serves, in a zone that serves
    them, and the cache fits the Redis it lives in."""
    at = f"{NAMESPACE}:gateway"
    problems: list[tuple[str, str]] = []
    models = {m.name: m for m in cfg.models}
    names = ", ".join(models)
    aliases = [ladder.alias for ladder in cfg.gateway.ladders]
    for i, ladder in enumerate(cfg.gateway.ladders):
        lat = f"{at}.ladders[{i}]"
        if ladder.alias in models:
            problems.append((f"{lat}.alias", f"{ladder.alias!r} is a model's name: a ladder needs a name of its own"))
        if aliases.count(ladder.alias) > 1:
            problems.append((f"{lat}.alias", f"ladder {ladder.alias!r} is defined more than once"))
        for j, rung in enumerate(ladder.rungs):
            if rung not in models:
                problems.append((f"{lat}.rungs[{j}]", f"no model named {rung!r} (models: {names})"))
            elif ladder.rungs.index(rung) != j:
                problems.append((f"{lat}.rungs[{j}]", f"{rung} is listed twice"))
        if all(r in models for r in ladder.rungs) and not ladder_zones(cfg, ladder):
            problems.append((f"{lat}.rungs", f"no residency zone serves every rung ({', '.join(ladder.rungs)}): a "
                                             f"gateway never calls a model of another zone, so no gateway could "
                                             f"offer {ladder.alias!r}"))
        for j, rule in enumerate(ladder.rules):
            if rule.start_at not in ladder.rungs:
                problems.append((f"{lat}.rules[{j}].start_at", f"{rule.start_at!r} is not a rung of {ladder.alias} "
                                                               f"({', '.join(ladder.rungs)})"))
            # The gateway's rule has exactly one condition (gateway/config/ladders.py LadderRule).
            if (rule.prompt_tokens_over is None) == (rule.tools is None):
                problems.append((f"{lat}.rules[{j}]", "a rule has exactly one condition: prompt_tokens_over: N or "
                                                      "tools: true (write two rules for both)"))
            elif rule.tools is False:
                problems.append((f"{lat}.rules[{j}].tools", "tools: false matches nothing a ladder would skip for: "
                                                            "write tools: true"))
        for kind, pins in (("teams", ladder.pins.teams), ("keys", ladder.pins.keys)):
            for who, rung in pins.items():
                if rung not in ladder.rungs:
                    problems.append((f"{lat}.pins.{kind}.{who}", f"{rung!r} is not a rung of {ladder.alias} "
                                                                 f"({', '.join(ladder.rungs)})"))
    cache = cfg.gateway.cache
    if cache is not None:
        for j, name in enumerate(cache.models):
            if name != "*" and name not in models:
                problems.append((f"{at}.cache.models[{j}]", f"no model named {name!r} (models: {names}; a ladder "
                                                            f"is cached per rung: list its rungs)"))
        if not (cache.models or cache.teams or cache.keys):
            problems.append((f"{at}.cache.models", "the cache names no model, team or key to cache for (e.g. "
                                                   "models: [\"*\"])"))
        if cache.max_entry_bytes > cache.max_bytes:
            problems.append((f"{at}.cache.max_entry_bytes",
                             f"{cache.max_entry_bytes} is above max_bytes ({cache.max_bytes})"))
        room = cache_room_bytes(cfg.environment, catalog)
        if room is not None and cache.max_bytes > room:
            problems.append((f"{at}.cache.max_bytes",
                             f"{cache.max_bytes} bytes do not fit the {cfg.environment} Redis: half of what its node "
                             f"leaves for data is {room} bytes (infra/catalog.yaml data_stores "
                             f"cache_node_memory_gib); the rest holds limits and budget counters"))
    batch = cfg.gateway.batch
    if batch is not None:
        problems.extend(_batch_bucket_names(cfg))
        for name, target in batch.models.items():
            if name not in models:
                problems.append((f"{at}.batch.models.{name}", f"no model named {name!r} (models: {names})"))
            if target not in models:
                problems.append((f"{at}.batch.models.{name}", f"{target!r} is not a model (models: {names})"))
            elif models[target].tier != "batch":
                problems.append((f"{at}.batch.models.{name}", f"{target} is a `tier: {models[target].tier}` model; "
                                                              f"batch lines run on `tier: batch` models only"))
    return problems


# The provider appends a 26-character unique suffix to a bucket_prefix, which may hold at most 37 characters of
# lowercase letters, digits and hyphens (pulumi-aws s3.Bucket `bucketPrefix`; S3's naming rules:
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html, at most 63 characters in all).
BUCKET_PREFIX_MAX = 37
_BUCKET_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]*-$")


def _batch_bucket_names(cfg: StackConfig) -> list[tuple[str, str]]:
    """Each zone's batch bucket is named llmp-<stack>-batch-<zone>-<suffix>: the stack and zone names must make a
    valid prefix, or the first `up` fails at CreateBucket after half the stack exists."""
    from infra.components.batch_files import bucket_prefix  # the components import this module

    problems = []
    for zone in cfg.zones:
        prefix = bucket_prefix(cfg.stack, zone)
        if len(prefix) > BUCKET_PREFIX_MAX or not _BUCKET_PREFIX.match(prefix):
            problems.append((f"{NAMESPACE}:residency.{zone}",
                             f"zone {zone!r} of stack {cfg.stack!r} names the batch bucket prefix {prefix!r} "
                             f"({len(prefix)} characters): S3 takes at most {BUCKET_PREFIX_MAX}, of lowercase "
                             f"letters, digits and hyphens; use a shorter lowercase zone name (e.g. 'eu')"))
    return problems


# Of a cache node's memory, ElastiCache keeps reserved-memory-percent (25 in the default parameter groups) for
# non-data use (https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/redis-memory-management.html); the response
# cache may take half of the rest, the other half stays for limits and budget counters.
CACHE_RESERVED_FRACTION = 0.25
CACHE_SHARE = 0.5


def cache_room_bytes(environment: str, catalog: Catalog) -> int | None:
    """The most `gateway.cache.max_bytes` may be in `environment`'s gateway Redis, or None if its node is unknown."""
    from infra.components.gateway_stores import SIZES  # the components import this module

    size = SIZES.get(environment)
    gib = catalog.stores.cache_node_memory_gib.get(size.cache_node_type) if size else None
    if gib is None:
        return None
    return int(gib * (1 << 30) * (1 - CACHE_RESERVED_FRACTION) * CACHE_SHARE)


def _check_bedrock_fallback(cfg: StackConfig, name: str, k: int, spec: str) -> list[tuple[str, str]]:
    """A cross-region profile is rendered in the regions of its geography only (a `us.` profile cannot be
    called from eu-north-1): at least one region serving the model must be one."""
    model_id = spec.partition("/")[2]
    geo = bedrock.geography(model_id)
    model = next((m for m in cfg.models if m.name == name), None)
    if geo is None or model is None:
        return []
    known = {r.name for r in cfg.regions}
    zones = {cfg.zone_of(r) for r in model.regions if r in known}
    callers = [r.name for r in cfg.regions if r.residency in zones]
    if not set(callers) & set(bedrock.geographies()[geo]):
        article = "an" if geo[0] in "aeiou" else "a"
        return [(f"{NAMESPACE}:failover.hosted_fallbacks.{name}[{k}]",
                 f"{model_id} is {article} {geo} inference profile, callable only from {geo} regions; no gateway "
                 f"serving {name} runs in one ({', '.join(callers)})")]
    return []


def _check_model(cfg: StackConfig, catalog: Catalog, i: int, model: Model,
                 model_names: list[str]) -> list[tuple[str, str]]:
    at = f"{NAMESPACE}:models[{i}]"
    problems: list[tuple[str, str]] = []
    if model_names.count(model.name) > 1:
        problems.append((f"{at}.name", f"model {model.name!r} is defined more than once"))
    if model.replicas.min > model.replicas.max:
        problems.append((f"{at}.replicas.min", f"min ({model.replicas.min}) is above max ({model.replicas.max})"))
    if model.replicas.min == 0 and not model.idles_at_zero:
        # Refused rather than raised to one in silence (Model.floor): the plan and the bill would show a replica
        # the config says is not there.
        problems.append((f"{at}.replicas.min", "0 is only for `tier: batch` models, which scale to zero while idle; "
                                               "an interactive model keeps one replica warm, since a caller would "
                                               "wait minutes for one to load: write min: 1, or tier: batch"))
    if model.gpus not in TENSOR_PARALLEL_SIZES:
        problems.append((f"{at}.gpus", f"{model.gpus} GPUs per replica: vLLM tensor parallelism needs 1, 2, 4 or 8"))
    if model.residency is not None and model.residency not in cfg.residency:
        problems.append((f"{at}.residency", f"zone {model.residency!r} is not defined in {NAMESPACE}:residency"))
    if "://" in model.source:
        problems.append((f"{at}.source", f"{model.source!r}: source is the Hugging Face repo id (org/name); for "
                                         f"weights from S3 write `weights: s3` and the program stages them into "
                                         f"the region's own bucket"))
    if model.weights_from(cfg.environment) == "s3" and model.size_gb is None:
        problems.append((f"{at}.size_gb", f"weights from S3 need the checkpoint's size in GB (it sizes the startup "
                                          f"probe); give size_gb, e.g. {model.gpus * 16} for {model.gpus} GPU(s) of "
                                          f"bf16 weights at 8B parameters per GPU"))
    if model.weights_from(cfg.environment) == "s3" and not COMMIT_SHA.match(model.revision or ""):
        given = f" ({model.revision!r} is not one)" if model.revision else ""
        problems.append((f"{at}.revision", f"weights from S3 are staged under their revision's commit sha, so they "
                                           f"never change under a running replica: give revision, the full "
                                           f"40-character commit sha of {model.source} to serve{given}"))
    known = {r.name: r for r in cfg.regions}
    for j, name in enumerate(model.regions):
        region = known.get(name)
        if region is None:
            problems.append((f"{at}.regions[{j}]", f"region {name!r} is not one of {NAMESPACE}:regions"))
            continue
        if model.residency is not None and region.residency != model.residency:
            problems.append((f"{at}.regions[{j}]",
                             f"model {model.name} is restricted to zone {model.residency!r} "
                             f"but {name} is in zone {region.residency!r}"))
        pool = region.pool(model.pool)
        if pool is None:
            have = ", ".join(p.name for p in region.pools)
            problems.append((f"{at}.pool", f"pool {model.pool!r} is missing in region {name} (it has: {have})"))
            continue
        fits = [catalog.instance(t).gpus for t in pool.instance_types if t in catalog.instances]
        if fits and model.gpus > min(fits):
            problems.append((f"{at}.gpus",
                             f"{model.gpus} GPUs per replica, but pool {pool.name} in {name} has instances "
                             f"with only {min(fits)} GPU(s) ({', '.join(pool.instance_types)})"))
            continue
        problems.extend((f"{at}.resources.{key}", msg) for key, msg in fit_problems(model, pool, name, catalog))
    return problems


def _check_pool_capacity(cfg: StackConfig, catalog: Catalog) -> list[tuple[str, str]]:
    """A pool holds its models: at max_nodes every model at max replicas, and min_nodes is exactly what every
    model at its floor fills (`Model.floor`: none for a batch model that idles at zero, else its replicas.min).
    Karpenter grows a pool from there up to max_nodes and gives back empty nodes, so no other floor exists (README:
    Node autoscaling)."""
    problems = []
    for i, region in enumerate(cfg.regions):
        for j, pool in enumerate(region.pools):
            per_node = [catalog.instance(t).gpus for t in pool.instance_types if t in catalog.instances]
            if not per_node or min(per_node) == 0:
                continue
            gpus_per_node = min(per_node)
            models = [m for m in cfg.models_in(region.name) if m.pool == pool.name and m.gpus <= gpus_per_node]
            at = f"{NAMESPACE}:regions[{i}].pools[{j}]"
            most = _nodes_for(models, gpus_per_node, {m.name: m.replicas.max for m in models})
            if most > pool.max_nodes:
                problems.append((f"{at}.max_nodes", f"pool {pool.name} in {region.name} needs {most} nodes for its "
                                                    f"models at max replicas, but max_nodes is {pool.max_nodes}"))
            least = _nodes_for(models, gpus_per_node, {m.name: m.floor for m in models})
            if least > pool.min_nodes:
                problems.append((f"{at}.min_nodes", f"pool {pool.name} in {region.name} needs {least} node(s) for "
                                                    f"its models' minimum replicas (one at least, none for a batch "
                                                    f"model that idles at zero), but min_nodes is "
                                                    f"{pool.min_nodes}"))
            elif least < pool.min_nodes:  # Karpenter has no minimum size: it removes nodes no pod needs
                problems.append((f"{at}.min_nodes", f"pool {pool.name} in {region.name}: min_nodes {pool.min_nodes} "
                                                    f"cannot be honoured: Karpenter keeps only the nodes pods need, "
                                                    f"and its models' minimum replicas fill {least}; set min_nodes "
                                                    f"to {least} or raise the models' replicas.min"))
    return problems


def _check_network(cfg: StackConfig) -> list[tuple[str, str]]:
    """Each region's VPC is cut into /19s (three private, three public): a clean /8 to /16 block. The hub's VPC
    is peered with every other region's, and AWS refuses to peer VPCs whose blocks overlap
    (https://docs.aws.amazon.com/vpc/latest/peering/vpc-peering-basics.html#vpc-peering-limitations)."""
    problems = _check_vpc_block("network.cidr", cfg.network.cidr)
    if problems:
        return problems
    blocks: list[tuple[str, ipaddress.IPv4Network]] = []
    for i, region in enumerate(cfg.regions):
        key = f"regions[{i}].cidr" if region.cidr is not None else "network.cidr"
        if region.cidr is not None:
            found = _check_vpc_block(key, region.cidr)
            if found:
                problems.extend(found)
                continue
        try:
            net = ipaddress.IPv4Network(cfg.vpc_cidr(region.name))
        except ValueError:
            problems.append((f"{NAMESPACE}:{key}", f"no room after {cfg.network.cidr} for a default block for "
                                                   f"region {region.name}; give regions[{i}].cidr"))
            continue
        for other_key, other in blocks:
            if net.overlaps(other):
                problems.append((f"{NAMESPACE}:regions[{i}].cidr",
                                 f"{region.name}'s VPC block {net} overlaps {other} ({other_key}); peered VPCs "
                                 f"need distinct blocks"))
        blocks.append((f"{region.name}", net))
    return problems


def _check_vpc_block(key: str, cidr: str) -> list[tuple[str, str]]:
    at = f"{NAMESPACE}:{key}"
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError as exc:
        return [(at, f"{cidr!r} is not an IPv4 CIDR block without host bits ({exc})")]
    if not 8 <= net.prefixlen <= 16:
        return [(at, f"{cidr} is a /{net.prefixlen}; the VPC needs a /8 to /16 to hold six /19 subnets")]
    return []


def is_documentation_range(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return isinstance(net, ipaddress.IPv4Network) and any(net.subnet_of(doc) for doc in DOCUMENTATION_RANGES)


def _is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


