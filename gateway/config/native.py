"""The gateway's native YAML config format: its schema and validation.

Native format (version 1). One file per gateway (the Pulumi program renders one
per region into a ConfigMap)::

    version: 1
    gateway:
      region: us-east-1          # where this gateway runs; its deployments are tried first
      residency: us              # residency zone: a request is never sent outside it
      master_key: os.environ/LLMP_MASTER_KEY   # >= 32 chars, not a known default (unless --dev)
      routing: least-busy        # least-busy | weighted: how deployments of an alias are chosen
      budget_exceeded_status: 422  # the status of budget refusals (LiteLLM's budget_exceeded_status_code)
      timeouts:                  # seconds; any deployment may override them
        connect: 2               # TCP/TLS connect to the upstream
        first_byte: 60           # streams: request sent -> headers and first event (failover possible until then)
        idle: 30                 # longest silence between two stream chunks, or within an answer once begun
        total: 600               # whole call; a non-streamed answer (model servers send it once whole) has until then
      retries:
        attempts: 2              # retries per model after the first try (connect error, 429, 5xx before first byte)
        backoff_base: 0.05       # exponential backoff base, full jitter
        backoff_max: 2
        retry_after_max: 5       # longest Retry-After honoured before trying elsewhere instead
      circuit_breaker:
        failures: 5              # consecutive failures that open a replica's circuit
        cooldown: 10             # seconds before one trial request (half-open)
      affinity:
        bounded_load: 1.25       # a replica takes at most 1.25x the mean in-flight load
        prefix_chars: 512        # prompt prefix hashed when no x-session-id or user is given
      front_door:                # what one client connection may send and hold (gateway/config/limits.py)
        header_bytes: 16384      # request line and each header field
        body_bytes: 16777216     # any request body (models and keys may cap lower)
        json_depth: 64           # nesting of a JSON body
        keepalive_idle: 75       # s an idle keep-alive connection stays open
        request_read: 30         # s for a request's headers and body to arrive
        connections: 4096        # open client connections per worker
        shutdown_grace: 50       # s calls in flight get after SIGTERM
      upstream_limits:           # what one upstream answer may make the gateway hold
        header_bytes: 65536
        body_bytes: 67108864     # a whole answer as received
        decompressed_bytes: 67108864
        sse_event_bytes: 8388608 # one server-sent event

    models:
      - alias: llama-3.1-8b      # the `model` clients send
        max_tokens: 4096         # cap applied to max_tokens / max_completion_tokens
        over_max_tokens: clamp   # clamp: lower a larger request to the cap | refuse: 400 naming the cap
        fallbacks: [gpt-4o-mini] # aliases tried, in order, once every deployment here failed
        deployments:
          - name: llama-8b-us-east-1
            provider: openai     # wire protocol: openai (vLLM, SGLang, TGI, Ollama, OpenAI, ...) | anthropic
            model: meta-llama/Llama-3.1-8B-Instruct   # model name the upstream expects
            region: us-east-1
            residency: us
            replicas:            # a self-hosted pool: session affinity over its replicas
              endpoint_slices: {service: vllm-llama-8b, namespace: models, port: 8000}
              # or: static: [http://10.0.1.5:8000/v1, http://10.0.1.6:8000/v1]
          - name: openai-hosted
            provider: openai
            model: gpt-4o-mini
            api_base: https://api.openai.com/v1   # a single upstream (hosted provider or a Service URL)
            api_key: os.environ/OPENAI_API_KEY
            region: us-east-1
            residency: us
            tier: fallback       # hosted fallback: used only after every primary deployment failed
          - name: gpt-4o-azure   # Azure OpenAI (gateway/upstream/cloud_calls.py)
            provider: azure
            model: my-gpt-4o     # the Azure *deployment* name: {api_base}/openai/deployments/{model}/...
            api_base: https://my-resource.openai.azure.com
            api_key: secret/providers/azure       # sent as `api-key`; or one of the Entra ID ways below
            azure:
              api_version: "2024-10-21"            # the `api-version` query parameter
              # ad_token: os.environ/AZURE_AD_TOKEN                 # a bearer token you refresh yourself, or
              # tenant_id: ..., client_id: ..., client_secret: ...  # client credentials: the gateway fetches
              #   and refreshes the token (authority_host: https://login.microsoftonline.com)
            region: us-east-1
            residency: us
            tier: fallback
          - name: claude-bedrock # Amazon Bedrock's Converse API, signed with the pod's own IAM role (no key)
            provider: bedrock
            model: us.anthropic.claude-3-5-haiku-20241022-v1:0   # model id or inference profile id
            region: us-east-1    # Bedrock's region unless bedrock.region says otherwise
            residency: us
            tier: fallback
            # api_base defaults to https://bedrock-runtime.<region>.amazonaws.com

LiteLLM's routing names are native too: an alias with ``*`` (``openai/*``) serves every
name it matches, each ``*`` of its deployments' ``model`` replaced by the matched part
(gateway/config/model_names.py); ``model_aliases: {gpt-4: {model: gpt-4o, hidden: true}}``
gives a model another name; ``context_window_fallbacks: [alias]`` are tried when the
upstream says the prompt is over its context window; a deployment's ``defaults`` are
request fields sent when the client gives none.

A deployment has exactly one of ``api_base`` or ``replicas``. Base URLs include
the API version path (``.../v1``), as in the OpenAI clients. Any string value of
the form ``os.environ/NAME`` is read from the environment at load time.

Order of attempts for a request: primary deployments in the gateway's region,
then primary deployments in other regions of the same residency zone, then
``tier: fallback`` deployments (same residency, local region first), then each
alias in ``fallbacks`` in the same order. Deployments outside the gateway's
residency zone are never used.

Governance sections (see gateway/README.md, "Governance", for semantics and bounds)::

    secrets: {source: env | aws-secretsmanager, stack: prod, region: us-east-1, refresh_seconds: 300}
    redis: {url: redis://host:6379/0, on_unavailable: fail-open | fail-closed, timeout_ms: 100,
            retry_after_ms: 1000, settle_interval_ms: 20,
            lease_requests: 32}                                 # omit: in-process counters
    ledger: {spool_dir: ./llmp-spool/<store identity>, store: sqlite:///./llmp-ledger.db | postgresql://...,
             flush_interval: 0.5, batch: 500, fsync: interval | always, store_timeout: 10,
             budget_sync_seconds: 60}
    keys: {refresh_seconds: 2}     # bound on revocation delay on every replica
    batch: {files: {local_dir: ./f}, price_fraction: 0.5, models: {a: a-batch}}  # Batch API (README, tier: batch)

The response cache (gateway/config/cache.py, gateway/cache/; README "Response cache")::

    cache: {ttl_seconds: 3600, max_entry_bytes: 1048576, max_bytes: 268435456, hit_cost_fraction: 0.0,
            scope: team | key, models: [alias | "*"], teams: [team_id], keys: [key_alias],
            temperature_above_zero: false}   # stored in `redis` when set, else in-process

Governance (virtual keys, limits, the spend ledger, the admin API) is on when
``ledger`` is present. Models add ``input_cost_per_token``,
``output_cost_per_token`` (USD; deployments may override them) and
``max_request_bytes``. Any ``api_key`` or ``gateway.master_key`` may be
``secret/<name>``: read from ``llm-platform/<stack>/<name>`` in Secrets Manager
(``secret/providers/openai``, ``secret/gateway/master-key``) or, with
``source: env``, from ``<PROVIDER>_API_KEY`` / ``LLMP_MASTER_KEY`` /
``LLMP_SECRET_<NAME>`` (see ``gateway.governance.provider_keys``).

Ladders, cheap-then-expensive aliases (gateway/routing/ladder.py; gateway/README.md, "Ladders")::

    ladders: [{alias: auto, rungs: [llama-3-1-8b, llama-3-3-70b],       # cheapest first, two or more
               escalate_on: [error, invalid_json, length, empty],       # the default: all four
               rules: [{prompt_tokens_over: 6000, start_at: llama-3-3-70b}, {tools: true, start_at: ...}],
               pins: {teams: {research: llama-3-3-70b}, keys: {batch-ingest: llama-3-1-8b}}}]

LiteLLM's ``config.yaml`` is accepted too (see ``gateway.config.litellm``);
``gateway.config.loading.load_config`` tells the two apart by the presence of ``model_list``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.batch import BatchSettings, check_batch
from gateway.config.cache import CacheSettings, check_cache
from gateway.config.clouds import AzureSettings, BedrockSettings
from gateway.config.env import resolve_env
from gateway.config.errors import ConfigError, format_validation_error
from gateway.config.governance import KeySettings, LedgerSettings, PeerSettings, RedisSettings, SecretsSettings
from gateway.config.ladders import Ladder, check_ladders
from gateway.config.limits import FrontDoor, UpstreamLimits
from gateway.config.model_names import is_pattern, match
from gateway.config.other_zones import OtherZone, check_other_zones
from gateway.config.upstreams import AffinitySettings as AffinitySettings
from gateway.config.upstreams import CircuitBreakerSettings as CircuitBreakerSettings
from gateway.config.upstreams import EndpointSlices as EndpointSlices
from gateway.config.upstreams import Replicas as Replicas
from gateway.config.upstreams import Retries as Retries
from gateway.config.upstreams import TimeoutOverrides as TimeoutOverrides
from gateway.config.upstreams import Timeouts as Timeouts
from gateway.config.urls import check_url


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deployment(_Strict):
    name: str = Field(min_length=1)
    # openai | anthropic: wire protocols; azure: OpenAI's, at Azure's URL and auth; bedrock: Converse, SigV4-signed.
    provider: Literal["openai", "anthropic", "azure", "bedrock"] = "openai"
    model: str = Field(min_length=1)
    api_base: str | None = None
    replicas: Replicas | None = None
    api_key: str | None = None
    region: str | None = None
    residency: str | None = None
    tier: Literal["primary", "fallback"] = "primary"
    weight: float = Field(1.0, gt=0)
    rpm: int | None = Field(None, ge=0)  # the deployment's quota: skipped when reached (gateway/quotas.py)
    tpm: int | None = Field(None, ge=0)
    session_affinity: bool = True
    timeouts: TimeoutOverrides | None = None
    input_cost_per_token: float | None = Field(None, ge=0)  # overrides the model's price (hosted fallbacks)
    output_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_image: float | None = Field(None, ge=0)  # overrides the model's per-image price
    # Request fields sent when the client gives none (LiteLLM's litellm_params defaults: the client's value wins).
    defaults: dict[str, Any] = {}
    azure: AzureSettings | None = None
    bedrock: BedrockSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _bedrock_endpoint(cls, data: Any) -> Any:
        # Bedrock's runtime endpoint follows from the region (docs.aws.amazon.com/general/latest/gr/bedrock.html).
        if isinstance(data, dict) and data.get("provider") == "bedrock" and not data.get("api_base"):
            region = (data.get("bedrock") or {}).get("region") if isinstance(data.get("bedrock"), dict) else None
            region = region or data.get("region")
            if isinstance(region, str) and region and "replicas" not in data:
                return {**data, "api_base": f"https://bedrock-runtime.{region}.amazonaws.com"}
        return data

    @property
    def aws_region(self) -> str:
        """Bedrock: the region requests are signed for."""
        return (self.bedrock.region if self.bedrock else None) or self.region or ""

    @field_validator("api_base")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @model_validator(mode="after")
    def _one_upstream(self) -> Deployment:
        if self.provider == "bedrock" and not self.aws_region:
            raise ValueError("a bedrock deployment needs 'region' (or bedrock.region): the region it is signed for")
        if (self.api_base is None) == (self.replicas is None):
            raise ValueError("give exactly one of 'api_base' or 'replicas'")
        if self.azure is not None and self.provider != "azure":
            raise ValueError("'azure' settings apply to provider azure only")
        if self.bedrock is not None and self.provider != "bedrock":
            raise ValueError("'bedrock' settings apply to provider bedrock only")
        if self.provider in ("azure", "bedrock") and self.replicas is not None:
            raise ValueError(f"a {self.provider} deployment is one endpoint: give 'api_base', not 'replicas'")
        if self.provider == "bedrock" and self.api_key is not None:
            raise ValueError("a bedrock deployment takes no 'api_key': calls are signed with the gateway's AWS "
                             "credentials (its IAM role)")
        if self.provider == "azure":
            azure = self.azure or AzureSettings()
            ways = [self.api_key is not None, azure.ad_token is not None, azure.client_credentials]
            if sum(ways) != 1:
                raise ValueError("an azure deployment needs exactly one of 'api_key', azure.ad_token, or "
                                 "azure.tenant_id/client_id/client_secret")
        return self


class Model(_Strict):
    alias: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    # Over the cap: `clamp` lowers the request's max_tokens to it; `refuse` answers 400 naming the cap.
    over_max_tokens: Literal["clamp", "refuse"] = "clamp"
    fallbacks: list[str] = []
    # Aliases tried when the upstream says the prompt is over its context window (upstream/context_window.py).
    context_window_fallbacks: list[str] = []
    deployments: list[Deployment] = Field(min_length=1)
    input_cost_per_token: float = Field(0.0, ge=0)  # USD, as LiteLLM's model_info; spend ledger and budgets
    output_cost_per_token: float = Field(0.0, ge=0)
    # USD per image in an images answer that reports no usage (dall-e-2/3), LiteLLM's model_info name; None: none
    # set, and then a key, team or user with a budget may not call /v1/images/generations on it.
    output_cost_per_image: float | None = Field(None, ge=0)
    max_request_bytes: int | None = Field(None, ge=1)  # larger request bodies get a 400 naming this cap
    tier: Literal["interactive", "batch"] = "interactive"  # batch: may run Batch API lines (gateway/batch/)


class ModelAlias(_Strict):
    """Another name for a model (LiteLLM's model_group_alias); hidden names are not listed by /v1/models."""

    model: str = Field(min_length=1)
    hidden: bool = False


class GatewaySettings(_Strict):
    region: str | None = None
    residency: str | None = None  # None: no residency constraint (laptop, demo)
    master_key: str | None = None
    routing: Literal["least-busy", "weighted"] = "least-busy"
    # LiteLLM's litellm_settings.budget_exceeded_status_code: 422 since v1.104, 429 restores the older answer.
    budget_exceeded_status: int = Field(422, ge=400, le=599)
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    affinity: AffinitySettings = AffinitySettings()
    front_door: FrontDoor = FrontDoor()
    upstream_limits: UpstreamLimits = UpstreamLimits()


class GatewayConfig(_Strict):
    version: Literal[1] = 1
    gateway: GatewaySettings = GatewaySettings()
    models: list[Model] = Field(min_length=1)
    secrets: SecretsSettings = SecretsSettings()
    redis: RedisSettings | None = None  # None: limits counted in-process (one replica)
    ledger: LedgerSettings | None = None  # None: no governance (master key only, no spend ledger)
    keys: KeySettings = KeySettings()
    peers: PeerSettings | None = None  # the stack's other regions: keys and budget spend shared (governance/peers.py)
    other_zones: dict[str, OtherZone] = {}  # models only another residency zone serves (config/other_zones.py)
    model_aliases: dict[str, ModelAlias] = {}  # name clients send -> model alias (upstream/names.py)
    ladders: list[Ladder] = []  # cheap-then-expensive aliases (config/ladders.py, routing/ladder.py)
    cache: CacheSettings | None = None  # the response cache (config/cache.py); None: off
    batch: BatchSettings | None = None  # OpenAI's Files and Batch API (gateway/batch/)

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        if self.peers is not None and self.ledger is None:
            raise ValueError("peers: needs a 'ledger' section (the keys and spend it shares live there)")
        aliases = [m.alias for m in self.models]
        seen: set[str] = set()
        for alias in aliases:
            if alias in seen:
                raise ValueError(f"model alias {alias!r} is defined twice")
            seen.add(alias)
        names: set[str] = set()
        patterns = [a for a in seen if is_pattern(a)]  # a fallback may be a name a wildcard alias serves
        zone = self.gateway.residency
        for model in self.models:
            for fallback in [*model.fallbacks, *model.context_window_fallbacks]:
                if fallback not in seen and match(patterns, fallback) is None:
                    raise ValueError(f"model {model.alias!r}: fallback {fallback!r} is not a model alias")
                if fallback == model.alias:
                    raise ValueError(f"model {model.alias!r}: lists itself as a fallback")
            for dep in model.deployments:
                if dep.name in names:
                    raise ValueError(f"deployment name {dep.name!r} is used twice")
                names.add(dep.name)
                if zone is not None and dep.residency is None:
                    # An undeclared zone cannot be shown to stay inside the gateway's.
                    raise ValueError(
                        f"deployment {dep.name!r}: 'residency' is required when gateway.residency is set"
                    )
        check_other_zones(self.gateway.residency, self.other_zones, seen)
        for name, target in self.model_aliases.items():
            if name in seen:
                raise ValueError(f"model_aliases.{name}: is also a model alias")
            if target.model not in seen and match(patterns, target.model) is None:
                raise ValueError(f"model_aliases.{name}: {target.model!r} is not a model alias")
        check_ladders(self.ladders, seen, self.model_aliases)
        check_cache(self.cache, seen | set(self.model_aliases))
        check_batch(self.batch, self.ledger is not None, {m.alias: m.tier for m in self.models})
        return self

    def model(self, alias: str) -> Model | None:
        for model in self.models:
            if model.alias == alias:
                return model
        return None


def parse_native(doc: Any) -> GatewayConfig:
    if not isinstance(doc, dict):
        raise ConfigError("config: expected a mapping at the top level")
    doc = resolve_env(doc)
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


