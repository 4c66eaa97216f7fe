"""charts/vllm, rendered by real Helm with the values the Pulumi program computes for the prod stack."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest
import yaml

from infra.chart_values import (
    GATEWAY_NAMESPACE,
    MODEL_NAMESPACE,
    VLLM_CHART,
    VLLM_PORT,
    model_base_url,
    model_service_account,
    vllm_release_name,
)
from infra.components.secrets import huggingface_token_name
from infra.config import StackConfig
from infra.scheduling import GPU_RESOURCE, POOL_LABEL, pool_taints, pool_tolerations
from tests.charts.rendering import (
    MODEL_ROLE_ARN,
    PROD_MODEL_RELEASES,
    Rendered,
    install_error,
    render,
    render_prod_model,
    weights_source,
)

RELEASES = pytest.mark.parametrize(("region", "model"), PROD_MODEL_RELEASES,
                                   ids=[f"{r}/{m}" for r, m in PROD_MODEL_RELEASES])


_RENDERED: dict[tuple[str, str], Rendered] = {}


def _prod(cfg: StackConfig, region: str, model: str) -> Rendered:
    if (region, model) not in _RENDERED:
        _RENDERED[region, model] = render_prod_model(cfg, region, model)
    return _RENDERED[region, model]


def _model(cfg: StackConfig, name: str):
    return next(m for m in cfg.models if m.name == name)


def _args(r: Rendered) -> list[str]:
    return r.container("vllm")["args"]


def _defaults(**override) -> Rendered:
    return render(VLLM_CHART, override or None, name="vllm-demo", namespace=MODEL_NAMESPACE)


# --- naming: the gateway's upstream URL must resolve -------------------------------------------

@RELEASES
def test_the_service_is_named_after_the_release_so_the_gateways_upstream_url_resolves(prod, region, model):
    r = _prod(prod, region, model)
    m = _model(prod, model)
    service = r.one("Service", vllm_release_name(m))
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [VLLM_PORT]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert model_base_url(m) == f"http://{host}:{VLLM_PORT}/v1"


def test_a_release_name_without_the_chart_name_gets_the_chart_name_appended():
    r = render(VLLM_CHART, None, name="llama", namespace="models")
    assert r.one("Deployment")["metadata"]["name"] == "llama-vllm"
    assert {s["metadata"]["name"] for s in r.all("Service")} == {"llama-vllm", "llama-vllm-headless"}


def test_a_headless_service_lists_every_ready_replica_for_discovery():
    headless = _defaults().one("Service", "vllm-demo-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False


# --- the server: GPUs, tensor parallelism, model flags -------------------------------------------

@RELEASES
def test_gpu_requests_and_limits_equal_the_models_gpus_and_the_tensor_parallel_size(prod, region, model):
    r = _prod(prod, region, model)
    gpus = _model(prod, model).gpus
    resources = r.container("vllm")["resources"]
    assert resources["requests"][GPU_RESOURCE] == gpus
    assert resources["limits"][GPU_RESOURCE] == gpus
    assert f"--tensor-parallel-size={gpus}" in _args(r)


@RELEASES
def test_the_server_serves_the_model_with_its_configured_limits(prod, region, model):
    r = _prod(prod, region, model)
    m = _model(prod, model)
    container = r.container("vllm")
    args = _args(r)
    assert container["command"] == ["vllm", "serve"]
    # Weights from S3: the region's bucket, streamed by Run:ai's loader (infra/chart_values.py weights_values).
    assert args[0] == (weights_source(m) if m.weights_from("prod") == "s3" else m.source)
    assert ("--load-format=runai_streamer" in args) == (m.weights_from("prod") == "s3")
    assert f"--served-model-name={m.name}" in args
    assert f"--max-model-len={m.max_model_len}" in args
    assert f"--gpu-memory-utilization={m.gpu_memory_utilization}" in args
    assert "--enable-prefix-caching" in args
    assert f"--port={VLLM_PORT}" in args
    quantization = [a for a in args if a.startswith("--quantization")]
    assert quantization == ([f"--quantization={m.quantization}"] if m.quantization else [])


def test_the_image_is_pinned_and_can_be_pinned_by_digest():
    assert _defaults().container("vllm")["image"] == "vllm/vllm-openai:v0.33.0"
    digest = "sha256:" + "a" * 64
    r = _defaults(image={"digest": digest})
    assert r.container("vllm")["image"] == f"vllm/vllm-openai@{digest}"


def test_prefix_caching_can_be_turned_off_and_extra_args_are_passed_through():
    args = _args(_defaults(model={"prefixCaching": False, "extraArgs": ["--enable-chunked-prefill"]}))
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert args[-1] == "--enable-chunked-prefill"


# --- scheduling: one source for labels and taints (infra/scheduling.py) --------------------------

def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") not in (None, taint["effect"]) or toleration.get("key") != taint["key"]:
        return False
    return toleration.get("operator") == "Exists" or toleration.get("value") == taint["value"]


@RELEASES
def test_pods_land_only_on_the_models_pool_and_tolerate_exactly_its_taints(prod, region, model):
    r = _prod(prod, region, model)
    pool = prod.region(region).pool(_model(prod, model).pool)
    spec = r.pod_spec()
    assert spec["nodeSelector"] == {POOL_LABEL: pool.name}
    assert spec["tolerations"] == pool_tolerations(pool.spot)
    for taint in pool_taints(pool.spot):
        assert any(_tolerates(t, taint) for t in spec["tolerations"]), f"{taint} is not tolerated"


def test_only_spot_pool_models_tolerate_the_spot_taint(prod):
    spot_taint = pool_taints(True)[-1]
    for region, model in PROD_MODEL_RELEASES:
        spot = prod.region(region).pool(_model(prod, model).pool).spot
        tolerations = _prod(prod, region, model).pod_spec()["tolerations"]
        assert any(_tolerates(t, spot_taint) for t in tolerations) == spot, f"{region}/{model}"
    assert any(prod.region(r).pool(_model(prod, m).pool).spot for r, m in PROD_MODEL_RELEASES), "no spot model"


def test_the_charts_default_scheduling_matches_an_on_demand_gpu_pool():
    spec = _defaults().pod_spec()
    assert POOL_LABEL in spec["nodeSelector"]
    assert spec["tolerations"] == pool_tolerations(False)
    assert spec["containers"][0]["resources"]["limits"][GPU_RESOURCE] == 1


# --- volumes and hardening -----------------------------------------------------------------------

def test_dev_shm_is_memory_backed_and_the_model_cache_is_node_local_scratch_by_default():
    r = _defaults()
    volumes = {v["name"]: v for v in r.pod_spec()["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in r.container("vllm")["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/models"]]["emptyDir"]["sizeLimit"] == "500Gi"
    env = {e["name"]: e.get("value") for e in r.container("vllm")["env"]}
    assert env["HF_HOME"].startswith("/models/")


def test_the_model_cache_can_be_an_existing_claim():
    r = _defaults(modelCache={"existingClaim": "model-weights"})
    cache_volume = next(v for v in r.pod_spec()["volumes"] if v["name"] == "model-cache")
    assert cache_volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-weights"}}


def test_an_s3_source_is_synced_by_an_init_container_into_the_path_vllm_serves():
    r = _defaults(model={"source": "/models/llama", "servedName": "llama"},
                  modelCache={"s3": {"uri": "s3://weights-bucket/llama/"}})
    init = r.pod_spec()["initContainers"]
    assert [c["name"] for c in init] == ["fetch-model"]
    assert init[0]["command"][:3] == ["aws", "s3", "sync"]
    assert init[0]["args"] == ["s3://weights-bucket/llama/", "/models/llama"]
    assert _args(r)[0] == "/models/llama"
    assert {m["name"] for m in init[0]["volumeMounts"]} >= {"model-cache"}


def test_the_hugging_face_token_can_come_from_an_existing_kubernetes_secret_as_a_file():
    r = _defaults(model={"hfToken": {"secret": {"name": "hf", "key": "token"}}})
    env = {e["name"]: e for e in r.container("vllm")["env"]}
    assert "HF_TOKEN" not in env
    assert env["HF_TOKEN_PATH"]["value"] == "/var/run/secrets/huggingface/token"
    volume = next(v for v in r.pod_spec()["volumes"] if v["name"] == "hf-token")
    assert volume["secret"]["secretName"] == "hf"
    assert r.all("SecretProviderClass") == []


def _token_file(r: Rendered) -> str:
    """Where the pod finds the token: the hf-token volume's mount plus the file name the volume gives it."""
    mount = next(m for m in r.container("vllm")["volumeMounts"] if m["name"] == "hf-token")
    assert mount["readOnly"] is True
    objects = yaml.safe_load(r.one("SecretProviderClass")["spec"]["parameters"]["objects"])
    return f"{mount['mountPath']}/{objects[0]['objectAlias']}"


