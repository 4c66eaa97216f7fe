"""charts/gateway, rendered by real Helm with the values the Pulumi program computes for each prod region."""
from __future__ import annotations

import ipaddress

import pytest
import yaml

from gateway.observability.metrics import GatewayMetrics
from infra.chart_values import (
    GATEWAY_CHART,
    GATEWAY_NAMESPACE,
    GATEWAY_PORT,
    GATEWAY_RELEASE,
    MODEL_NAMESPACE,
    VLLM_PORT,
    gateway_service_account_subject,
)
from infra.components.autoscaling import PROMETHEUS_URL
from infra.components.dns import regional_host, zone_host
from infra.components.network import private_subnet_cidrs, public_subnet_cidrs
from infra.components.providers import stack_tags
from infra.config import StackConfig
from infra.gateway_config import gateway_config
from tests.charts.rendering import (
    PROD_REGIONS,
    ROLE_ARN,
    Rendered,
    certificate_arn,
    install_error,
    merged,
    prod_gateway_values,
    render,
    render_prod_gateway,
)

REGIONS = pytest.mark.parametrize("region", PROD_REGIONS)
_RENDERED: dict[str, Rendered] = {}


def _prod(cfg: StackConfig, region: str) -> Rendered:
    if region not in _RENDERED:
        _RENDERED[region] = render_prod_gateway(cfg, region)
    return _RENDERED[region]


def _defaults(values: dict | None = None) -> Rendered:
    return render(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)


# --- identity: IRSA ------------------------------------------------------------------------------

@REGIONS
def test_the_pods_run_as_the_service_account_the_iam_role_trusts(prod, region):
    r = _prod(prod, region)
    account = r.one("ServiceAccount")
    name, namespace = account["metadata"]["name"], account["metadata"]["namespace"]
    assert f"system:serviceaccount:{namespace}:{name}" == gateway_service_account_subject()
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE_ARN
    assert r.pod_spec()["serviceAccountName"] == name


def test_the_default_service_account_is_llm_gateway_even_without_a_role():
    account = _defaults().one("ServiceAccount")
    assert account["metadata"]["name"] == "llm-gateway"
    assert "annotations" not in account["metadata"]
    assert account["automountServiceAccountToken"] is False


# --- config and command --------------------------------------------------------------------------

@REGIONS
def test_the_gateway_config_is_rendered_into_a_config_map_and_passed_with_config(prod, region):
    r = _prod(prod, region)
    config_map = r.one("ConfigMap")
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == gateway_config(prod, prod.region(region))
    container = r.container("gateway")
    assert container["command"] + container["args"] == \
        ["llmp", "gateway", "--config", "/etc/llm-platform/config.yaml", "--port", str(GATEWAY_PORT)]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/llm-platform")
    volume = next(v for v in r.pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AWS_REGION"] == region


def test_a_config_change_rolls_the_pods():
    def checksum(config: dict) -> str:
        return _defaults({"config": config}).one("StatefulSet")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]
    assert checksum({"version": 1}) == checksum({"version": 1})
    assert checksum({"version": 1}) != checksum({"version": 2})


# --- traffic -------------------------------------------------------------------------------------

ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-"


@REGIONS
def test_the_service_exposes_the_gateway_port_inside_the_cluster(prod, region):
    service = _prod(prod, region).one("Service", GATEWAY_RELEASE)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http", "protocol": "TCP"}]


@REGIONS
def test_the_public_service_is_an_internet_facing_nlb_of_the_load_balancer_controller_with_ip_targets(prod, region):
    """Annotation names and values as in the controller's docs/guide/service/annotations.md@v3.5.0."""
    service = _prod(prod, region).one("Service", f"{GATEWAY_RELEASE}-public")
    spec, annotations = service["spec"], service["metadata"]["annotations"]
    assert (spec["type"], spec["loadBalancerClass"]) == ("LoadBalancer", "service.k8s.aws/nlb")
    assert annotations[ANNOTATION + "type"] == "external"
    assert annotations[ANNOTATION + "nlb-target-type"] == "ip"
    assert annotations[ANNOTATION + "scheme"] == "internet-facing"
    assert annotations[ANNOTATION + "attributes"] == "load_balancing.cross_zone.enabled=true"
    assert spec["selector"] == _prod(prod, region).one("Service", GATEWAY_RELEASE)["spec"]["selector"]


