"""Replica discovery from Kubernetes EndpointSlices, through the official `kubernetes` client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.config.native import EndpointSlices
from gateway.tasks import cancel
from gateway.upstream.routing import DeploymentPool

ServiceLabel = "kubernetes.io/service-name"
EventSink = Callable[..., None]


def default_discovery_api() -> Any:
    """A DiscoveryV1Api from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.DiscoveryV1Api()


def replica_urls(slices: list[Any], spec: EndpointSlices) -> list[str]:
    """Base URLs of the ready endpoints in a Service's EndpointSlices."""
    urls: list[str] = []
    for endpoint_slice in slices:
        port = _port(endpoint_slice, spec)
        if port is None:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            conditions = endpoint.conditions
            # Per the EndpointSlice API, an unset `ready` means ready.
            if conditions is not None and conditions.ready is False:
                continue
            for address in (endpoint.addresses or [])[:1]:
                host = f"[{address}]" if ":" in address else address
                urls.append(f"{spec.scheme}://{host}:{port}{spec.base_path}")
    return sorted(set(urls))


def _port(endpoint_slice: Any, spec: EndpointSlices) -> int | None:
    ports = endpoint_slice.ports or []
    if isinstance(spec.port, int):
        return spec.port
    for port in ports:
        if port.name == spec.port:
            return int(port.port)
    return None


class EndpointSliceWatcher:
    """Keeps a pool's replicas equal to the ready endpoints of its Service, polling every `refresh` s.

    Polling (not a watch stream) because the client is synchronous: each poll is
    one list call in a worker thread, and a failed poll keeps the last known set.
    """

    def __init__(self, pool: DeploymentPool, spec: EndpointSlices, api: Any, on_event: EventSink | None = None) -> None:
        self.pool = pool
        self.spec = spec
        self.api = api
        self._on_event = on_event
        self._task: asyncio.Task[None] | None = None
        self.polls = 0
        self.last_error: str | None = None

    async def refresh(self) -> list[str]:
        result = await asyncio.to_thread(
            self.api.list_namespaced_endpoint_slice,
            self.spec.namespace,
            label_selector=f"{ServiceLabel}={self.spec.service}",
        )
        urls = replica_urls(list(result.items or []), self.spec)
        self.polls += 1
        if urls != [r.base_url for r in self.pool.replicas]:
            self.pool.set_replicas(urls)
            if self._on_event:
                self._on_event("replicas_changed", deployment=self.pool.name, replicas=urls)
        return urls

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API server may be briefly away; keep the last set
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._on_event:
                    self._on_event("discovery_failed", deployment=self.pool.name, error=self.last_error)
            await asyncio.sleep(self.spec.refresh)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
