"""GitHub Actions deploy roles: the preview role reaches pr-* stacks' resources and never prod's."""
from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.ci_access import EKS_MANAGED_POLICIES, ci_roles
from infra.cli import EXIT_CONFIG, main
from infra.config import read_stack
from infra.plan.run import Plan, run_program

ACCOUNT = "123456789012"  # moto's account, and the plan's
ROLES = ci_roles(ACCOUNT, "example-org/llm-platform", "preview.llm.example.com", "api.llm.example.com")
READ_VERBS = ("Describe", "Get", "List", "View")


def allowed_resources(policy: dict, action_prefix: str) -> list[str]:
    out = []
    for s in policy["Statement"]:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        if s["Effect"] == "Allow" and any(a.startswith(action_prefix) for a in actions):
            out += s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
    return [r for r in out if r != "*"]


def denied_resources(policy: dict) -> list[str]:
    return [r for s in policy["Statement"] if s["Effect"] == "Deny"
            for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]


def reaches(patterns: list[str], arn: str) -> bool:
    return any(fnmatchcase(arn, p) for p in patterns)  # IAM's * spans '/' as fnmatch's does


@pytest.fixture(scope="module")
def pr_plan() -> Plan:
    raw, _ = read_stack("pr-42")
    return run_program(raw, "pr-42")


def arns(plan: Plan, typ: str) -> list[str]:
    return [r.outputs["arn"] for r in plan.of_type(typ)]


@pytest.mark.parametrize("role", ["preview", "prod"])
def test_policies_are_valid_iam_documents(role: str, monkeypatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName=f"llm-platform-{role}-deploy",
                        AssumeRolePolicyDocument=json.dumps(ROLES[role]["trust"]))
        iam.create_policy(PolicyName=f"llm-platform-{role}-deploy",
                          PolicyDocument=json.dumps(ROLES[role]["permissions"]))


def test_preview_role_reaches_the_pr_stacks_secrets_and_roles(pr_plan: Plan) -> None:
    policy = ROLES["preview"]["permissions"]
    for arn in arns(pr_plan, "aws:secretsmanager/secret:Secret"):
        assert reaches(allowed_resources(policy, "secretsmanager:"), arn), arn
        assert not reaches(denied_resources(policy), arn)
    for arn in arns(pr_plan, "aws:iam/role:Role"):
        assert reaches(allowed_resources(policy, "iam:CreateRole"), arn), arn
        assert not reaches(denied_resources(policy), arn)
    for arn in arns(pr_plan, "aws:budgets/budget:Budget"):
        assert reaches(allowed_resources(policy, "budgets:"), arn), arn


def test_preview_role_never_reaches_prod(prod_plan: Plan) -> None:
    policy = ROLES["preview"]["permissions"]
    for typ, prefix in [("aws:secretsmanager/secret:Secret", "secretsmanager:"), ("aws:iam/role:Role", "iam:"),
                        ("aws:budgets/budget:Budget", "budgets:")]:
        for arn in arns(prod_plan, typ):
            assert not reaches(allowed_resources(policy, prefix), arn), arn
            assert reaches(denied_resources(policy), arn), f"no explicit deny covers {arn}"


def test_tag_scoped_statements_scope_on_the_stack_tag() -> None:
    for role, pattern in [("preview", "pr-*"), ("prod", "prod")]:
        for s in ROLES[role]["permissions"]["Statement"]:
            if s["Effect"] != "Allow" or s["Resource"] != "*":
                continue
            actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            read_only = all(a.split(":")[1].startswith(READ_VERBS) for a in actions)
            # Cost Explorer has no resource-level permissions: activating the stack tag needs "*" (prod only).
            # Nor have ECR's registry-wide replication settings (prod only: it owns the gateway image's registry).
            exempt = role == "prod" and s["Sid"] in ("ActivateTheStackCostTag", "ImageReplicationSettings")
            assert read_only or "Condition" in s or exempt, f"{role}: {s['Sid']} grants writes on * unconditionally"
            for test in s.get("Condition", {}).values():
                for key, value in test.items():
                    if key.endswith("/llm-platform:stack"):
                        assert value == pattern


