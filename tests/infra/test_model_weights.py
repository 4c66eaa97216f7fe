"""Weights that load fast and once: per-region buckets, staging Jobs, the streamer's values and the startup budget."""
from __future__ import annotations

import hashlib
import json
import math
import re

import pulumi
import pytest

from infra.catalog import load_catalog
from infra.chart_values import (
    GPU_WORKER_MIB,
    SERVER_PROCESS_MIB,
    VLLM_CHART,
    startup_failure_threshold,
    streamer_memory_limit,
    vllm_values,
)
from infra.components.model_weights import (
    STAGE_SCRIPT,
    STAGER_REQUIREMENTS,
    STAGER_SERVICE_ACCOUNT,
    WEIGHTS_NAMESPACE,
    stager_requirements,
)
from infra.config import ConfigError, ModelResources, parse
from infra.plan.run import Plan, run_program
from infra.sizing import model_resources, parse_memory
from tests.played_hub import PlayedHub
from tests.stacks import stack_raw

BUCKET = "aws:s3/bucket:Bucket"
JOB = "kubernetes:batch/v1:Job"
RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def _one(plan: Plan, typ: str, region: str) -> object:
    # Not the zones' batch file buckets (tests/infra/test_batch_files.py).
    found = [r for r in plan.of_type(typ) if r.region == region and not r.name.endswith("-batch-files")]
    assert len(found) == 1, (typ, region, [r.name for r in found])
    return found[0]


def _s3_models(plan: Plan, region: str) -> list[str]:
    return [m.name for m in plan.config.models_in(region) if m.weights_from(plan.config.environment) == "s3"]


def _model(plan: Plan, name: str):
    return next(m for m in plan.config.models if m.name == name)


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _vllm(plan: Plan) -> list:
    return [r for r in plan.of_type(RELEASE) if r.inputs["chart"] == str(VLLM_CHART)]


@pytest.fixture(scope="module")
def preview_from_s3() -> Plan:
    """The preview stack told to load its model from S3 (and reading no Hugging Face token)."""
    raw = stack_raw("preview")
    raw["models"][0]["weights"] = "s3"
    return run_program(raw, "preview")


SHA = re.compile(r"^[0-9a-f]{40}$")


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


def test_weights_from_s3_are_pinned_to_a_commit() -> None:
    """The prefix a replica loads is named after the commit: a branch would move under it."""
    for revision, given in ((None, ""), ("main", " ('main' is not one)")):
        raw = stack_raw("prod")
        if revision is None:
            raw["models"][0].pop("revision")
        else:
            raw["models"][0]["revision"] = revision
        with pytest.raises(ConfigError) as err:
            parse(raw, "prod")
        assert ("llm-platform:models[0].revision", "weights from S3 are staged under their revision's commit sha, so "
                "they never change under a running replica: give revision, the full 40-character commit sha of "
                f"meta-llama/Llama-3.3-70B-Instruct to serve{given}") in err.value.problems


def test_prod_and_previews_pin_every_models_revision_to_a_commit(prod_plan: Plan, preview_plan: Plan) -> None:
    for plan in (prod_plan, preview_plan):
        assert all(SHA.match(m.revision or "") for m in plan.config.models), [m.revision for m in plan.config.models]


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
    assert not [b for b in preview_plan.of_type(BUCKET) if b.name.endswith("-weights")]
    assert not preview_plan.of_type(JOB)
    for release in _vllm(preview_plan):
        values = release.inputs["values"]
        assert values["model"]["source"] == "Qwen/Qwen2.5-1.5B-Instruct"
        revision = preview_plan.config.models[0].revision
        # vLLM downloads the pinned commit (model and tokenizer), not whatever `main` is when a replica starts.
        assert values["model"]["extraArgs"] == [f"--revision={revision}", f"--tokenizer-revision={revision}"]
        assert "roleArn" not in values["serviceAccount"]
        assert not any(e["name"].startswith("RUNAI_") for e in values.get("extraEnv", []))


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
        # Each revision in a prefix of its own: <model>/<commit sha>.
        assert env["HF_REPO"] == model.source and env["REVISION"] == model.revision and SHA.match(env["REVISION"])
        assert env["PREFIX"] == f"{model.name}/{model.revision}"
        assert env["BUCKET"] == _one(prod_plan, BUCKET, job.region).outputs["bucket"]
        assert env["AWS_REGION"] == job.region and env["HF_TOKEN_PATH"] == "/var/run/secrets/huggingface/token"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert ":latest" not in container["image"] and ":" in container["image"]
        assert env["STAGE_SCRIPT"] == STAGE_SCRIPT


