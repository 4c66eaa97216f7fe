"""Weights that load fast and once: per-region buckets, staging Jobs, the streamer's values and the startup budget."""
from __future__ import annotations

import io
import json
import math

import pulumi
import pytest

from infra.chart_values import VLLM_CHART, startup_failure_threshold, vllm_values
from infra.components.model_weights import STAGE_SCRIPT, STAGER_SERVICE_ACCOUNT, WEIGHTS_NAMESPACE
from infra.config import ConfigError, parse
from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw

BUCKET = "aws:s3/bucket:Bucket"
JOB = "kubernetes:batch/v1:Job"
RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def _one(plan: Plan, typ: str, region: str) -> object:
    found = [r for r in plan.of_type(typ) if r.region == region]
    assert len(found) == 1, (typ, region, [r.name for r in found])
    return found[0]


def _s3_models(plan: Plan, region: str) -> list[str]:
    return [m.name for m in plan.config.models_in(region) if m.weights_from(plan.config.environment) == "s3"]


def _vllm(plan: Plan) -> list:
    return [r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(VLLM_CHART)]


@pytest.fixture(scope="module")
def preview_from_s3() -> Plan:
    """The preview stack told to load its model from S3 (and reading no Hugging Face token)."""
    raw = stack_raw("preview")
    raw["models"][0]["weights"] = "s3"
    return run_program(raw, "preview")


# -- config: where each model's weights come from ------------------------------------------------

def test_prod_loads_large_models_from_s3_and_small_ones_from_hugging_face(prod_plan: Plan, preview_plan: Plan) -> None:
    chosen = {m.name: m.weights_from("prod") for m in prod_plan.config.models}
    assert chosen == {"llama-3-3-70b": "s3", "llama-3-1-8b": "s3", "mistral-small-24b": "s3",
                      "qwen2-5-7b-batch": "huggingface"}
    assert [m.weights_from("preview") for m in preview_plan.config.models] == ["huggingface"]


def test_an_s3_source_in_the_config_is_refused_with_advice() -> None:
    raw = stack_raw("prod")
    raw["models"][1]["source"] = "s3://my-bucket/llama"
    with pytest.raises(ConfigError) as err:
        parse(raw, "prod")
    assert ("llm-platform:models[1].source", "'s3://my-bucket/llama': source is the Hugging Face repo id (org/name); "
            "for weights from S3 write `weights: s3` and the program stages them into the region's own bucket") \
        in err.value.problems


def test_weights_from_s3_need_the_checkpoint_size() -> None:
    raw = stack_raw("prod")
    raw["models"][0].pop("size_gb")
    raw["models"][0]["weights"] = "s3"
    with pytest.raises(ConfigError) as err:
        parse(raw, "prod")
    assert any(path == "llm-platform:models[0].size_gb" and "weights from S3 need the checkpoint's size" in msg
               for path, msg in err.value.problems)


# -- the bucket ------------------------------------------------------------------------------------

def test_each_prod_region_has_one_private_encrypted_tls_only_weights_bucket(prod_plan: Plan) -> None:
    for region in [r.name for r in prod_plan.config.regions]:
        bucket = _one(prod_plan, BUCKET, region)
        assert bucket.inputs["bucketPrefix"] == "llmp-prod-weights-" and bucket.inputs["forceDestroy"] is True
        name = bucket.outputs["bucket"]
        sse = _one(prod_plan, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                   region)
        assert sse.inputs["bucket"] == name
        assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
        block = _one(prod_plan, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", region)
        assert all(block.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                      "restrictPublicBuckets"))
        policy = json.loads(_one(prod_plan, "aws:s3/bucketPolicy:BucketPolicy", region).inputs["policy"])
        [deny] = policy["Statement"]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"] == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
        assert bucket.tags["llm-platform:stack"] == "prod" and bucket.tags["llm-platform:region"] == region
    assert not prod_plan.of_type("aws:s3/bucketReplicationConfig:BucketReplicationConfig")