@REGIONS
def test_the_nlb_listens_only_with_tls_from_the_regions_certificate(prod, region):
    service = _prod(prod, region).one("Service", f"{GATEWAY_RELEASE}-public")
    annotations = service["metadata"]["annotations"]
    # One port, and it is a TLS port: every port of the Service would be a listener.
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}]
    assert annotations[ANNOTATION + "ssl-ports"] == "https"
    assert annotations[ANNOTATION + "ssl-cert"] == certificate_arn(region)
    assert annotations[ANNOTATION + "ssl-negotiation-policy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"


@REGIONS
def test_the_nlb_checks_the_pods_readiness_path_and_carries_the_stack_tags(prod, region):
    annotations = _prod(prod, region).one("Service", f"{GATEWAY_RELEASE}-public")["metadata"]["annotations"]
    readiness = _prod(prod, region).container("gateway")["readinessProbe"]["httpGet"]["path"]
    assert (annotations[ANNOTATION + "healthcheck-protocol"], annotations[ANNOTATION + "healthcheck-port"],
            annotations[ANNOTATION + "healthcheck-path"]) == ("http", "traffic-port", readiness)
    tags = dict(pair.split("=", 1) for pair in annotations[ANNOTATION + "additional-resource-tags"].split(","))
    assert tags == stack_tags(prod.stack, region, prod.zone_of(region))
    # The pods see the NLB's addresses, never the client's: what the NetworkPolicy admits.
    assert "preserve_client_ip.enabled=false" in annotations[ANNOTATION + "target-group-attributes"].split(",")


@REGIONS
def test_the_nlb_is_meant_for_the_global_the_regional_and_the_zone_host(prod, region):
    hosts = prod_gateway_values(prod, region)["service"]["loadBalancer"]["hosts"]
    assert hosts == [prod.gateway.domain, regional_host(region, prod.gateway.domain),
                     zone_host(prod.zone_of(region), prod.gateway.domain)]
    notes = _prod(prod, region).notes
    assert all(f"https://{host}/v1" in notes for host in hosts)


def test_a_new_certificate_or_new_tags_change_nothing_that_replaces_the_nlb(prod):
    """The controller replaces an NLB only when its type or scheme changes, and a target group only when its target
    type or protocol does (pkg/deploy/elbv2/*_synthesizer.go@v3.5.0); a renewed certificate or a new tag touches
    neither, and the Service keeps its name (a new Service would be a new NLB with a new hostname)."""
    region = PROD_REGIONS[0]
    before = prod_gateway_values(prod, region)
    after = merged(before, {"service": {"loadBalancer": {
        "certificateArns": [certificate_arn(region).replace("0f1e2d3c", "9a8b7c6d")], "tags": {"team": "platform"}}}})

    def public(values: dict) -> dict:
        return render(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE).one(
            "Service", f"{GATEWAY_RELEASE}-public")
    old, new = public(before), public(after)
    changed = {k for k in old["metadata"]["annotations"].keys() | new["metadata"]["annotations"].keys()
               if old["metadata"]["annotations"].get(k) != new["metadata"]["annotations"].get(k)}
    assert changed == {ANNOTATION + "ssl-cert", ANNOTATION + "additional-resource-tags"}
    assert (old["metadata"]["name"], old["spec"]) == (new["metadata"]["name"], new["spec"])


def test_by_default_the_gateway_has_no_load_balancer():
    assert [s["spec"]["type"] for s in _defaults().all("Service")] == ["ClusterIP"]


def test_probes_use_the_gateways_health_endpoints():
    c = _defaults().container("gateway")
    # Not tied to upstreams: the first deploy's atomic release must get ready before any model is up.
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/readiness", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": GATEWAY_PORT}


