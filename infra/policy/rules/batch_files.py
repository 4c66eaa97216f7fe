"""The batch file buckets (infra/components/batch_files.py) as data-stores, region-residency and secret-scope judge
them: encrypted with the stack's key, private, TLS-only, expiring, in their zone, and used only by their zone's
gateways. Each control calls one function here; the descriptions below are appended to theirs."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra.policy.rules.base import (
    BUCKET,
    GATEWAY_CHART_DIR,
    IAM_POLICY,
    IAM_ROLE,
    IAM_ROLE_POLICY,
    IAM_ROLE_POLICY_ATTACHMENT,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_int,
    as_list,
    policy_document,
    statements,
)

BUCKET_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
BUCKET_VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
BUCKET_LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
# The naming contract (infra/components/batch_files.py bucket_prefix): llmp-<stack>-batch-<zone>-<AWS's suffix>.
BATCH_BUCKET = re.compile(r"^llmp-.+-batch-[a-z0-9-]+$")
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
# A batch file may be kept at most this long (days): OpenAI's own default expiry for batch output files is 30 days
# (https://platform.openai.com/docs/api-reference/files/create, `expires_after`); a stack may keep them longer, but
# never without an expiry, and not for more than a year.
MAX_RETENTION_DAYS = 365

STORES_DESCRIPTION = (
    " The batch file buckets (OpenAI Batch API inputs and outputs, one per residency zone that runs a batch-enabled "
    "gateway, in the zone's first region) encrypt with SSE-KMS under a key this stack creates in the bucket's "
    "region, block every kind of public access (all four public access block settings), refuse requests without "
    "TLS (a bucket policy denying every principal when aws:SecureTransport is false, on the bucket and its "
    "objects), are not versioned (nor suspended), and expire all their files (a rule filtered by tag or size does "
    f"not count) through an enabled lifecycle rule within {MAX_RETENTION_DAYS} days; in prod they are not "
    "force-destroyed with their files. Each gateway's rendered "
    "`batch.files.s3` names its zone's bucket, in that bucket's region, with the key that bucket encrypts with.")
RESIDENCY_DESCRIPTION = (
    " A gateway's batch files (its rendered `batch.files.s3`) live in a bucket this stack creates in a region of the "
    "gateway's own zone, and no batch bucket replicates outside its zone.")
ACCESS_DESCRIPTION = (
    " A batch file bucket is reachable (any s3 action on it or its objects) only by the gateway roles of its own "
    "zone's regions, whatever grants it (a role's inline policies, managed policies the stack attaches, wildcards "
    "matching the bucket as IAM matches them, NotAction / NotResource taken as everything), and its bucket policy "
    "grants nothing (it only denies); each of those gateway roles whose config enables batch may get, put and delete "
    "the files and use the bucket's key through S3 in the bucket's region only.")


def batch_buckets(resources: Resources) -> list[Resource]:
    """The stack's batch file buckets, by the naming contract."""
    return [b for b in resources.of_type(BUCKET)
            if BATCH_BUCKET.match(str(b.outputs.get("bucket") or b.inputs.get("bucket") or ""))]


def gateway_files(resources: Resources) -> list[tuple[Resource, Mapping[str, Any]]]:
    """(gateway release, its rendered `batch.files.s3`) for every gateway whose config enables batch on S3."""
    out = []
    for release in resources.releases(GATEWAY_CHART_DIR):
        batch = ((release.inputs.get("values") or {}).get("config") or {}).get("batch") or {}
        s3 = (batch.get("files") or {}).get("s3")
        if s3:
            out.append((release, s3))
    return out


def _attached(resources: Resources, typ: str, bucket: Resource) -> list[Resource]:
    names = {str(bucket.outputs.get(k)) for k in ("id", "bucket") if bucket.outputs.get(k)}
    return [r for r in resources.of_type(typ) if str(r.inputs.get("bucket")) in names]