def test_previews_download_from_hugging_face_and_create_no_bucket_or_job(preview_plan: Plan) -> None:
    assert not preview_plan.of_type(BUCKET) and not preview_plan.of_type(JOB)
    for release in _vllm(preview_plan):
        values = release.inputs["values"]
        assert values["model"]["source"] == "Qwen/Qwen2.5-1.5B-Instruct"
        assert "extraArgs" not in values["model"] and "roleArn" not in values["serviceAccount"]


# -- staging ---------------------------------------------------------------------------------------

def test_a_staging_job_per_s3_model_and_region_runs_on_the_system_nodes_as_the_stager(prod_plan: Plan) -> None:
    jobs = prod_plan.of_type(JOB)
    placed = sorted((j.region, j.inputs["metadata"]["labels"]["llm-platform/model"]) for j in jobs)
    assert placed == sorted((r.name, m) for r in prod_plan.config.regions for m in _s3_models(prod_plan, r.name))
    assert ("us-east-1", "mistral-small-24b") not in placed  # restricted to the EU
    for job in jobs:
        model = prod_plan.config.models[[m.name for m in prod_plan.config.models].index(
            job.inputs["metadata"]["labels"]["llm-platform/model"])]
        assert job.inputs["metadata"]["namespace"] == WEIGHTS_NAMESPACE
        pod = job.inputs["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == STAGER_SERVICE_ACCOUNT and pod["nodeSelector"] == {
            "llm-platform/pool": "system"}
        [container] = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HF_REPO"] == model.source and env["PREFIX"] == model.name
        assert env["BUCKET"] == _one(prod_plan, BUCKET, job.region).outputs["bucket"]
        assert env["AWS_REGION"] == job.region and env["HF_TOKEN_PATH"] == "/var/run/secrets/huggingface/token"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert ":latest" not in container["image"] and ":" in container["image"]


def test_the_stager_writes_only_its_regions_model_prefixes(prod_plan: Plan) -> None:
    roles = {r.outputs["name"]: r for r in prod_plan.of_type(ROLE)}
    for region in [r.name for r in prod_plan.config.regions]:
        bucket = _one(prod_plan, BUCKET, region).outputs["bucket"]
        [policy] = [p for p in prod_plan.of_type(ROLE_POLICY) if p.name == f"{region}-weights-stager"]
        objects, listing = json.loads(policy.inputs["policy"])["Statement"]
        assert sorted(objects["Action"]) == ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
        assert objects["Resource"] == [f"arn:aws:s3:::{bucket}/{m}/*" for m in sorted(_s3_models(prod_plan, region))]
        assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
        trust = json.loads(roles[policy.inputs["role"]].inputs["assumeRolePolicy"])["Statement"][0]["Condition"]
        subjects = next(v for k, v in trust["StringEquals"].items() if k.endswith(":sub"))
        assert subjects == [f"system:serviceaccount:{WEIGHTS_NAMESPACE}:{STAGER_SERVICE_ACCOUNT}"]


# -- loading ---------------------------------------------------------------------------------------

def test_s3_models_stream_their_regions_copy_with_run_ai_through_the_model_server_role(prod_plan: Plan) -> None:
    """As Helm renders the planned values: vLLM serves s3://<region's bucket>/<model> with the Run:ai streamer,
    as the region's model server role (which may only read), and no init container copies anything."""
    from tests.charts.rendering import render
    roles = {r.outputs["arn"]: r for r in prod_plan.of_type(ROLE)}
    policies = {p.name: json.loads(p.inputs["policy"]) for p in prod_plan.of_type(ROLE_POLICY)}
    for release in _vllm(prod_plan):
        values, region = release.inputs["values"], release.region
        model = values["podLabels"]["llm-platform/model"]
        if model not in _s3_models(prod_plan, region):
            assert "extraArgs" not in values["model"]
            continue
        bucket = _one(prod_plan, BUCKET, region).outputs["bucket"]
        assert values["model"]["source"] == f"s3://{bucket}/{model}"
        role = roles[values["serviceAccount"]["roleArn"]]
        assert role.name == f"{region}-models"
        read = policies[f"{region}-models-weights"]["Statement"][0]
        assert read["Action"] == ["s3:GetObject"] and f"arn:aws:s3:::{bucket}/{model}/*" in read["Resource"]
        rendered = render(VLLM_CHART, values, name=release.inputs["name"], namespace=release.inputs["namespace"])
        vllm = rendered.container("vllm")
        assert vllm["args"][0] == f"s3://{bucket}/{model}" and "--load-format=runai_streamer" in vllm["args"]
        env = {e["name"]: e.get("value") for e in vllm["env"]}
        assert env["AWS_REGION"] == region and env["AWS_EC2_METADATA_DISABLED"] == "true"
        assert "initContainers" not in rendered.pod_spec()
        sa = rendered.one("ServiceAccount")
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role.outputs["arn"]


