"""The batch file buckets as Pulumi's mock engine sees the program create them: one per residency zone, in the zone's
first region, SSE-KMS with the stack's key there, private, TLS-only, unversioned, expiring its files; protected in
prod, emptied on a preview's destroy; each gateway role of the zone granted its files and nothing more."""
from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from infra.components.batch_files import FILES_PREFIX, TAG_BUDGET_GIB, bucket_prefix
from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw

BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
POLICY = "aws:s3/bucketPolicy:BucketPolicy"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ZONES = {"us": "us-east-1", "eu": "eu-north-1"}


def one(plan: Plan, typ: str, name: str) -> Any:
    (found,) = [r for r in plan.of_type(typ) if r.name == name]
    return found


def stack_key(plan: Plan, region: str) -> str:
    (key,) = [k for k in plan.of_type("aws:kms/key:Key") + plan.of_type("aws:kms/replicaKey:ReplicaKey")
              if k.region == region and k.name.startswith("llm-platform-secrets-")]
    arn: str = key.outputs["arn"]
    return arn


def test_one_bucket_per_zone_in_its_first_region_encrypted_private_tls_only_and_expiring(prod_plan: Plan) -> None:
    buckets = [b for b in prod_plan.of_type(BUCKET) if b.name.endswith("-batch-files")]
    assert sorted((b.name, b.region) for b in buckets) == [("eu-batch-files", "eu-north-1"),
                                                           ("us-batch-files", "us-east-1")]
    for zone, region in ZONES.items():
        bucket = one(prod_plan, BUCKET, f"{zone}-batch-files")
        name = bucket.outputs["bucket"]
        assert bucket.inputs["bucketPrefix"] == bucket_prefix("prod", zone) and name.startswith("llmp-prod-batch-")
        assert bucket.inputs["forceDestroy"] is False
        assert bucket.tags["llm-platform:residency"] == zone and bucket.tags[TAG_BUDGET_GIB] == "500"
        (rule,) = one(prod_plan, SSE, f"{zone}-batch-files").inputs["rules"]
        assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                               "kmsMasterKeyId": stack_key(prod_plan, region)}
        assert rule["bucketKeyEnabled"] is True
        block = one(prod_plan, BLOCK, f"{zone}-batch-files").inputs
        assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                              "restrictPublicBuckets"))
        (deny,) = json.loads(one(prod_plan, POLICY, f"{zone}-batch-files").inputs["policy"])["Statement"]
        assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"] == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
        assert one(prod_plan, VERSIONING, f"{zone}-batch-files").inputs["versioningConfiguration"] == \
            {"status": "Disabled"}
        (expire,) = one(prod_plan, LIFECYCLE, f"{zone}-batch-files").inputs["rules"]
        assert expire["status"] == "Enabled" and expire["filter"] == {"prefix": FILES_PREFIX}
        assert expire["expiration"]["days"] == 30
        assert expire["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 1
    assert not prod_plan.of_type("aws:s3/bucketReplicationConfig:BucketReplicationConfig")


def test_each_gateway_role_gets_its_zones_files_and_key_and_nothing_else(prod_plan: Plan) -> None:
    for region in ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2"]:
        zone = "us" if region.startswith("us-") else "eu"
        home, bucket = ZONES[zone], one(prod_plan, BUCKET, f"{zone}-batch-files").outputs["bucket"]
        grant = one(prod_plan, ROLE_POLICY, f"{region}-gateway-batch-files")
        assert grant.inputs["role"] == one(prod_plan, "aws:iam/role:Role", f"{region}-gateway").outputs["name"]
        objects, listing, key = json.loads(grant.inputs["policy"])["Statement"]
        assert objects["Action"] == ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        assert objects["Resource"] == f"arn:aws:s3:::{bucket}/{FILES_PREFIX}*"
        assert listing == {"Sid": "ListBatchFiles", "Effect": "Allow", "Action": "s3:ListBucket",
                           "Resource": f"arn:aws:s3:::{bucket}"}
        assert key["Resource"] == stack_key(prod_plan, home)
        assert key["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{home}.amazonaws.com"}}


def test_the_preview_bucket_is_emptied_on_destroy_and_sized_small(preview_plan: Plan) -> None:
    (bucket,) = [b for b in preview_plan.of_type(BUCKET) if b.name.endswith("-batch-files")]
    assert bucket.region == "us-east-1" and bucket.inputs["forceDestroy"] is True
    assert bucket.tags[TAG_BUDGET_GIB] == "5"
    (expire,) = one(preview_plan, LIFECYCLE, "us-batch-files").inputs["rules"]
    assert expire["expiration"]["days"] == 7


def _protected(stack: str) -> dict[str, bool]:
    seen: dict[str, bool] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        if args.type_ == BUCKET and args.name.endswith("-batch-files"):
            seen[args.name] = bool(args.opts.protect)
        return None

    run_program(stack_raw(stack), stack, observe=observe)
    return seen


@pytest.mark.parametrize(("stack", "protected"), [("prod", True), ("preview", False)])
def test_prod_buckets_are_protected_and_previews_are_not(stack: str, protected: bool) -> None:
    """`protect` refuses a destroy or a replacement at preview, before anything is deleted."""
    seen = _protected(stack)
    assert seen and set(seen.values()) == {protected}


def test_a_stack_without_batch_creates_no_bucket_and_renders_no_batch() -> None:
    raw = stack_raw("preview")
    del raw["gateway"]["batch"]
    plan = run_program(raw, "preview")
    assert not [b for b in plan.of_type(BUCKET) if b.name.endswith("-batch-files")]
    assert not [p for p in plan.of_type(ROLE_POLICY) if p.name.endswith("-gateway-batch-files")]
    (release,) = [r for r in plan.of_type("kubernetes:helm.sh/v3:Release")
                  if str(r.inputs["chart"]).endswith("charts/gateway")]
    assert "batch" not in release.inputs["values"]["config"] and "cache" in release.inputs["values"]["config"]
