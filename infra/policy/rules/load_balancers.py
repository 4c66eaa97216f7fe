"""What lets traffic into the clusters, judged on the rendered manifests: the gateway's NLB Service (made by the AWS
Load Balancer Controller) is the only load balancer, TLS-only, and no release renders an Ingress."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.plan.manifests import EXPOSING_KINDS, render_release
from infra.policy.rules.base import GATEWAY_CHART_DIR, HELM_RELEASE, Findings, Resource, Resources

# The controller's Service annotations (kubernetes-sigs/aws-load-balancer-controller
# docs/guide/service/annotations.md@v3.5.0).
ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-"
LB_TYPE = ANNOTATION + "type"
TARGET_TYPE = ANNOTATION + "nlb-target-type"
SCHEME = ANNOTATION + "scheme"
SSL_CERT = ANNOTATION + "ssl-cert"
SSL_PORTS = ANNOTATION + "ssl-ports"
SSL_POLICY = ANNOTATION + "ssl-negotiation-policy"
TAGS = ANNOTATION + "additional-resource-tags"
NLB_CLASS = "service.k8s.aws/nlb"
# TLS 1.3 and 1.2 only: https://docs.aws.amazon.com/elasticloadbalancing/latest/network/describe-ssl-policies.html
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


@dataclass
class LoadBalancerService:
    """A Service of type LoadBalancer some release renders."""
    release: Resource
    name: str
    spec: Mapping[str, Any]
    annotations: Mapping[str, str]
    gateway: bool  # rendered by a release of charts/gateway


@dataclass
class Exposure:
    """Every LoadBalancer Service and Ingress the stack's releases render, and the releases that could not be."""
    load_balancers: list[LoadBalancerService] = field(default_factory=list)
    ingresses: list[tuple[Resource, str]] = field(default_factory=list)
    unrendered: list[tuple[Resource, str]] = field(default_factory=list)


def exposure(resources: Resources) -> Exposure:
    gateways = {id(r) for r in resources.releases(GATEWAY_CHART_DIR)}
    out = Exposure()
    for release in resources.of_type(HELM_RELEASE):
        rendered = render_release(release, EXPOSING_KINDS)
        if rendered.error:
            out.unrendered.append((release, rendered.error))
            continue
        for obj in rendered.objects:
            meta = obj.get("metadata") or {}
            name = f"{meta.get('namespace') or rendered.namespace}/{meta.get('name')}"
            if obj.get("kind") == "Ingress":
                out.ingresses.append((release, name))
            elif obj.get("kind") == "Service" and (obj.get("spec") or {}).get("type") == "LoadBalancer":
                out.load_balancers.append(LoadBalancerService(
                    release, name, obj.get("spec") or {}, meta.get("annotations") or {}, id(release) in gateways))
    return out


def check_exposure(resources: Resources, found: Findings) -> None:
    """The gateway's NLB: the controller's class, IP targets, internet-facing, TLS on every port with the TLS 1.3
    policy and a certificate. Nothing else is a load balancer, and nothing renders an Ingress (the controller
    would make an ALB for one)."""
    seen = exposure(resources)
    for release, error in seen.unrendered:
        found.fail(f"Helm release {release.name} ({release.region}) cannot be rendered, so what it exposes cannot "
                   f"be judged: {error}")
    for release, name in seen.ingresses:
        found.fail(f"Helm release {release.name} ({release.region}) renders Ingress {name}: nothing in the cluster "
                   f"is reached through an Ingress (only the gateway, through its NLB)")
    for lb in seen.load_balancers:
        _check_load_balancer(lb, found)
    unrendered = {id(r) for r, _ in seen.unrendered}
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        ours = [lb for lb in seen.load_balancers if lb.release is gateway]
        if id(gateway) not in unrendered and len(ours) != 1:
            found.fail(f"the gateway release {gateway.name} ({gateway.region}) renders {len(ours)} Services of type "
                       f"LoadBalancer; it needs exactly one, its NLB, for DNS to point at")


def _check_load_balancer(lb: LoadBalancerService, found: Findings) -> None:
    where = f"Service {lb.name} of {lb.release.name} ({lb.release.region})"
    a = lb.annotations
    ports = [p for p in (lb.spec.get("ports") or [])]
    tls_ports = {s.strip() for s in str(a.get(SSL_PORTS, "")).split(",") if s.strip()}
    plaintext = [str(p.get("name") or p.get("port")) for p in ports
                 if str(p.get("name")) not in tls_ports and str(p.get("port")) not in tls_ports]
    found.judged(lb.release, service=lb.name, load_balancer_class=lb.spec.get("loadBalancerClass"),
                 lb_type=a.get(LB_TYPE), target_type=a.get(TARGET_TYPE), scheme=a.get(SCHEME),
                 ports=[p.get("port") for p in ports], tls_ports=sorted(tls_ports), ssl_policy=a.get(SSL_POLICY),
                 certificate=a.get(SSL_CERT))
    if not lb.gateway:
        found.fail(f"{where} is of type LoadBalancer: only the gateway is exposed through a load balancer")
        return
    if lb.spec.get("loadBalancerClass") != NLB_CLASS or a.get(LB_TYPE) != "external":
        found.fail(f"{where} is not the AWS Load Balancer Controller's (loadBalancerClass "
                   f"{lb.spec.get('loadBalancerClass')!r}, {LB_TYPE} {a.get(LB_TYPE)!r}): the in-tree cloud "
                   f"provider would make it, with none of these settings checked")
    if a.get(TARGET_TYPE) != "ip":
        found.fail(f"{where} registers {a.get(TARGET_TYPE) or 'instance'} targets, not the pods' IPs (ip)")
    if a.get(SCHEME) != "internet-facing":
        found.fail(f"{where} has scheme {a.get(SCHEME) or 'internal'}: the gateway answers the internet")
    if not ports:
        found.fail(f"{where} has no ports")
    if plaintext:
        found.fail(f"{where} has a plaintext listener on {', '.join(plaintext)}: every port must be in {SSL_PORTS} "
                   f"(bearer keys never cross the internet in clear)")
    if not str(a.get(SSL_CERT, "")).strip():
        found.fail(f"{where} has no {SSL_CERT}: a TLS listener needs the region's ACM certificate")
    if a.get(SSL_POLICY) != TLS_POLICY:
        policy = a.get(SSL_POLICY) or "the controller default ELBSecurityPolicy-2016-08"
        found.fail(f"{where} negotiates TLS with {policy}, not {TLS_POLICY}")


def gateway_load_balancer_tags(resources: Resources) -> list[tuple[Resource, dict[str, str] | None]]:
    """For each gateway release, the tags its NLB is asked to carry (the rendered Service's annotation), or None
    when it renders no load balancer."""
    seen = exposure(resources)
    out: list[tuple[Resource, dict[str, str] | None]] = []
    for gateway in resources.releases(GATEWAY_CHART_DIR):
        ours = [lb for lb in seen.load_balancers if lb.release is gateway]
        out.append((gateway, annotation_tags(ours[0].annotations.get(TAGS, "")) if ours else None))
    return out


def annotation_tags(value: str) -> dict[str, str]:
    """A stringMap annotation, `k1=v1,k2=v2`, as a dict."""
    pairs = (item.split("=", 1) for item in str(value).split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}
