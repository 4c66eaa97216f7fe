"""ModelWeights: a region's S3 bucket of model weights; WeightsStaging: the Jobs that copy each model into it once."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components.cluster import SYSTEM_POOL
from infra.components.gateway import irsa_trust_policy, secret_read_policy
from infra.config import Model
from infra.scheduling import POOL_LABEL

WEIGHTS_NAMESPACE = "llm-weights"
STAGER_SERVICE_ACCOUNT = "weights-stager"
STAGER_COMPONENT = "weights-stager"
MODEL_LABEL = "llm-platform/model"
# The marker the stager writes last, in the revision's prefix: present and naming the same source and revision means
# "already staged".
MARKER = ".staged"
# Pinned: a tag, never `latest`. No prebuilt stager image pinned by digest is available to this project, so the
# Job installs its packages at start, from a list where each is pinned and hashed (below).
STAGER_IMAGE = "python:3.12.11-slim-bookworm"
# Every package of the stager's closure (huggingface_hub, boto3 and their dependencies) with its wheel's sha256,
# for the image's Python and platform: pip refuses anything else (`--require-hashes`), installs no dependency it
# resolves itself (`--no-deps`) and builds nothing from source (`--only-binary`). The stager holds the Hugging Face
# token and write access to the weights, so what it runs is fixed here, not by PyPI on the day.
STAGER_REQUIREMENTS = Path(__file__).with_name("weights_stager_requirements.txt")
STAGER_INSTALL = ('printf "%s\\n" "$STAGE_REQUIREMENTS" > /tmp/requirements.txt && pip install --quiet '
                  "--no-cache-dir --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: "
                  "--target /tmp/pkgs -r /tmp/requirements.txt")
TOKEN_MOUNT = "/var/run/secrets/huggingface"

# Runs in the Job's container. Stages the pinned revision into its own prefix, <model>/<commit sha>/, which
# nothing else writes: a replica loads one revision's files, never a mix, and a new revision is a new prefix
# the release moves to only once it is complete (its marker is written last; the release waits for the Job).
# Streams each file Hugging Face serves straight into S3 (no local copy: the system nodes' disks are small) and
# records the Hub's digest of it (the LFS sha256, or the git blob id of a small file) as object metadata; a
# retried Job skips what the prefix already holds with the same digest, so it resumes. Existence is asked with
# ListObjectsV2, which the stager's listing grant (conditioned on s3:prefix) allows: S3 answers a GET or HEAD
# of a missing key with 403, not 404, to a caller without an unconditional s3:ListBucket (HeadObject/GetObject
# API reference, "Permissions"). Only what vLLM's Run:ai loader reads is copied: safetensors and the
# config/tokenizer files, not Meta's `original/` nor Mistral's `consolidated` checkpoints (each as large again).
STAGE_SCRIPT = r"""
import hashlib, json, os, sys
import boto3, requests
from boto3.s3.transfer import TransferConfig
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.utils import build_hf_headers

repo, revision = os.environ["HF_REPO"], os.environ["REVISION"]
bucket, prefix = os.environ["BUCKET"], os.environ["PREFIX"]
s3 = boto3.client("s3", region_name=os.environ["AWS_REGION"])
want = {"source": repo, "revision": revision}
marker = f"{prefix}/.staged"


def listing(under):
    found, token = {}, None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=under, **({"ContinuationToken": token} if token else {}))
        found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        token = page.get("NextContinuationToken")
        if not token:
            return found


if marker in listing(marker) and json.loads(s3.get_object(Bucket=bucket, Key=marker)["Body"].read()) == want:
    print(f"{repo}@{revision} is already in s3://{bucket}/{prefix}/")
    sys.exit(0)
info = HfApi().model_info(repo, revision=revision, files_metadata=True)
if info.sha != revision:
    sys.exit(f"{repo}@{revision} is commit {info.sha} on the Hub: models[].revision must be the full commit sha")


class Hashing:
    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n=-1):
        chunk = self.raw.read(n)
        self.sha256.update(chunk)
        self.size += len(chunk)
        return chunk


