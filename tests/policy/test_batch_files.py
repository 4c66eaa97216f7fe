"""The batch file buckets under the controls: data-stores (encrypted with the stack's key, private, TLS-only,
unversioned, expiring; each gateway names its zone's bucket), region-residency (a gateway's files stay in its zone),
secret-scope (only the zone's gateway roles reach the bucket) and budget-cap (priced, with its reserved storage)."""
from __future__ import annotations

import json

from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    gateway_release,
    mutated,
    result,
    result_of_resources,
)

BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
POLICY = "aws:s3/bucketPolicy:BucketPolicy"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def _name(resources, zone: str) -> str:
    return str(find(resources, BUCKET, f"{zone}-batch-files").outputs["bucket"])


def _files(release) -> dict:
    return release.inputs["values"]["config"]["batch"]["files"]["s3"]


# -- data-stores ------------------------------------------------------------------------------------------------

def test_each_zones_batch_bucket_is_encrypted_private_tls_only_and_expiring(stack_plan):
    res = result(stack_plan, "data-stores")
    assert_passes(res)
    buckets = [e for e in res.evidence if e.get("store") == "batch-files"]
    assert sorted(e["region"] for e in buckets) == sorted(r.name for r in stack_plan.config.regions
                                                          if r == stack_plan.config.regions_in(r.residency)[0])
    for bucket in buckets:
        assert bucket["kms_keys"] and bucket["public_access_blocked"] and bucket["tls_only"]
        assert bucket["versioning"] == ["Disabled"] and 0 < bucket["expires_after_days"] <= 30
        assert bucket["force_destroy"] == (stack_plan.config.environment == "preview")
    zones = {e["batch_zone"]: e["batch_buckets"] for e in res.evidence if "batch_zone" in e}
    assert sorted(zones) == sorted(stack_plan.config.zones) and all(len(b) == 1 for b in zones.values())


def test_batch_bucket_without_kms_or_on_another_regions_key_is_rejected(prod_plan):
    eu_key = find(prod_plan.resources, SSE, "eu-batch-files").inputs["rules"][0][
        "applyServerSideEncryptionByDefault"]["kmsMasterKeyId"]

    def sse_s3(rs):
        find(rs, SSE, "us-batch-files").inputs["rules"][0]["applyServerSideEncryptionByDefault"] = {
            "sseAlgorithm": "AES256"}

    def eu_key_in_us(rs):
        find(rs, SSE, "us-batch-files").inputs["rules"][0]["applyServerSideEncryptionByDefault"][
            "kmsMasterKeyId"] = eu_key

    for change in (sse_s3, eu_key_in_us):
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, change), "data-stores"),
                        f"batch bucket {_name(prod_plan.resources, 'us')} in us-east-1 is not encrypted with SSE-KMS "
                        f"under a key this stack creates in us-east-1")


def test_public_or_plaintext_batch_bucket_is_rejected(prod_plan):
    def public(rs):
        find(rs, BLOCK, "eu-batch-files").inputs["restrictPublicBuckets"] = False

    def plaintext(rs):
        find(rs, POLICY, "eu-batch-files").inputs["policy"] = json.dumps({"Version": "2012-10-17", "Statement": []})

    name = _name(prod_plan.resources, "eu")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, public), "data-stores"),
                    f"batch bucket {name} in eu-north-1 does not block all public access")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, plaintext), "data-stores"),
                    f"batch bucket {name} in eu-north-1 has no bucket policy refusing requests without TLS")


def test_versioned_never_expiring_or_force_destroyed_prod_batch_bucket_is_rejected(prod_plan):
    def versioned(rs):
        find(rs, VERSIONING, "us-batch-files").inputs["versioningConfiguration"] = {"status": "Enabled"}

    def suspended(rs):  # the versions kept while it was enabled outlive every expiry
        find(rs, VERSIONING, "us-batch-files").inputs["versioningConfiguration"] = {"status": "Suspended"}

    def forever(rs):
        find(rs, LIFECYCLE, "us-batch-files").inputs["rules"][0]["status"] = "Disabled"

    def force_destroyed(rs):
        find(rs, BUCKET, "us-batch-files").inputs["forceDestroy"] = True

    def only_tagged(rs):  # expires only the files carrying a tag the gateway never sets
        find(rs, LIFECYCLE, "us-batch-files").inputs["rules"][0]["filter"] = {
            "and": {"prefix": "files/", "tags": {"expire": "yes"}}}

    def only_large(rs):
        find(rs, LIFECYCLE, "us-batch-files").inputs["rules"][0]["filter"] = {"objectSizeGreaterThan": 1 << 30}

    name = _name(prod_plan.resources, "us")
    for change, words in ((versioned, "is versioned"), (suspended, "is versioned (Suspended)"),
                          (forever, "has no enabled lifecycle rule expiring its files"),
                          (only_tagged, "has no enabled lifecycle rule expiring its files"),
                          (only_large, "has no enabled lifecycle rule expiring its files"),
                          (force_destroyed, "is force-destroyed with its files")):
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, change), "data-stores"),
                        f"batch bucket {name} in us-east-1 {words}")