def _tls_only(doc: Mapping[str, Any] | None, arn: str) -> bool:
    for s in statements(doc or {}):
        condition = ((s.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")
        resources = set(as_list(s.get("Resource")))
        if (s.get("Effect") == "Deny" and s.get("Principal") in ("*", {"AWS": "*"}) and str(condition) == "false"
                and {"s3:*"} >= set(as_list(s.get("Action"))) and {arn, f"{arn}/*"} <= resources):
            return True
    return False


def _expiry_days(lifecycle: list[Resource]) -> int | None:
    """The shortest expiry of an enabled rule covering every file: no filter, or a prefix of `files/` alone. A rule
    filtered by tag or object size (`tag`, `and`, `objectSize*`) expires only the files that match it, so it does
    not count (S3 lifecycle filters: https://docs.aws.amazon.com/AmazonS3/latest/userguide/intro-lifecycle-filters.html)."""
    days = []
    for config in lifecycle:
        for rule in as_list(config.inputs.get("rules")):
            filtered = rule.get("filter") or {}
            prefix = str(filtered.get("prefix") or rule.get("prefix") or "")
            narrowed = any(v not in (None, "", {}, [], 0) for k, v in filtered.items() if k != "prefix")
            expiry = as_int((rule.get("expiration") or {}).get("days"))
            if rule.get("status") == "Enabled" and expiry > 0 and "files/".startswith(prefix) and not narrowed:
                days.append(expiry)
    return min(days) if days else None


def judge_stores(resources: Resources, policy: PolicyConfig, keys: Mapping[str, str], found: Findings) -> None:
    """data-stores: each batch bucket's encryption, privacy, TLS, versioning and expiry; each gateway's files."""
    buckets = batch_buckets(resources)
    for bucket in buckets:
        where = f"batch bucket {bucket.outputs.get('bucket')} in {bucket.region}"
        arn = str(bucket.outputs.get("arn") or f"arn:aws:s3:::{bucket.outputs.get('bucket')}")
        rules = [rule.get("applyServerSideEncryptionByDefault") or {}
                 for c in _attached(resources, BUCKET_SSE, bucket) for rule in as_list(c.inputs.get("rules"))]
        kms = [str(r.get("kmsMasterKeyId") or "") for r in rules if str(r.get("sseAlgorithm")).startswith("aws:kms")]
        blocks = _attached(resources, PUBLIC_ACCESS_BLOCK, bucket)
        private = bool(blocks) and all(all(b.inputs.get(f) is True for f in PUBLIC_ACCESS_FLAGS) for b in blocks)
        tls = any(_tls_only(policy_document(p.inputs.get("policy")), arn)
                  for p in _attached(resources, BUCKET_POLICY, bucket))
        versioning = [str((v.inputs.get("versioningConfiguration") or {}).get("status"))
                      for v in _attached(resources, BUCKET_VERSIONING, bucket)]
        expiry = _expiry_days(_attached(resources, BUCKET_LIFECYCLE, bucket))
        found.judged(bucket, store="batch-files", bucket=bucket.outputs.get("bucket"), kms_keys=kms,
                     public_access_blocked=private, tls_only=tls, versioning=versioning or ["(none)"],
                     expires_after_days=expiry, force_destroy=bucket.inputs.get("forceDestroy") is True)
        if not kms or any(keys.get(k) != bucket.region for k in kms) or len(rules) != len(kms):
            found.fail(f"{where} is not encrypted with SSE-KMS under a key this stack creates in {bucket.region} "
                       f"(default encryption: {rules or 'none'}); batch files are customer prompts and answers")
        if not private:
            found.fail(f"{where} does not block all public access ({', '.join(PUBLIC_ACCESS_FLAGS)} all true)")
        if not tls:
            found.fail(f"{where} has no bucket policy refusing requests without TLS (Deny, Principal *, "
                       f"aws:SecureTransport false, on the bucket and its objects)")
        # Suspended is no better: the versions kept while it was enabled stay, and no expiry here removes them.
        if {"Enabled", "Suspended"} & set(versioning):
            found.fail(f"{where} is versioned ({', '.join(versioning)}): a deleted file would live on as an old "
                       f"version past its retention")
        if expiry is None or expiry > MAX_RETENTION_DAYS:
            found.fail(f"{where} has no enabled lifecycle rule expiring its files within {MAX_RETENTION_DAYS} days "
                       f"(found: {expiry or 'none'})")
        if policy.environment == "prod" and bucket.inputs.get("forceDestroy") is True:
            found.fail(f"{where} is force-destroyed with its files: in prod a destroy must stop at a non-empty bucket")
    by_name = {str(b.outputs.get("bucket")): b for b in buckets}
    for release, s3 in gateway_files(resources):
        named = by_name.get(str(s3.get("bucket")))
        found.judged(release, batch_files_bucket=s3.get("bucket"), batch_files_region=s3.get("region"))
        if named is None:
            found.fail(f"the gateway in {release.region} keeps batch files in {s3.get('bucket')}, which is not a "
                       f"batch bucket this stack creates")
            continue
        if s3.get("region") != named.region:
            found.fail(f"the gateway in {release.region} calls batch bucket {s3.get('bucket')} in "
                       f"{s3.get('region')}, but it is in {named.region}")
        kms = [str((rule.get("applyServerSideEncryptionByDefault") or {}).get("kmsMasterKeyId") or "")
               for c in _attached(resources, BUCKET_SSE, named) for rule in as_list(c.inputs.get("rules"))]
        if s3.get("kms_key_id") and str(s3.get("kms_key_id")) not in kms:
            found.fail(f"the gateway in {release.region} writes batch files with key {s3.get('kms_key_id')}, not "
                       f"the bucket's ({', '.join(kms) or 'none'})")
    zones_used: dict[str, set[str]] = {}
    for release, _ in gateway_files(resources):
        zones_used.setdefault(policy.zone_of(release.region) or "?", set())
    for bucket in buckets:
        zones_used.setdefault(policy.zone_of(bucket.region) or "?", set()).add(str(bucket.outputs.get("bucket")))
    for zone, names in sorted(zones_used.items()):
        found.judged(None, batch_zone=zone, batch_buckets=sorted(names))
        if len(names) != 1:
            found.fail(f"residency zone {zone!r} has {len(names) or 'no'} batch buckets "
                       f"({', '.join(sorted(names)) or 'none'}); its gateways share exactly one")


def judge_residency(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """region-residency: a gateway's batch files live in its own zone (replication is judged for every bucket)."""
    by_name = {str(b.outputs.get("bucket")): b for b in resources.of_type(BUCKET)}
    for release, s3 in gateway_files(resources):
        zone = policy.zone_of(release.region)
        bucket = by_name.get(str(s3.get("bucket")))
        bucket_zone = policy.zone_of(bucket.region) if bucket is not None else None
        found.judged(release, batch_files_bucket=s3.get("bucket"), gateway_zone=zone, bucket_zone=bucket_zone)
        if bucket is None:
            found.fail(f"the gateway in {release.region} keeps batch files in {s3.get('bucket')}, a bucket this stack "
                       f"does not create: it cannot be shown to stay in zone {zone!r}")
        elif bucket_zone != zone or policy.zone_of(str(s3.get("region"))) != zone:
            found.fail(f"the gateway in {release.region} (zone {zone!r}) keeps batch files in {s3.get('bucket')} in "
                       f"{bucket.region} (zone {bucket_zone!r}): outside its zone")


def _grants(doc: Mapping[str, Any] | None) -> list[tuple[list[str], list[str]]]:
    """(actions, resources) of each Allow; NotAction / NotResource grant all but a list: taken as `*`."""
    return [([str(a) for a in as_list(s.get("Action"))] if "NotAction" not in s else ["*"],
             [str(r) for r in as_list(s.get("Resource"))] if "NotResource" not in s else ["*"])
            for s in statements(doc or {}) if s.get("Effect") == "Allow"]


def _iam_match(pattern: str, value: str) -> bool:
    """IAM's wildcards: `*` spans any characters, `/` included; `?` is one character; case-sensitive (ARNs)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None


# What a statement's Action must match (one of) to count as reaching a bucket: S3's object and bucket calls.
_S3_PROBES = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:PutBucketPolicy")


def _reaches_s3(actions: list[str]) -> bool:
    return any(_iam_match(a.lower(), probe.lower()) for a in actions for probe in _S3_PROBES)


def _role_documents(resources: Resources) -> list[tuple[str, Resource, Mapping[str, Any] | None]]:
    """(role name or ARN, the resource granting it, the document) for every identity policy a role gets: inline
    (RolePolicy, or the role's own inlinePolicies) and managed policies this stack creates and attaches."""
    docs: list[tuple[str, Resource, Mapping[str, Any] | None]] = [
        (str(p.inputs.get("role")), p, policy_document(p.inputs.get("policy")))
        for p in resources.of_type(IAM_ROLE_POLICY)]
    for role in resources.of_type(IAM_ROLE):
        for inline in as_list(role.inputs.get("inlinePolicies")):
            docs.append((str(role.outputs.get("name")), role, policy_document((inline or {}).get("policy"))))
    managed = {str(p.outputs.get("arn")): p for p in resources.of_type(IAM_POLICY)}
    for attachment in resources.of_type(IAM_ROLE_POLICY_ATTACHMENT):
        policy = managed.get(str(attachment.inputs.get("policyArn")))
        if policy is not None:
            docs.append((str(attachment.inputs.get("role")), policy, policy_document(policy.inputs.get("policy"))))
    return docs


def judge_access(resources: Resources, policy: PolicyConfig, gateway_roles: Mapping[str, str],
                 found: Findings) -> None:
    """secret-scope: only the zone's gateway roles reach a batch bucket; each batch-enabled one can use it."""
    roles = {str(r.outputs.get("name")): str(r.outputs.get("arn")) for r in resources.of_type(IAM_ROLE)}
    buckets = {str(b.outputs.get("bucket")): b for b in batch_buckets(resources)}
    uses: dict[str, dict[str, set[str]]] = {}  # role ARN -> bucket -> actions granted on it or its objects
    key_uses: dict[str, dict[str, set[str]]] = {}  # role ARN -> KMS key ARN -> kms actions granted on it
    role_documents = _role_documents(resources)
    for role, _, doc in role_documents:
        role_arn = roles.get(role, role)
        for actions, targets in _grants(doc):
            for target in targets:
                # A pattern reaches a bucket if it matches the bucket or an object in it (IAM's `*` spans `/`).
                for name in buckets:
                    arn = f"arn:aws:s3:::{name}"
                    if _reaches_s3(actions) and (_iam_match(target, arn) or _iam_match(target, f"{arn}/files/x")):
                        uses.setdefault(role_arn, {}).setdefault(name, set()).update(actions)
                if target.startswith("arn:aws:kms:"):
                    key_uses.setdefault(role_arn, {}).setdefault(target, set()).update(actions)
    # A bucket policy could grant what no identity policy does (same account: either one suffices): a batch bucket's
    # policy only denies (TLS), and every grant is a gateway role's own policy, judged above.
    for name, bucket in sorted(buckets.items()):
        for p in _attached(resources, BUCKET_POLICY, bucket):
            for s in statements(policy_document(p.inputs.get("policy")) or {}):
                if s.get("Effect") == "Allow":
                    found.fail(f"batch bucket {name}: its bucket policy grants {s.get('Action')} to "
                               f"{s.get('Principal')}; only its zone's gateway roles' own policies may grant access")
    for role_arn, granted in sorted(uses.items()):
        for name in sorted(granted):
            bucket = buckets[name]
            zone, region = policy.zone_of(bucket.region), gateway_roles.get(role_arn)
            found.judged(None, batch_bucket=name, role=role_arn, role_gateway_region=region,
                         actions=sorted(granted[name]))
            if region is None:
                found.fail(f"{role_arn} may use batch bucket {name}, but it is no gateway's role: only the gateways "
                           f"of zone {zone!r} may")
            elif policy.zone_of(region) != zone:
                found.fail(f"the gateway role of {region} (zone {policy.zone_of(region)!r}) may use batch bucket "
                           f"{name} of zone {zone!r}: a zone's batch files are its own gateways' only")
    needed = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    for release, s3 in gateway_files(resources):
        role_arn = str(((release.inputs.get("values") or {}).get("serviceAccount") or {}).get("roleArn") or "")
        name, key = str(s3.get("bucket")), str(s3.get("kms_key_id") or "")
        missing = sorted(needed - uses.get(role_arn, {}).get(name, set()))
        if missing:
            found.fail(f"the gateway role of {release.region} may not {', '.join(missing)} in its batch bucket "
                       f"{name}: the gateway there could not keep batch files")
        # Writing asks KMS for a data key, reading for its decryption: the secrets' kms:Decrypt alone is not enough.
        if key and not {"kms:GenerateDataKey", "kms:Decrypt"} <= key_uses.get(role_arn, {}).get(key, set()):
            found.fail(f"the gateway role of {release.region} may not use {key}, the key its batch files are "
                       f"encrypted with (kms:GenerateDataKey and kms:Decrypt)")
        home = buckets.get(name)
        if key and home is not None:
            _judge_key_use(role_documents, roles, role_arn, key, home.region, release.region, found)


def _via_services(statement: Mapping[str, Any]) -> set[str] | None:
    """The services a statement's kms:ViaService condition (StringEquals / StringLike) names; None without one."""
    for operator in ("StringEquals", "StringLike"):
        for k, v in ((statement.get("Condition") or {}).get(operator) or {}).items():
            if str(k).lower() == "kms:viaservice":
                return {str(x) for x in as_list(v)}
    return None


def _judge_key_use(documents: list[tuple[str, Resource, Mapping[str, Any] | None]], roles: Mapping[str, str],
                   role_arn: str, key: str, bucket_region: str, gateway_region: str, found: Findings) -> None:
    """The gateway uses the batch key only through S3 in the bucket's region (kms:ViaService): its credentials alone
    cannot decrypt a file's data key taken from elsewhere, nor make data keys for anything but S3's objects."""
    s3 = f"s3.{bucket_region}.amazonaws.com"
    for role, source, doc in documents:
        if roles.get(role, role) != role_arn:
            continue
        for statement in statements(doc or {}):
            actions = [str(a) for a in as_list(statement.get("Action"))] if "NotAction" not in statement else ["*"]
            targets = [str(r) for r in as_list(statement.get("Resource"))] if "NotResource" not in statement \
                else ["*"]
            if statement.get("Effect") != "Allow" or not any(_iam_match(t, key) for t in targets):
                continue
            uses = {a for a in actions if any(_iam_match(a.lower(), x) for x in ("kms:decrypt", "kms:generatedatakey"))}
            via = _via_services(statement)
            # The secrets' statement (kms:Decrypt via Secrets Manager) names a service too; what it must not be is
            # unconditioned, and a data key is made for S3 alone.
            if uses and (via is None or not via or any("*" in v for v in via)
                         or (any(_iam_match(a.lower(), "kms:generatedatakey") for a in actions) and via != {s3})):
                found.fail(f"{source.name}: the gateway role of {gateway_region} may use {key}, its batch files' key, "
                           f"{'without a kms:ViaService condition' if not via else f'via {sorted(via)}'}: only "
                           f"through S3 in the bucket's region ({s3})")
