"""Control `region-residency`: every resource stays in a region its residency zone allows; restricted models and secret
replicas stay in their zone."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from infra import bedrock
from infra.policy.rules import batch_files
from infra.policy.rules.base import (
    BUCKET,
    BUCKET_REPLICATION,
    COMPONENT_LABEL,
    DNS_RECORD,
    GATEWAY_CHART_DIR,
    GLOBAL,
    HELM_RELEASE,
    IAM_ROLE,
    IAM_ROLE_POLICY,
    IRSA_ANNOTATION,
    JOB,
    KMS_KEY,
    KMS_REPLICA_KEY,
    MODEL_LABEL,
    SECRET,
    STAGER_COMPONENT,
    TAG_RESIDENCY,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_list,
    policy_document,
    statements,
)
from infra.policy.rules.stores import (
    DB_BACKUP_REPLICATION,
    DB_INSTANCE,
    DB_SNAPSHOT_COPY,
    GLOBAL_REPLICATION_GROUP,
    REPLICATION_GROUP,
    managed_secret_arns,
    peer_key_secret_name,
)

# The only resource types allowed outside a region: AWS services that have none. Anything else
# recorded as "global" was created through the global-services provider by mistake.
GLOBAL_SERVICE_TYPES = frozenset({
    "aws:iam/role:Role",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/policy:Policy",
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider",
    "aws:route53/zone:Zone",
    "aws:route53/record:Record",
    "aws:route53/healthCheck:HealthCheck",
    "aws:budgets/budget:Budget",
    "aws:costexplorer/costAllocationTag:CostAllocationTag",
})

# A zone named after a jurisdiction may only list that jurisdiction's AWS regions: a typo in
# `residency.eu` must not quietly make us-east-1 "EU".
JURISDICTIONS = {"eu": "eu-", "us": "us-", "ca": "ca-", "ap": "ap-", "sa": "sa-", "me": "me-", "af": "af-",
                 "il": "il-", "mx": "mx-"}

DESCRIPTION = (
    "Every regional resource the program creates (AWS resources through the region's provider, Kubernetes "
    "resources through the region's cluster) sits in a region that the residency zone the stack declares for "
    "it allows, and AWS resources carry that zone in their llm-platform:residency tag. A zone named after a "
    "jurisdiction (eu, us, ...) lists only that jurisdiction's AWS regions. Models restricted to a zone are "
    "served (vLLM releases) only in regions of that zone. Secret replicas (but the gateway peer key's, below) and "
    "KMS replica keys stay in the zone of their primary. Only global services, by an explicit list (IAM roles, "
    "policies and OIDC providers, "
    "Route53 zones, records and health checks, AWS Budgets and the cost allocation tag's activation), exist "
    "outside a region. Model weights stay in their zone too: a bucket replicates only to buckets of the stack "
    "in its own zone, and a restricted model's weights are staged (by its staging Jobs) and loaded (by its "
    "releases' s3:// sources) only from buckets in regions of its zone, whether the Job or release is the "
    "model's or the path it writes or reads names the model's prefix (<model>/<revision>). Instance events "
    "(Karpenter's interruption rules) go only to a target in the rule's own region. Each residency zone has "
    "its own DNS name (<zone>.<domain>) whose records route only to the zone's regions, both by their latency "
    "region and by the load balancer they point at: Route 53 answers only from the record set asked for, even "
    "when all of it is unhealthy, so that name never resolves outside the zone. A gateway's Amazon Bedrock fallbacks "
    "(its rendered config) are processed only in regions of its zone: the region it calls and, for a cross-region "
    "inference profile (us., eu., apac., ...), every region the profile may route to (infra/bedrock_profiles.yaml); "
    "and its role may invoke Bedrock only in regions of its zone. Each region's AWS Load Balancer "
    "Controller manages load balancers in its own region only: its release names its cluster's region, and its "
    "role carries a deny of every non-IAM action requested in any other region (aws:RequestedRegion), since "
    "the controller's upstream policy names every region. "
    "No AWS resource names a region of its own (pulumi-aws 7's per-resource region) other than its provider's. "
    "Each gateway's stores live in its own region: its ElastiCache replication group (<region>-gateway-redis) and "
    "its RDS PostgreSQL ledger (<region>-gateway-ledger) are created in that region, the ledger its rendered config "
    "names is an instance the stack creates there, and the secret RDS keeps the ledger's master password in, and the "
    "one the gateway reads it from, are in that region too. Copies of a ledger (read replicas, snapshot copies, "
    "replicated automated backups) stay in its zone, and no ElastiCache global datastore copies a Redis elsewhere. "
    "Secret replicas stay in their zone, except the gateway peer key, which every region of the stack holds: a random "
    "token gateways authenticate each other with, carrying no user data (see secret-scope)."
    + batch_files.RESIDENCY_DESCRIPTION)

# The AWS Load Balancer Controller's chart (infra/components/load_balancer.py).
LB_CONTROLLER_CHART = "aws-load-balancer-controller"

EVENT_RULE = "aws:cloudwatch/eventRule:EventRule"
EVENT_TARGET = "aws:cloudwatch/eventTarget:EventTarget"


def _event_targets(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """An EventBridge target in another region would carry the region's instance events (ids, states, zones)
    across zones: every target (Karpenter's interruption queue) must be in its rule's region."""
    for target in resources.of_type(EVENT_TARGET):
        where = _arn_region(str(target.inputs.get("arn") or ""))
        found.judged(target, rule_region=target.region, target_region=where or None)
        if where != target.region:
            found.fail(f"EventBridge target {target.name} of a rule in {target.region} delivers to "
                       f"{target.inputs.get('arn')}, outside the rule's region (zone "
                       f"{policy.zone_of(target.region)!r})")

# ELB hostnames name their region: <name>-<hash>.elb.<region>.amazonaws.com
_ELB_REGION = re.compile(r"\.elb\.([a-z0-9-]+)\.amazonaws\.com\.?$")


def _arn_region(arn: str) -> str:
    parts = str(arn).split(":")
    return parts[3] if len(parts) > 3 else ""


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    zone: str | None  # a declared zone here; below, the zone of a resource's region, if any
    for zone, regions in policy.residency.items():
        prefix = JURISDICTIONS.get(zone)
        found.judged(None, zone=zone, allows=list(regions), jurisdiction_prefix=prefix)
        for region in regions:
            if prefix and not region.startswith(prefix):
                found.fail(f"residency zone {zone!r} lists {region}, which is outside the {zone.upper()} "
                           f"jurisdiction (only {prefix}* regions)")

    placed: Counter[tuple[str, str]] = Counter()
    global_types: Counter[str] = Counter()
    for r in resources.all:
        if r.region == GLOBAL:
            global_types[r.type] += 1
            if r.type not in GLOBAL_SERVICE_TYPES:
                found.fail(f"{r.type} {r.name} is created outside any region (global-services provider); only "
                           f"IAM, Route53, Budgets and Cost Explorer may be")
            continue
        zone = policy.zone_of(r.region)
        if zone is None:
            found.fail(f"{r.type} {r.name} is in {r.region}, which is not one of the stack's regions")
            continue
        placed[(r.region, zone)] += 1
        # pulumi-aws 7 lets a resource name its own region, overriding its provider's: every per-region rule
        # would then judge it where it is not.
        if r.type.startswith("aws:") and r.inputs.get("region") and str(r.inputs.get("region")) != r.region:
            found.fail(f"{r.type} {r.name} is created through the {r.region} provider but names region "
                       f"{r.inputs.get('region')} itself (zone {policy.zone_of(str(r.inputs.get('region')))!r})")
        if r.region not in policy.residency.get(zone, []):
            found.fail(f"{r.type} {r.name} is in {r.region}, outside residency zone {zone!r} "
                       f"({', '.join(policy.residency.get(zone, []))})")
        tagged = (r.tags or {}).get(TAG_RESIDENCY)
        if r.type.startswith("aws:") and tagged != zone:
            found.fail(f"{r.type} {r.name} in {r.region} is tagged residency {tagged!r}, but {r.region} is in "
                       f"zone {zone!r}")
    for (region, zone), n in sorted(placed.items()):
        found.judged(None, region=region, zone=zone, resources=n)
    found.judged(None, outside_any_region={t: n for t, n in sorted(global_types.items())})

    served: dict[str, set[str]] = {}
    for release, model in resources.model_releases():
        served.setdefault(model, set()).add(release.region)
        intent = policy.models.get(model)
        restricted = intent.residency if intent else None
        if restricted and policy.zone_of(release.region) != restricted:
            found.fail(f"model {model} is restricted to zone {restricted!r} but release {release.name} serves it "
                       f"in {release.region} (zone {policy.zone_of(release.region)!r})")
    for model, intent in sorted(policy.models.items()):
        if intent.residency:
            found.judged(None, model=model, restricted_to=intent.residency,
                         served_in=sorted(served.get(model, set())))

    _zone_names(resources, policy, found)
    _weights(resources, policy, found)
    batch_files.judge_residency(resources, policy, found)
    _bedrock(resources, policy, found)
    _load_balancer_controllers(resources, found)
    _event_targets(resources, policy, found)

    for secret in resources.of_type(SECRET):
        zone = policy.zone_of(secret.region)
        replicas = [(str(rep.get("region")), str(rep.get("kmsKeyId") or ""))
                    for rep in as_list(secret.inputs.get("replicas"))]
        found.judged(secret, secret=secret.inputs.get("name"), zone=zone, replicas=[r for r, _ in replicas])
        shared = secret.inputs.get("name") == peer_key_secret_name(policy.stack)
        for region, key in replicas:
            if shared and policy.zone_of(region) is not None:
                pass  # the gateway peer key: a random token every zone's gateways share, no user data (secret-scope)
            elif policy.zone_of(region) != zone or region not in policy.residency.get(zone or "", []):
                found.fail(f"secret {secret.inputs.get('name')} ({secret.region}, zone {zone!r}) is replicated to "
                           f"{region}, outside its zone")
            if key and _arn_region(key) != region:
                found.fail(f"secret {secret.inputs.get('name')} replica in {region} is encrypted with a key in "
                           f"{_arn_region(key)}")
    primaries = {str(k.outputs.get("arn")): k for k in resources.of_type(KMS_KEY)}
    for replica in resources.of_type(KMS_REPLICA_KEY):
        primary = primaries.get(str(replica.inputs.get("primaryKeyArn")))
        if primary is not None and policy.zone_of(primary.region) != policy.zone_of(replica.region):
            found.fail(f"KMS replica key {replica.name} in {replica.region} copies a key from {primary.region}, "
                       f"another residency zone")
    _alert_destinations(resources, found)
    _gateway_stores(resources, policy, found)
    return found


def _gateway_stores(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """Each gateway's stores, and every copy of them, stay in the gateway's region (copies at most in its zone):
    spend rows and key records never leave their zone."""
    dbs = resources.of_type(DB_INSTANCE)
    db_by_ref = {str(ref): db for db in dbs for ref in (db.outputs.get("arn"), db.outputs.get("identifier"),
                                                         db.inputs.get("identifier")) if ref}
    for store in resources.of_type(REPLICATION_GROUP) + dbs:
        if store.inputs.get("replicateSourceDb"):
            continue  # a read replica: judged below by its source's zone
        named_for = store.name.split("-gateway-", 1)[0] if "-gateway-" in store.name else None
        zone = policy.zone_of(store.region)
        found.judged(store, store_of_gateway_in=named_for, zone=zone)
        prefix = JURISDICTIONS.get(zone or "")
        if zone and prefix and not store.region.startswith(prefix):
            held = "key records and spend rows" if store.type == DB_INSTANCE else "limit and budget counters"
            found.fail(f"{store.type.rsplit(':', 1)[-1]} {store.name} would keep zone {zone!r}'s {held} in "
                       f"{store.region}, outside the {zone.upper()} jurisdiction")
        if named_for and named_for != store.region:
            found.fail(f"{store.type.rsplit(':', 1)[-1]} {store.name}, the store of the gateway in {named_for} (zone "
                       f"{policy.zone_of(named_for)!r}), is created in {store.region} (zone "
                       f"{policy.zone_of(store.region)!r})")
    for db in dbs:
        for arn in managed_secret_arns(db):
            if _arn_region(arn) != db.region:
                found.fail(f"the master password secret of {db.name} ({db.region}) is in {_arn_region(arn)}")
        source_ref = db.inputs.get("replicateSourceDb")
        if source_ref:
            source = db_by_ref.get(str(source_ref))
            found.judged(db, read_replica_of=str(source_ref), zone=policy.zone_of(db.region))
            if source is None or policy.zone_of(source.region) != policy.zone_of(db.region):
                found.fail(f"RDS read replica {db.name} in {db.region} (zone {policy.zone_of(db.region)!r}) copies "
                           f"{source.name + ' in ' + source.region if source else source_ref}, "
                           f"{'outside its zone' if source else 'a database the stack does not create'}")
    for copy in resources.of_type(DB_SNAPSHOT_COPY) + resources.of_type(DB_BACKUP_REPLICATION):
        source_arn = str(copy.inputs.get("sourceDbSnapshotIdentifier") or copy.inputs.get("sourceDbInstanceArn") or "")
        into = str(copy.inputs.get("destinationRegion") or copy.region)
        source_region = _arn_region(source_arn) or copy.region
        found.judged(copy, copies=source_arn, into=into)
        if policy.zone_of(into) is None or policy.zone_of(into) != policy.zone_of(source_region):
            found.fail(f"{copy.type.rsplit(':', 1)[-1]} {copy.name} copies the ledger's backups from {source_region} "
                       f"(zone {policy.zone_of(source_region)!r}) to {into}, outside its zone")
    for datastore in resources.of_type(GLOBAL_REPLICATION_GROUP):
        found.fail(f"ElastiCache global datastore {datastore.name} ({datastore.region}): a region's Redis is its own; "
                   f"a global datastore would copy it to other regions")
    _gateway_store_references(resources, policy, found)


def _gateway_store_references(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """The ledger each gateway's rendered config names is an instance the stack creates in the gateway's region."""
    addresses = {str(db.outputs.get("address")): db for db in resources.of_type(DB_INSTANCE)
                 if db.outputs.get("address")}
    for release in resources.releases(GATEWAY_CHART_DIR):
        ledger = ((release.inputs.get("values") or {}).get("config") or {}).get("ledger") or {}
        if not ledger:
            continue
        authority = str(ledger.get("store") or "").partition("://")[2].partition("/")[0].rpartition("@")[2]
        host = authority.rpartition(":")[0] if authority.count(":") == 1 else authority
        secret = str(ledger.get("store_password_secret") or "")
        db = addresses.get(host)
        found.judged(release, ledger_host=host, ledger_region=db.region if db else None,
                     ledger_password_secret_region=_arn_region(secret) or None)
        if db is None:
            found.fail(f"the gateway in {release.region} keeps its ledger at {host or '(no host)'}, which is not an "
                       f"RDS instance the stack creates: it cannot be shown to stay in zone "
                       f"{policy.zone_of(release.region)!r}")
        elif db.region != release.region:
            found.fail(f"the gateway in {release.region} (zone {policy.zone_of(release.region)!r}) keeps its ledger in "
                       f"{db.name} in {db.region} (zone {policy.zone_of(db.region)!r}); each gateway's stores are in "
                       f"its own region")
        if secret and _arn_region(secret) != release.region:
            found.fail(f"the gateway in {release.region} reads its ledger password from {secret}, in "
                       f"{_arn_region(secret)}")


def _alert_destinations(resources: Resources, found: Findings) -> None:
    """Alerts carry model, team and region names: each region's Alertmanager sends them to an SNS topic in its own
    region, signing for that region, never elsewhere."""
    for release in resources.of_type(HELM_RELEASE):
        if release.inputs.get("chart") != "kube-prometheus-stack":
            continue
        config = (((release.inputs.get("values") or {}).get("alertmanager") or {}).get("config") or {})
        for receiver in as_list(config.get("receivers")):
            for sns in as_list((receiver or {}).get("sns_configs")):
                arn, signed = str(sns.get("topic_arn") or ""), str((sns.get("sigv4") or {}).get("region") or "")
                found.judged(release, alert_topic=arn, sigv4_region=signed)
                if _arn_region(arn) != release.region or signed != release.region:
                    found.fail(f"Alertmanager of release {release.name} in {release.region} sends alerts to {arn} "
                               f"(signed for {signed or 'no region'}), outside its own region")


def _zone_names(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """Every zone's name routes only to that zone's regions, judged by the records the program creates."""
    records_of: dict[str, list[Resource]] = {zone: [] for zone in policy.residency}
    for record in resources.of_type(DNS_RECORD):
        label = str(record.inputs.get("name") or "").split(".", 1)[0]
        if label in records_of:
            records_of[label].append(record)
    for zone, records in sorted(records_of.items()):
        allowed = policy.residency[zone]
        if not records:
            found.fail(f"residency zone {zone!r} has no DNS name of its own ({zone}.<domain>): its clients can only "
                       f"use the global name, which routes to every zone")
        for record in records:
            latency = [str(p.get("region")) for p in as_list(record.inputs.get("latencyRoutingPolicies"))]
            targets = [str(t) for t in as_list(record.inputs.get("records"))]
            target_regions = [m.group(1) if (m := _ELB_REGION.search(t)) else None for t in targets]
            found.judged(record, zone_name=record.inputs.get("name"), zone=zone, latency_region=latency,
                         targets=targets, target_regions=target_regions)
            name = record.inputs.get("name")
            for region in latency:
                if region not in allowed:
                    found.fail(f"DNS record {record.name} routes {name} (residency zone {zone!r}) by latency from "
                               f"{region}, outside the zone ({', '.join(allowed)})")
            for target, target_region in zip(targets, target_regions):
                if target_region is None:
                    found.fail(f"DNS record {record.name} points {name} (residency zone {zone!r}) at {target}, "
                               f"which is not a load balancer whose region can be told")
                elif target_region not in allowed:
                    found.fail(f"DNS record {record.name} points {name} (residency zone {zone!r}) at a load "
                               f"balancer in {target_region}, outside the zone ({', '.join(allowed)})")
            if not latency and not targets:
                found.fail(f"DNS record {record.name} for {name} (residency zone {zone!r}) is an alias or empty: "
                           f"it cannot be shown to stay in the zone")


def _bucket_of(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0]


def _model_of_path(key: str) -> str:
    """The model whose weights a key or prefix of a weights bucket holds: its first segment (<model>/<revision>/...)."""
    return key.split("/", 1)[0]


def _weights(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """Weights buckets replicate only inside their zone; a restricted model's weights are staged into and
    loaded from buckets in its zone only."""
    buckets = {str(b.outputs.get("bucket")): b for b in resources.of_type(BUCKET) if b.outputs.get("bucket")}
    by_arn = {str(b.outputs.get("arn")): b for b in resources.of_type(BUCKET) if b.outputs.get("arn")}
    for bucket in buckets.values():
        found.judged(bucket, bucket=bucket.outputs.get("bucket"), zone=policy.zone_of(bucket.region))
    for replication in resources.of_type(BUCKET_REPLICATION):
        source = buckets.get(str(replication.inputs.get("bucket")))
        zone = policy.zone_of(source.region if source else replication.region)
        for rule in as_list(replication.inputs.get("rules")):
            target = str((rule.get("destination") or {}).get("bucket") or "")
            dest = by_arn.get(target) or buckets.get(target.removeprefix("arn:aws:s3:::"))
            if dest is None:
                found.fail(f"bucket replication {replication.name} copies {replication.inputs.get('bucket')} to "
                           f"{target}, a bucket the stack does not create: it cannot be shown to stay in zone {zone!r}")
            elif policy.zone_of(dest.region) != zone:
                found.fail(f"bucket replication {replication.name} copies {replication.inputs.get('bucket')} "
                           f"(zone {zone!r}) to {dest.outputs.get('bucket')} in {dest.region}, outside its zone")

    where: dict[str, dict[str, set[str]]] = {}  # model -> {"staged_in"|"loaded_from": regions}

    def place(model: str, what: str, name: str, bucket_name: str) -> None:
        restricted = (intent.residency if (intent := policy.models.get(model)) else None)
        bucket = buckets.get(bucket_name)
        region = bucket.region if bucket is not None else "an unknown region"
        where.setdefault(model, {}).setdefault(what, set()).add(region)
        if restricted is None:
            return
        if bucket is None:
            found.fail(f"{name} puts model {model}'s weights (restricted to zone {restricted!r}) in bucket "
                       f"{bucket_name}, which the stack does not create: it cannot be shown to stay in the zone")
        elif policy.zone_of(bucket.region) != restricted:
            found.fail(f"{name} puts model {model}'s weights (restricted to zone {restricted!r}) in bucket "
                       f"{bucket_name} in {bucket.region} (zone {policy.zone_of(bucket.region)!r})")

    for job in resources.of_type(JOB):
        labels = (job.inputs.get("metadata") or {}).get("labels") or {}
        if labels.get(COMPONENT_LABEL) != STAGER_COMPONENT:
            continue
        model = str(labels.get(MODEL_LABEL))
        restricted = (intent.residency if (intent := policy.models.get(model)) else None)
        if restricted and policy.zone_of(job.region) != restricted:
            found.fail(f"staging job {job.name} downloads model {model} (restricted to zone {restricted!r}) in "
                       f"{job.region} (zone {policy.zone_of(job.region)!r})")
        pod = (((job.inputs.get("spec") or {}).get("template") or {}).get("spec") or {})
        for container in as_list(pod.get("containers")):
            env = {str(e.get("name")): str(e.get("value")) for e in as_list(container.get("env"))}
            if "BUCKET" in env:
                for named in {model, _model_of_path(env.get("PREFIX", ""))} - {""}:
                    place(named, "staged_in", f"staging job {job.name}", env["BUCKET"])
    for release, model in resources.model_releases():
        uri = str(((release.inputs.get("values") or {}).get("model") or {}).get("source") or "")
        if uri.startswith("s3://"):
            for named in {model, _model_of_path(uri.removeprefix("s3://").partition("/")[2])} - {""}:
                place(named, "loaded_from", f"release {release.name}", _bucket_of(uri))
    for model, seen in sorted(where.items()):
        intent = policy.models.get(model)
        found.judged(None, weights_of=model, restricted_to=intent.residency if intent else None,
                     **{k: sorted(v) for k, v in sorted(seen.items())})


def _bedrock(resources: Resources, policy: PolicyConfig, found: Findings) -> None:
    """Bedrock calls stay in the gateway's zone: where its config sends them, where Bedrock may process them, and
    where its role may invoke Bedrock at all."""
    zone_of_role: dict[str, str] = {}  # gateway role ARN -> the gateway's zone
    for release in resources.releases(GATEWAY_CHART_DIR):
        zone = policy.zone_of(release.region) or ""
        allowed = policy.residency.get(zone, [])
        values = release.inputs.get("values") or {}
        if arn := (values.get("serviceAccount") or {}).get("roleArn"):
            zone_of_role[str(arn)] = zone
        for model in as_list((values.get("config") or {}).get("models")):
            for dep in as_list(model.get("deployments")):
                if dep.get("provider") != "bedrock":
                    continue
                model_id = str(dep.get("model"))
                called_in = str((dep.get("bedrock") or {}).get("region") or dep.get("region"))
                try:
                    processed_in = bedrock.processing_regions(model_id, called_in)
                except ValueError as exc:
                    found.fail(f"gateway in {release.region}: Bedrock deployment {dep.get('name')}: {exc}")
                    continue
                found.judged(release, bedrock=model_id, gateway_region=release.region, zone=zone,
                             called_in=called_in, processed_in=processed_in)
                outside = [r for r in processed_in if r not in allowed]
                if outside:
                    found.fail(f"gateway in {release.region} (zone {zone!r}) sends {model.get('alias')} to Bedrock "
                               f"{model_id} in {called_in}, which Bedrock may process in {', '.join(outside)}, "
                               f"outside the zone ({', '.join(allowed)})")
    roles = {str(r.outputs.get("name")): str(r.outputs.get("arn")) for r in resources.of_type(IAM_ROLE)}
    for rp in resources.of_type(IAM_ROLE_POLICY):
        doc = policy_document(rp.inputs.get("policy"))
        for statement in statements(doc) if doc else []:
            if statement.get("Effect") != "Allow" or not any(
                    str(a).startswith("bedrock:Invoke") or str(a) in ("*", "bedrock:*")
                    for a in as_list(statement.get("Action"))):
                continue
            role_arn = roles.get(str(rp.inputs.get("role")), "")
            role_zone = zone_of_role.get(role_arn)
            arns = [str(r) for r in as_list(statement.get("Resource"))]
            regions = sorted({_arn_region(a) for a in arns})
            found.judged(rp, bedrock_invoke=arns, zone=role_zone)
            if role_zone is None:
                found.fail(f"{rp.name} lets {rp.inputs.get('role')} invoke Bedrock models; only gateway roles may")
                continue
            allowed = policy.residency.get(role_zone, [])
            for region in regions:
                if region not in allowed:
                    found.fail(f"{rp.name}: the zone {role_zone!r} gateway role may invoke Bedrock in "
                               f"{region or 'any region'}, outside the zone ({', '.join(allowed)})")


def _fences_to(doc: dict[str, Any] | None, region: str) -> bool:
    """A statement denying everything but IAM when the request names any region but `region`."""
    for stmt in statements(doc or {}):
        not_equals = (stmt.get("Condition") or {}).get("StringNotEquals") or {}
        if (stmt.get("Effect") == "Deny" and as_list(stmt.get("Resource")) == ["*"]
                and set(as_list(stmt.get("NotAction"))) <= {"iam:*"} and "Action" not in stmt
                and as_list(not_equals.get("aws:RequestedRegion")) == [region]):
            return True
    return False


def _load_balancer_controllers(resources: Resources, found: Findings) -> None:
    roles = {str(r.outputs.get("arn")): r for r in resources.of_type(IAM_ROLE) if r.outputs.get("arn")}
    documents: dict[str, list[dict[str, Any] | None]] = {}
    for rp in resources.of_type(IAM_ROLE_POLICY):
        documents.setdefault(str(rp.inputs.get("role")), []).append(policy_document(rp.inputs.get("policy")))
    for release in resources.of_type(HELM_RELEASE):
        if str(release.inputs.get("chart")) != LB_CONTROLLER_CHART:
            continue
        values = release.inputs.get("values") or {}
        arn = str(((values.get("serviceAccount") or {}).get("annotations") or {}).get(IRSA_ANNOTATION) or "")
        role = roles.get(arn)
        fenced = role is not None and any(_fences_to(d, release.region)
                                          for d in documents.get(str(role.outputs.get("name")), []))
        found.judged(release, load_balancer_controller_region=values.get("region"), role=arn or None,
                     fenced_to_region=fenced)
        if values.get("region") != release.region:
            found.fail(f"the AWS Load Balancer Controller {release.name} runs in {release.region} but is told region "
                       f"{values.get('region')!r}: it would make load balancers there")
        if role is None:
            found.fail(f"the AWS Load Balancer Controller {release.name} ({release.region}) runs as "
                       f"{arn or 'no role'}, which is not a role this stack creates")
        elif not fenced:
            found.fail(f"the AWS Load Balancer Controller's role {role.name} ({release.region}) is not fenced to "
                       f"{release.region}: no policy of it denies requests in other regions (aws:RequestedRegion)")