def test_prometheus_scrapes_metrics_by_annotation_or_service_monitor():
    annotations = _defaults().one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"], annotations["prometheus.io/path"]) \
        == ("true", str(GATEWAY_PORT), "/metrics")
    monitor = _defaults({"metrics": {"serviceMonitor": {"enabled": True}}}).one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


# --- scaling and disruption ----------------------------------------------------------------------

@REGIONS
def test_replicas_scale_between_the_configured_min_and_max_and_survive_drains(prod, region):
    r = _prod(prod, region)
    scaled = r.one("ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == \
        (prod.gateway.replicas.min, prod.gateway.replicas.max)
    workload = r.one("StatefulSet")
    assert (scaled["scaleTargetRef"]["kind"], scaled["scaleTargetRef"]["name"]) == ("StatefulSet",
                                                                                  workload["metadata"]["name"])
    assert r.all("HorizontalPodAutoscaler") == [], "KEDA makes the one HPA; a second would fight it"
    # The floor under `helm template` (nothing to look up); the live count KEDA set once the StatefulSet exists
    # (tests/charts/test_gateway_spool.py).
    assert r.one("StatefulSet")["spec"]["replicas"] == prod.gateway.replicas.min
    pdb = r.one("PodDisruptionBudget")
    labels = r.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@REGIONS
def test_the_gateway_scales_on_cpu_and_on_calls_in_flight_per_replica_of_this_release(prod, region):
    r = _prod(prod, region)
    triggers = {t["type"]: t for t in r.one("ScaledObject")["spec"]["triggers"]}
    assert set(triggers) == {"cpu", "prometheus"}
    # The HPA's own Resource metric, from metrics-server, against the container's CPU request.
    assert triggers["cpu"]["metricType"] == "Utilization"
    assert triggers["cpu"]["metadata"]["value"] == "70"
    # KEDA's webhook refuses a cpu trigger unless every container requests CPU (scaledobject_webhook.go@v2.20.2,
    # verifyCPUMemoryScalers); it reads the StatefulSet, which Helm applies before a kind it does not know.
    assert all(c["resources"]["requests"]["cpu"] for c in r.pod_spec()["containers"])
    calls = triggers["prometheus"]
    assert calls["metricType"] == "AverageValue"
    assert calls["metadata"]["serverAddress"] == PROMETHEUS_URL
    assert calls["metadata"]["query"] == \
        f'sum(llmp_gateway_in_flight{{namespace="{GATEWAY_NAMESPACE}",service="{GATEWAY_RELEASE}"}})'
    # The gauge is one the gateway exports, and the Service the ServiceMonitor scrapes carries the selected name.
    assert "llmp_gateway_in_flight" in GatewayMetrics().render().decode()
    assert r.one("Service", GATEWAY_RELEASE)


def test_with_prometheus_down_the_gateway_keeps_its_replicas_and_still_scales_up_on_cpu(prod):
    """A `static` fallback would pin the replica count whatever the CPU says (kedacore/keda#6659); `currentReplicas`
    makes the failing trigger report the count running, and the HPA takes the largest of its metrics."""
    fallback = _prod(prod, "us-east-1").one("ScaledObject")["spec"]["fallback"]
    assert fallback["behavior"] == "currentReplicas"
    assert fallback["failureThreshold"] >= 1


def test_the_scaled_object_takes_over_the_hpa_an_earlier_release_of_the_chart_made(prod):
    """Helm applies the new ScaledObject before it deletes the old HPA, and KEDA's webhook refuses a ScaledObject
    for a workload another HPA scales unless it names that HPA for transfer (scaledobject_webhook.go@v2.20.2)."""
    scaled = _prod(prod, "us-east-1").one("ScaledObject")
    assert scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == GATEWAY_RELEASE


@pytest.mark.parametrize(("values", "field"), [
    ({"autoscaling": {"inFlightPerReplica": 0}}, "/autoscaling/inFlightPerReplica"),
    ({"autoscaling": {"prometheus": {"serverAddress": "prometheus:9090"}}}, "/autoscaling/prometheus/serverAddress"),
    ({"autoscaling": {"fallback": {"failureThreshold": 0}}}, "/autoscaling/fallback/failureThreshold"),
    ({"autoscaling": {"metrics": []}}, "metrics"),
])
def test_bad_scaling_values_are_refused_by_name(prod, values, field):
    error = install_error(GATEWAY_CHART, merged(prod_gateway_values(prod, "us-east-1"), values),
                          name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert field in error


def test_replicas_spread_across_zones():
    constraints = _defaults().pod_spec()["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gateway" for c in constraints)


# --- network policy ------------------------------------------------------------------------------

def _peers_allow(rule: dict, port: int, protocol: str = "TCP") -> bool:
    return any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule.get("ports", []))


def _namespaces(rule: dict, key: str) -> set[str]:
    return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in rule[key] if "namespaceSelector" in peer}