def test_the_stager_installs_only_pinned_hashed_wheels(prod_plan: Plan) -> None:
    """It holds the Hugging Face token and write access to the weights: pip installs exactly the listed wheels,
    each pinned and checked against its sha256, nothing resolved on the day and nothing built from source."""
    lines = stager_requirements()
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==[0-9][0-9a-z.]* --hash=sha256:[0-9a-f]{64}", line)
                         for line in lines), lines
    pinned = {line.split("==")[0]: line.split("==")[1].split()[0] for line in lines}
    assert pinned["huggingface-hub"] == "0.35.3" and pinned["boto3"] == "1.40.0" and pinned["botocore"] == "1.40.0"
    # The closure of both (their Requires-Dist, for CPython 3.12 on x86_64 Linux), as generated in the file's header.
    assert set(pinned) == {"huggingface-hub", "boto3", "botocore", "s3transfer", "jmespath", "python-dateutil",
                           "six", "urllib3", "filelock", "fsspec", "packaging", "pyyaml", "requests", "tqdm",
                           "typing-extensions", "hf-xet", "charset-normalizer", "idna", "certifi"}
    assert "Generated 2026-11-26 from https://pypi.org/simple" in STAGER_REQUIREMENTS.read_text()
    for job in prod_plan.of_type(JOB):
        [container] = job.inputs["spec"]["template"]["spec"]["containers"]
        env = _env(container)
        assert env["STAGE_REQUIREMENTS"].splitlines() == lines
        [script] = container["args"]
        install = script.split(" && exec python", 1)[0]
        assert install.startswith('printf "%s\\n" "$STAGE_REQUIREMENTS" > /tmp/requirements.txt && pip install ')
        pip = install.split(" && ", 1)[1].split()
        assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(pip)
        assert pip[pip.index("-r") + 1] == "/tmp/requirements.txt"
        # Nothing but the hashed list: no package named on the command line.
        assert [a for a in pip[2:] if not a.startswith("-") and a not in ("/tmp/pkgs", "/tmp/requirements.txt")] == []


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
            assert "--load-format=runai_streamer" not in values["model"].get("extraArgs", [])
            continue
        bucket = _one(prod_plan, BUCKET, region).outputs["bucket"]
        revision = _model(prod_plan, model).revision
        # The pinned revision's prefix, the one its staging Job fills (and the release waits for).
        assert values["model"]["source"] == f"s3://{bucket}/{model}/{revision}"
        [job] = [j for j in prod_plan.of_type(JOB) if j.region == region
                 and j.inputs["metadata"]["labels"]["llm-platform/model"] == model]
        job_env = _env(job.inputs["spec"]["template"]["spec"]["containers"][0])
        assert values["model"]["source"] == f"s3://{job_env['BUCKET']}/{job_env['PREFIX']}"
        role = roles[values["serviceAccount"]["roleArn"]]
        assert role.name == f"{region}-models"
        read = policies[f"{region}-models-weights"]["Statement"][0]
        assert read["Action"] == ["s3:GetObject"] and f"arn:aws:s3:::{bucket}/{model}/*" in read["Resource"]
        rendered = render(VLLM_CHART, values, name=release.inputs["name"], namespace=release.inputs["namespace"])
        vllm = rendered.container("vllm")
        assert vllm["args"][0] == f"s3://{bucket}/{model}/{revision}" and "--load-format=runai_streamer" in vllm["args"]
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


