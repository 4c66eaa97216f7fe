"""Weights access proven by IAM enforcement (moto): model servers read only their region's models' prefixes and write
nothing; the stager writes only those prefixes.

Each role gets the trust policy and the weights policy the program writes, verbatim; the buckets are created in moto
under the names the plan gives them. moto's IAM enforcement judges Action and Resource but not the `s3:prefix`
condition of the listing grant, and answers a GET or HEAD of a missing key with 404 whatever the caller may list;
where a test needs them, `S3AsAws` plays both of AWS's rules on top of it.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication

from infra.components.model_weights import STAGER_COMPONENT
from infra.plan.run import Plan
from tests.played_hub import PlayedHub

US, EU = "us-east-1", "eu-north-1"


@dataclass
class Weights:
    buckets: dict[str, str]  # region -> bucket name
    credentials: dict[tuple[str, str], dict]  # (region, "models" | "stager") -> assumed-role credentials

    def client(self, who: tuple[str, str]):
        creds = self.credentials[who]
        return boto3.client("s3", region_name=who[0], aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])

    def read(self, who: tuple[str, str], region: str, key: str) -> bytes:
        with enable_iam_authentication():
            body: bytes = self.client(who).get_object(Bucket=self.buckets[region], Key=key)["Body"].read()
            return body

    def write(self, who: tuple[str, str], region: str, key: str) -> None:
        with enable_iam_authentication():
            self.client(who).put_object(Bucket=self.buckets[region], Key=key, Body=b"weights")

    def denied(self, call, *args) -> bool:
        try:
            call(*args)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDenied", exc.response["Error"]
            return True
        return False


def _setup(plan: Plan) -> Weights:
    buckets = {b.region: b.outputs["bucket"] for b in plan.of_type("aws:s3/bucket:Bucket")
               if b.name.endswith("-weights")}  # not the zones' batch file buckets
    names = [m.name for m in plan.config.models]
    for region, bucket in buckets.items():
        s3 = boto3.client("s3", region_name=region)
        # us-east-1 takes no location constraint (S3 CreateBucket API reference).
        s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else
                                          {"CreateBucketConfiguration": {"LocationConstraint": region}}))
        for model in names:  # every model's prefix, so a denial is IAM's and not a missing object
            s3.put_object(Bucket=bucket, Key=f"{model}/config.json", Body=f"{region}:{model}".encode())
    roles = {r.outputs["name"]: r for r in plan.of_type("aws:iam/role:Role")}
    policies = {p.name: p for p in plan.of_type("aws:iam/rolePolicy:RolePolicy")}
    iam, sts = boto3.client("iam"), boto3.client("sts", region_name="us-east-1")
    credentials = {}
    for region in buckets:
        for who, policy_name in (("models", f"{region}-models-weights"), ("stager", f"{region}-weights-stager")):
            policy = policies[policy_name]
            role = roles[policy.inputs["role"]]
            arn = iam.create_role(RoleName=role.outputs["name"],
                                  AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])["Role"]["Arn"]
            iam.put_role_policy(RoleName=role.outputs["name"], PolicyName=policy_name,
                                PolicyDocument=policy.inputs["policy"])
            credentials[(region, who)] = sts.assume_role_with_web_identity(
                RoleArn=arn, RoleSessionName=who, WebIdentityToken="projected-sa-token")["Credentials"]
    return Weights(buckets, credentials)


@pytest.fixture
def weights(prod_plan: Plan, monkeypatch) -> Iterator[Weights]:
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with mock_aws():
        yield _setup(prod_plan)


def test_model_servers_read_their_regions_models_and_nothing_else(weights: Weights, prod_plan: Plan) -> None:
    us_models = ("us-east-1", "models")
    for model in ("llama-3-3-70b", "llama-3-1-8b"):
        assert weights.read(us_models, US, f"{model}/config.json") == f"{US}:{model}".encode()
    # Not a model it serves (the EU-restricted one, and the one downloaded from Hugging Face)...
    assert weights.denied(weights.read, us_models, US, "mistral-small-24b/config.json")
    assert weights.denied(weights.read, us_models, US, "qwen2-5-7b-batch/config.json")
    # ...nor another region's bucket, even for a model it serves.
    assert weights.denied(weights.read, us_models, EU, "llama-3-3-70b/config.json")
    eu_models = ("eu-north-1", "models")
    assert weights.read(eu_models, EU, "mistral-small-24b/config.json") == f"{EU}:mistral-small-24b".encode()


def test_model_servers_cannot_write_weights(weights: Weights) -> None:
    for region in (US, EU):
        assert weights.denied(weights.write, (region, "models"), region, "llama-3-3-70b/model-00001.safetensors")


def test_the_stager_writes_only_its_regions_model_prefixes(weights: Weights) -> None:
    stager = ("us-east-1", "stager")
    weights.write(stager, US, "llama-3-3-70b/model-00001-of-00030.safetensors")
    assert weights.read(stager, US, "llama-3-3-70b/model-00001-of-00030.safetensors") == b"weights"
    assert weights.denied(weights.write, stager, US, "mistral-small-24b/model-00001.safetensors")
    assert weights.denied(weights.write, stager, US, "elsewhere.bin")
    assert weights.denied(weights.write, stager, EU, "llama-3-3-70b/model-00001-of-00030.safetensors")
    # The EU stager stages the EU-restricted model into its own bucket.
    weights.write(("eu-north-1", "stager"), EU, "mistral-small-24b/model-00001-of-00010.safetensors")


def test_each_weights_policy_names_only_its_own_regions_bucket(prod_plan: Plan) -> None:
    buckets = {b.region: b.outputs["bucket"] for b in prod_plan.of_type("aws:s3/bucket:Bucket")
               if b.name.endswith("-weights")}
    for region, bucket in buckets.items():
        for name in (f"{region}-models-weights", f"{region}-weights-stager"):
            [policy] = [p for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == name]
            named = [r for s in json.loads(policy.inputs["policy"])["Statement"]
                     for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
            assert named and all(r == f"arn:aws:s3:::{bucket}" or r.startswith(f"arn:aws:s3:::{bucket}/")
                                 for r in named), (name, named)


def test_a_grant_on_a_whole_bucket_or_a_bucket_of_someone_else_is_a_wildcard(prod_plan: Plan) -> None:
    """secret-scope accepts `*` only in an object ARN under one named prefix of a bucket the stack creates."""
    from tests.policy.helpers import assert_passes, assert_rejected, find, mutated, result, result_of_resources
    assert_passes(result(prod_plan, "secret-scope"))
    bucket = find(prod_plan.resources, "aws:s3/bucket:Bucket", f"{US}-weights").outputs["bucket"]
    for grant in (f"arn:aws:s3:::{bucket}/*", "arn:aws:s3:::someone-elses-bucket/llama-3-3-70b/*",
                  f"arn:aws:s3:::{bucket}/*/config.json"):
        def widen(rs, grant=grant):
            policy = find(rs, "aws:iam/rolePolicy:RolePolicy", f"{US}-models-weights")
            doc = json.loads(policy.inputs["policy"])
            doc["Statement"][0]["Resource"] = [grant]
            policy.inputs["policy"] = json.dumps(doc)
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                        f"{US}-models-weights: WeightsObjects has a wildcard Resource (['{grant}'])")


class S3AsAws:
    """One role's S3 client, answering as AWS does where moto does not, for that role's identity policy:
    - a GET or HEAD of a missing key is 403, not 404, unless the caller may s3:ListBucket the bucket (HeadObject and
      GetObject API reference, "Permissions": "If you don't have the s3:ListBucket permission, Amazon S3 returns an
      HTTP status code 403"); a request for one key carries no s3:prefix, so a listing grant conditioned on it
      does not count;
    - a listing is allowed only if a grant's `s3:prefix` StringLike condition matches the prefix asked for
      (IAM: a condition on a key the request does not carry, or does not match, does not apply the statement)."""

    def __init__(self, client: Any, policy: dict, bucket: str) -> None:
        self._client, self._bucket = client, bucket
        self._listing = [s for s in policy["Statement"] if s["Effect"] == "Allow"
                         and "s3:ListBucket" in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                         and s["Resource"] in (f"arn:aws:s3:::{bucket}", [f"arn:aws:s3:::{bucket}"])]

    def _may_list(self, prefix: str | None) -> bool:
        for statement in self._listing:
            condition = statement.get("Condition")
            if not condition:
                return True
            patterns = condition.get("StringLike", {}).get("s3:prefix") if set(condition) == {"StringLike"} else None
            patterns = [patterns] if isinstance(patterns, str) else patterns
            if prefix is not None and patterns and any(fnmatch.fnmatchcase(prefix, p) for p in patterns):
                return True
        return False

    def _one_key(self, operation: str, call: Any, **kwargs: Any) -> Any:
        try:
            return call(**kwargs)
        except ClientError as exc:
            missing = exc.response["Error"]["Code"] in ("NoSuchKey", "404")
            if missing and kwargs.get("Bucket") == self._bucket and not self._may_list(None):
                code = "403" if operation == "HeadObject" else "AccessDenied"
                raise ClientError({"Error": {"Code": code, "Message": "Access Denied"}}, operation) from None
            raise

    def get_object(self, **kwargs: Any) -> Any:
        return self._one_key("GetObject", self._client.get_object, **kwargs)

    def head_object(self, **kwargs: Any) -> Any:
        return self._one_key("HeadObject", self._client.head_object, **kwargs)

    def list_objects_v2(self, **kwargs: Any) -> Any:
        if kwargs.get("Bucket") == self._bucket and not self._may_list(kwargs.get("Prefix", "")):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")
        return self._client.list_objects_v2(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_the_players_of_aws_answer_as_aws_documents(weights: Weights, prod_plan: Plan) -> None:
    """The stager's own grants, played: a missing key is 403 to it, a listing outside its prefixes is denied."""
    policies = {p.name: json.loads(p.inputs["policy"]) for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy")}
    bucket = weights.buckets[EU]
    s3 = S3AsAws(weights.client((EU, "stager")), policies[f"{EU}-weights-stager"], bucket)
    with enable_iam_authentication():
        for call in (s3.get_object, s3.head_object):
            with pytest.raises(ClientError) as err:
                call(Bucket=bucket, Key="mistral-small-24b/missing/.staged")
            assert err.value.response["Error"]["Code"] in ("AccessDenied", "403")
        assert s3.list_objects_v2(Bucket=bucket, Prefix="mistral-small-24b/x/.staged").get("KeyCount") == 0
        assert weights.denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="elsewhere/"))
    unconditional = {"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                                    "Resource": f"arn:aws:s3:::{bucket}"}]}
    with pytest.raises(ClientError) as err:
        S3AsAws(weights.client((EU, "stager")), unconditional, bucket).get_object(Bucket=bucket, Key="m/missing")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_first_staging_run_as_the_stager_fills_the_revision_prefix_the_release_loads(
        weights: Weights, prod_plan: Plan, monkeypatch) -> None:
    """First create, as AWS would judge it: the EU stager's Job, its script and environment as planned, run with
    the stager role's credentials against an empty prefix (no marker yet). It stages the model and the model
    servers' role then reads it at the release's source; a second run is a no-op."""
    [job] = [j for j in prod_plan.of_type("kubernetes:batch/v1:Job") if j.region == EU
             and j.inputs["metadata"]["labels"]["app.kubernetes.io/component"] == STAGER_COMPONENT
             and j.inputs["metadata"]["labels"]["llm-platform/model"] == "mistral-small-24b"]
    [container] = job.inputs["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    bucket = weights.buckets[EU]
    assert env["BUCKET"] == bucket
    hub = PlayedHub(env["HF_REPO"])
    hub.commits[env["REVISION"]] = {"config.json": b"{}", "model-00001-of-00002.safetensors": b"w" * 32,
                                    "model-00002-of-00002.safetensors": b"v" * 32, "consolidated.safetensors": b"c"}
    hub.install(monkeypatch)
    creds = weights.credentials[(EU, "stager")]
    for var in ("HF_REPO", "REVISION", "BUCKET", "PREFIX", "AWS_REGION"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # credentials from this environment, as in the Job's pod
    policy = json.loads(next(p for p in prod_plan.of_type("aws:iam/rolePolicy:RolePolicy")
                             if p.name == f"{EU}-weights-stager").inputs["policy"])
    real_client = boto3.client
    monkeypatch.setattr(boto3, "client", lambda *a, **kw: S3AsAws(real_client(*a, **kw), policy, bucket))
    with enable_iam_authentication():
        assert hub.stage(env["STAGE_SCRIPT"]) == 0
        assert sorted(hub.downloads) == ["config.json", "model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"]
        assert hub.stage(env["STAGE_SCRIPT"]) == 0 and hub.downloads == []
    monkeypatch.setattr(boto3, "client", real_client)
    [release] = [r for r in prod_plan.of_type("kubernetes:helm.sh/v3:Release") if r.region == EU
                 and r.inputs["values"].get("podLabels", {}).get("llm-platform/model") == "mistral-small-24b"]
    source = release.inputs["values"]["model"]["source"]
    assert source == f"s3://{bucket}/{env['PREFIX']}"
    models = ("eu-north-1", "models")
    assert weights.read(models, EU, f"{env['PREFIX']}/model-00002-of-00002.safetensors") == b"v" * 32
    assert json.loads(weights.read(models, EU, f"{env['PREFIX']}/.staged")) == {
        "source": env["HF_REPO"], "revision": env["REVISION"]}