def test_roles_can_attach_only_the_eks_managed_policies() -> None:
    for role in ROLES.values():
        (attach,) = [s for s in role["permissions"]["Statement"] if "iam:AttachRolePolicy" in s["Action"]]
        assert attach["Condition"] == {"ArnEquals": {"iam:PolicyARN": EKS_MANAGED_POLICIES}}


def test_only_the_repository_environment_may_assume_a_role() -> None:
    assert ROLES["preview"]["trust"]["Statement"][0]["Condition"]["StringEquals"][
        "token.actions.githubusercontent.com:sub"] == "repo:example-org/llm-platform:environment:preview"
    assert ROLES["prod"]["trust"]["Statement"][0]["Condition"]["StringEquals"][
        "token.actions.githubusercontent.com:sub"] == "repo:example-org/llm-platform:environment:production"


@pytest.mark.parametrize("args, words", [
    (["--account-id", "12345", "--repository", "o/r"], "12 digits"),
    (["--account-id", ACCOUNT, "--repository", "just-a-name"], "<owner>/<name>"),
])
def test_ci_role_command_refuses_bad_input(args, words, capsys) -> None:
    assert main(["ci-role", "preview", *args]) == EXIT_CONFIG
    assert words in capsys.readouterr().err


def test_ci_role_command_prints_both_documents(capsys) -> None:
    assert main(["ci-role", "preview", "--account-id", ACCOUNT, "--repository", "example-org/llm-platform"]) == 0
    assert json.loads(capsys.readouterr().out) == ROLES["preview"]


def test_prod_role_reaches_prods_own_secrets_roles_and_budget(prod_plan: Plan) -> None:
    policy = ROLES["prod"]["permissions"]
    # Its one deny is the batch files' contents (test_deploy_roles_empty_a_batch_bucket_but_never_read_its_files).
    assert [s["Sid"] for s in policy["Statement"] if s["Effect"] == "Deny"] == ["NeverTheBatchFilesContents"]
    for typ, prefix in [("aws:secretsmanager/secret:Secret", "secretsmanager:"),
                        ("aws:iam/role:Role", "iam:CreateRole"), ("aws:iam/role:Role", "iam:AttachRolePolicy"),
                        ("aws:budgets/budget:Budget", "budgets:")]:
        for arn in arns(prod_plan, typ):
            assert reaches(allowed_resources(policy, prefix), arn), f"{prefix} does not reach {arn}"


def test_dns_changes_are_limited_to_the_stacks_names() -> None:
    (records,) = [s for s in ROLES["preview"]["permissions"]["Statement"] if s["Sid"] == "TheStacksDnsRecords"]
    key = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
    assert records["Condition"]["ForAllValues:StringLike"][key] == ["*.preview.llm.example.com"]
    assert records["Condition"]["Null"][key] == "false", "without it, ForAllValues passes when the key is absent"
    assert not any("HostedZone" in a for s in ROLES["preview"]["permissions"]["Statement"]
                   for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))


# -- service-linked roles, judged by moto's IAM enforcement ---------------------------------------
_REQUEST_CONTEXT: dict[str, str] = {}


def _service_linked_role_arn(self) -> str:
    """moto judges IAM calls against Resource "*" and no condition keys. Tell it what IAM would: the role
    CreateServiceLinkedRole makes lives under /aws-service-role/<service>/, and iam:AWSServiceName is the
    service asked for."""
    service = self._get_param("AWSServiceName")
    _REQUEST_CONTEXT.clear()
    if not service:
        return "*"
    _REQUEST_CONTEXT["iam:AWSServiceName"] = service
    return f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/{service}/AWSServiceRoleFor{service.split('.')[0]}"