@RELEASES
def test_prod_model_pods_mount_the_token_from_secrets_manager_through_their_own_role(prod, region, model):
    """No Kubernetes Secret is needed: the Secrets Store CSI driver mounts the region's copy of the stack's
    token, read by the AWS provider as the role annotated on the pod's own ServiceAccount."""
    r = _prod(prod, region, model)
    m = _model(prod, model)
    account = r.one("ServiceAccount")
    assert account["metadata"]["name"] == r.pod_spec()["serviceAccountName"] == model_service_account(m)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == MODEL_ROLE_ARN
    spc = r.one("SecretProviderClass")
    assert spc["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    assert spc["metadata"]["namespace"] == MODEL_NAMESPACE
    assert spc["spec"]["provider"] == "aws"
    params = spc["spec"]["parameters"]
    assert params["region"] == region
    assert params["usePodIdentity"] == "false"
    assert yaml.safe_load(params["objects"]) == [{"objectName": huggingface_token_name(prod.stack),
                                                  "objectType": "secretsmanager", "objectAlias": "token"}]
    volume = next(v for v in r.pod_spec()["volumes"] if v["name"] == "hf-token")
    assert volume == {"name": "hf-token", "csi": {
        "driver": "secrets-store.csi.k8s.io", "readOnly": True,
        "volumeAttributes": {"secretProviderClass": spc["metadata"]["name"]}}}
    assert not any("secret" in v for v in r.pod_spec()["volumes"]), "no Kubernetes Secret is mounted"
    env = {e["name"]: e for e in r.container("vllm")["env"]}
    assert "HF_TOKEN" not in env
    # huggingface_hub reads the token from the file HF_TOKEN_PATH names (huggingface_hub/constants.py).
    assert env["HF_TOKEN_PATH"]["value"] == _token_file(r)


def test_without_a_token_there_is_no_provider_class_and_no_token_path():
    r = _defaults()
    assert r.all("SecretProviderClass") == []
    assert "HF_TOKEN_PATH" not in {e["name"] for e in r.container("vllm")["env"]}
    assert "hf-token" not in {v["name"] for v in r.pod_spec()["volumes"]}


@pytest.mark.parametrize(("values", "words"), [
    ({"model": {"hfToken": {"secretsManager": {"secretId": "hf"}}}}, "needs serviceAccount.roleArn"),
    ({"model": {"hfToken": {"secretsManager": {"secretId": "hf"}, "secret": {"name": "hf"}}},
      "serviceAccount": {"roleArn": MODEL_ROLE_ARN}}, "set secretsManager or secret, not both"),
], ids=["without a role", "from two sources"])
def test_a_token_source_that_cannot_work_is_refused_at_install(values, words):
    assert words in install_error(VLLM_CHART, values, name="vllm-demo", namespace=MODEL_NAMESPACE)


def test_the_server_runs_non_root_with_a_read_only_root_and_no_privilege_escalation():
    r = _defaults(modelCache={"s3": {"uri": "s3://weights-bucket/m"}})
    spec = r.pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec["initContainers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in r.container("vllm")["volumeMounts"]}
    assert writable == {"/models", "/dev/shm", "/tmp"}


# --- probes, disruption, scaling -----------------------------------------------------------------

def test_probes_give_a_slow_model_load_a_long_startup_budget_then_watch_health():
    c = _defaults().container("vllm")
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": VLLM_PORT}


@RELEASES
def test_every_release_has_a_disruption_budget_covering_its_pods(prod, region, model):
    r = _prod(prod, region, model)
    pdb = r.one("PodDisruptionBudget")
    labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


@RELEASES
def test_replicas_follow_the_models_min_and_the_max_its_pool_holds(prod, region, model):
    r = _prod(prod, region, model)
    m = _model(prod, model)
    floor = max(1, m.replicas.min)  # KEDA's minReplicaCount; a batch model goes below it only when idle
    ceiling = _ceilings(prod, region)[model]
    scaled = r.all("ScaledObject")
    assert r.all("HorizontalPodAutoscaler") == [], "KEDA makes the HPA; a second one would fight it"
    if ceiling > floor or m.tier == "batch":
        (so,) = scaled
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (floor, ceiling)
        assert so["spec"]["scaleTargetRef"]["name"] == r.one("Deployment")["metadata"]["name"]
        assert "replicas" not in r.one("Deployment")["spec"]
    else:
        assert scaled == []
        assert r.one("Deployment")["spec"]["replicas"] == floor


# --- cluster-internal only ----------------------------------------------------------------------

@RELEASES
def test_the_model_server_is_reachable_only_inside_the_cluster(prod, region, model):
    """No Ingress, no LoadBalancer or NodePort: the gateway reaches the replicas through the EndpointSlices of
    these ClusterIP Services and keeps sessions on their replica itself."""
    r = _prod(prod, region, model)
    assert r.all("Ingress") == []
    assert {s["spec"].get("type", "ClusterIP") for s in r.all("Service")} == {"ClusterIP"}


@RELEASES
def test_only_the_gateway_and_the_release_namespace_may_call_the_model(prod, region, model):
    rule = _prod(prod, region, model).one("NetworkPolicy", vllm_release_name(_model(prod, model)))["spec"]["ingress"][0]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in rule["from"] if "namespaceSelector" in p}
    assert namespaces == {GATEWAY_NAMESPACE, "monitoring"}
    assert {"podSelector": {}} in rule["from"] and not [p for p in rule["from"] if "ipBlock" in p]


def test_the_chart_refuses_to_expose_a_model_through_a_load_balancer_or_an_ingress():
    assert "/service/type" in install_error(VLLM_CHART, {"service": {"type": "LoadBalancer"}},
                                            name="vllm-demo", namespace=MODEL_NAMESPACE)
    assert "'ingress'" in install_error(VLLM_CHART, {"ingress": {"enabled": True}}, name="vllm-demo",
                                        namespace=MODEL_NAMESPACE)


def test_the_notes_say_how_to_reach_the_model():
    notes = _defaults(model={"servedName": "demo"}).notes
    assert "http://vllm-demo.llm-serving.svc.cluster.local:8000/v1" in notes
    assert '"model": "demo"' in notes


def test_a_service_monitor_scrapes_the_cluster_ip_service_only():
    r = _defaults(metrics={"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}})
    monitor = r.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    selector = monitor["spec"]["selector"]
    selected = [s["metadata"]["name"] for s in r.all("Service")
                if selector["matchLabels"].items() <= s["metadata"]["labels"].items()
                and "llm-platform/headless" not in s["metadata"]["labels"]]
    assert selected == ["vllm-demo"]


# --- bad values fail at install, with a message that names the key ------------------------------

BAD_VALUES = {
    "three GPUs (no tensor parallel split)": ({"gpus": 3}, "/gpus"),
    "an unpinned image": ({"image": {"tag": "latest"}}, "/image/tag"),
    "a misspelt key": ({"gpu": 2}, "'gpu'"),
    "no pool selector": ({"nodeSelector": {"llm-platform/pool": None}}, "llm-platform/pool"),
    "GPU memory above 98%": ({"model": {"gpuMemoryUtilization": 1.2}}, "/model/gpuMemoryUtilization"),
    "an unknown quantization": ({"model": {"quantization": "int3"}}, "/model/quantization"),
    "an S3 URI that is not one": ({"modelCache": {"s3": {"uri": "https://bucket/x"}}}, "/modelCache/s3/uri"),
    "a floor of zero (KEDA's idleReplicaCount is the way to zero)": (
        {"autoscaling": {"enabled": True, "minReplicas": 0}}, "/autoscaling/minReplicas"),
    "idle at one replica (only zero)": ({"autoscaling": {"idleReplicas": 1}}, "/autoscaling/idleReplicas"),
    "a KV-cache target above 100%": ({"autoscaling": {"targets": {"kvCacheUsage": 80}}},
                                     "/autoscaling/targets/kvCacheUsage"),
    "no queue target": ({"autoscaling": {"targets": {"waitingRequests": 0}}}, "/autoscaling/targets/waitingRequests"),
    "a Prometheus address without its scheme": ({"autoscaling": {"prometheus": {"serverAddress": "prom:9090"}}},
                                                "/autoscaling/prometheus/serverAddress"),
    "a wake window PromQL cannot read": ({"autoscaling": {"wake": {"window": "ten minutes"}}},
                                         "/autoscaling/wake/window"),
    "an alias that would break out of the PromQL string": ({"autoscaling": {"wake": {"alias": 'x"} or vector(1'}}},
                                                           "/autoscaling/wake/alias"),
    "the prometheus-adapter HPA metrics of old": ({"autoscaling": {"metrics": [{"type": "Pods"}]}}, "'metrics'"),
    "a token region that is not one": ({"model": {"hfToken": {"secretsManager": {"region": "Europe"}}}},
                                       "/model/hfToken/secretsManager/region"),
    "a role that is not an IAM role ARN": ({"serviceAccount": {"roleArn": "models"}}, "/serviceAccount/roleArn"),
    "no time to drain": ({"drain": {"timeoutSeconds": 0}}, "/drain/timeoutSeconds"),
    "a spread constraint with a selector of its own (the chart adds the release's)": (
        {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {}}]},
        "labelSelector"),
}


@pytest.mark.parametrize(("values", "names"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_refused_at_install_with_a_message_naming_the_key(values, names):
    message = install_error(VLLM_CHART, values, name="vllm-demo", namespace=MODEL_NAMESPACE)
    assert "values don't meet the specifications of the schema" in message
    assert names in message, message


def test_the_prod_values_are_accepted_at_install(prod):
    from infra.chart_values import vllm_values
    region = prod.regions[0]
    for m in prod.models_in(region.name):
        values = vllm_values(prod, m, region, role_arn=MODEL_ROLE_ARN, weights_source=weights_source(m))
        assert install_error(VLLM_CHART, values, name=vllm_release_name(m), namespace=MODEL_NAMESPACE) == ""


def test_the_chart_the_program_and_the_defaults_pin_the_same_vllm_release():
    import helm_python as helm

    from infra.chart_values import VLLM_IMAGE
    with helm.Chart.load(VLLM_CHART) as chart:
        assert chart.metadata["appVersion"] == chart.values["image"]["tag"] == VLLM_IMAGE["tag"]
        assert chart.values["image"]["repository"] == VLLM_IMAGE["repository"]


# --- a uid without a passwd entry: user name and writable caches --------------------------------

# Where vLLM, Hugging Face, torch.compile and Triton write (vllm/envs.py, huggingface_hub/constants.py,
# torch/_inductor/runtime/cache_dir_utils.py, triton's cache manager): all must land on a writable volume.
CACHE_VARIABLES = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HOME", "VLLM_CACHE_ROOT",
                   "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def _env(r: Rendered) -> dict[str, str]:
    return {e["name"]: e["value"] for e in r.container("vllm")["env"] if "value" in e}


@RELEASES
def test_every_cache_the_server_writes_is_on_a_writable_volume(prod, region, model):
    r = _prod(prod, region, model)
    env = _env(r)
    assert r.container("vllm")["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in r.container("vllm")["volumeMounts"] if not m.get("readOnly")]
    for name in CACHE_VARIABLES:
        assert any(env[name] == w or env[name].startswith(w + "/") for w in writable), f"{name}={env[name]}"


def _getuser_as(uid: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """getpass.getuser() (what torch.compile calls for its default cache directory) in a process running as
    `uid`, which has no passwd entry here either, with exactly `env`."""
    # The system interpreter: the project's venv may not be readable by other uids; getpass is stdlib.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return subprocess.run([python, "-c", "import getpass; print(getpass.getuser())"], cwd="/",
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30,
                          user=uid, group=uid, extra_groups=[])


@RELEASES
def test_the_server_has_a_user_name_though_its_uid_has_no_passwd_entry(prod, region, model):
    """vLLM compiles by default, and torch's inductor cache asks getpass.getuser(), which raises
    KeyError('getpwuid(): uid not found: 10001') for a uid without a passwd entry unless USER or LOGNAME
    is set. Reproduced here with the rendered environment, as that very uid."""
    r = _prod(prod, region, model)
    uid = r.pod_spec()["securityContext"]["runAsUser"]
    assert os.geteuid() == 0, "this check starts a process as the pod's uid, which needs root"
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    without = _getuser_as(uid, {"HOME": "/tmp"})
    assert without.returncode != 0 and "uid not found" in without.stderr
    env = _env(r)
    named = _getuser_as(uid, env)
    assert named.returncode == 0, named.stderr
    assert named.stdout.strip() == env["USER"] == env["LOGNAME"]


@RELEASES
def test_no_service_links_are_injected_into_the_model_pods(prod, region, model):
    """A Service named `vllm` in the namespace would inject VLLM_PORT=tcp://..., which vLLM reads as its own
    setting and refuses to start on."""
    assert _prod(prod, region, model).pod_spec()["enableServiceLinks"] is False


# --- the drain contract --------------------------------------------------------------------------

FIRST_DRAINING_VLLM = (0, 18, 0)  # `vllm serve --shutdown-timeout` (vllm-project/vllm#34730)


def _version(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.lstrip("v").split(".")[:3])


def test_the_pinned_vllm_drains_on_sigterm():
    from infra.chart_values import VLLM_IMAGE
    assert _version(VLLM_IMAGE["tag"]) >= FIRST_DRAINING_VLLM


@RELEASES
def test_a_terminating_server_keeps_serving_then_drains_within_its_grace_period(prod, region, model):
    """preStop sleep (the endpoint's removal reaches the gateway's EndpointSlice watch), then SIGTERM and
    vLLM's --shutdown-timeout, all inside terminationGracePeriodSeconds with a margin."""
    r = _prod(prod, region, model)
    pre_stop = r.container("vllm")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = [int(a.split("=", 1)[1]) for a in _args(r) if a.startswith("--shutdown-timeout=")]
    assert len(drain) == 1 and drain[0] >= 60
    assert pre_stop >= 15
    assert r.pod_spec()["terminationGracePeriodSeconds"] >= pre_stop + drain[0] + 10


def test_the_grace_period_is_computed_from_the_drain_values_and_cannot_be_set_apart():
    r = _defaults(drain={"preStopSeconds": 20, "timeoutSeconds": 300, "marginSeconds": 30})
    assert r.pod_spec()["terminationGracePeriodSeconds"] == 350
    assert "--shutdown-timeout=300" in _args(r)
    assert r.container("vllm")["lifecycle"]["preStop"] == {"sleep": {"seconds": 20}}
    message = install_error(VLLM_CHART, {"terminationGracePeriodSeconds": 30}, name="vllm-demo",
                            namespace=MODEL_NAMESPACE)
    assert "terminationGracePeriodSeconds" in message


def _admits(constraint: str, version: str) -> bool:
    """Helm's `kubeVersion: ">=X.Y.Z-0"` (the only form the charts use) against a cluster version."""
    assert constraint.startswith(">=") and constraint.endswith("-0"), constraint
    return _version(version) >= _version(constraint[2:-2])


def test_the_charts_need_kubernetes_1_30_for_the_pre_stop_sleep_action():
    """The sleep action of a lifecycle hook is beta, on by default, from Kubernetes 1.30 (KEP-3960)."""
    from infra.chart_values import GATEWAY_CHART
    for chart in (VLLM_CHART, GATEWAY_CHART):
        constraint = yaml.safe_load((chart / "Chart.yaml").read_text())["kubeVersion"]
        assert not _admits(constraint, "1.29.15") and _admits(constraint, "1.30.0"), (chart, constraint)
        rendered = render(chart, None, name=chart.name, namespace=MODEL_NAMESPACE)
        assert "sleep" in rendered.pod_spec()["containers"][0]["lifecycle"]["preStop"]


# --- sizes that fit their nodes ------------------------------------------------------------------

def _mib(quantity: str) -> int:
    from infra.sizing import parse_memory
    return parse_memory(quantity)


@RELEASES
def test_each_replica_fits_every_instance_type_of_its_pool_beside_the_daemonsets(prod, region, model):
    from infra.catalog import load_catalog
    from infra.sizing import DAEMONSET_HEADROOM, parse_cpu
    r = _prod(prod, region, model)
    m = _model(prod, model)
    requests = r.container("vllm")["resources"]["requests"]
    for itype in prod.region(region).pool(m.pool).instance_types:
        node = load_catalog().instance(itype)
        share = m.gpus / node.gpus
        cpu_room = (node.allocatable_cpu_millicores - DAEMONSET_HEADROOM.cpu_millicores) * share
        memory_room = (node.allocatable_memory_mib - DAEMONSET_HEADROOM.memory_mib) * share
        assert parse_cpu(requests["cpu"]) <= cpu_room, f"{itype}: {requests['cpu']} CPU"
        assert _mib(requests["memory"]) <= memory_room, f"{itype}: {requests['memory']}"


@RELEASES
def test_dev_shm_lives_inside_the_replicas_memory_limit(prod, region, model):
    r = _prod(prod, region, model)
    resources = r.container("vllm")["resources"]
    shm = next(v for v in r.pod_spec()["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert 1024 <= _mib(shm["sizeLimit"]) <= _mib(resources["limits"]["memory"]) // 2


# --- rollouts that finish on a full pool ---------------------------------------------------------

def _pool_of(prod: StackConfig, region: str, model: str):
    from infra.catalog import load_catalog
    pool = prod.region(region).pool(_model(prod, model).pool)
    per_node = min(load_catalog().instance(t).gpus for t in pool.instance_types)
    return pool, per_node, [m for m in prod.models_in(region) if m.pool == pool.name]


def _ceilings(prod: StackConfig, region: str) -> dict[str, int]:
    """The most replicas of each model the region's pools hold at min_nodes (nothing adds nodes): pool by pool,
    in config order, each model as high as its replicas.max allows beside the models before it at theirs and
    the models after it at their floors; packed the way infra/config.py counts nodes."""
    from infra.config import _nodes_for
    out: dict[str, int] = {}
    for model in prod.models_in(region):
        pool, per_node, models = _pool_of(prod, region, model.name)
        taken = {m.name: out.get(m.name, max(1, m.replicas.min)) for m in models}
        n = max(1, model.replicas.max)
        while n > taken[model.name] and _nodes_for(models, per_node, {**taken, model.name: n}) > pool.min_nodes:
            n -= 1
        out[model.name] = n
    return out


def _room_for_one_more(prod: StackConfig, region: str, model: str) -> bool:
    """Whether the pool at min_nodes has GPUs for one more replica of `model` with every model of the pool at
    the most replicas the HPAs may have scaled it to."""
    from infra.config import _nodes_for
    pool, per_node, models = _pool_of(prod, region, model)
    busiest = _ceilings(prod, region)
    return _nodes_for(models, per_node, {**busiest, model: busiest[model] + 1}) <= pool.min_nodes


def _helm_wait_expects(r: Rendered) -> int:
    """Ready pods of the new ReplicaSet Helm's wait asks for: replicas - maxUnavailable for a rolling update,
    all of them otherwise (helm pkg/kube/ready.go deploymentReady, deploymentutil.MaxUnavailable)."""
    deployment = r.one("Deployment")
    scaled = r.all("ScaledObject")
    replicas = scaled[0]["spec"]["minReplicaCount"] if scaled else deployment["spec"]["replicas"]
    strategy = deployment["spec"]["strategy"]
    if strategy["type"] != "RollingUpdate":
        return replicas
    return replicas - min(replicas, strategy["rollingUpdate"]["maxUnavailable"])


@RELEASES
def test_a_rollout_surges_only_where_the_pool_has_a_free_gpu_slot_at_every_hpas_max(prod, region, model):
    strategy = _prod(prod, region, model).one("Deployment")["spec"]["strategy"]
    if _room_for_one_more(prod, region, model):
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    elif max(1, next(m for m in prod.models if m.name == model).replicas.min) == 1:
        # with maxUnavailable 1, Helm's wait would expect 1 - 1 = 0 new pods
        assert strategy == {"type": "Recreate"}
    else:
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


@RELEASES
def test_the_awaited_release_waits_for_at_least_one_new_replica_to_be_ready(prod, region, model):
    """Else a server that crashes at start would pass `pulumi up`."""
    assert _helm_wait_expects(_prod(prod, region, model)) >= 1


def test_the_full_prod_pools_replace_one_replica_at_a_time_and_none_surges(prod):
    """No prod pool has a GPU to spare once its HPAs are at their max: the US mid pool's one g6e.12xlarge takes
    the 8B model's HPA to 4 replicas (of its configured 8), and a surge replica beside them would stay Pending,
    and the rollout with it, for good. Models with a floor of one replica are recreated, so that Helm's wait
    has a new pod to see."""
    strategy = {(r, m): _prod(prod, r, m).one("Deployment")["spec"]["strategy"] for r, m in PROD_MODEL_RELEASES}
    for region in ("us-east-1", "us-west-2", "eu-north-1", "eu-west-2"):
        assert strategy[region, "llama-3-3-70b"]["type"] == "Recreate"  # two p5 nodes, floor of one replica
        assert strategy[region, "qwen2-5-7b-batch"]["type"] == "Recreate"  # floor of one replica
        assert strategy[region, "llama-3-1-8b"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    scaled = _prod(prod, "us-east-1", "llama-3-1-8b").one("ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 4)
    # The EU's three mid nodes (12 GPUs) hold the 8B model's configured 8 beside mistral's two 2-GPU replicas.
    scaled = _prod(prod, "eu-north-1", "llama-3-1-8b").one("ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 8)
    assert strategy["eu-north-1", "mistral-small-24b"]["type"] == "Recreate"


@RELEASES
def test_a_loading_model_is_not_reported_as_a_failed_rollout(prod, region, model):
    """The Deployment's progress deadline outlasts the startup probe's budget: the default 600 s would mark a
    replica that is still loading weights as failed, and the awaited release with it."""
    r = _prod(prod, region, model)
    startup = r.container("vllm")["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert r.one("Deployment")["spec"]["progressDeadlineSeconds"] > budget


# --- spread and disruption -----------------------------------------------------------------------

@RELEASES
def test_replicas_spread_over_zones_and_nodes_when_there_can_be_more_than_one(prod, region, model):
    r = _prod(prod, region, model)
    spec = r.pod_spec()
    labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    if _ceilings(prod, region)[model] == 1:
        assert "topologySpreadConstraints" not in spec
        return
    constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in constraints.values():
        # A preference: a reservation sits in one zone and a node may hold two replicas.
        assert c["whenUnsatisfiable"] == "ScheduleAnyway" and c["maxSkew"] == 1
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()
        assert c["matchLabelKeys"] == ["pod-template-hash"]


def test_recreate_renders_no_rolling_update_settings():
    strategy = _defaults(strategy={"type": "Recreate"}).one("Deployment")["spec"]["strategy"]
    assert strategy == {"type": "Recreate"}


def test_a_single_replica_release_has_no_spread_constraints():
    assert "topologySpreadConstraints" not in _defaults().pod_spec()
    assert len(_defaults(replicaCount=2).pod_spec()["topologySpreadConstraints"]) == 2


@RELEASES
def test_the_disruption_budget_never_holds_a_node_drain(prod, region, model):
    """maxUnavailable 1 even for one replica (EKS fails a managed node group update whose drain a budget
    blocks for 15 minutes), and an unhealthy replica may always be evicted."""
    pdb = _prod(prod, region, model).one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "minAvailable" not in pdb


# --- helm test -----------------------------------------------------------------------------------

@RELEASES
def test_helm_test_asks_the_service_for_health_and_the_served_model(prod, region, model):
    r = _prod(prod, region, model)
    m = _model(prod, model)
    job = r.one("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "hook-succeeded" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    (container,) = pod["containers"]
    script = container["args"][0]
    base = f"http://{vllm_release_name(m)}:{VLLM_PORT}"
    assert f'base="{base}"' in script
    assert '"$base/health"' in script and '"$base/v1/models"' in script
    assert f'"id":"{m.name}"' in script
    assert container["image"].startswith("curlimages/curl:")
    # The test pod is not one of the servers: no Service, budget or policy of the release selects it.
    selector = r.one("Service", vllm_release_name(m))["spec"]["selector"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@RELEASES
def test_the_helm_test_job_may_reach_only_its_model_server_and_dns(prod, region, model):
    r = _prod(prod, region, model)
    m = _model(prod, model)
    job = r.one("Job")
    policy = r.one("NetworkPolicy", f"{vllm_release_name(m)}-test")
    assert policy["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    server = r.one("Service", vllm_release_name(m))["spec"]["selector"]
    assert policy["spec"]["egress"][1] == {"to": [{"podSelector": {"matchLabels": server}}],
                                           "ports": [{"port": "http", "protocol": "TCP"}]}
    # The server's own policy admits the test pod: it lets in every pod of the release namespace.
    admits = r.one("NetworkPolicy", vllm_release_name(m))["spec"]["ingress"][0]["from"]
    assert {"podSelector": {}} in admits
