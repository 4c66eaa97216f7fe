"""Control `secret-scope`: a stack's secrets are encrypted with its own keys and each is readable only by the roles
meant for it (gateway or model server) in its own region; no policy it writes has a wildcard."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.components.secrets import huggingface_token_name
from infra.policy.rules import batch_files
from infra.policy.rules.base import (
    BUCKET,
    COMPONENT_LABEL,
    GATEWAY_CHART_DIR,
    IAM_POLICY,
    IAM_ROLE,
    IAM_ROLE_POLICY,
    IAM_ROLE_POLICY_ATTACHMENT,
    IRSA_ANNOTATION,
    JOB,
    KMS_KEY,
    KMS_REPLICA_KEY,
    SECRET,
    SECRET_POLICY,
    SERVICE_ACCOUNT,
    STAGER_COMPONENT,
    VLLM_CHART_DIR,
    Findings,
    PolicyConfig,
    Resource,
    Resources,
    as_list,
    policy_document,
    statements,
)
from infra.policy.rules.stores import managed_secrets, peer_key_secret_name, redis_url_secret_name

READ_SECRET = "secretsmanager:GetSecretValue"
MANAGED_SECRET = "the RDS-managed master password of"

# AWS managed policies the program may attach, each reviewed to grant no secretsmanager:GetSecretValue.
# Attaching anything else fails the control until it has been reviewed and added here.
REVIEWED_MANAGED_POLICIES = frozenset({
    "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    # EC2 volume, snapshot and tag actions only (AWS managed policy reference, AmazonEBSCSIDriverPolicy).
    "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy",
})

# The calls CodeBuild makes to attach a build (the deploy runner) to a VPC. The Describe calls have no
# resource-level permissions and a new interface has no id yet, so AWS documents them on Resource "*"
# (https://docs.aws.amazon.com/codebuild/latest/userguide/auth-and-access-control-iam-identity-based-access-control.html);
# none reads data. A statement granting only these may use a wildcard Resource.
VPC_INTERFACE_ACTIONS = frozenset({
    "ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeNetworkInterfaces", "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVpcs",
})

# The AWS Load Balancer Controller's own policy, vendored verbatim at the pinned tag (its Describe calls have no
# resource-level permissions; creation and mutation are conditioned on the elbv2.k8s.aws/cluster tag the
# controller stamps, as upstream scopes them). Reviewed: it grants no secretsmanager or kms action. Its
# statements, exactly as published, may use a wildcard Resource; any other statement may not.
LB_CONTROLLER_POLICY = (Path(__file__).resolve().parents[2] / "components" / "vendor"
                        / "aws-load-balancer-controller-v3.5.0" / "iam_policy.json")
REVIEWED_VENDOR_STATEMENTS = frozenset(
    json.dumps(stmt, sort_keys=True) for stmt in json.loads(LB_CONTROLLER_POLICY.read_text())["Statement"])

# The calls Karpenter's controller makes on resources it creates or discovers (its getting-started CloudFormation
# policy @ v1.14.1, infra/components/karpenter.py): instances, fleets, launch templates, volumes and interfaces it
# launches (writes conditioned on the cluster's kubernetes.io/cluster/<name>=owned tag), instance profiles it
# makes for its node role, the region's public AMIs and SSM parameters under /aws/service/, and Describe calls
# with no resource-level permissions. None reads a secret, a key or an object: a statement granting only these may
# use a wildcard Resource.
KARPENTER_ACTIONS = frozenset({
    "ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate", "ec2:CreateTags", "ec2:TerminateInstances",
    "ec2:DeleteLaunchTemplate", "ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
    "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups",
    "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets", "iam:CreateInstanceProfile", "iam:TagInstanceProfile",
    "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile",
    "iam:GetInstanceProfile", "iam:ListInstanceProfiles", "ssm:GetParameter", "pricing:GetProducts",
})

# Condition keys that pin a wildcard principal down to named principals.
PRINCIPAL_KEYS = {"aws:principalarn", "aws:principalaccount", "aws:principalorgid", "aws:userid"}

# (document input, resource type) of every policy document the program writes.
POLICY_INPUTS = [(IAM_ROLE, "assumeRolePolicy"), (IAM_ROLE_POLICY, "policy"), (IAM_POLICY, "policy"),
                 (SECRET_POLICY, "policy"), (KMS_KEY, "policy"), (KMS_REPLICA_KEY, "policy")]

DESCRIPTION = (
    "Every secret lives under the stack's own path (llm-platform/<stack>/...) and is encrypted, in its primary "
    "region and in every replica, with a KMS key this stack creates in that region (never the account's default "
    "aws/secretsmanager key). Each secret has exactly one kind of reader: the provider keys and the gateway "
    "master key are read only by the stack's gateway roles (the IRSA roles its gateway releases run as), the "
    "Hugging Face token (llm-platform/<stack>/huggingface/token) only by its model server roles (the IRSA roles "
    "its vLLM releases' ServiceAccounts stand for, with which the Secrets Store CSI driver mounts the token, and the "
    "roles of its weights staging Jobs, which download gated models with it). "
    "Each region has store secrets of its own too: the gateway's Redis URL (llm-platform/<stack>/gateway/redis-url, "
    "which carries the AUTH token), never replicated and exempted from its deny for that region's gateway role only, "
    "and the secret RDS creates for the ledger's master password (rds!db-...), which only that region's gateway role "
    "may read (RDS owns that secret, so the fence is the identity policies: no other role's grants it). The gateway "
    "peer key (llm-platform/<stack>/gateway/peer-key) is the only stack secret replicated outside a residency zone: "
    "to every region of the stack, so that gateways in every zone can authenticate each other when they exchange key "
    "records and spend totals. It carries no user data, only a random token the program draws once, and its "
    "readers are the stack's gateway roles in any zone. Every gateway role may read its own region's copies of the "
    "Redis URL, the peer key and its ledger's password (without them the gateway cannot start or sync). "
    "Every identity policy the program writes that allows secretsmanager:GetSecretValue on a stack secret "
    "belongs to a role of that secret's kind, and such a role reads only secrets of its kind, of this stack, "
    "in its own region; every secret has a resource policy denying GetSecretValue to every principal but the "
    "roles of its kind in its zone. No policy document the program writes has a wildcard "
    "Resource (or NotResource / NotPrincipal), or a wildcard Principal in an Allow statement; the one exception is a "
    "statement granting only the EC2 network-interface calls CodeBuild needs to place the deploy runner in the VPC "
    f"({', '.join(sorted(VPC_INTERFACE_ACTIONS))}), which AWS documents on a wildcard Resource and which read no "
    "data, a statement granting only the EC2, instance-profile, public SSM parameter and pricing calls Karpenter's "
    "controller makes on what it launches and discovers (its upstream policy; none reads data), and S3 object "
    "ARNs under one named prefix of a bucket the stack creates (arn:aws:s3:::<bucket>/<model>/*: "
    "a checkpoint's file names are unknown until it is staged), the statements of the AWS Load Balancer "
    "Controller's own policy exactly as upstream publishes it for the pinned version (reviewed: no secretsmanager "
    "or kms action), and Deny statements, which grant nothing. A wildcard "
    "principal is accepted only in a Deny statement whose condition narrows it to named principals "
    "(aws:PrincipalArn and similar): such a statement denies everyone else and grants nothing. Only AWS managed "
    "policies from a reviewed list may be attached." + batch_files.ACCESS_DESCRIPTION)


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None


def _grants_read(stmt: dict[str, Any]) -> bool:
    return stmt.get("Effect") == "Allow" and any(_matches(str(a), READ_SECRET) for a in as_list(stmt.get("Action")))


def _is_wildcard_principal(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        return any(v == "*" or "*" in as_list(v) for v in principal.values())
    return False


def _narrowing_keys(stmt: dict[str, Any]) -> set[str]:
    keys = set()
    for operator, clause in (stmt.get("Condition") or {}).items():
        if "NotEquals" in operator or "NotLike" in operator:
            keys |= {str(k).lower() for k in (clause or {})}
    return keys & PRINCIPAL_KEYS


# An S3 object ARN under one named prefix of a bucket: `arn:aws:s3:::<bucket>/<prefix>/*` (object names are
# the files of a model's checkpoint, unknown until staged, so IAM can only name the prefix).
_S3_PREFIX_OBJECTS = re.compile(r"^arn:aws:s3:::([a-z0-9.-]{3,63})/[A-Za-z0-9._-]+/\*$")


def _stack_prefix_objects(resource: Any, buckets: frozenset[str]) -> bool:
    match = _S3_PREFIX_OBJECTS.match(str(resource))
    return match is not None and match.group(1) in buckets


def _wildcards(doc: dict[str, Any], buckets: frozenset[str] = frozenset()) -> list[str]:
    """`buckets`: the stack's own buckets, whose objects under one named prefix a statement may grant."""
    problems = []
    for i, stmt in enumerate(statements(doc)):
        sid = stmt.get("Sid") or f"statement {i}"
        interface_only = stmt.get("Effect") == "Allow" and bool(as_list(stmt.get("Action"))) and (
            all(str(a) in VPC_INTERFACE_ACTIONS for a in as_list(stmt.get("Action")))
            or all(str(a) in KARPENTER_ACTIONS for a in as_list(stmt.get("Action"))))
        reviewed = json.dumps(stmt, sort_keys=True) in REVIEWED_VENDOR_STATEMENTS
        # A Deny on everything narrows what the other statements grant; it grants nothing itself.
        wild = [r for r in as_list(stmt.get("Resource")) if "*" in str(r)] if stmt.get("Effect") != "Deny" else []
        if wild and not interface_only and not reviewed and not all(_stack_prefix_objects(r, buckets) for r in wild):
            problems.append(f"{sid} has a wildcard Resource ({stmt.get('Resource')})")
        if "NotResource" in stmt:
            problems.append(f"{sid} uses NotResource (everything but a list)")
        if "NotPrincipal" in stmt:
            problems.append(f"{sid} uses NotPrincipal (everyone but a list)")
        if _is_wildcard_principal(stmt.get("Principal")):
            if stmt.get("Effect") != "Deny":
                problems.append(f"{sid} allows a wildcard principal ({stmt.get('Principal')})")
            elif not _narrowing_keys(stmt):
                problems.append(f"{sid} denies a wildcard principal without a condition naming who is exempt")
    return problems