def test_gateway_naming_a_bucket_the_stack_does_not_create_or_the_wrong_region_is_rejected(prod_plan):
    def elsewhere(rs):
        _files(gateway_release(rs, "us-west-2"))["bucket"] = "someone-elses-bucket"

    def wrong_region(rs):
        _files(gateway_release(rs, "us-west-2"))["region"] = "us-west-2"

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, elsewhere), "data-stores"),
                    "the gateway in us-west-2 keeps batch files in someone-elses-bucket, which is not a batch bucket "
                    "this stack creates")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, wrong_region), "data-stores"),
                    f"calls batch bucket {_name(prod_plan.resources, 'us')} in us-west-2, but it is in us-east-1")


# -- region-residency -------------------------------------------------------------------------------------------

def test_a_gateways_batch_files_stay_in_its_zone(prod_plan):
    res = result(prod_plan, "region-residency")
    assert_passes(res)
    seen = {e["region"]: (e["gateway_zone"], e["bucket_zone"]) for e in res.evidence if "batch_files_bucket" in e}
    assert seen == {r.name: (r.residency, r.residency) for r in prod_plan.config.regions}


def test_gateway_keeping_batch_files_in_another_zones_bucket_is_rejected(prod_plan):
    us_bucket = _name(prod_plan.resources, "us")

    def to_us(rs):
        files = _files(gateway_release(rs, "eu-west-2"))
        files.update(bucket=us_bucket, region="us-east-1")

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, to_us), "region-residency"),
                    f"the gateway in eu-west-2 (zone 'eu') keeps batch files in {us_bucket} in us-east-1 (zone "
                    f"'us'): outside its zone")


def test_batch_bucket_replicated_out_of_its_zone_is_rejected(prod_plan):
    from infra.plan.mocks import PlannedResource

    eu, us = _name(prod_plan.resources, "eu"), _name(prod_plan.resources, "us")

    def replicate(rs):
        rs.append(PlannedResource(
            type="aws:s3/bucketReplicationConfig:BucketReplicationConfig", name="eu-batch-files-copy",
            region="eu-north-1", inputs={"bucket": eu, "rules": [{"destination": {"bucket": f"arn:aws:s3:::{us}"}}]},
            outputs={}, tags={}))

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, replicate), "region-residency"),
                    f"copies {eu} (zone 'eu') to {us} in us-east-1, outside its zone")


# -- secret-scope -----------------------------------------------------------------------------------------------

def test_only_a_zones_gateway_roles_reach_its_batch_bucket(prod_plan):
    res = result(prod_plan, "secret-scope")
    assert_passes(res)
    grants = {(e["batch_bucket"], e["role_gateway_region"]) for e in res.evidence if "batch_bucket" in e}
    us, eu = _name(prod_plan.resources, "us"), _name(prod_plan.resources, "eu")
    assert grants == {(us, "us-east-1"), (us, "us-west-2"), (eu, "eu-north-1"), (eu, "eu-west-2")}


def test_another_zones_gateway_role_granted_a_batch_bucket_is_rejected(prod_plan):
    eu = _name(prod_plan.resources, "eu")

    def widen(rs):
        grant = find(rs, ROLE_POLICY, "us-west-2-gateway-batch-files")
        doc = json.loads(grant.inputs["policy"])
        doc["Statement"].append({"Sid": "EuFiles", "Effect": "Allow", "Action": "s3:GetObject",
                                 "Resource": f"arn:aws:s3:::{eu}/files/*"})
        grant.inputs["policy"] = json.dumps(doc)

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    f"the gateway role of us-west-2 (zone 'us') may use batch bucket {eu} of zone 'eu'")


def test_a_role_other_than_a_gateways_or_a_gateway_without_its_grant_is_rejected(prod_plan):
    us = _name(prod_plan.resources, "us")

    def to_models(rs):
        grant = find(rs, ROLE_POLICY, "us-east-1-gateway-batch-files")
        grant.inputs["role"] = find(rs, "aws:iam/role:Role", "us-east-1-models").outputs["name"]

    res = result_of_resources(prod_plan, mutated(prod_plan, to_models), "secret-scope")
    assert_rejected(res, f"may use batch bucket {us}, but it is no gateway's role",
                    f"the gateway role of us-east-1 may not s3:DeleteObject, s3:GetObject, s3:PutObject in its batch "
                    f"bucket {us}", "the gateway role of us-east-1 may not use arn:aws:kms:us-east-1:")