def test_the_streamers_read_buffer_fits_the_replicas_memory_beside_shm_and_the_server(prod_plan: Plan) -> None:
    """Unset, Run:ai's buffer is unlimited in distributed streaming (on from S3 to GPUs) and 40 GB otherwise,
    per streamer, one per GPU worker; the replica's memory limit also holds /dev/shm. As rendered: the buffers of
    all its workers, /dev/shm and the server's processes fit the container's memory limit."""
    from tests.charts.rendering import render
    cfg = prod_plan.config
    checked = set()
    for release in _vllm(prod_plan):
        values, region = release.inputs["values"], release.region
        model = _model(prod_plan, values["podLabels"]["llm-platform/model"])
        if model.name not in _s3_models(prod_plan, region):
            continue
        rendered = render(VLLM_CHART, values, name=release.inputs["name"], namespace=release.inputs["namespace"])
        vllm = rendered.container("vllm")
        limit = int(_env(vllm)["RUNAI_STREAMER_MEMORY_LIMIT"])
        assert limit == streamer_memory_limit(model, cfg.region(region)) and limit >= 4 << 30
        memory = parse_memory(vllm["resources"]["limits"]["memory"]) << 20
        [shm] = [v for v in rendered.pod_spec()["volumes"] if v["name"] == "dshm"]
        shm_bytes = parse_memory(shm["emptyDir"]["sizeLimit"]) << 20
        server = (SERVER_PROCESS_MIB + GPU_WORKER_MIB * model.gpus) << 20
        assert model.gpus * limit + shm_bytes + server <= memory, (model.name, region)
        checked.add((model.name, region))
    # mistral-small-24b in eu-west-2: 2 GPUs in a share of about 94 GiB, 12 GiB of it /dev/shm.
    mistral = _model(prod_plan, "mistral-small-24b")
    size = model_resources(mistral, cfg.region("eu-west-2").pool("mid"), load_catalog())
    assert ("mistral-small-24b", "eu-west-2") in checked and size.memory_mib < 100 * 1024
    assert streamer_memory_limit(mistral, cfg.region("eu-west-2")) * 2 < (size.memory_mib - size.shm_mib) << 20


def test_a_replica_too_small_for_the_streamers_buffer_is_refused(prod_plan: Plan) -> None:
    """24Gi for two GPU workers: after /dev/shm and the server's processes, under 4 GiB each for its buffer, which
    must hold the largest tensor."""
    cfg = prod_plan.config
    small = cfg.models[2].model_copy(update={"resources": ModelResources(memory="24Gi")})
    with pytest.raises(ValueError, match="for Run:ai's read buffer, under 4096Mi"):
        streamer_memory_limit(small, cfg.region("eu-west-2"))


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

REV1, REV2 = "1" * 40, "2" * 40
WEIGHTS_BUCKET = "llmp-prod-weights-x"


