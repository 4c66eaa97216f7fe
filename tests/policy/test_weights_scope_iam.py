"""Weights access proven by IAM enforcement (moto): model servers read only their region's models' prefixes and write
nothing; the stager writes only those prefixes.

Each role gets the trust policy and the weights policy the program writes, verbatim; the buckets are created in moto
under the names the plan gives them. moto's IAM enforcement judges Action and Resource but not the `s3:prefix`
condition of the listing grant, so listing is not exercised here (tests/infra/test_model_weights.py checks that
statement's shape).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication

from infra.plan.run import Plan

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
    buckets = {b.region: b.outputs["bucket"] for b in plan.of_type("aws:s3/bucket:Bucket")}
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
    buckets = {b.region: b.outputs["bucket"] for b in prod_plan.of_type("aws:s3/bucket:Bucket")}
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
    bucket = find(prod_plan.resources, "aws:s3/bucket:Bucket", region=US).outputs["bucket"]
    for grant in (f"arn:aws:s3:::{bucket}/*", "arn:aws:s3:::someone-elses-bucket/llama-3-3-70b/*",
                  f"arn:aws:s3:::{bucket}/*/config.json"):
        def widen(rs, grant=grant):
            policy = find(rs, "aws:iam/rolePolicy:RolePolicy", f"{US}-models-weights")
            doc = json.loads(policy.inputs["policy"])
            doc["Statement"][0]["Resource"] = [grant]
            policy.inputs["policy"] = json.dumps(doc)
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                        f"{US}-models-weights: WeightsObjects has a wildcard Resource (['{grant}'])")