present = listing(f"{prefix}/")
keep = (".safetensors", ".json", ".model", ".txt", ".jinja", ".tiktoken")
for f in info.siblings:
    name = f.rfilename
    if not name.endswith(keep) or name.startswith("original/") or name.rsplit("/", 1)[-1].startswith("consolidated"):
        continue
    key = f"{prefix}/{name}"
    digest = f"sha256:{f.lfs.sha256}" if f.lfs else f"git:{f.blob_id}"
    if key in present and s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("hub-digest") == digest:
        continue
    with requests.get(hf_hub_url(repo, name, revision=revision), headers=build_hf_headers(), stream=True,
                      timeout=60) as r:
        r.raise_for_status()
        r.raw.decode_content = True
        body = Hashing(r.raw)
        s3.upload_fileobj(body, bucket, key, ExtraArgs={"Metadata": {"hub-digest": digest}},
                          Config=TransferConfig(multipart_chunksize=64 << 20, max_concurrency=8))
    if (f.lfs and body.sha256.hexdigest() != f.lfs.sha256) or body.size != f.size:
        # Not the file the Hub describes: leave nothing that a retry would take for it.
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
        sys.exit(f"{name}: {body.size} bytes with sha256 {body.sha256.hexdigest()} downloaded, the Hub lists "
                 f"{f.size} bytes ({digest})")
    print(f"staged {name} ({f.size} bytes)")
s3.put_object(Bucket=bucket, Key=marker, Body=json.dumps(want).encode())
print(f"{repo}@{revision} staged in s3://{bucket}/{prefix}/")
"""


def stager_requirements() -> list[str]:
    """The requirement lines (comments dropped) of STAGER_REQUIREMENTS."""
    lines = STAGER_REQUIREMENTS.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def bucket_prefix(stack: str) -> str:
    """S3 names are global: AWS appends a unique suffix to this (at most 37 characters)."""
    return f"llmp-{stack}-weights-"


def model_prefix(model: Model) -> str:
    """The model's prefix in the bucket: what its grants name (every revision of it below)."""
    return model.name


def revision_prefix(model: Model) -> str:
    """Where one revision is staged and loaded from: <model>/<commit sha>, written once and never changed."""
    if model.revision is None:
        raise ValueError(f"model {model.name}: weights from S3 need a pinned revision (infra/config.py checks this)")
    return f"{model.name}/{model.revision}"


def stager_subject() -> str:
    return f"system:serviceaccount:{WEIGHTS_NAMESPACE}:{STAGER_SERVICE_ACCOUNT}"