@pytest.fixture
def staging(monkeypatch):
    """S3 (moto, no IAM: tests/policy/test_weights_scope_iam.py runs the script as the stager's role) with the
    region's bucket, and a repo with one commit, in the Job's environment."""
    import boto3
    from moto import mock_aws
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "HF_REPO": "org/model",
                       "BUCKET": WEIGHTS_BUCKET, "AWS_REGION": "eu-north-1"}.items():
        monkeypatch.setenv(var, value)
    hub = PlayedHub("org/model")
    hub.commits[REV1] = {"config.json": b"{}", "tokenizer.json": b"tok", "model-00001-of-00002.safetensors": b"a" * 10,
                         "model-00002-of-00002.safetensors": b"b" * 10, "README.md": b"readme",
                         "original/consolidated.00.pth": b"meta", "consolidated.safetensors": b"mistral"}
    hub.refs["main"] = REV1
    hub.install(monkeypatch)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-north-1")
        s3.create_bucket(Bucket=WEIGHTS_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-north-1"})

        def stage(revision: str) -> int | str | None:
            monkeypatch.setenv("REVISION", revision)
            monkeypatch.setenv("PREFIX", f"model/{revision}")
            return hub.stage(STAGE_SCRIPT)

        yield hub, s3, stage


def _keys(s3, prefix: str = "") -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=WEIGHTS_BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=WEIGHTS_BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _marker(s3, revision: str) -> dict:
    return json.loads(s3.get_object(Bucket=WEIGHTS_BUCKET, Key=f"model/{revision}/.staged")["Body"].read())


def test_the_stager_copies_what_vllm_loads_into_the_revisions_prefix_once_and_resumes(staging) -> None:
    hub, s3, stage = staging
    assert stage(REV1) == 0  # first create: only what vLLM's Run:ai loader reads, then the marker
    assert set(_keys(s3)) == {f"model/{REV1}/{n}" for n in ("config.json", "tokenizer.json", ".staged",
                                                            "model-00001-of-00002.safetensors",
                                                            "model-00002-of-00002.safetensors")}
    assert _marker(s3, REV1) == {"source": "org/model", "revision": REV1}
    head = s3.head_object(Bucket=WEIGHTS_BUCKET, Key=f"model/{REV1}/model-00001-of-00002.safetensors")
    assert head["Metadata"] == {"hub-digest": "sha256:" + hashlib.sha256(b"a" * 10).hexdigest()}
    assert stage(REV1) == 0 and hub.downloads == []  # staged already: nothing is downloaded
    s3.delete_object(Bucket=WEIGHTS_BUCKET, Key=f"model/{REV1}/.staged")
    # A Job that died before its marker resumes: what is there with the Hub's digest stays; a file of the right
    # size but other content (no digest of the Hub on it) is copied again.
    s3.put_object(Bucket=WEIGHTS_BUCKET, Key=f"model/{REV1}/model-00002-of-00002.safetensors", Body=b"x" * 10)
    assert stage(REV1) == 0 and hub.downloads == ["model-00002-of-00002.safetensors"]
    assert _keys(s3)[f"model/{REV1}/model-00002-of-00002.safetensors"] == b"b" * 10 and _marker(s3, REV1)


def test_a_new_revision_with_files_of_the_same_size_is_staged_whole_beside_the_old_one(staging) -> None:
    """A fine-tune: same names, same sizes, other bytes. It gets a prefix of its own, copied in full; the revision
    the running replicas load is left as it was, so no replica ever reads a mix of two checkpoints."""
    hub, s3, stage = staging
    assert stage(REV1) == 0
    before = _keys(s3, f"model/{REV1}/")
    hub.commits[REV2] = {**hub.commits[REV1], "model-00001-of-00002.safetensors": b"c" * 10,
                         "model-00002-of-00002.safetensors": b"d" * 10}
    assert stage(REV2) == 0
    assert sorted(hub.downloads) == ["config.json", "model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors", "tokenizer.json"]
    assert _keys(s3, f"model/{REV1}/") == before
    staged = _keys(s3, f"model/{REV2}/")
    assert staged[f"model/{REV2}/model-00001-of-00002.safetensors"] == b"c" * 10
    assert staged[f"model/{REV2}/model-00002-of-00002.safetensors"] == b"d" * 10
    assert _marker(s3, REV2) == {"source": "org/model", "revision": REV2}


def test_a_revision_that_is_not_the_commit_it_names_stages_nothing(staging) -> None:
    """`main` (a branch) resolves to a commit of another name: refused before any copy, so a prefix named after a
    revision always holds that commit."""
    hub, s3, stage = staging
    assert "models[].revision must be the full commit sha" in str(stage("main"))
    assert _keys(s3) == {} and hub.downloads == []


def test_a_download_that_is_not_the_file_the_hub_lists_fails_the_job_and_is_not_kept(staging) -> None:
    hub, s3, stage = staging
    hub.served["model-00002-of-00002.safetensors"] = b"B" * 10  # corrupted in transfer: same size, other bytes
    assert "model-00002-of-00002.safetensors: 10 bytes with sha256" in str(stage(REV1))
    keys = _keys(s3)
    assert f"model/{REV1}/.staged" not in keys and keys[f"model/{REV1}/model-00002-of-00002.safetensors"] == b""
    hub.served.clear()
    assert stage(REV1) == 0 and hub.downloads == ["model-00002-of-00002.safetensors"]  # the retry copies it again
    assert _marker(s3, REV1)["revision"] == REV1
