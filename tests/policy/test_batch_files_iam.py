"""Batch file access proven by IAM enforcement (moto): each gateway role of a zone keeps batch files in its zone's
bucket (put, get, delete under `files/`), and no gateway of the other zone can touch them.

Each role gets the trust policy and the batch files policy the program writes, verbatim; the buckets are created in
moto under the names the plan gives them, in the regions the plan puts them. moto's IAM enforcement judges Action
and Resource; the KMS half of the grant is judged by secret-scope (tests/policy/test_batch_files.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication

from infra.plan.run import Plan

GATEWAYS = {"us-east-1": "us", "us-west-2": "us", "eu-north-1": "eu", "eu-west-2": "eu"}


@dataclass
class BatchFiles:
    buckets: dict[str, tuple[str, str]]  # zone -> (bucket, its region)
    credentials: dict[str, dict]  # gateway region -> assumed-role credentials

    def client(self, gateway: str, zone: str):
        creds = self.credentials[gateway]
        return boto3.client("s3", region_name=self.buckets[zone][1], aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])

    def put(self, gateway: str, zone: str, key: str) -> None:
        with enable_iam_authentication():
            self.client(gateway, zone).put_object(Bucket=self.buckets[zone][0], Key=key, Body=gateway.encode())

    def get(self, gateway: str, zone: str, key: str) -> bytes:
        with enable_iam_authentication():
            body: bytes = self.client(gateway, zone).get_object(Bucket=self.buckets[zone][0], Key=key)["Body"].read()
            return body

    def delete(self, gateway: str, zone: str, key: str) -> None:
        with enable_iam_authentication():
            self.client(gateway, zone).delete_object(Bucket=self.buckets[zone][0], Key=key)

    def denied(self, call, *args) -> bool:
        try:
            call(*args)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDenied", exc.response["Error"]
            return True
        return False


def _setup(plan: Plan) -> BatchFiles:
    buckets = {b.name.removesuffix("-batch-files"): (b.outputs["bucket"], b.region)
               for b in plan.of_type("aws:s3/bucket:Bucket") if b.name.endswith("-batch-files")}
    for zone, (bucket, region) in buckets.items():
        s3 = boto3.client("s3", region_name=region)
        s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else
                                          {"CreateBucketConfiguration": {"LocationConstraint": region}}))
        s3.put_object(Bucket=bucket, Key="files/file-existing", Body=zone.encode())
    roles = {r.name: r for r in plan.of_type("aws:iam/role:Role")}
    policies = {p.name: p for p in plan.of_type("aws:iam/rolePolicy:RolePolicy")}
    iam, sts = boto3.client("iam"), boto3.client("sts", region_name="us-east-1")
    credentials = {}
    for region in GATEWAYS:
        role, grant = roles[f"{region}-gateway"], policies[f"{region}-gateway-batch-files"]
        assert grant.inputs["role"] == role.outputs["name"]
        arn = iam.create_role(RoleName=role.outputs["name"],
                              AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])["Role"]["Arn"]
        iam.put_role_policy(RoleName=role.outputs["name"], PolicyName=grant.name,
                            PolicyDocument=grant.inputs["policy"])
        credentials[region] = sts.assume_role_with_web_identity(
            RoleArn=arn, RoleSessionName="gateway", WebIdentityToken="projected-sa-token")["Credentials"]
    return BatchFiles(buckets, credentials)


@pytest.fixture
def files(prod_plan: Plan, monkeypatch) -> Iterator[BatchFiles]:
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with mock_aws():
        yield _setup(prod_plan)


def test_every_gateway_of_a_zone_keeps_batch_files_in_its_zones_bucket(files: BatchFiles) -> None:
    """A file one gateway of the zone uploads, another reads and deletes: a batch moves between regions of a zone."""
    for zone, (first, second) in {"us": ("us-east-1", "us-west-2"), "eu": ("eu-north-1", "eu-west-2")}.items():
        files.put(first, zone, "files/file-a1")
        assert files.get(second, zone, "files/file-a1") == first.encode()
        files.delete(second, zone, "files/file-a1")
        assert files.get(first, zone, "files/file-existing") == zone.encode()


def test_no_gateway_of_another_zone_can_read_write_or_delete_a_zones_batch_files(files: BatchFiles) -> None:
    for gateway, own in GATEWAYS.items():
        other = "eu" if own == "us" else "us"
        assert files.denied(files.get, gateway, other, "files/file-existing"), gateway
        assert files.denied(files.put, gateway, other, "files/file-planted"), gateway
        assert files.denied(files.delete, gateway, other, "files/file-existing"), gateway


def test_a_gateway_touches_only_the_files_prefix_of_its_bucket(files: BatchFiles) -> None:
    assert files.denied(files.put, "us-west-2", "us", "elsewhere/file-a1")
    assert files.denied(files.get, "eu-west-2", "eu", "policy.json")