@REGIONS
def test_network_policy_admits_the_nlbs_subnets_and_the_namespace_only(prod, region):
    """IP targets without client IP preservation: the NLB connects (traffic and health checks) from its own
    addresses in the public subnets it sits in (controller docs/guide/service/nlb.md@v3.5.0, "NLB Subnet CIDRs")."""
    policy = _prod(prod, region).one("NetworkPolicy", GATEWAY_RELEASE)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    blocks = [peer["ipBlock"]["cidr"] for peer in rule["from"] if "ipBlock" in peer]
    assert blocks == public_subnet_cidrs(prod.vpc_cidr(region))
    assert all(ipaddress.ip_network(b).subnet_of(ipaddress.ip_network(prod.vpc_cidr(region))) for b in blocks)
    assert "ingress-nginx" not in _namespaces(rule, "from")
    assert {"podSelector": {}} in rule["from"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


@REGIONS
def test_network_policy_lets_the_gateway_reach_models_its_stores_aws_and_dns_only(prod, region):
    egress = _prod(prod, region).one("NetworkPolicy", GATEWAY_RELEASE)["spec"]["egress"]
    dns = [r for r in egress if _peers_allow(r, 53, "UDP")]
    assert dns and _namespaces(dns[0], "to") == {"kube-system"}
    models = [r for r in egress if _peers_allow(r, VLLM_PORT)]
    assert models and _namespaces(models[0], "to") == {MODEL_NAMESPACE}
    # The region's own stores, in its private subnets only (infra/components/gateway_stores.py).
    private = private_subnet_cidrs(prod.vpc_cidr(region))
    for port in (6379, 5432):
        (store,) = [r for r in egress if _peers_allow(r, port)]
        assert [p["ipBlock"]["cidr"] for p in store["to"] if "ipBlock" in p] == private, port
        assert store["ports"] == [{"port": port, "protocol": "TCP"}]
    https = [r for r in egress if _peers_allow(r, 443) and any("ipBlock" in p for p in r["to"])]
    assert https, "AWS APIs (STS, Secrets Manager) need HTTPS egress"
    allowed_ports = {p["port"] for r in egress for p in r["ports"]}
    assert allowed_ports == {53, VLLM_PORT, 443, 6379, 5432}
    assert all(r.get("to") for r in egress), "an egress rule without peers would allow every destination"


# --- hardening -----------------------------------------------------------------------------------

def test_the_gateway_runs_non_root_read_only_without_privilege_escalation():
    r = _defaults()
    spec = r.pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = r.container("gateway")["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]["drop"]) == \
        (True, False, ["ALL"])


def test_the_notes_give_the_api_urls_and_a_health_check(prod):
    notes = _prod(prod, PROD_REGIONS[0]).notes
    assert f"https://{prod.gateway.domain}/v1" in notes
    assert "http://gateway.llm-gateway.svc.cluster.local:4000/v1" in notes
    assert "/health/ready" in notes
    assert "rollout status statefulset/gateway" in notes
    assert "PVC spool-gateway-<n>, mounted at /var/lib/llmp/spool" in notes


# --- bad values ----------------------------------------------------------------------------------

BAD_VALUES = {
    "a role that is not an IAM role ARN": ({"serviceAccount": {"roleArn": "gateway-role"}}, "/serviceAccount/roleArn"),
    "a host with an underscore": ({"service": {"loadBalancer": {"hosts": ["api_llm.example.com"]}}},
                                  "/service/loadBalancer/hosts/0"),
    "a load balancer without a certificate": (
        {"service": {"loadBalancer": {"enabled": True, "hosts": ["a.example.com"]}}},
        "/service/loadBalancer/certificateArns"),
    "a TLS policy that allows TLS 1.0": ({"service": {"loadBalancer": {"sslPolicy": "ELBSecurityPolicy-2016-08"}}},
                                         "/service/loadBalancer/sslPolicy"),
    "a tag value that would split the annotation": ({"service": {"loadBalancer": {"tags": {"team": "a,b=c"}}}},
                                                    "/service/loadBalancer/tags/team"),
    # Helm's schema error names a bad property name, not its path.
    "a tag key with a comma": ({"service": {"loadBalancer": {"tags": {"team,cost": "a"}}}}, "'team,cost'"),
    "a tag key with an equals sign": ({"service": {"loadBalancer": {"tags": {"team=a": "b"}}}}, "'team=a'"),
    "a tag value with an equals sign": ({"service": {"loadBalancer": {"tags": {"team": "a=b"}}}},
                                        "/service/loadBalancer/tags/team"),
    "an unpinned image": ({"image": {"tag": "latest"}}, "/image/tag"),
    "config that is not a mapping": ({"config": "models: []"}, "/config"),
    "a misspelt key": ({"replicas": 3}, "'replicas'"),
    "a region that is not one": ({"region": "US East"}, "/region"),
}


@pytest.mark.parametrize(("values", "names"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_refused_at_install_with_a_message_naming_the_key(values, names):
    message = install_error(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert "values don't meet the specifications of the schema" in message
    assert names in message, message


@REGIONS
def test_the_prod_values_are_accepted_at_install(prod, region):
    assert install_error(GATEWAY_CHART, prod_gateway_values(prod, region), name=GATEWAY_RELEASE,
                         namespace=GATEWAY_NAMESPACE) == ""


def test_endpoint_slice_discovery_gets_a_token_and_read_only_access_to_the_model_namespaces():
    assert _defaults().pod_spec()["automountServiceAccountToken"] is False
    assert _defaults().all("Role") == []
    r = _defaults({"discovery": {"enabled": True, "namespaces": [MODEL_NAMESPACE]}})
    assert r.pod_spec()["automountServiceAccountToken"] is True
    role = r.one("Role")
    assert role["metadata"]["namespace"] == MODEL_NAMESPACE
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    binding = r.one("RoleBinding")
    assert binding["metadata"]["namespace"] == MODEL_NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llm-gateway", "namespace": GATEWAY_NAMESPACE}]


def test_the_program_grants_discovery_exactly_where_the_gateway_config_discovers_replicas(prod):
    from infra.chart_values import gateway_values
    region = prod.regions[0]
    static = gateway_values(prod, region, role_arn=ROLE_ARN, config={"models": [{"alias": "m", "deployments": [
        {"name": "m", "api_base": "http://vllm-m.llm-serving.svc.cluster.local:8000/v1"}]}]},
        certificate_arn=certificate_arn(region.name), tags={})
    assert static["discovery"]["enabled"] is False
    config = {"models": [{"alias": "m", "deployments": [{"name": "m", "replicas": {"endpoint_slices": {
        "service": "vllm-m-headless", "namespace": MODEL_NAMESPACE, "port": "http"}}}]}]}
    values = gateway_values(prod, region, role_arn=ROLE_ARN, config=config,
                            certificate_arn=certificate_arn(region.name), tags={})
    assert values["discovery"] == {"enabled": True, "namespaces": [MODEL_NAMESPACE]}
    r = render(GATEWAY_CHART, values, name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert r.one("RoleBinding")["metadata"]["namespace"] == MODEL_NAMESPACE


# --- the drain contract --------------------------------------------------------------------------

def _shutdown_grace(r: Rendered) -> float:
    """The gateway's own drain after SIGTERM, as the config it loads says (gateway/config/limits.py default)."""
    from gateway.config.native import GatewayConfig
    from tests.infra.rendered_sections import gateway_parsable
    config = GatewayConfig.model_validate(gateway_parsable(yaml.safe_load(r.one("ConfigMap")["data"]["config.yaml"])))
    return config.gateway.front_door.shutdown_grace


@REGIONS
def test_the_program_writes_the_gateways_shutdown_grace_into_its_config(prod, region):
    from infra.gateway_config import SHUTDOWN_GRACE_SECONDS
    assert _shutdown_grace(_prod(prod, region)) == SHUTDOWN_GRACE_SECONDS


@REGIONS
def test_the_grace_period_covers_the_pre_stop_and_the_gateways_own_shutdown_grace(prod, region):
    """The kubelet sends SIGKILL at terminationGracePeriodSeconds, counted from before the preStop sleep: it
    must leave the gateway its whole shutdown_grace after SIGTERM, and a margin to exit."""
    r = _prod(prod, region)
    pre_stop = r.container("gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    assert r.pod_spec()["terminationGracePeriodSeconds"] >= pre_stop + _shutdown_grace(r) + 5


@pytest.mark.parametrize(("grace", "expected"), [(None, 130 + 50 + 10), (90.5, 130 + 91 + 10), (0, 130 + 0 + 10)],
                         ids=["the gateway's default", "a fraction rounds up", "none"])
def test_the_grace_period_follows_shutdown_grace_wherever_the_config_sets_it(grace, expected):
    front_door = {} if grace is None else {"front_door": {"shutdown_grace": grace}}
    r = _defaults({"config": {"version": 1, "gateway": front_door, "models": []}})
    assert r.pod_spec()["terminationGracePeriodSeconds"] == expected


# An NLB keeps opening new connections to a deregistering target for about 120 s, whatever its deregistration delay
# (kubernetes-sigs/aws-load-balancer-controller#2366, #3270; aws/containers-roadmap#470); the controller deregisters
# the target only after it sees the pod leave the Service's endpoints.
NLB_KEEPS_ROUTING_SECONDS = 120


def _target_group_attributes(r: Rendered) -> dict[str, str]:
    annotations = r.one("Service", f"{GATEWAY_RELEASE}-public")["metadata"]["annotations"]
    return dict(pair.split("=", 1) for pair in annotations[ANNOTATION + "target-group-attributes"].split(","))


@REGIONS
def test_a_terminating_gateway_keeps_accepting_until_the_nlb_stops_routing_to_it(prod, region):
    """The gateway stops accepting at SIGTERM (gateway/server.py, serve: `site.stop()` first), so the preStop must
    outlast the time the NLB still opens connections to the deregistered target, with room for the controller's
    reconcile."""
    pre_stop = _prod(prod, region).container("gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= NLB_KEEPS_ROUTING_SECONDS + 10


@REGIONS
def test_the_nlb_keeps_a_draining_targets_connections_as_long_as_the_pod_may_live(prod, region):
    """deregistration_delay.timeout_seconds (0-3600 s; docs/guide/service/annotations.md@v3.5.0,
    target-group-attributes): a stream the gateway still drains after its preStop is never cut by the NLB first."""
    r = _prod(prod, region)
    delay = int(_target_group_attributes(r)["deregistration_delay.timeout_seconds"])
    assert delay == r.pod_spec()["terminationGracePeriodSeconds"] <= 3600
    pre_stop = r.container("gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert delay >= pre_stop + _shutdown_grace(r)


def test_the_deregistration_delay_follows_the_drain_and_cannot_be_set_apart():
    values = {"service": {"loadBalancer": {"enabled": True, "hosts": ["api.example.com"],
                                           "certificateArns": [certificate_arn("us-east-1")]}},
              "config": {"version": 1, "gateway": {"front_door": {"shutdown_grace": 30}}, "models": []},
              "drain": {"preStopSeconds": 150, "marginSeconds": 20}}
    assert _target_group_attributes(_defaults(values))["deregistration_delay.timeout_seconds"] == str(150 + 30 + 20)
    message = install_error(GATEWAY_CHART, merged(values, {"service": {"loadBalancer": {
        "deregistrationDelaySeconds": 70}}}), name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert "deregistrationDelaySeconds" in message


@pytest.mark.parametrize(("load_balancer", "accepted"), [(True, False), (False, True)],
                         ids=["behind the NLB: refused", "in-cluster only: accepted"])
def test_a_pre_stop_shorter_than_the_nlbs_deregistration_is_refused_behind_the_nlb(load_balancer, accepted):
    lb = {"enabled": load_balancer, "hosts": ["api.example.com"], "certificateArns": [certificate_arn("us-east-1")]}
    message = install_error(GATEWAY_CHART, {"service": {"loadBalancer": lb}, "drain": {"preStopSeconds": 10}},
                            name=GATEWAY_RELEASE, namespace=GATEWAY_NAMESPACE)
    assert (message == "") is accepted, message
    if not accepted:
        assert "preStopSeconds" in message


def test_the_grace_period_cannot_be_set_apart_from_the_drain():
    message = install_error(GATEWAY_CHART, {"terminationGracePeriodSeconds": 30}, name=GATEWAY_RELEASE,
                            namespace=GATEWAY_NAMESPACE)
    assert "terminationGracePeriodSeconds" in message


@REGIONS
def test_no_service_links_are_injected_into_the_gateway_pods(prod, region):
    assert _prod(prod, region).pod_spec()["enableServiceLinks"] is False


@REGIONS
def test_the_disruption_budget_never_holds_a_node_drain(prod, region):
    pdb = _prod(prod, region).one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- helm test -----------------------------------------------------------------------------------

@REGIONS
def test_helm_test_checks_liveness_and_that_models_need_a_key(prod, region):
    """/v1/models answers only with a key (gateway/http/handlers.py), and /health/ready reports upstreams that
    may still be loading on a first deploy: the test asks /health/live, and that /v1/models refuses (401)."""
    r = _prod(prod, region)
    job = r.one("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    assert f'base="http://{GATEWAY_RELEASE}:{GATEWAY_PORT}"' in script
    assert '"$base/health/live"' in script
    assert "%{http_code}" in script and '"$base/v1/models")" = 401' in script
    selector = r.one("Service", GATEWAY_RELEASE)["spec"]["selector"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


@REGIONS
def test_the_helm_test_job_may_reach_only_the_gateway_and_dns(prod, region):
    r = _prod(prod, region)
    job = r.one("Job")
    policy = r.one("NetworkPolicy", f"{GATEWAY_RELEASE}-test")
    assert policy["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert int(policy["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    server = r.one("Service", GATEWAY_RELEASE)["spec"]["selector"]
    assert [rule["to"] for rule in policy["spec"]["egress"]][1] == [{"podSelector": {"matchLabels": server}}]
