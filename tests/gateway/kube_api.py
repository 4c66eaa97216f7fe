"""A small Kubernetes API server for tests: EndpointSlices listed and watched, with resourceVersions; NodePools,
Nodes, Deployments and StatefulSets read (what `llmp verify` reads)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from kubernetes import client as k8s

SERVICE_LABEL = "kubernetes.io/service-name"


def endpoint(ip: str, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None) -> dict[str, Any]:
    """One endpoint of a slice; None leaves a condition unset, as the API allows."""
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
                  if v is not None}
    doc: dict[str, Any] = {"addresses": [ip]}
    if conditions:
        doc["conditions"] = conditions
    return doc


def endpoint_slice(name: str, service: str, endpoints: list[dict[str, Any]], port: int,
                   port_name: str = "http") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {SERVICE_LABEL: service}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


def _ready_condition(kind: str, ready: bool, reason: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ready else "False", "reason": reason,
            "message": "" if ready else f"simulated: {reason}", "lastTransitionTime": "2026-11-26T00:00:00Z"}


def node_pool(name: str, ready: bool = True) -> dict[str, Any]:
    """A karpenter.sh/v1 NodePool with its `Ready` condition (Karpenter sets it from the NodeClass's readiness)."""
    reason = "Ready" if ready else "NodeClassNotReady"
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
            "spec": {"template": {"spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                                             "name": name}, "requirements": []}}},
            "status": {"conditions": [_ready_condition("Ready", ready, reason)]}}


def node(name: str, labels: dict[str, str], ready: bool = True) -> dict[str, Any]:
    reason = "KubeletReady" if ready else "KubeletNotReady"
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [_ready_condition("Ready", ready, reason)]}}


def workload(kind: str, name: str, ready: int, replicas: int | None = None) -> dict[str, Any]:
    """An apps/v1 Deployment or StatefulSet whose status says `ready` replicas are ready."""
    labels = {"app.kubernetes.io/name": name}
    spec: dict[str, Any] = {"replicas": replicas if replicas is not None else max(ready, 1),
                            "selector": {"matchLabels": labels},
                            "template": {"metadata": {"labels": labels},
                                         "spec": {"containers": [{"name": "main", "image": "example:1"}]}}}
    if kind == "StatefulSet":
        spec["serviceName"] = name
    status = {"replicas": spec["replicas"], "readyReplicas": ready} if ready else {"replicas": spec["replicas"]}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec, "status": status}