def test_without_a_hugging_face_token_s3_weights_still_get_the_model_server_role(preview_from_s3: Plan) -> None:
    [release] = _vllm(preview_from_s3)
    values = release.inputs["values"]
    assert values["model"]["source"].startswith("s3://llmp-preview-weights-")
    roles = {r.outputs["arn"]: r for r in preview_from_s3.of_type(ROLE)}
    assert roles[values["serviceAccount"]["roleArn"]].name == "us-east-1-models"
    assert "hfToken" not in values["model"]
    [job] = preview_from_s3.of_type(JOB)
    pod = job.inputs["spec"]["template"]["spec"]
    assert "HF_TOKEN_PATH" not in {e["name"] for e in pod["containers"][0]["env"]}
    assert not any(s.inputs["name"].endswith("/huggingface/token")
                   for s in preview_from_s3.of_type("aws:secretsmanager/secret:Secret"))


def test_a_release_waits_for_its_staging_job_and_its_read_grant() -> None:
    raw = stack_raw("preview")
    raw["models"][0]["weights"] = "s3"
    deps: dict[str, list[str]] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        if args.type_ == "llm-platform:serving:ModelServing":
            deps[args.name] = [getattr(d, "_name", "") for d in (args.opts.depends_on or [])]

    run_program(raw, "preview", observe=observe)
    assert {"us-east-1-weights-qwen2-5-1-5b", "us-east-1-models-weights"} <= set(deps["us-east-1-qwen2-5-1-5b"])