@pytest.fixture
def deploy_clients(monkeypatch):
    """Per deploy role, an IAM client whose calls moto authorises against that role's permissions."""
    from moto.core import enable_iam_authentication
    from moto.iam.access_control import IAMPolicy
    from moto.iam.responses import IamResponse

    judge = IAMPolicy.is_action_permitted

    def with_request_context(self, action, resource="*", principal=None, incoming_condition_values=None):
        return judge(self, action, resource, principal, incoming_condition_values or dict(_REQUEST_CONTEXT))

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(IamResponse, "_determine_resource", _service_linked_role_arn, raising=False)
    monkeypatch.setattr(IAMPolicy, "is_action_permitted", with_request_context)
    with mock_aws():
        admin = boto3.client("iam", region_name="us-east-1")
        clients = {}
        for role, docs in ROLES.items():
            admin.create_user(UserName=f"{role}-deployer")
            admin.put_user_policy(UserName=f"{role}-deployer", PolicyName="deploy",
                                  PolicyDocument=json.dumps(docs["permissions"]))
            key = admin.create_access_key(UserName=f"{role}-deployer")["AccessKey"]
            clients[role] = boto3.client("iam", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                                         aws_secret_access_key=key["SecretAccessKey"])
        with enable_iam_authentication():
            yield clients


def _may_create_service_linked_role(client, service: str) -> bool:
    try:
        client.create_service_linked_role(AWSServiceName=service)
    except client.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response["Error"]
        return False
    return True


@pytest.mark.parametrize("role", ["preview", "prod"])
def test_deploy_role_creates_the_eks_service_linked_roles_on_first_use(deploy_clients, role: str) -> None:
    """A new account's first cluster and first managed node group make EKS create its service-linked roles,
    with the caller's permission: without it the first `pulumi up` fails at the first cluster."""
    for service in ("eks.amazonaws.com", "eks-nodegroup.amazonaws.com", "rds.amazonaws.com",
                    "elasticache.amazonaws.com"):  # the last two: the gateway's ledger and Redis
        assert _may_create_service_linked_role(deploy_clients[role], service), service


@pytest.mark.parametrize("role", ["preview", "prod"])
def test_deploy_role_creates_no_other_service_linked_role(deploy_clients, role: str) -> None:
    """ELB's, Auto Scaling's and Spot's are made by the cluster and node group roles, not by the deployer;
    any other service's role would be a grant nobody needs."""
    for service in ("elasticloadbalancing.amazonaws.com", "autoscaling.amazonaws.com", "spot.amazonaws.com",
                    "dynamodb.amazonaws.com"):
        assert not _may_create_service_linked_role(deploy_clients[role], service), service


def test_only_the_prod_role_may_activate_the_cost_allocation_tag_and_both_create_tagged_log_groups() -> None:
    """The tag's activation is account-wide; log groups (control plane logs) are created only with the stack tag."""
    for role in ROLES:
        statements = {s["Sid"]: s for s in ROLES[role]["permissions"]["Statement"]}
        assert ("ActivateTheStackCostTag" in statements) == (role == "prod")
        create = statements["CreateOnlyWithTheStackTag"]
        assert {"logs:Create*", "logs:TagResource"} <= set(create["Action"]) and "Condition" in create
def test_deploy_roles_may_build_the_deploy_runner_of_their_own_stacks(prod_plan: Plan) -> None:
    """The bootstrap job creates the runner (a CodeBuild project and webhook) with the deploy role itself."""
    assert any(r.type.startswith("aws:codebuild/") for r in prod_plan.resources)
    for role, pattern in [("preview", "pr-*"), ("prod", "prod")]:
        statements = {s["Sid"]: s for s in ROLES[role]["permissions"]["Statement"]}
        create, change = statements["CreateOnlyWithTheStackTag"], statements["ChangeOnlyTheStacksResources"]
        assert "codebuild:Create*" in create["Action"]
        assert create["Condition"] == {"StringLike": {"aws:RequestTag/llm-platform:stack": pattern}}
        # CreateWebhook carries no tags: it is allowed on a project that has the stack's tag.
        assert "codebuild:*" in change["Action"]
        assert change["Condition"] == {"StringLike": {"aws:ResourceTag/llm-platform:stack": pattern}}


