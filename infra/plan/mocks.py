"""PlanMocks: Pulumi mock engine answers that look like AWS's (ARNs, ids, endpoints), and the record of every
resource."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

# AWS's documentation example account: obviously not a real one, and moto's default.
ACCOUNT = "123456789012"
GLOBAL = "global"


@dataclass
class PlannedResource:
    type: str
    name: str
    region: str
    inputs: Mapping[str, Any]  # a CrossGuard resource's are its engine's read-only properties
    tags: dict[str, str] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "region": self.region, "inputs": self.inputs,
                "tags": self.tags}


def _hex(*parts: str, n: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def _provider_id(ref: str | None) -> str:
    return ref.rsplit("::", 1)[-1] if ref else ""


class PlanMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes, and keeps what was asked for in `resources`."""

    def __init__(self) -> None:
        self.resources: list[PlannedResource] = []
        self._provider_region: dict[str, str] = {}
        self._provider_tags: dict[str, dict[str, str]] = {}

    # -- invokes --------------------------------------------------------------------------------
    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        region = self._provider_region.get(_provider_id(args.provider), "us-east-1")
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{region}{s}" for s in "abc"]
            return {"names": names, "zoneIds": [f"{region[:3]}{region[-1]}-az{i}" for i in (1, 2, 3)],
                    "id": region}, []
        if args.token == "aws:route53/getZone:getZone":
            zone_id = "Z" + _hex("zone", str(args.args.get("name")), n=13).upper()
            return {"zoneId": zone_id, "id": zone_id, "name": args.args.get("name"),
                    "arn": f"arn:aws:route53:::hostedzone/{zone_id}"}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/plan", "userId": "PLAN"}, []
        if args.token == "aws:secretsmanager/getRandomPassword:getRandomPassword":  # made up, stable per plan
            length = int(args.args.get("passwordLength") or 32)
            return {"randomPassword": _hex("password", region, str(length), n=64)[:length], "id": region}, []
        return {}, []

    # -- resources ------------------------------------------------------------------------------
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        rid = f"{args.name}-{_hex(args.typ, args.name, n=8)}"
        if args.typ.startswith("pulumi:providers:"):
            self._provider_region[rid] = _provider_region(args.typ, inputs)
            self._provider_tags[rid] = _default_tags(inputs)
            self.resources.append(PlannedResource(args.typ, args.name, self._provider_region[rid], inputs))
            return rid, inputs
        reading = bool(args.resource_id) and not args.custom  # Resource.get(): exists already, not created
        if not args.custom and not reading:
            return rid, inputs  # components are not cloud resources
        pid = _provider_id(args.provider)
        region = self._provider_region.get(pid, "unknown")
        outputs = _outputs(args.typ, args.name, region, inputs)
        if reading and args.resource_id:
            return args.resource_id, {**inputs, **outputs}
        state = {**inputs, **outputs}
        tags = {**self._provider_tags.get(pid, {}), **(inputs.get("tags") or {})}
        if args.typ.startswith("aws:"):
            state["tagsAll"] = tags
        self.resources.append(PlannedResource(args.typ, args.name, region, inputs, tags, outputs))
        return state.get("id", rid), state


def _short(region: str) -> str:
    """ElastiCache's endpoint spelling of a region: us-east-1 -> use1."""
    parts = region.split("-")
    return parts[0] + "".join(p[0] for p in parts[1:-1]) + parts[-1]


def _provider_region(typ: str, inputs: dict[str, Any]) -> str:
    if typ == "pulumi:providers:aws":
        tags = _default_tags(inputs)
        # The global-services provider is pinned to us-east-1 but belongs to no region.
        return GLOBAL if tags.get("llm-platform:region") == GLOBAL else inputs.get("region", "unknown")
    if typ == "pulumi:providers:kubernetes":
        try:
            user = json.loads(inputs.get("kubeconfig", "{}"))["users"][0]["user"]["exec"]["args"]
            region: str = user[user.index("--region") + 1]
            return region
        except (ValueError, KeyError, IndexError):
            return "unknown"
    return "unknown"