class FakeKubeApi:
    """Serves `GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices`, plain and `?watch=true`.

    As the real API server does (https://kubernetes.io/docs/reference/using-api/api-concepts/):
    a list carries the collection's resourceVersion; a watch from a resourceVersion streams every
    later change as JSON lines `{"type": ADDED|MODIFIED|DELETED, "object": ...}` and ends after
    `timeoutSeconds` (with a BOOKMARK of the current resourceVersion when asked for); a watch
    from a resourceVersion older than the kept history gets one ERROR event holding a 410
    Expired Status (`compact()` forgets the history).
    """

    def __init__(self) -> None:
        self.version = 1
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # version, namespace, type, object
        self.oldest = 1  # watches from before this version are answered 410
        self.lists: list[tuple[str, str | None]] = []  # (namespace, labelSelector) of each list
        self.watches: list[dict[str, str]] = []  # the query of each watch
        self.failing = 0  # answer this many next requests with 500
        # What is read, not watched: (plural, namespace, name) -> object; namespace "" for cluster-scoped kinds.
        self.resources: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeKubeApi:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self._endpointslices)
        app.router.add_get("/apis/karpenter.sh/v1/{plural:nodepools}/{name}", self._read)
        app.router.add_get("/api/v1/{plural:nodes}", self._list)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/{plural:deployments|statefulsets}/{name}", self._read)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._closing.set()
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def api(self) -> k8s.DiscoveryV1Api:
        """The official client, configured for this server."""
        return k8s.DiscoveryV1Api(k8s.ApiClient(k8s.Configuration(host=self.url)))

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for this server, as `kubectl config view` writes one (for `KUBECONFIG`)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
        }))
        return path

    # ---- changing the cluster ---------------------------------------------------------------

    async def put(self, namespace: str, doc: dict[str, Any]) -> int:
        """Create or replace a slice (ADDED or MODIFIED); returns its new resourceVersion."""
        key = (namespace, doc["metadata"]["name"])
        kind = "MODIFIED" if key in self.objects else "ADDED"
        return await self._record(namespace, kind, doc, key)

    async def delete(self, namespace: str, name: str) -> int:
        doc = self.objects[(namespace, name)]
        return await self._record(namespace, "DELETED", doc, (namespace, name))

    def set(self, doc: dict[str, Any], namespace: str = "") -> None:
        """Create or replace a NodePool, Node (cluster-scoped: no namespace), Deployment or StatefulSet."""
        plural = doc["kind"].lower() + "s"
        stored = copy.deepcopy(doc)
        if namespace:
            stored["metadata"]["namespace"] = namespace
        self.resources[(plural, namespace, doc["metadata"]["name"])] = stored

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: older resourceVersions now answer 410."""
        self.history.clear()
        self.oldest = self.version + 1

    async def _record(self, namespace: str, kind: str, doc: dict[str, Any], key: tuple[str, str]) -> int:
        self.version += 1
        stored = copy.deepcopy(doc)
        stored["metadata"].update(namespace=namespace, resourceVersion=str(self.version))
        if kind == "DELETED":
            del self.objects[key]
        else:
            self.objects[key] = stored
        self.history.append((self.version, namespace, kind, stored))
        async with self._changed:
            self._changed.notify_all()
        return self.version

    # ---- serving ------------------------------------------------------------------------------

    async def _endpointslices(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["ns"]
        selector = request.query.get("labelSelector")
        if self.failing:
            self.failing -= 1
            return web.json_response(_status(500, "InternalError", "simulated API server failure"), status=500)
        if request.query.get("watch", "").lower() in ("true", "1"):  # the python client sends `True`
            return await self._watch(request, namespace, selector)
        self.lists.append((namespace, selector))
        items = [o for (ns, _), o in sorted(self.objects.items()) if ns == namespace and _matches(o, selector)]
        return web.json_response({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def _read(self, request: web.Request) -> web.Response:
        info = request.match_info
        doc = self.resources.get((info["plural"], info.get("ns", ""), info["name"]))
        if doc is None:
            return web.json_response(_status(404, "NotFound", f'{info["plural"]} "{info["name"]}" not found'),
                                     status=404)
        return web.json_response(doc)

    async def _list(self, request: web.Request) -> web.Response:
        plural = request.match_info["plural"]
        selector = request.query.get("labelSelector")
        items = [o for (p, _, _), o in sorted(self.resources.items()) if p == plural and _matches(o, selector)]
        kind = items[0]["kind"] if items else plural[:-1].capitalize()
        return web.json_response({"apiVersion": "v1", "kind": f"{kind}List",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def _watch(self, request: web.Request, namespace: str, selector: str | None) -> web.StreamResponse:
        self.watches.append(dict(request.query))
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since < self.oldest - 1:
            expired = _status(410, "Expired", f"too old resource version: {since} ({self.oldest - 1})")
            await resp.write(orjson.dumps({"type": "ERROR", "object": expired}) + b"\n")
            return resp
        deadline = asyncio.get_running_loop().time() + timeout
        sent = since
        while not self._closing.is_set():
            upto = self.version
            for version, ns, kind, obj in list(self.history):
                if sent < version <= upto and ns == namespace and _matches(obj, selector):
                    await resp.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")
            sent = upto
            if self.version > sent:  # changed while we were writing
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except TimeoutError:
                    pass
        with contextlib.suppress(ConnectionResetError):  # the client went first
            if request.query.get("allowWatchBookmarks", "").lower() in ("true", "1"):
                # Where the collection is now, even if nothing the client watches changed: a resume
                # from here does not fall behind the history (the API server sends one as a watch ends).
                bookmark = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                            "metadata": {"resourceVersion": str(self.version)}}
                await resp.write(orjson.dumps({"type": "BOOKMARK", "object": bookmark}) + b"\n")
            await resp.write_eof()
        return resp


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    """Equality-based label selectors (`a=b,c=d`), the kind the gateway sends."""
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