def tls_only_policy(bucket_arn: str) -> dict[str, Any]:
    """Refuse every request to the bucket that does not come over TLS (AWS's documented pattern: "Enforce
    encryption of data in transit", https://docs.aws.amazon.com/AmazonS3/latest/userguide/security-best-practices.html)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def weights_access_policy(bucket: str, prefixes: list[str], *, write: bool) -> dict[str, Any]:
    """Objects under each model's prefix: read (model servers) or read and write (the stager); listing only
    those prefixes. The Run:ai streamer lists a prefix before it reads (and vLLM pulls config files the same way)."""
    actions = ["s3:GetObject"] + (["s3:PutObject", "s3:AbortMultipartUpload"] if write else [])
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "WeightsObjects", "Effect": "Allow", "Action": actions,
         "Resource": [f"arn:aws:s3:::{bucket}/{p}/*" for p in sorted(prefixes)]},
        {"Sid": "ListWeightsPrefixes", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [x for p in sorted(prefixes) for x in (p, f"{p}/*")]}}},
    ]}


@dataclass(frozen=True)
class ModelWeightsArgs:
    stack: str
    region: str
    models: tuple[Model, ...]  # the region's models whose weights come from S3
    iam_path: str
    tags: dict[str, str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]


class ModelWeights(pulumi.ComponentResource):
    """One bucket per region: replicas read their weights from their own region (fast, no inter-region transfer),
    and weights never leave the region's residency zone (no replication is configured)."""

    def __init__(self, name: str, args: ModelWeightsArgs, provider: aws.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:weights:ModelWeights", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        # force_destroy: the objects are copies of Hugging Face repos the stager can make again; without it a
        # destroy (every PR stack's end) fails on a non-empty bucket.
        self.bucket = aws.s3.Bucket(f"{name}-weights", bucket_prefix=bucket_prefix(args.stack), force_destroy=True,
                                    opts=child)
        # SSE-S3: weights are public or gated downloads, not customer data; a KMS key would add a kms:Decrypt
        # grant to every reader and a KMS request per object for nothing the residency rules need.
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-weights", bucket=self.bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"))], opts=child)
        blocked = aws.s3.BucketPublicAccessBlock(
            f"{name}-weights", bucket=self.bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketPolicy(
            f"{name}-weights", bucket=self.bucket.id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[blocked]))
        prefixes = [model_prefix(m) for m in args.models]
        iam_child = pulumi.ResourceOptions(parent=self, provider=iam)
        # The stager's own role: write under the models' prefixes (the model servers only read them).
        self.stager_role = aws.iam.Role(
            f"{name}-weights-stager", path=args.iam_path, description=f"llm-platform weights stager in {args.region}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(irsa_trust_policy(a[0], a[1], [stager_subject()]))),
            tags=args.tags, opts=iam_child)
        self.stager_policy = aws.iam.RolePolicy(
            f"{name}-weights-stager", role=self.stager_role.name,
            policy=self.bucket.bucket.apply(lambda b: json.dumps(weights_access_policy(b, prefixes, write=True))),
            opts=iam_child)
        self.register_outputs({"bucket": self.bucket.bucket, "stager_role": self.stager_role.arn})

    def source(self, model: Model) -> pulumi.Output[str]:
        """What vLLM serves for `model`: its pinned revision's prefix in this bucket."""
        return pulumi.Output.concat("s3://", self.bucket.bucket, "/", revision_prefix(model))

    def read_policy(self, name: str, role: aws.iam.Role, models: list[Model], iam: aws.Provider,
                    parent: pulumi.Resource) -> aws.iam.RolePolicy:
        """The model server role reads (never writes) exactly its region's models' prefixes."""
        prefixes = [model_prefix(m) for m in models]
        return aws.iam.RolePolicy(
            name, role=role.name,
            policy=self.bucket.bucket.apply(lambda b: json.dumps(weights_access_policy(b, prefixes, write=False))),
            opts=pulumi.ResourceOptions(parent=parent, provider=iam))


@dataclass(frozen=True)
class WeightsStagingArgs:
    region: str
    weights: ModelWeights
    models: tuple[Model, ...]
    # The stack's Hugging Face token (gated models), read as the stager's role: (secret name, its ARN here, key ARN).
    token: tuple[str, pulumi.Input[str], pulumi.Input[str]] | None = None


