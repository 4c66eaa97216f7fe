"""Replica discovery from Kubernetes EndpointSlices: list, then watch, through the official `kubernetes` client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from gateway.config.native import EndpointSlices
from gateway.upstream.routing import DeploymentPool

ServiceLabel = "kubernetes.io/service-name"
EventSink = Callable[..., None]
GONE = 410  # the resourceVersion a watch resumes from is older than the API server's history


def default_discovery_api() -> Any:
    """A DiscoveryV1Api from the in-cluster service account, else from $KUBECONFIG or ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.DiscoveryV1Api()


def routable(conditions: Any) -> bool:
    """Whether an endpoint takes new calls, from its EndpointSlice conditions.

    discovery.k8s.io/v1 EndpointConditions (https://kubernetes.io/docs/reference/kubernetes-api/
    service-resources/endpoint-slice-v1/, and https://kubernetes.io/docs/concepts/services-networking/
    endpoint-slices/#conditions): `ready` unset means ready, and is always false while the pod
    terminates; `terminating` says the pod is terminating; `serving` is `ready` ignoring
    termination, so a terminating endpoint that is still `serving` finishes the work it has but
    gets nothing new here (the gateway never cuts a call in flight when its replica leaves).
    """
    if conditions is None:
        return True
    return conditions.ready is not False and not conditions.terminating


def replicas(slices: list[Any], spec: EndpointSlices) -> list[tuple[str, str | None]]:
    """(base URL, the name of the Pod behind it) for each endpoint that takes new calls in a Service's
    EndpointSlices, by URL. The name is the endpoint's `targetRef`, which the EndpointSlice controller sets for a
    Service's Pods (endpoint-slice-v1 reference, `endpoints.targetRef`); None when it is not set."""
    found: dict[str, str | None] = {}
    for endpoint_slice in slices:
        port = _port(endpoint_slice, spec)
        if port is None:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            if not routable(endpoint.conditions):
                continue
            ref = endpoint.target_ref
            for address in (endpoint.addresses or [])[:1]:
                host = f"[{address}]" if ":" in address else address
                url = f"{spec.scheme}://{host}:{port}{spec.base_path}".rstrip("/")
                found[url] = (ref.name if ref is not None and ref.name else None) or found.get(url)
    return sorted(found.items())


def replica_urls(slices: list[Any], spec: EndpointSlices) -> list[str]:
    """Base URLs of the endpoints that take new calls in a Service's EndpointSlices."""
    return [url for url, _ in replicas(slices, spec)]


def _port(endpoint_slice: Any, spec: EndpointSlices) -> int | None:
    ports = endpoint_slice.ports or []
    if isinstance(spec.port, int):
        return spec.port
    for port in ports:
        if port.name == spec.port:
            return int(port.port)
    return None