def _default_tags(inputs: dict[str, Any]) -> dict[str, str]:
    default = inputs.get("defaultTags") or {}
    if isinstance(default, str):  # providers receive nested inputs as JSON
        default = json.loads(default)
    return dict(default.get("tags") or {})


def _outputs(typ: str, name: str, region: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Computed outputs a real provider would return, in the provider's own shapes."""
    h = _hex(typ, name)
    physical = inputs.get("name") or f"{name}-{h[:7]}"
    arn_region = "" if region == GLOBAL else region
    if typ == "aws:eks/cluster:Cluster":
        oidc = _hex("oidc", name, n=32).upper()
        return {"arn": f"arn:aws:eks:{region}:{ACCOUNT}:cluster/{physical}", "name": physical,
                "endpoint": f"https://{oidc}.gr7.{region}.eks.amazonaws.com",
                "vpcConfig": {**(inputs.get("vpcConfig") or {}), "clusterSecurityGroupId": f"sg-{h[:17]}"},
                "certificateAuthority": {"data": "TU9DSy1DQS1EQVRB"},
                "identities": [{"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/{oidc}"}]}]}
    if typ == "aws:eks/nodeGroup:NodeGroup":
        return {"nodeGroupName": physical, "arn": f"arn:aws:eks:{region}:{ACCOUNT}:nodegroup/{physical}"}
    if typ == "aws:iam/role:Role":
        path = inputs.get("path") or "/"
        return {"name": physical, "arn": f"arn:aws:iam::{ACCOUNT}:role{path}{physical}", "uniqueId": f"AROA{h.upper()}"}
    if typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
        return {"arn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{inputs['url'].removeprefix('https://')}"}
    if typ == "aws:kms/key:Key":
        key_id = ("mrk-" if inputs.get("multiRegion") else "") + _hex("key", name, n=32)
        return {"keyId": key_id, "arn": f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"}
    if typ == "aws:kms/replicaKey:ReplicaKey":
        key_id = inputs["primaryKeyArn"].rsplit("/", 1)[-1]
        return {"keyId": key_id, "arn": f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"}
    if typ == "aws:secretsmanager/secret:Secret":
        arn = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{physical}-{h[:6]}"
        return {"arn": arn, "id": arn}  # the provider's id for a secret is its ARN
    if typ in ("aws:rds/parameterGroup:ParameterGroup", "aws:rds/subnetGroup:SubnetGroup",
               "aws:elasticache/subnetGroup:SubnetGroup"):  # auto-named: the name is their id
        kind = {"parameterGroup": "pg", "subnetGroup": "subgrp"}[typ.split("/")[1].split(":")[0]]
        service = typ.split(":")[1].split("/")[0]
        return {"name": physical, "id": physical, "arn": f"arn:aws:{service}:{region}:{ACCOUNT}:{kind}:{physical}"}
    if typ == "aws:elasticache/replicationGroup:ReplicationGroup":
        group = inputs.get("replicationGroupId") or physical
        return {"replicationGroupId": group, "arn": f"arn:aws:elasticache:{region}:{ACCOUNT}:replicationgroup:{group}",
                "primaryEndpointAddress": f"master.{group}.{h[:6]}.{_short(region)}.cache.amazonaws.com"}
    if typ == "aws:rds/instance:Instance":  # RDS's own master user secret: rds!db-<resource id>-<suffix>
        dbi = inputs.get("identifier") or physical
        address = f"{dbi}.c{h[:11]}.{region}.rds.amazonaws.com"
        u = _hex("rds", name, n=32)
        secret = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:rds!db-{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-" \
                 f"{u[20:32]}-{h[:6]}"
        return {"identifier": dbi, "address": address, "endpoint": f"{address}:{inputs.get('port') or 5432}",
                "arn": f"arn:aws:rds:{region}:{ACCOUNT}:db:{dbi}",
                "masterUserSecrets": [{"secretArn": secret, "secretStatus": "active",
                                       "kmsKeyId": inputs.get("masterUserSecretKmsKeyId") or ""}]
                if inputs.get("manageMasterUserPassword") else []}
    if typ == "aws:acm/certificate:Certificate":
        names = [inputs["domainName"], *(inputs.get("subjectAlternativeNames") or [])]
        return {"arn": f"arn:aws:acm:{region}:{ACCOUNT}:certificate/{_hex('cert', name, n=32)}",
                "domainValidationOptions": [
                    {"domainName": n, "resourceRecordName": f"_{_hex(n, n=32)}.{n}.", "resourceRecordType": "CNAME",
                     "resourceRecordValue": f"_{_hex('v', n, n=32)}.acm-validations.aws."} for n in names]}
    if typ == "aws:acm/certificateValidation:CertificateValidation":
        return {"certificateArn": inputs["certificateArn"]}
    if typ == "aws:route53/record:Record":
        return {"fqdn": inputs["name"].rstrip(".")}
    if typ == "aws:route53/healthCheck:HealthCheck":
        return {"id": f"{h[:8]}-{h[8:12]}-{h[12:16]}", "arn": f"arn:aws:route53:::healthcheck/{h}"}
    if typ == "aws:codeconnections/connection:Connection":
        return {"arn": f"arn:aws:codeconnections:{region}:{ACCOUNT}:connection/{h[:8]}-{h[8:12]}-{h[12:16]}-"
                       f"{h[16:20]}-{h[20:32]}", "connectionStatus": "PENDING"}
    if typ == "aws:s3/bucket:Bucket":  # the provider names it: the prefix and a unique suffix
        bucket = inputs.get("bucket") or f"{inputs.get('bucketPrefix') or name + '-'}{_hex('bucket', name, n=26)}"
        return {"id": bucket, "bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "region": region,
                "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com"}
    if typ == "aws:sqs/queue:Queue":
        return {"name": physical, "arn": f"arn:aws:sqs:{region}:{ACCOUNT}:{physical}",
                "url": f"https://sqs.{region}.amazonaws.com/{ACCOUNT}/{physical}"}
    if typ == "aws:cloudwatch/eventRule:EventRule":
        return {"name": physical, "arn": f"arn:aws:events:{region}:{ACCOUNT}:rule/{physical}"}
    if typ == "aws:eks/accessEntry:AccessEntry":
        return {"accessEntryArn": f"arn:aws:eks:{region}:{ACCOUNT}:access-entry/{inputs.get('clusterName')}/{h[:8]}"}
    if typ == "aws:budgets/budget:Budget":
        return {"arn": f"arn:aws:budgets::{ACCOUNT}:budget/{physical}", "accountId": ACCOUNT}
    if typ == "kubernetes:core/v1:Service":
        return {"status": {"loadBalancer": {"ingress": [{"hostname": f"a{h}-{h[:8]}.elb.{region}.amazonaws.com"}]}}}
    if typ == "kubernetes:helm.sh/v3:Release":
        return {"status": {"name": inputs.get("name", name), "namespace": inputs.get("namespace", "default"),
                           "status": "deployed", "version": 1}}
    if typ.startswith("aws:ec2/"):
        prefix = {"Vpc": "vpc", "Subnet": "subnet", "InternetGateway": "igw", "NatGateway": "nat",
                  "Eip": "eipalloc", "RouteTable": "rtb", "RouteTableAssociation": "rtbassoc",
                  "LaunchTemplate": "lt", "SecurityGroup": "sg", "VpcPeeringConnection": "pcx"}
        kind = typ.rsplit(":", 1)[-1]
        if kind == "VpcPeeringConnectionAccepter":  # the accepter's id is the connection's
            return {"id": inputs["vpcPeeringConnectionId"], "acceptStatus": "active"}
        versions: dict[str, Any] = {"latestVersion": 1} if kind == "LaunchTemplate" else {}
        if kind == "Eip":  # an address from AWS's public pool, made up
            versions = {"publicIp": f"52.{int(h[0:2], 16)}.{int(h[2:4], 16)}.{int(h[4:6], 16)}"}
        return {**versions, "id": f"{prefix.get(kind, 'res')}-{h[:17]}",
                "arn": f"arn:aws:ec2:{arn_region}:{ACCOUNT}:{prefix.get(kind, 'res')}/{h[:17]}"}
    return {"arn": f"arn:aws:{typ.split(':')[1].split('/')[0]}:{arn_region}:{ACCOUNT}:{physical}"}