class WeightsStaging(pulumi.ComponentResource):
    """A Kubernetes Job per model, run once on the system nodes, that fills the model's revision prefix from
    Hugging Face.

    The same shape as awslabs/ai-on-eks' model download Job (a batch/v1 Job with an IRSA ServiceAccount that
    downloads from Hugging Face and uploads to S3); here it streams file by file and is idempotent. Pulumi waits
    for a Job to complete (pulumi/pulumi-kubernetes#633), so the model's release, which depends on it, starts
    only once its weights are there. A changed `source` or `revision` replaces the Job (its template is
    immutable), which stages a new prefix while the running replicas keep reading theirs; the release then
    moves to the new prefix. A Job that failed (backoffLimit) is not run again by an unchanged `pulumi up`:
    README: Weights says how to retry it.
    """

    def __init__(self, name: str, args: WeightsStagingArgs, kubernetes: k8s.Provider, iam: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:weights:WeightsStaging", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=kubernetes)
        namespace = k8s.core.v1.Namespace(f"{name}-ns", metadata=k8s.meta.v1.ObjectMetaArgs(name=WEIGHTS_NAMESPACE),
                                          opts=child)
        in_ns = pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[namespace])
        role = args.weights.stager_role
        ready: list[pulumi.Resource] = [args.weights.stager_policy]
        k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=k8s.meta.v1.ObjectMetaArgs(
                name=STAGER_SERVICE_ACCOUNT, namespace=WEIGHTS_NAMESPACE,
                annotations={"eks.amazonaws.com/role-arn": role.arn,
                             "eks.amazonaws.com/sts-regional-endpoints": "true"}),
            automount_service_account_token=False, opts=in_ns)
        if args.token is not None:
            token_name, token_arn, key_arn = args.token
            ready.append(aws.iam.RolePolicy(
                f"{name}-token", role=role.name,
                policy=pulumi.Output.all(key_arn, token_arn).apply(
                    lambda a: json.dumps(secret_read_policy(args.region, [a[1]], a[0]))),
                opts=pulumi.ResourceOptions(parent=self, provider=iam)))
            # As the vLLM chart's SecretProviderClass: ASCP mounts the region's copy with the pod's IRSA role.
            ready.append(k8s.apiextensions.CustomResource(
                f"{name}-hf-token", api_version="secrets-store.csi.x-k8s.io/v1", kind="SecretProviderClass",
                metadata=k8s.meta.v1.ObjectMetaArgs(name="hf-token", namespace=WEIGHTS_NAMESPACE),
                spec={"provider": "aws", "parameters": {
                    "region": args.region, "usePodIdentity": "false",
                    "objects": f'- objectName: "{token_name}"\n  objectType: secretsmanager\n  objectAlias: token\n'}},
                opts=in_ns))
        jobs = pulumi.ResourceOptions(parent=self, provider=kubernetes, depends_on=[namespace, *ready],
                                      custom_timeouts=pulumi.CustomTimeouts(create="180m", update="180m"))
        self.jobs = {m.name: self._job(name, m, args, jobs) for m in args.models}
        self.register_outputs({"jobs": [j.metadata.name for j in self.jobs.values()]})

    def _job(self, name: str, model: Model, args: WeightsStagingArgs, opts: pulumi.ResourceOptions) -> k8s.batch.v1.Job:
        labels = {"app.kubernetes.io/component": STAGER_COMPONENT, "app.kubernetes.io/part-of": "llm-platform",
                  MODEL_LABEL: model.name}
        token = args.token is not None
        values: dict[str, pulumi.Input[str]] = {
            "HF_REPO": model.source, "REVISION": model.revision or "", "BUCKET": args.weights.bucket.bucket,
            "PREFIX": revision_prefix(model),
            "AWS_REGION": args.region, "HOME": "/tmp", "HF_HOME": "/tmp/hf", "PYTHONPATH": "/tmp/pkgs",
            # Credentials come from IRSA (the web identity token the EKS webhook mounts), never the node's role.
            "AWS_EC2_METADATA_DISABLED": "true", "HF_HUB_DISABLE_TELEMETRY": "1",
            **({"HF_TOKEN_PATH": f"{TOKEN_MOUNT}/token"} if token else {})}
        env = [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in values.items()]
        mounts = [k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")]
        volumes = [k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="2Gi"))]
        if token:
            mounts.append(k8s.core.v1.VolumeMountArgs(name="hf-token", mount_path=TOKEN_MOUNT, read_only=True))
            volumes.append(k8s.core.v1.VolumeArgs(name="hf-token", csi=k8s.core.v1.CSIVolumeSourceArgs(
                driver="secrets-store.csi.k8s.io", read_only=True,
                volume_attributes={"secretProviderClass": "hf-token"})))
        return k8s.batch.v1.Job(
            f"{name}-{model.name}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"stage-{model.name}", namespace=WEIGHTS_NAMESPACE, labels=labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=6,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=STAGER_SERVICE_ACCOUNT, automount_service_account_token=False,
                        restart_policy="Never", node_selector={POOL_LABEL: SYSTEM_POOL},
                        security_context=k8s.core.v1.PodSecurityContextArgs(
                            run_as_non_root=True, run_as_user=10001, run_as_group=10001, fs_group=10001,
                            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="stage", image=STAGER_IMAGE, command=["sh", "-c"],
                            args=[f"{STAGER_INSTALL} && exec python -c \"$STAGE_SCRIPT\""],
                            env=[*env, k8s.core.v1.EnvVarArgs(name="STAGE_SCRIPT", value=STAGE_SCRIPT),
                                 k8s.core.v1.EnvVarArgs(name="STAGE_REQUIREMENTS",
                                                        value="\n".join(stager_requirements()))],
                            resources=k8s.core.v1.ResourceRequirementsArgs(
                                requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}),
                            security_context=k8s.core.v1.SecurityContextArgs(
                                allow_privilege_escalation=False, read_only_root_filesystem=True, privileged=False,
                                capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"])),
                            volume_mounts=mounts)],
                        volumes=volumes))),
            opts=opts)
