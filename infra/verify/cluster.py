"""A region's cluster as deployed, read through the official `kubernetes` client: GPU capacity, model releases,
the gateway workload.

What "ready" means is the API's own: a Karpenter NodePool's `Ready` condition (karpenter.sh/v1 NodePool status,
website/content/en/docs/concepts/nodepools.md @ v1.14.1), a Node's `Ready` condition
(https://kubernetes.io/docs/reference/node/node-status/#condition), and a Deployment's or StatefulSet's
`status.readyReplicas` (apps/v1). Every request carries a connect and read timeout and is not retried, so an
unreachable API server costs one timeout and gives one FAIL line naming the cluster, never a traceback.
"""
from __future__ import annotations

import threading
from typing import Any

from infra.verify.results import Check, failed, passed
from infra.verify.targets import RegionTarget, Targets

KARPENTER_GROUP, KARPENTER_VERSION, NODEPOOLS = "karpenter.sh", "v1", "nodepools"
LOAD_TIMEOUTS = 3  # a kube context's credentials may take this many request timeouts (an STS round trip or two)


class Unreachable(Exception):
    """The API server did not answer (or the kube context could not be loaded): one FAIL for the cluster."""


class Cluster:
    """The calls verify makes to one cluster, each bounded by `timeout` seconds."""

    def __init__(self, kubeconfig: str | None, context: str, timeout: float) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        failures: list[BaseException] = []

        def load() -> None:
            try:
                config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            except Exception as exc:  # noqa: BLE001 - a missing file or context, an exec plugin that failed
                failures.append(exc)

        # An EKS context gets its token from an exec plugin (`aws eks get-token`), which the client runs with no
        # timeout (kubernetes/config/exec_provider.py@v35.0.0 `communicate()`): it gets LOAD_TIMEOUTS of ours.
        loader = threading.Thread(target=load, name=f"kubeconfig-{context}", daemon=True)
        loader.start()
        loader.join(timeout * LOAD_TIMEOUTS)
        if loader.is_alive():
            raise Unreachable(f"kube context {context!r}: its credentials took over {timeout * LOAD_TIMEOUTS:g} s "
                              "(the exec plugin, e.g. `aws eks get-token`, did not finish)")
        if failures:
            raise Unreachable(f"cannot load kube context {context!r}: {_short(failures[0])}")
        configuration.retries = False  # one attempt per call: the timeout is the whole wait
        api = client.ApiClient(configuration)
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.context = context
        self.timeout = (timeout, timeout)  # (connect, read), as urllib3 takes them

    def call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """The API's answer; None for a 404; Unreachable when the server did not answer."""
        from kubernetes.client.exceptions import ApiException

        try:
            return method(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise Unreachable(f"API server of {self.context} answered {exc.status} {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - urllib3's connection and timeout errors, DNS, TLS
            raise Unreachable(f"API server of {self.context} unreachable: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _condition(conditions: list[Any] | None, kind: str) -> tuple[bool, str]:
    """(whether condition `kind` is True, its reason and message) from dicts or client objects."""
    for c in conditions or []:
        get = c.get if isinstance(c, dict) else lambda k, c=c: getattr(c, k, None)
        if get("type") == kind:
            why = " ".join(str(x) for x in (get("reason"), get("message")) if x)
            return get("status") == "True", why
    return False, f"no {kind} condition yet"


def _pools(cluster: Cluster, region: RegionTarget) -> list[Check]:
    out = []
    for pool in region.pools:
        name = f"NodePool {pool.name}"
        doc = cluster.call(cluster.custom.get_cluster_custom_object, KARPENTER_GROUP, KARPENTER_VERSION, NODEPOOLS,
                           pool.name)
        if doc is None:
            out.append(failed(region.name, name, f"not found ({KARPENTER_GROUP}/{KARPENTER_VERSION})"))
            continue
        ready, why = _condition((doc.get("status") or {}).get("conditions"), "Ready")
        if not ready:
            out.append(failed(region.name, name, f"not Ready: {why}"))
            continue
        nodes = cluster.call(cluster.core.list_node, label_selector=pool.label)
        items = nodes.items if nodes is not None else []
        up = [n.metadata.name for n in items if _condition(n.status.conditions if n.status else None, "Ready")[0]]
        down = sorted({n.metadata.name for n in items} - set(up))
        detail = f"{len(up)} node(s) Ready, at least {pool.min_nodes} expected"
        if down:
            detail += f"; not Ready: {', '.join(down)}"
        out.append((passed if len(up) >= pool.min_nodes else failed)(region.name, name, f"Ready; {detail}"))
    return out


def _ready(workload: Any) -> int:
    return int((workload.status.ready_replicas if workload.status else None) or 0)


def _releases(cluster: Cluster, region: RegionTarget, namespace: str) -> list[Check]:
    out = []
    for release in region.releases:
        name = f"model {release.model}"
        deployment = cluster.call(cluster.apps.read_namespaced_deployment, release.name, namespace)
        if deployment is None:
            out.append(failed(region.name, name, f"Deployment {namespace}/{release.name} not found"))
            continue
        ready = _ready(deployment)
        verdict = passed if ready >= release.floor else failed
        out.append(verdict(region.name, name, f"{ready} replica(s) ready, floor {release.floor} "
                                              f"(Deployment {namespace}/{release.name})"))
    return out


def _gateway(cluster: Cluster, region: RegionTarget, t: Targets) -> Check:
    """The gateway is a StatefulSet (one spool volume per pod) or, before that change, a Deployment."""
    ns, name = t.gateway_namespace, t.gateway_workload
    for kind, read in (("StatefulSet", cluster.apps.read_namespaced_stateful_set),
                       ("Deployment", cluster.apps.read_namespaced_deployment)):
        workload = cluster.call(read, name, ns)
        if workload is not None:
            ready = _ready(workload)
            verdict = passed if ready >= region.gateway_floor else failed
            return verdict(region.name, "gateway workload",
                           f"{ready} replica(s) ready, floor {region.gateway_floor} ({kind} {ns}/{name})")
    return failed(region.name, "gateway workload", f"no StatefulSet or Deployment {ns}/{name}")


def cluster_checks(region: RegionTarget, t: Targets, kubeconfig: str | None, context: str,
                   timeout: float) -> list[Check]:
    """Every cluster check of `region`, or one FAIL naming the cluster when it cannot be reached."""
    out: list[Check] = []
    try:
        cluster = Cluster(kubeconfig, context, timeout)
        out += _pools(cluster, region)
        out += _releases(cluster, region, t.model_namespace)
        out.append(_gateway(cluster, region, t))
    except Unreachable as exc:
        out.append(failed(region.name, f"cluster {context}", str(exc)))
    return out