def _replica_arn(arn: str, primary_region: str, region: str) -> str:
    # A replica keeps its primary's ARN, with its own region.
    return arn.replace(f":{primary_region}:", f":{region}:")


def _release_roles(resources: Resources, chart_dir: str) -> dict[str, str]:
    """role ARN -> region, for every release of the chart whose ServiceAccount stands for an IAM role."""
    roles: dict[str, str] = {}
    for release in resources.releases(chart_dir):
        arn = ((release.inputs.get("values") or {}).get("serviceAccount") or {}).get("roleArn")
        if arn:
            roles[str(arn)] = release.region
    return roles


def _stager_roles(resources: Resources) -> dict[str, str]:
    """role ARN -> region, for every weights staging Job's ServiceAccount that stands for an IAM role."""
    accounts = {(r.region, str((r.inputs.get("metadata") or {}).get("namespace")),
                 str((r.inputs.get("metadata") or {}).get("name"))): r for r in resources.of_type(SERVICE_ACCOUNT)}
    roles: dict[str, str] = {}
    for job in resources.of_type(JOB):
        meta = job.inputs.get("metadata") or {}
        if (meta.get("labels") or {}).get(COMPONENT_LABEL) != STAGER_COMPONENT:
            continue
        pod = ((job.inputs.get("spec") or {}).get("template") or {}).get("spec") or {}
        account = accounts.get((job.region, str(meta.get("namespace")), str(pod.get("serviceAccountName"))))
        annotations = ((account.inputs.get("metadata") or {}).get("annotations") or {}) if account else {}
        if arn := annotations.get(IRSA_ANNOTATION):
            roles[str(arn)] = job.region
    return roles