def test_deploy_roles_reach_their_own_stacks_weights_buckets_and_never_prods(prod_plan: Plan) -> None:
    """Staging weights creates a bucket per region on the first `up`: the deploy role must be able to."""
    buckets = arns(prod_plan, "aws:s3/bucket:Bucket")
    assert buckets
    for arn in buckets:
        for target in (arn, f"{arn}/llama-3-3-70b/model-00001-of-00030.safetensors"):
            assert reaches(allowed_resources(ROLES["prod"]["permissions"], "s3:"), target), target
            assert not reaches(allowed_resources(ROLES["preview"]["permissions"], "s3:"), target), target
            assert reaches(denied_resources(ROLES["preview"]["permissions"]), target), target
    assert reaches(allowed_resources(ROLES["preview"]["permissions"], "s3:"), "arn:aws:s3:::llmp-pr-42-weights-x1")


# The S3 calls the provider makes for what infra/components/batch_files.py creates, on the bucket itself (create,
# encryption, public access block, policy, versioning, lifecycle, tags, the reads a refresh makes, and a preview's
# force_destroy emptying it).
BATCH_BUCKET_ACTIONS = ["s3:CreateBucket", "s3:PutEncryptionConfiguration", "s3:GetEncryptionConfiguration",
                        "s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock", "s3:PutBucketPolicy",
                        "s3:GetBucketPolicy", "s3:PutBucketVersioning", "s3:GetBucketVersioning",
                        "s3:PutLifecycleConfiguration", "s3:GetLifecycleConfiguration", "s3:PutBucketTagging",
                        "s3:GetBucketTagging", "s3:ListBucket", "s3:DeleteBucket"]


def test_deploy_roles_reach_their_own_stacks_batch_buckets_and_never_prods(prod_plan: Plan, pr_plan: Plan) -> None:
    """The first `up` creates each zone's batch bucket with its settings: the deploy role must be able to, on its own
    stacks' buckets only (a preview's destroy deletes the files its force_destroy empties)."""
    prod = [arn for arn in arns(prod_plan, "aws:s3/bucket:Bucket") if "-batch-" in arn]
    pr = [arn for arn in arns(pr_plan, "aws:s3/bucket:Bucket") if "-batch-" in arn]
    assert len(prod) == 2 and len(pr) == 1
    for role, own, other in (("prod", prod, pr), ("preview", pr, prod)):
        policy = ROLES[role]["permissions"]
        for arn in own:
            for action in BATCH_BUCKET_ACTIONS:
                assert allows_unconditionally(policy, action, arn), (role, action, arn)
            assert allows_unconditionally(policy, "s3:DeleteObject", f"{arn}/files/file-0a1b"), (role, arn)
        for arn in other:
            assert not reaches(allowed_resources(policy, "s3:"), arn), (role, arn)
    for arn in prod:
        assert reaches(denied_resources(ROLES["preview"]["permissions"]), arn), arn


@pytest.mark.parametrize(("role", "stack"), [("prod", "prod"), ("preview", "pr-42")])
def test_deploy_roles_empty_a_batch_bucket_but_never_read_its_files(role: str, stack: str, prod_plan: Plan,
                                                                     pr_plan: Plan, monkeypatch) -> None:
    """Batch files are customer prompts and answers: a deploy workflow manages and (a preview's destroy) empties the
    bucket, but moto's IAM enforcement refuses it the files' contents, whatever its s3:* and kms:* grants say."""
    from moto.core import enable_iam_authentication

    plan = {"prod": prod_plan, "pr-42": pr_plan}[stack]
    bucket = next(b.outputs["bucket"] for b in plan.of_type("aws:s3/bucket:Bucket") if "-batch-" in b.name)
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with mock_aws():
        admin_s3, iam = boto3.client("s3", region_name="us-east-1"), boto3.client("iam", region_name="us-east-1")
        admin_s3.create_bucket(Bucket=bucket)
        admin_s3.put_object(Bucket=bucket, Key="files/file-0a1b", Body=b'{"custom_id": "a"}')
        iam.create_user(UserName="deployer")
        iam.put_user_policy(UserName="deployer", PolicyName="deploy",
                            PolicyDocument=json.dumps(ROLES[role]["permissions"]))
        key = iam.create_access_key(UserName="deployer")["AccessKey"]
        s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        with enable_iam_authentication():
            with pytest.raises(s3.exceptions.ClientError) as refused:
                s3.get_object(Bucket=bucket, Key="files/file-0a1b")
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
            # What managing the bucket and a preview's force_destroy call still works.
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
            versions = s3.list_object_versions(Bucket=bucket)["Versions"]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [
                {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]})
            s3.delete_bucket(Bucket=bucket)
    # Nor may it copy them away: a replication configuration would send every new file to a bucket of its choosing.
    for arn in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/files/file-0a1b"):
        for action in ("s3:PutReplicationConfiguration", "s3:GetObjectVersion", "s3:GetObject"):
            assert not allows_unconditionally(ROLES[role]["permissions"], action, arn), (action, arn)