def test_a_batch_bucket_reached_by_a_managed_policy_a_wildcard_or_its_bucket_policy_is_rejected(prod_plan):
    """However the grant is written, one zone's files stay out of another zone's reach: a managed policy attached
    to an EU gateway role, a wildcard that happens to cover the US bucket, or a bucket policy granting a role."""
    from infra.plan.mocks import PlannedResource

    us = _name(prod_plan.resources, "us")
    eu_role = find(prod_plan.resources, "aws:iam/role:Role", "eu-west-2-gateway").outputs

    def managed(rs):
        arn = "arn:aws:iam::123456789012:policy/llm-platform/prod/us-files"
        rs.append(PlannedResource(
            type="aws:iam/policy:Policy", name="us-files", region="eu-west-2",
            inputs={"policy": json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{us}/files/*"}]})},
            outputs={"arn": arn}))
        rs.append(PlannedResource(type="aws:iam/rolePolicyAttachment:RolePolicyAttachment", name="us-files",
                                  region="eu-west-2", inputs={"role": eu_role["name"], "policyArn": arn}))

    def wildcard(rs):
        grant = find(rs, ROLE_POLICY, "eu-west-2-gateway-batch-files")
        doc = json.loads(grant.inputs["policy"])
        doc["Statement"].append({"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::llmp-prod-*"})
        grant.inputs["policy"] = json.dumps(doc)

    def bucket_policy(rs):
        policy = find(rs, POLICY, "us-batch-files")
        doc = json.loads(policy.inputs["policy"])
        doc["Statement"].append({"Effect": "Allow", "Principal": {"AWS": eu_role["arn"]}, "Action": "s3:GetObject",
                                 "Resource": f"arn:aws:s3:::{us}/*"})
        policy.inputs["policy"] = json.dumps(doc)

    for change in (managed, wildcard):
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, change), "secret-scope"),
                        f"the gateway role of eu-west-2 (zone 'eu') may use batch bucket {us} of zone 'us'")
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, bucket_policy), "secret-scope"),
                    f"batch bucket {us}: its bucket policy grants s3:GetObject to {{'AWS': '{eu_role['arn']}'}}")


def test_a_gateway_using_its_batch_key_other_than_through_s3_in_the_buckets_region_is_rejected(prod_plan):
    """The key is used only through S3 where the bucket is (kms:ViaService): a grant without the condition, or via
    another region's S3, would let the role decrypt outside the bucket."""
    def grant(rs):
        return find(rs, ROLE_POLICY, "eu-west-2-gateway-batch-files")

    def unconditioned(rs):
        doc = json.loads(grant(rs).inputs["policy"])
        del doc["Statement"][2]["Condition"]
        grant(rs).inputs["policy"] = json.dumps(doc)

    def other_region(rs):
        doc = json.loads(grant(rs).inputs["policy"])
        doc["Statement"][2]["Condition"]["StringEquals"]["kms:ViaService"] = "s3.eu-west-2.amazonaws.com"
        grant(rs).inputs["policy"] = json.dumps(doc)

    for change, words in ((unconditioned, "without a kms:ViaService condition"),
                          (other_region, "via ['s3.eu-west-2.amazonaws.com']")):
        assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, change), "secret-scope"),
                        "eu-west-2-gateway-batch-files: the gateway role of eu-west-2 may use arn:aws:kms:eu-north-1:",
                        f"its batch files' key, {words}: only through S3 in the bucket's region "
                        f"(s3.eu-north-1.amazonaws.com)")


# -- budget-cap -------------------------------------------------------------------------------------------------

def test_budget_prices_the_batch_buckets(stack_plan):
    res = result(stack_plan, "budget-cap")
    assert_passes(res)
    (estimate,) = [e for e in res.evidence if e.get("estimate")]
    buckets = {k: v for k, v in estimate["stores"].items() if k.endswith("/batch-files")}
    assert len(buckets) == len(stack_plan.config.zones)
    gib = stack_plan.config.gateway.batch.budget_gib
    for low, high in buckets.values():
        # Empty at min scale; at max, S3 Standard for the reserved GiB (0.023 USD/GB-month in us-east-1, region
        # levels within 15%) plus a million PUTs (0.005/1,000) and GETs (0.0004/1,000).
        assert low == 0 and 0.85 * (gib * 1.0737 * 0.023 + 5.4) <= high <= 1.15 * (gib * 1.0737 * 0.023 + 5.4)


def test_a_batch_bucket_without_its_reserved_storage_is_rejected(prod_plan):
    def untagged(rs):
        del find(rs, BUCKET, "eu-batch-files").inputs["tags"]["llm-platform:budget-gib"]

    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, untagged), "budget-cap"),
                    "gateway store eu-batch-files in eu-north-1: the storage batch bucket",
                    "(tag llm-platform:budget-gib)")