def _role_region(arn: str | None, *role_maps: dict[str, str]) -> str:
    return next(m[arn] for m in role_maps if arn in m)


def _gateway_needs(gateway_roles: dict[str, str], reads: dict[str, set[str]],
                   stack_secrets: dict[str, tuple[str, str]], needed_names: set[str], found: Findings) -> None:
    """Each gateway role reads its own region's copy of the Redis URL and the peer key, and its region's ledger
    password: without one the gateway cannot start (the stores) or cannot sync with its peers."""
    for role_arn, region in sorted(gateway_roles.items(), key=lambda item: item[1]):
        needed = {arn: name for arn, (name, where) in stack_secrets.items()
                  if where == region and (name in needed_names or name.startswith(MANAGED_SECRET))}
        missing = sorted(name for arn, name in needed.items() if arn not in reads.get(role_arn, set()))
        found.judged(None, gateway_region=region, role=role_arn, reads_store_secrets=sorted(set(needed.values())))
        for name in missing:
            found.fail(f"the gateway role of {region} may not read {name} in {region}: the gateway there needs it")


def check(resources: Resources, policy: PolicyConfig) -> Findings:
    found = Findings()
    prefix = f"llm-platform/{policy.stack}/"
    key_region = {str(k.outputs.get("arn")): k.region
                  for k in resources.of_type(KMS_KEY) + resources.of_type(KMS_REPLICA_KEY) if k.outputs.get("arn")}
    roles_by_name = {str(r.outputs.get("name")): r for r in resources.of_type(IAM_ROLE) if r.outputs.get("name")}
    roles_by_arn = {str(r.outputs.get("arn")): r for r in resources.of_type(IAM_ROLE) if r.outputs.get("arn")}
    gateway_roles = _release_roles(resources, GATEWAY_CHART_DIR)  # role ARN -> region of the gateway
    model_roles = _release_roles(resources, VLLM_CHART_DIR)  # role ARN -> region of the model servers
    stager_roles = _stager_roles(resources)  # role ARN -> region of the weights staging Jobs
    found.judged(None, gateway_roles=dict(sorted(gateway_roles.items())),
                 model_server_roles=dict(sorted(model_roles.items())),
                 weights_stager_roles=dict(sorted(stager_roles.items())))
    # The stagers download gated models with the token too: they read it as model servers do.
    model_roles = {**stager_roles, **model_roles}
    for arn in sorted(set(gateway_roles) & set(model_roles)):
        found.fail(f"{arn} is both a gateway role and a model server role: each reads only its own kind of secret")
    token_name = huggingface_token_name(policy.stack)

    def kind_of(secret_name: str) -> tuple[str, dict[str, str]]:
        """Who a secret is for: (what its readers are called, their roles)."""
        return ("model server", model_roles) if secret_name == token_name else ("gateway", gateway_roles)

    peer_key, redis_url = peer_key_secret_name(policy.stack), redis_url_secret_name(policy.stack)
    # secret ARN (primary or replica) -> (secret's name, region it is readable in). RDS's own secret for each
    # ledger's master password counts as a gateway secret of the ledger's region: the gateway alone reads it.
    stack_secrets: dict[str, tuple[str, str]] = {
        arn: (f"{MANAGED_SECRET} {db.name}", db.region) for arn, db in managed_secrets(resources).items()}
    for arn, (what, region) in sorted(stack_secrets.items()):
        found.judged(None, secret=what, arn=arn, region=region, readers="the gateway role of its region")
    policies_by_secret = {str(p.inputs.get("secretArn")): p for p in resources.of_type(SECRET_POLICY)}
    for secret in resources.of_type(SECRET):
        name = str(secret.inputs.get("name") or "")
        arn = str(secret.outputs.get("arn") or "")
        stack_secrets[arn] = (name, secret.region)
        kms = str(secret.inputs.get("kmsKeyId") or "")
        replicas = [(str(r.get("region")), str(r.get("kmsKeyId") or ""))
                    for r in as_list(secret.inputs.get("replicas"))]
        for region, _ in replicas:
            stack_secrets[_replica_arn(arn, secret.region, region)] = (name, region)
        if name == redis_url and replicas:
            found.fail(f"secret {name} in {secret.region} is replicated to {', '.join(r for r, _ in replicas)}: a "
                       f"region's Redis URL (with its AUTH token) stays in that region")
        if not name.startswith(prefix):
            found.fail(f"secret {name or secret.name} is not under the stack's path {prefix}")
        for region, key in [(secret.region, kms), *replicas]:
            if not key:
                found.fail(f"secret {name} in {region} is encrypted with the account's default key, not a key of "
                           f"stack {policy.stack}")
            elif key_region.get(key) != region:
                found.fail(f"secret {name} in {region} is encrypted with {key}, which is not a KMS key this stack "
                           f"creates in {region}")
        readers: list[str] = []
        resource_policy = policies_by_secret.get(arn)
        doc = policy_document(resource_policy.inputs.get("policy")) if resource_policy else None
        if doc is None:
            found.fail(f"secret {name} in {secret.region} has no resource policy: any principal of the account "
                       f"whose IAM policies allow {READ_SECRET} can read it")
        else:
            fences = [s for s in statements(doc)
                      if s.get("Effect") == "Deny" and _is_wildcard_principal(s.get("Principal"))
                      and any(_matches(str(a), READ_SECRET) for a in as_list(s.get("Action")))
                      and "aws:principalarn" in _narrowing_keys(s)]
            for s in fences:
                for clause in (s.get("Condition") or {}).values():
                    for k, v in (clause or {}).items():
                        if str(k).lower() == "aws:principalarn":
                            readers += [str(x) for x in as_list(v)]
            kind, meant = kind_of(name)
            if not fences:
                found.fail(f"secret {name} in {secret.region}: its resource policy does not deny {READ_SECRET} to "
                           f"every principal but the stack's {kind} roles")
            for s in statements(doc):
                if s.get("Effect") == "Allow" and any(_matches(str(a), READ_SECRET) for a in as_list(s.get("Action"))):
                    found.fail(f"secret {name} in {secret.region}: its resource policy grants {READ_SECRET} "
                               f"({s.get('Principal')}); reads are granted only by {kind} roles' own policies")
            zone = policy.zone_of(secret.region)
            for reader in readers:
                if reader not in meant:
                    found.fail(f"secret {name} in {secret.region} exempts {reader} from its deny, which is not a "
                               f"{kind} role of stack {policy.stack}")
                elif name == peer_key:
                    continue  # every region's gateway, in every zone, authenticates to its peers with it
                elif name == redis_url and meant[reader] != secret.region:
                    found.fail(f"secret {name} in {secret.region} exempts the gateway role of {meant[reader]}: only "
                               f"the gateway of {secret.region} may read that region's Redis URL")
                elif policy.zone_of(meant[reader]) != zone:
                    found.fail(f"secret {name} (zone {zone!r}) exempts the {kind} role of "
                               f"{meant[reader]}, in another zone")
        found.judged(secret, secret=name, key=kms, replicas=[r for r, _ in replicas], readers=sorted(readers))

    # Identity policies: who may read which secret.
    documents: list[tuple[Resource, Resource | None, dict[str, Any]]] = []  # (policy, role, doc)
    for rp in resources.of_type(IAM_ROLE_POLICY):
        doc = policy_document(rp.inputs.get("policy"))
        if doc is not None:
            documents.append((rp, roles_by_name.get(str(rp.inputs.get("role"))), doc))
    managed = {str(p.outputs.get("arn")): p for p in resources.of_type(IAM_POLICY)}
    for attachment in resources.of_type(IAM_ROLE_POLICY_ATTACHMENT):
        arn = str(attachment.inputs.get("policyArn"))
        role = roles_by_name.get(str(attachment.inputs.get("role")))
        if arn in managed:
            doc = policy_document(managed[arn].inputs.get("policy"))
            if doc is not None:
                documents.append((managed[arn], role, doc))
        elif arn not in REVIEWED_MANAGED_POLICIES:
            found.fail(f"{attachment.name} attaches {arn}, which is not on the reviewed list of managed policies "
                       f"(it may grant {READ_SECRET}); review it and add it to REVIEWED_MANAGED_POLICIES")
    gateway_reads: dict[str, set[str]] = {}  # gateway role ARN -> the stack secret copies it may read
    for source, role, doc in documents:
        role_arn = str(role.outputs.get("arn")) if role else None
        role_kind = "gateway" if role_arn in gateway_roles else "model server" if role_arn in model_roles else None
        granted = {str(r) for s in statements(doc) if _grants_read(s) for r in as_list(s.get("Resource"))}
        readable = sorted(r for r in granted if any(_matches(r, arn) for arn in stack_secrets))
        if role_kind == "gateway":
            gateway_reads.setdefault(str(role_arn), set()).update(
                arn for arn in stack_secrets if any(_matches(r, arn) for r in readable))
        if role_kind:
            for foreign in sorted(granted - set(readable)):
                found.fail(f"{source.name}: the {_role_region(role_arn, gateway_roles, model_roles)} {role_kind} "
                           f"role may read {foreign}, which is not a secret of stack {policy.stack}")
        if not readable:
            continue
        found.judged(source, role=role.name if role else None, kind=role_kind, reads=readable)
        if role_kind is None:
            found.fail(f"{source.name} lets {role.name if role else 'an unknown role'} read stack secrets "
                       f"({', '.join(readable)}); only the stack's gateway and model server roles may")
            continue
        region = _role_region(role_arn, gateway_roles, model_roles)
        for pattern in readable:
            for arn, (secret_name, where) in stack_secrets.items():
                if not _matches(pattern, arn):
                    continue
                kind, _ = kind_of(secret_name)
                if kind != role_kind:
                    found.fail(f"{source.name}: the {region} {role_kind} role may read {secret_name}, which only "
                               f"{kind} roles may read")
                elif where != region:
                    found.fail(f"{source.name}: the {region} {role_kind} role may read {secret_name} in "
                               f"{where}; a {role_kind} reads only its own region's copy")
    _gateway_needs(gateway_roles, gateway_reads, stack_secrets, {peer_key, redis_url}, found)
    batch_files.judge_access(resources, policy, gateway_roles, found)
    for who, roles in (("the gateway in {} runs", gateway_roles), ("the model servers in {} run", model_roles)):
        for arn, region in roles.items():
            if arn not in roles_by_arn:
                found.fail(f"{who.format(region)} as {arn}, which is not a role this stack creates")

    buckets = frozenset(str(b.outputs.get("bucket")) for b in resources.of_type(BUCKET) if b.outputs.get("bucket"))
    for typ, key in POLICY_INPUTS:
        for r in resources.of_type(typ):
            doc = policy_document(r.inputs.get(key))
            if r.inputs.get(key) and doc is None:
                found.fail(f"{typ} {r.name}: its {key} is not a JSON policy document")
            for problem in _wildcards(doc or {}, buckets):
                found.fail(f"{typ} {r.name}: {problem}")
    found.judged(None, policy_documents_checked=sum(1 for t, k in POLICY_INPUTS for r in resources.of_type(t)
                                                    if r.inputs.get(k)))
    return found