class EndpointSliceWatcher:
    """Keeps a pool's replicas equal to the routable endpoints of its Service, from a list-then-watch.

    The client is synchronous, so the watch runs in a daemon thread of its own (not the loop's
    executor, whose threads the interpreter joins at exit) and hands each event to the loop. Each
    watch call lasts `refresh` s on the API server (`timeoutSeconds`) and is resumed from the last
    resourceVersion seen, so a stop is noticed within `refresh` s and never holds the process. An
    expired resourceVersion (410 Gone) means a new list; any other failure keeps the last known
    set, is reported, and is retried after `refresh` s. Semantics followed: the API concepts page,
    "Efficient detection of changes" (https://kubernetes.io/docs/reference/using-api/api-concepts/
    #efficient-detection-of-changes), and kubernetes-client/python's `Watch.stream`, which raises
    `ApiException(410)` for an ERROR event with code 410 when given `timeout_seconds`.
    """

    def __init__(self, pool: DeploymentPool, spec: EndpointSlices, api: Any, on_event: EventSink | None = None) -> None:
        self.pool = pool
        self.spec = spec
        self.api = api
        self._on_event = on_event
        self._selector = f"{ServiceLabel}={spec.service}"
        self._slices: dict[str, Any] = {}  # by name; touched on the loop only
        self._resource_version: str | None = None  # where the next watch resumes; None: list first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.lists = 0
        self.events = 0
        self.last_error: str | None = None

    async def refresh(self) -> list[str]:
        """List the Service's EndpointSlices now and apply them (at start, before the watch)."""
        items, version = await asyncio.to_thread(self._list)
        self._resource_version = version
        return self._replace(items)

    def _list(self) -> tuple[list[Any], str | None]:
        result = self.api.list_namespaced_endpoint_slice(
            self.spec.namespace, label_selector=self._selector, _request_timeout=self._client_timeout())
        self.lists += 1
        return list(result.items or []), result.metadata.resource_version if result.metadata else None

    def _client_timeout(self) -> float:
        # A socket read bound a little past the server-side one: an API server that vanished
        # without closing the connection must not park the thread forever.
        return self.spec.refresh + 10.0

    # ---- the loop's side: the set of slices and the pool ------------------------------------

    def _replace(self, items: list[Any]) -> list[str]:
        self._slices = {item.metadata.name: item for item in items}
        return self._apply()

    def _event(self, kind: str, item: Any) -> None:
        if self._stopped.is_set():
            return
        self.events += 1
        if kind == "DELETED":
            self._slices.pop(item.metadata.name, None)
        else:  # ADDED, MODIFIED
            self._slices[item.metadata.name] = item
        self._apply()

    def _apply(self) -> list[str]:
        found = replicas(list(self._slices.values()), self.spec)
        urls = [url for url, _ in found]
        current = {r.base_url: r.name for r in self.pool.replicas}
        # (url, name) pairs, not URLs alone: a pod that gets its targetRef later, or an address reused by a new pod,
        # renames the replica while the URL set stays the same.
        if urls != list(current) or any(name is not None and current.get(url) != name for url, name in found):
            # A replica that leaves keeps its calls in flight: they hold the Replica itself.
            self.pool.set_replicas(urls, {url: name for url, name in found if name is not None})
            self._report("replicas_changed", replicas=urls)
        return urls

    def _failed(self, error: str | None) -> None:
        if self._stopped.is_set():
            return
        if error is not None and error != self.last_error:  # once per outage, not once per retry
            self._report("discovery_failed", error=error)
        elif error is None and self.last_error is not None:
            self._report("discovery_recovered")
        self.last_error = error

    def _report(self, event: str, **fields: Any) -> None:
        if self._on_event:
            self._on_event(event, deployment=self.pool.name, **fields)

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is stopping
            self._stopped.set()

    # ---- the thread's side: list, watch, resume --------------------------------------------

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stopped.is_set():
            try:
                if self._resource_version is None:
                    items, self._resource_version = self._list()
                    self._post(self._replace, items)
                self._watch(watch.Watch())
                self._post(self._failed, None)
            except ApiException as exc:
                if exc.status == GONE:
                    self._resource_version = None  # history compacted past us: list again, at once
                    continue
                self._post(self._failed, f"ApiException: {exc.status} {exc.reason}")
                self._stopped.wait(self.spec.refresh)
            except Exception as exc:  # noqa: BLE001 - the API server may be briefly away; keep the last set
                self._post(self._failed, f"{type(exc).__name__}: {exc}")
                self._stopped.wait(self.spec.refresh)

    def _watch(self, w: Any) -> None:
        for event in w.stream(self.api.list_namespaced_endpoint_slice, self.spec.namespace,
                              label_selector=self._selector, resource_version=self._resource_version,
                              timeout_seconds=max(1, round(self.spec.refresh)), allow_watch_bookmarks=True,
                              _request_timeout=self._client_timeout()):
            if self._stopped.is_set():
                w.stop()
                return
            kind = event["type"]
            if kind == "BOOKMARK":  # only a newer resourceVersion to resume from
                self._resource_version = event["raw_object"]["metadata"]["resourceVersion"]
                continue
            item = event["object"]
            self._resource_version = item.metadata.resource_version
            self._post(self._event, kind, item)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name=f"endpointslices-{self.pool.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop applying changes now; the thread ends with its current watch call (within `refresh` s)."""
        self._stopped.set()
        self._thread = None