# -- data sources: every invoke the program makes at preview and up --------------------------------
# Each aws.* data source (invoke) the program calls, and the API actions the provider makes for it (the
# terraform-provider-aws data source reads its tags as well). A new invoke not listed here fails the test below,
# so it cannot ship without its permission.
INVOKE_ACTIONS: dict[str, list[str]] = {
    "secretsmanager.get_random_password": ["secretsmanager:GetRandomPassword"],
    "get_caller_identity": ["sts:GetCallerIdentity"],
    "get_availability_zones": ["ec2:DescribeAvailabilityZones"],
    "route53.get_zone": ["route53:ListHostedZones", "route53:GetHostedZone", "route53:ListTagsForResource"],
    "ecr.get_repository": ["ecr:DescribeRepositories", "ecr:ListTagsForResource"],
}
_INVOKE = re.compile(r"\baws\.((?:[a-z0-9_]+\.)?get_[a-z0-9_]+?)(?:_output)?\(")


def program_invokes() -> set[str]:
    root = Path(__file__).resolve().parents[2] / "infra"
    return {m.group(1) for path in root.rglob("*.py") for m in _INVOKE.finditer(path.read_text())}


def allows_unconditionally(policy: dict, action: str, resource: str = "*") -> bool:
    """IAM's answer where no tag condition can hold: an action with no resource type (`resource` "*": only a
    statement on Resource "*" grants it) or a resource without the stack tag (RDS's own secret). Explicit denies
    win."""
    def matches(s: dict) -> bool:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        return (any(fnmatchcase(action.lower(), a.lower()) for a in actions)
                and any(fnmatchcase(resource, r) if resource != "*" else r == "*" for r in resources))

    if any(s["Effect"] == "Deny" and matches(s) for s in policy["Statement"]):
        return False
    return any(s["Effect"] == "Allow" and matches(s) and "Condition" not in s for s in policy["Statement"])


def test_every_data_source_the_program_calls_is_mapped_to_its_actions() -> None:
    found = program_invokes()
    assert "secretsmanager.get_random_password" in found  # the scan sees the Redis token's and peer key's draw
    assert found <= set(INVOKE_ACTIONS), f"map these invokes to their IAM actions: {found - set(INVOKE_ACTIONS)}"


@pytest.mark.parametrize("role", ["preview", "prod"])
def test_deploy_roles_may_make_every_data_source_call_of_a_preview_or_up(role: str) -> None:
    """Without secretsmanager:GetRandomPassword on "*" every preview fails at the first gateway store."""
    policy = ROLES[role]["permissions"]
    for invoke in sorted(program_invokes()):
        for action in INVOKE_ACTIONS[invoke]:
            assert allows_unconditionally(policy, action), f"{role}: {invoke} needs {action}"


@pytest.mark.parametrize("role", ["preview", "prod"])
def test_deploy_roles_may_create_and_rotate_the_ledgers_rds_managed_secret(role: str) -> None:
    """RDS's "Permissions required for Secrets Manager integration" (rds-secrets-manager.html): the secret RDS
    names rds!db-<id> carries no stack tag, so only the by-name statement can grant it."""
    secret = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:rds!db-0123abcd-4567-ef89-AbCdEf"
    policy = ROLES[role]["permissions"]
    for action in ("secretsmanager:CreateSecret", "secretsmanager:TagResource", "secretsmanager:RotateSecret"):
        assert allows_unconditionally(policy, action, secret), action
    assert allows_unconditionally(policy, "kms:DescribeKey")
    assert not allows_unconditionally(policy, "secretsmanager:GetSecretValue", secret)  # never its value
