"""Routing: model alias -> deployments -> replicas, in the order a call should try them."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from gateway.config.model_names import ModelGroups, by_specificity, is_pattern, match, pattern_regex, upstream_name
from gateway.config.native import Deployment, GatewayConfig, Timeouts
from gateway.upstream.circuit import CircuitBreaker
from gateway.upstream.client import ReplicaConnections
from gateway.upstream.hashring import BoundedLoadRing

# Endpoints each wire protocol serves, and the path under the deployment's base URL.
PATHS: dict[str, dict[str, str]] = {
    "openai": {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
               "messages": "/chat/completions",  # Messages clients, translated to chat
               "images": "/images/generations", "moderations": "/moderations"},  # http/passthrough.py
    "anthropic": {"chat": "/messages", "messages": "/messages"},
    # OpenAI's protocol at Azure's URLs, and Bedrock's Converse: requests made by upstream/cloud_calls.py.
    "azure": {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
              "messages": "/chat/completions"},
    "bedrock": {"chat": "/converse", "messages": "/converse"},
}
ANTHROPIC_VERSION = "2023-06-01"

CircuitListener = Callable[[str, str, str], None]  # deployment, replica, state


class Replica:
    """One upstream server (a vLLM pod, or a hosted API base URL)."""

    __slots__ = ("base_url", "breaker", "connections", "cooling_until", "host_header", "in_flight", "name", "urls")

    def __init__(self, base_url: str, provider: str, breaker: CircuitBreaker, name: str) -> None:
        self.base_url = base_url
        self.name = name  # what REPLICA_HEADER says: a pod's name, never its address
        self.urls = {endpoint: URL(base_url + path) for endpoint, path in PATHS[provider].items()}
        url = URL(base_url)
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        self.connections = ReplicaConnections(url.raw_host or "", port, tls)
        host = f"[{url.raw_host}]" if ":" in (url.raw_host or "") else url.raw_host  # IPv6 literal
        self.host_header = host if url.is_default_port() else f"{host}:{port}"
        self.in_flight = 0
        self.breaker = breaker
        self.cooling_until = 0.0  # monotonic time until which a Retry-After asked us to stay away

    def usable(self) -> bool:
        return self.breaker.available()


# Set on calls to another region's pool, which goes through that region's gateway: a call that
# arrives with it is answered from the receiving region's own pools only, so two regions whose
# pools are both down answer 503 instead of passing the call back and forth.
HOP_HEADER = "x-llmp-hop"
# On every answer: the name of the replica that served it (its pod's name when discovered from EndpointSlices,
# else `<deployment>-<index>` in the configured list), so a client can see its session stay on one replica
# (`llmp verify` does). Never the replica's address: that is not the caller's business (litellm_headers.py).
REPLICA_HEADER = "x-llmp-replica"


class DeploymentPool:
    """A configured deployment at run time: its replicas, upstream headers and timeouts."""

    def __init__(self, config: Deployment, gateway: GatewayConfig, on_circuit: CircuitListener | None = None) -> None:
        self.config = config
        self.name = config.name
        self.provider = config.provider
        self.model = config.model
        self.region = config.region or ""
        self.tier = config.tier
        self.defaults = config.defaults  # request fields sent when the client gives none (LiteLLM's litellm_params)
        self.crosses_regions = bool(gateway.gateway.region) and self.region not in ("", gateway.gateway.region) \
            and self.tier == "primary"
        self.weight = config.weight
        self.timeouts: Timeouts = (
            config.timeouts.over(gateway.gateway.timeouts) if config.timeouts else gateway.gateway.timeouts
        )
        # First-byte and idle limits are enforced around reads; aiohttp enforces connect and total.
        t = self.timeouts
        self.client_timeout = aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_connect=t.connect)
        self.limits = gateway.gateway.upstream_limits  # what one answer may make the gateway hold
        self.headers = self._headers(config)
        # False while the provider key's secret has no value yet (a first deploy): routing skips the pool.
        self.api_key_set = True
        self._heads: dict[tuple[str, str], bytes] = {}
        self._heads_for: dict[str, str] | None = None
        self.affinity = config.session_affinity and config.replicas is not None
        self._breaker_settings = gateway.gateway.circuit_breaker
        self._on_circuit = on_circuit
        self.replicas: list[Replica] = []
        self.ring: BoundedLoadRing[Replica] | None = None
        self.bounded_load = gateway.gateway.affinity.bounded_load
        if config.api_base:
            self.set_replicas([config.api_base])
        elif config.replicas and config.replicas.static:
            self.set_replicas(config.replicas.static)

    def _headers(self, config: Deployment) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.crosses_regions:
            headers[HOP_HEADER] = "1"
        if config.provider == "anthropic":
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if config.api_key:
                headers["x-api-key"] = config.api_key
        elif config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        return headers

    def set_api_key(self, api_key: str | None) -> None:
        """A provider key read (or rotated, or found unset: None); the next call uses it."""
        self.api_key_set = api_key is not None
        self.headers = self._headers(self.config.model_copy(update={"api_key": api_key}))

    def request_head(self, replica: Replica, endpoint: str) -> bytes:
        """Request line and headers up to `Content-Length: `, built once per replica and endpoint."""
        if self._heads_for is not self.headers:  # headers are replaced when a provider key rotates
            self._heads, self._heads_for = {}, self.headers
        key = (replica.base_url, endpoint)
        head = self._heads.get(key)
        if head is None:
            lines = [f"POST {replica.urls[endpoint].raw_path} HTTP/1.1", f"Host: {replica.host_header}"]
            if any("\r" in v or "\n" in v for v in self.headers.values()):
                raise ValueError(f"deployment {self.name}: a header value (API key?) contains a line break")
            lines += [f"{name}: {value}" for name, value in self.headers.items()]
            head = self._heads[key] = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        return head

    def serves(self, endpoint: str) -> bool:
        return endpoint in PATHS[self.provider]

    def set_replicas(self, base_urls: list[str], names: dict[str, str] | None = None) -> None:
        """Replace the replica set, keeping health and load of replicas that stay; `names`: url -> pod name.

        A replica without a pod name is `<deployment>-<n>`, n the lowest number free when it joined, and keeps it
        while it stays: a name that shifted as others join or leave would say a session moved when it did not."""
        given = names or {}
        current = {r.base_url: r for r in self.replicas}
        urls = list(dict.fromkeys(u.rstrip("/") for u in base_urls))
        kept = {url: current[url].name for url in urls if url in current and url not in given}
        taken = {*kept.values(), *given.values()}
        free = (name for i in itertools.count() if (name := f"{self.name}-{i}") not in taken)
        replicas = []
        for url in urls:
            name = given.get(url) or kept.get(url) or next(free)
            replica = current.get(url) or Replica(url, self.provider, self._breaker(url), name)
            replica.name = name
            replicas.append(replica)
        for gone in set(current.values()) - set(replicas):
            while gone.connections.idle:  # keep-alive connections to a replica no longer in the pool
                gone.connections.idle.pop().close()
        self.replicas = replicas
        self.ring = BoundedLoadRing(replicas, lambda r: r.base_url) if self.affinity and len(replicas) > 1 else None

    def _breaker(self, url: str) -> CircuitBreaker:
        listener = None
        if self._on_circuit is not None:
            on_circuit, name = self._on_circuit, self.name
            listener = lambda state: on_circuit(name, url, state)  # noqa: E731
        return CircuitBreaker(self._breaker_settings.failures, self._breaker_settings.cooldown, listener)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def load(self) -> float:
        return self.in_flight / (len(self.replicas) or 1) / self.weight

    def healthy(self) -> bool:
        return self.api_key_set and any(r.usable() for r in self.replicas)

    def order(self, session_key: Callable[[], bytes]) -> list[Replica]:
        """Usable replicas in the order to try them."""
        if self.ring is not None:
            ordered = self.ring.order(session_key(), _load, Replica.usable, self.bounded_load)
            return [r for r in ordered if r.usable()]
        if len(self.replicas) == 1:
            r = self.replicas[0]
            return [r] if r.usable() else []
        return sorted((r for r in self.replicas if r.usable()), key=_load)


def _load(replica: Replica) -> int:
    return replica.in_flight


@dataclass
class ModelRoute:
    """An alias: its deployments inside the residency zone, cap and fallbacks."""

    alias: str
    max_tokens: int | None
    fallbacks: list[str]
    deployments: list[DeploymentPool]
    refuse_over_cap: bool = False  # models[].over_max_tokens: refuse
    context_window_fallbacks: list[str] = field(default_factory=list)
    # A wildcard alias (`openai/*`) matched by a client's name: what each `*` matched, and the name itself.
    parts: tuple[str, ...] = ()
    client_name: str = ""

    def upstream_model(self, dep: DeploymentPool, requested: str = "") -> str:
        """The model name sent to `dep`: its own, or for a wildcard, built from the client's (model_names.py).
        `requested` (the name the client sent) serves when this route is a copy made without the match."""
        if "*" not in dep.model:
            return dep.model
        parts, name = self.parts, self.client_name or requested
        if not parts and is_pattern(self.alias):
            found = pattern_regex(self.alias).match(name)
            parts = found.groups() if found else ()
        return upstream_name(dep.model, parts, name)


class Router:
    """Picks, for each call, the (deployment, replica) pairs to try in order."""

    def __init__(self, config: GatewayConfig, on_circuit: CircuitListener | None = None,
                 rng: random.Random | None = None) -> None:
        self.region = config.gateway.region or ""
        self.residency = config.gateway.residency
        self.strategy = config.gateway.routing
        self._rng = rng or random.Random()
        self.routes: dict[str, ModelRoute] = {}
        self.pools: list[DeploymentPool] = []
        for model in config.models:
            pools = []
            for dep in model.deployments:
                if self.residency is not None and dep.residency != self.residency:
                    continue  # never leaves the residency zone, whatever else fails
                pool = DeploymentPool(dep, config, on_circuit)
                pools.append(pool)
                self.pools.append(pool)
            self.routes[model.alias] = ModelRoute(model.alias, model.max_tokens, list(model.fallbacks), pools,
                                                  model.over_max_tokens == "refuse",
                                                  list(model.context_window_fallbacks))
        # LiteLLM sends a context-window error back when context_window_fallbacks exist but not for its alias.
        self.context_window_configured = any(m.context_window_fallbacks for m in config.models)
        self.aliases = {name: alias.model for name, alias in config.model_aliases.items()}
        self.patterns = by_specificity(a for a in self.routes if is_pattern(a))
        # Names as metrics labels (http/state.py); a ladder's name too, for the calls refused before any rung answers.
        self.groups = ModelGroups([*self.routes, *(ladder.alias for ladder in config.ladders)], self.aliases)

    def route(self, alias: str) -> ModelRoute | None:
        """The route for a name a client sends: a model alias, a model_aliases name (LiteLLM's model_group_alias,
        resolved once, as LiteLLM does), or a name a wildcard alias matches (most specific pattern first)."""
        found = self.routes.get(alias)
        if found is not None:
            return found
        name = self.aliases.get(alias, alias)
        found = self.routes.get(name)
        if found is not None or not self.patterns:
            return found
        hit = match(self.patterns, name)
        if hit is None:
            return None
        pattern, parts = hit
        # A per-call copy: the pools (health, load) are the pattern's own.
        matched = copy.copy(self.routes[pattern])
        matched.parts, matched.client_name = parts, name
        return matched

    def candidates(self, route: ModelRoute, endpoint: str, session_key: Callable[[], bytes],
                   hopped: bool = False) -> list[tuple[DeploymentPool, Replica]]:
        """Primary deployments of the local region, then other regions, then hosted fallbacks.
        A call another region's gateway passed on (`hopped`) gets the local region's primaries only."""
        deployments = [d for d in route.deployments if d.serves(endpoint) and d.api_key_set
                       and not (hopped and (d.region != self.region or d.tier != "primary"))]
        if len(deployments) > 1:
            deployments = self._rank(deployments)
        out = []
        for dep in deployments:
            for replica in dep.order(session_key):
                out.append((dep, replica))
        return out

    def _rank(self, deployments: list[DeploymentPool]) -> list[DeploymentPool]:
        rng = self._rng
        if self.strategy == "weighted":
            # Weighted random order (Efraimidis-Spirakis keys): first pick is proportional to weight.
            score = {id(d): rng.random() ** (1.0 / d.weight) for d in deployments}

            def within(d: DeploymentPool) -> tuple[float, float]:
                return -score[id(d)], 0.0
        else:
            jitter = {id(d): rng.random() for d in deployments}  # breaks ties between idle deployments

            def within(d: DeploymentPool) -> tuple[float, float]:
                return d.load(), jitter[id(d)]
        return sorted(deployments, key=lambda d: (d.tier != "primary", d.region != self.region, within(d)))