def test_a_release_loading_from_s3_without_the_role_is_refused(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    with pytest.raises(ValueError, match="loads its weights from S3: the release needs"):
        vllm_values(cfg, cfg.models[0], cfg.regions[0], role_arn="arn:aws:iam::123456789012:role/x")


# -- the startup probe budget ----------------------------------------------------------------------

def test_the_startup_budget_follows_the_checkpoint_size_and_the_source(prod_plan: Plan) -> None:
    cfg = prod_plan.config
    big, small = cfg.models[0], cfg.models[3]  # 141 GB from S3; 5.6 GB from Hugging Face
    region = cfg.regions[0]
    assert startup_failure_threshold(big, region, "s3") == math.ceil((141 / 0.5 + 600) / 10)
    assert startup_failure_threshold(small, region, "huggingface") == math.ceil((5.6 / 0.05 + 600) / 10)
    assert startup_failure_threshold(big, region, "huggingface") > startup_failure_threshold(big, region, "s3")
    for release in _vllm(prod_plan):
        model = next(m for m in cfg.models if m.name == release.inputs["values"]["podLabels"]["llm-platform/model"])
        startup = release.inputs["values"]["probes"]["startup"]
        expected = startup_failure_threshold(model, cfg.region(release.region), model.weights_from("prod"))
        assert startup == {"periodSeconds": 10, "failureThreshold": expected}


# -- the stager's script, against S3 (moto) and a Hugging Face Hub played in-process ---------------

class _Hub:
    """Plays the Hugging Face Hub for the stager: a repo's files at a revision, and a log of downloads."""

    def __init__(self, files: dict[str, bytes], sha: str) -> None:
        self.files, self.sha, self.downloads = files, sha, []

    def install(self, monkeypatch) -> None:
        import sys
        import types
        from types import SimpleNamespace

        import requests
        hub, utils = types.ModuleType("huggingface_hub"), types.ModuleType("huggingface_hub.utils")
        outer = self

        class HfApi:
            def model_info(self, repo: str, files_metadata: bool = False) -> SimpleNamespace:
                assert files_metadata  # sizes let a retried Job skip what it already copied
                return SimpleNamespace(sha=outer.sha, siblings=[SimpleNamespace(rfilename=n, size=len(b))
                                                                for n, b in outer.files.items()])

        hub.HfApi = HfApi
        hub.hf_hub_url = lambda repo, name, revision: f"https://huggingface.co/{repo}/resolve/{revision}/{name}"
        utils.build_hf_headers = lambda: {}

        class Response:
            def __init__(self, name: str) -> None:
                self.raw = io.BytesIO(outer.files[name])

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                return None

            def raise_for_status(self) -> None:
                return None

        def get(url: str, **kwargs) -> Response:
            name = url.split("/resolve/", 1)[1].split("/", 1)[1]
            outer.downloads.append(name)
            return Response(name)

        monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
        monkeypatch.setitem(sys.modules, "huggingface_hub.utils", utils)
        monkeypatch.setattr(requests, "get", get)

    def stage(self) -> None:
        self.downloads = []
        try:
            # The Job's own script, run here as its container runs it (python -c).
            exec(compile(STAGE_SCRIPT, "stage", "exec"), {"__name__": "__main__"})
        except SystemExit as done:
            assert done.code == 0


def test_the_stager_copies_what_vllm_loads_once_resumes_and_restages_a_new_revision(monkeypatch) -> None:
    import boto3
    from moto import mock_aws
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HF_REPO": "org/model",
                       "BUCKET": "llmp-prod-weights-x", "PREFIX": "model", "AWS_REGION": "eu-north-1"}.items():
        monkeypatch.setenv(var, value)
    hub = _Hub({"config.json": b"{}", "tokenizer.json": b"tok", "model-00001-of-00002.safetensors": b"a" * 10,
                "model-00002-of-00002.safetensors": b"b" * 10, "README.md": b"readme",
                "original/consolidated.00.pth": b"meta", "consolidated.safetensors": b"mistral"}, "rev1")
    hub.install(monkeypatch)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-north-1")
        s3.create_bucket(Bucket="llmp-prod-weights-x", CreateBucketConfiguration={"LocationConstraint": "eu-north-1"})

        def keys() -> set[str]:
            return {o["Key"] for o in s3.list_objects_v2(Bucket="llmp-prod-weights-x").get("Contents", [])}

        def marker() -> dict:
            return json.loads(s3.get_object(Bucket="llmp-prod-weights-x", Key="model/.staged")["Body"].read())

        hub.stage()  # first create: only what vLLM's Run:ai loader reads, then the marker
        assert keys() == {"model/config.json", "model/tokenizer.json", "model/model-00001-of-00002.safetensors",
                          "model/model-00002-of-00002.safetensors", "model/.staged"}
        assert marker() == {"source": "org/model", "revision": "rev1"}
        hub.stage()  # staged already: nothing is downloaded
        assert hub.downloads == []
        s3.delete_object(Bucket="llmp-prod-weights-x", Key="model/.staged")
        hub.stage()  # a Job that died before its marker resumes: what is there at the right size stays
        assert hub.downloads == [] and marker() == {"source": "org/model", "revision": "rev1"}
        hub.files["model-00002-of-00002.safetensors"] = b"c" * 12
        hub.sha = "rev2"
        hub.stage()  # a new revision: the changed file is copied again, and the marker names it
        assert hub.downloads == ["model-00002-of-00002.safetensors"]
        assert marker() == {"source": "org/model", "revision": "rev2"}
