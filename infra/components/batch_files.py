"""BatchFiles: one residency zone's S3 bucket of OpenAI Batch API files (inputs, outputs, errors) and its grants.

Per zone, not per region: a batch (and its files) belongs to a key, and a key's calls land on any region of its
zone, so every gateway of the zone reads and writes the same files; the bucket lives in the zone's first region and
nothing replicates it, so a file never leaves the zone (README: Ladders, cache and batch). The gateway stores
content only, under `files/<file id>` (gateway/batch/s3_files.py); what a file is and who owns it lives in the
region's ledger.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.components.model_weights import tls_only_policy
from infra.components.providers import child_opts

# The gateway writes every object under this prefix: the one the grants name.
FILES_PREFIX = "files/"
# On the bucket: how much storage the budget reserves for it (budget-cap prices it; S3 itself has no size cap).
TAG_BUDGET_GIB = "llm-platform:budget-gib"


def bucket_prefix(stack: str, zone: str) -> str:
    """S3 names are global: AWS appends a unique suffix to this (bucket_prefix takes at most 37 characters).
    infra/ci_access.py lets each deploy role manage `llmp-<its stacks>-batch-*` and no other name."""
    return f"llmp-{stack}-batch-{zone}-"


def files_access_policy(bucket: str, bucket_region: str, key_arn: str) -> dict[str, Any]:
    """A gateway of the bucket's zone reads, writes and deletes objects under `files/` (no other prefix) and lists
    the bucket, and uses the bucket region's stack key only through S3 there: SSE-KMS needs kms:GenerateDataKey to
    write and kms:Decrypt to read (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html,
    "Permissions"). The listing is unconditional on purpose: to a caller without s3:ListBucket on the bucket, S3
    answers a GET of a missing key with 403, not 404 (GetObject API reference, "Permissions"), and a grant conditioned
    on s3:prefix does not count (infra/components/model_weights.py found the same). With it, a missing file is a 404
    the file store tells from a denial (gateway/batch/s3_files.py); the bucket holds only the zone's batch files,
    which these gateways read anyway."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "BatchFiles", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{FILES_PREFIX}*"},
        {"Sid": "ListBatchFiles", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"},
        {"Sid": "BatchFilesKey", "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
         "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": f"s3.{bucket_region}.amazonaws.com"}}},
    ]}


@dataclass(frozen=True)
class BatchFilesArgs:
    stack: str
    zone: str
    region: str  # the zone's first region: where the bucket lives
    kms_key_arn: pulumi.Input[str]  # the stack's key in `region`
    retention_days: int  # files expire this long after upload
    budget_gib: float
    protected: bool  # prod: Pulumi's `protect`, no force_destroy (a replacement is refused at preview)
    tags: dict[str, str]


class BatchFiles(pulumi.ComponentResource):
    """`bucket` (its name) and `region` go in each gateway of the zone's rendered config (`batch.files.s3`);
    `grant` gives one gateway role its access."""

    bucket: pulumi.Output[str]

    def __init__(self, name: str, args: BatchFilesArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:gateway:BatchFiles", name, None, opts)
        self.args = args
        child = child_opts(self, provider)
        # Previews: force_destroy, so a pr-N stack's end deletes a bucket that still holds files. Prod: a destroy
        # fails on a non-empty bucket, and `protect` refuses the destroy (or a replacement) at preview.
        self.resource = aws.s3.Bucket(
            name, bucket_prefix=bucket_prefix(args.stack, args.zone), force_destroy=not args.protected,
            tags={**args.tags, TAG_BUDGET_GIB: f"{args.budget_gib:g}"},
            opts=child_opts(self, provider, protect=args.protected))
        bucket_id = self.resource.id
        # SSE-KMS with the stack's own key: batch files are customer prompts and answers. The bucket key cuts the
        # KMS requests (and their price) to one per bucket key lifetime instead of one per object
        # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-key.html).
        aws.s3.BucketServerSideEncryptionConfiguration(
            name, bucket=bucket_id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=args.kms_key_arn),
                bucket_key_enabled=True)], opts=child)
        blocked = aws.s3.BucketPublicAccessBlock(
            name, bucket=bucket_id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketPolicy(
            name, bucket=bucket_id, policy=self.resource.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
            opts=child_opts(self, provider, depends_on=[blocked]))
        # Versioning off: a deleted file is gone (OpenAI's DELETE /v1/files means deleted), and no old version
        # outlives the retention. Explicitly Disabled, not left out, so a bucket someone versioned by hand is
        # judged (data-stores) and not silently kept.
        aws.s3.BucketVersioning(
            name, bucket=bucket_id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Disabled"),
            opts=child)
        # OpenAI keeps batch files until deleted; here they expire after the retention, like its output files'
        # 30 days (https://platform.openai.com/docs/guides/batch). Uploads a client never completed go after a day.
        aws.s3.BucketLifecycleConfiguration(
            name, bucket=bucket_id,
            rules=[aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-batch-files", status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=FILES_PREFIX),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=args.retention_days),
                abort_incomplete_multipart_upload=aws.s3.
                BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(days_after_initiation=1))],
            opts=child)
        self.bucket = self.resource.bucket
        self.region = args.region
        self.register_outputs({"bucket": self.bucket, "region": args.region})

    def grant(self, name: str, role: aws.iam.Role, iam: aws.Provider, parent: pulumi.Resource) -> aws.iam.RolePolicy:
        """The gateway role of a region of this zone reads, writes and deletes batch files here."""
        region = self.args.region
        return aws.iam.RolePolicy(
            name, role=role.name,
            policy=pulumi.Output.all(self.bucket, self.args.kms_key_arn).apply(
                lambda a: json.dumps(files_access_policy(a[0], region, a[1]))),
            opts=pulumi.ResourceOptions(parent=parent, provider=iam))


def s3_settings(bucket: pulumi.Input[str], region: str, kms_key_arn: pulumi.Input[str]) -> Mapping[str, Any]:
    """The gateway config's `batch.files` for a zone's bucket (gateway/config/batch.py BatchFiles.s3)."""
    return {"s3": {"bucket": bucket, "region": region, "prefix": FILES_PREFIX, "kms_key_id": kms_key_arn}}
