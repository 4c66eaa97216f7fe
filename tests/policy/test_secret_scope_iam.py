"""Secret scoping proven by IAM enforcement (moto): the program's gateway and model server role policies read exactly
their stack's, region's secrets of their kind.

The roles get the trust policy and the inline policy the program writes, verbatim except that each planned
secret ARN is replaced by the ARN moto gave the same secret in the same region (moto picks its own random
suffix), and each role is named `<stack>-<planned name>`: the mock engine derives physical names from logical
names only, so both stacks' us-east-1 gateway roles are planned with the same name (a real deploy's auto-naming
adds a random suffix). The secrets of prod and preview live side by side in one account, so only IAM keeps
them apart.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication
from moto.secretsmanager.responses import SecretsManagerResponse

from infra.config import read_stack
from infra.plan.run import Plan, run_program

SECRET = "aws:secretsmanager/secret:Secret"
TOKEN = "llm-platform/prod/huggingface/token"
LEDGER = "aws:rds/instance:Instance"
LEDGER_PASSWORD = "the ledger's RDS-managed password"


def _secret_arn(self: SecretsManagerResponse) -> str:
    """moto's Secrets Manager does not tell its IAM enforcement which secret a call is about (it judges
    every call against Resource "*", so no ARN-scoped policy could ever pass). Tell it: the secret's ARN."""
    secret_id = self._get_param("SecretId")
    try:
        return self.backend.describe_secret(secret_id).arn
    except Exception:  # noqa: BLE001 unknown secret: let the action itself answer ResourceNotFound
        return "*"


@dataclass
class Account:
    """Secrets, gateway roles and model server roles of the plans, created in moto."""
    secret_arns: dict[tuple[str, str, str], str]  # (stack, secret name, region) -> moto ARN
    # (stack, gateway region) or (stack, region, "models") -> assumed-role credentials
    credentials: dict[tuple[str, ...], dict]

    def read(self, reader: tuple[str, ...], stack: str, name: str, region: str) -> str:
        creds = self.credentials[reader]
        client = boto3.client("secretsmanager", region_name=region, aws_access_key_id=creds["AccessKeyId"],
                              aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
        with enable_iam_authentication():
            return client.get_secret_value(SecretId=self.secret_arns[(stack, name, region)])["SecretString"]

    def denied(self, reader: tuple[str, ...], stack: str, name: str, region: str) -> bool:
        try:
            self.read(reader, stack, name, region)
        except ClientError as exc:
            # moto answers IAM denials in IAM's XML, which the JSON client surfaces as a bare 403.
            error = exc.response["Error"]
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403, error
            assert "<Code>AccessDenied</Code>" in error["Message"], error
            assert "secretsmanager:GetSecretValue" in error["Message"], error
            return True
        return False


def _populate(plan: Plan, secret_arns: dict, credentials: dict) -> None:
    planned_to_moto: dict[str, str] = {}
    for secret in plan.of_type(SECRET):
        name = secret.inputs["name"]
        for region in [secret.region, *(r["region"] for r in secret.inputs.get("replicas", []))]:
            arn = boto3.client("secretsmanager", region_name=region).create_secret(
                Name=name, SecretString=f"{plan.stack}:{name}:{region}")["ARN"]
            secret_arns[(plan.stack, name, region)] = arn
            planned_to_moto[secret.outputs["arn"].replace(f":{secret.region}:", f":{region}:")] = arn
    # RDS creates each ledger's master password secret itself (rds!db-<id>, in the ledger's region): play it. The
    # mock engine derives the id from the logical name, the same in every stack, so moto's copy carries the stack.
    for db in plan.of_type(LEDGER):
        for managed in db.outputs.get("masterUserSecrets") or []:
            planned = managed["secretArn"]
            arn = boto3.client("secretsmanager", region_name=db.region).create_secret(
                Name=planned.split(":secret:", 1)[1].rsplit("-", 1)[0].replace("rds!db-", f"rds!db-{plan.stack}-"),
                SecretString=json.dumps({"username": "llmp", "password": f"{plan.stack}:{db.region}"}))["ARN"]
            secret_arns[(plan.stack, LEDGER_PASSWORD, db.region)] = arn
            planned_to_moto[planned] = arn
    roles = {r.outputs["arn"]: r for r in plan.of_type("aws:iam/role:Role")}
    # A model server role also has its weights policy (tests/policy/test_weights_scope_iam.py): take the secrets one.
    role_policies = {r.inputs["role"]: r for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
                     if "ReadStackSecrets" in r.inputs["policy"]}
    iam, sts = boto3.client("iam"), boto3.client("sts", region_name="us-east-1")
    for release in plan.of_type("kubernetes:helm.sh/v3:Release"):
        chart = release.inputs["chart"]
        if chart.endswith("charts/gateway"):
            reader: tuple[str, ...] = (plan.stack, release.region)
        elif chart.endswith("charts/vllm") and "roleArn" in release.inputs["values"]["serviceAccount"]:
            reader = (plan.stack, release.region, "models")
        else:
            continue
        if reader in credentials:  # every model release of a region runs as the same role
            continue
        role = roles[release.inputs["values"]["serviceAccount"]["roleArn"]]
        name = role.outputs["name"]
        moto_name = f"{plan.stack}-{name}"
        moto_arn = iam.create_role(RoleName=moto_name,
                                   AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])["Role"]["Arn"]
        doc = json.loads(role_policies[name].inputs["policy"])
        for stmt in doc["Statement"]:
            if stmt["Sid"] == "ReadStackSecrets":
                stmt["Resource"] = [planned_to_moto[arn] for arn in stmt["Resource"]]
        iam.put_role_policy(RoleName=moto_name, PolicyName=role_policies[name].name, PolicyDocument=json.dumps(doc))
        credentials[reader] = sts.assume_role_with_web_identity(
            RoleArn=moto_arn, RoleSessionName="gateway", WebIdentityToken="projected-sa-token")["Credentials"]


@contextmanager
def account_with(monkeypatch, *plans: Plan) -> Iterator[Account]:
    """One moto account holding the secrets and gateway roles of every plan given."""
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(SecretsManagerResponse, "_determine_resource", _secret_arn, raising=False)
    with mock_aws():
        secret_arns: dict = {}
        credentials: dict = {}
        for plan in plans:
            _populate(plan, secret_arns, credentials)
        yield Account(secret_arns, credentials)


@pytest.fixture
def account(prod_plan, preview_plan, monkeypatch) -> Iterator[Account]:
    with account_with(monkeypatch, prod_plan, preview_plan) as acct:
        yield acct


def _names(plan: Plan) -> list[str]:
    return sorted({s.inputs["name"] for s in plan.of_type(SECRET)})


def test_preview_gateway_cannot_read_prod_secrets(account, prod_plan, preview_plan):
    preview_gateway = ("preview", "us-east-1")
    for name in _names(preview_plan):  # it does read its own: the denials below are IAM, not a broken setup
        assert account.read(preview_gateway, "preview", name, "us-east-1") == f"preview:{name}:us-east-1"
    for name in _names(prod_plan):
        assert account.denied(preview_gateway, "prod", name, "us-east-1"), f"preview read prod's {name}"


def test_prod_gateways_cannot_read_preview_secrets(account, prod_plan, preview_plan):
    for region in [r.name for r in prod_plan.config.regions]:
        for name in _names(preview_plan):
            assert account.denied(("prod", region), "preview", name, "us-east-1"), f"prod {region} read {name}"


def test_a_gateway_role_reads_only_its_own_regions_secrets(account, prod_plan):
    regions = [r.name for r in prod_plan.config.regions]
    for reader in regions:
        zone = prod_plan.config.zone_of(reader)
        for name in [n for n in _names(prod_plan) if n != TOKEN]:  # the model servers' (tested below)
            for region in regions:
                if (("prod", name, region)) not in account.secret_arns:
                    continue
                if region == reader:
                    assert account.read(("prod", reader), "prod", name, region) == f"prod:{name}:{region}"
                else:
                    assert account.denied(("prod", reader), "prod", name, region), \
                        f"the {reader} gateway ({zone}) read {name} in {region}"


def test_a_pull_request_stack_gateway_cannot_read_prod_secrets(prod_plan, monkeypatch):
    raw, _ = read_stack("pr-123")
    pr_plan = run_program(raw, "pr-123")
    with account_with(monkeypatch, prod_plan, pr_plan) as acct:
        pr_gateway = ("pr-123", "us-east-1")
        for name in _names(pr_plan):
            assert name.startswith("llm-platform/pr-123/")
            assert acct.read(pr_gateway, "pr-123", name, "us-east-1") == f"pr-123:{name}:us-east-1"
        for name in _names(prod_plan):
            assert acct.denied(pr_gateway, "prod", name, "us-east-1"), f"pr-123 read prod's {name}"
        for name in _names(pr_plan):
            assert acct.denied(("prod", "us-east-1"), "pr-123", name, "us-east-1"), f"prod read pr-123's {name}"


def test_a_model_server_role_reads_the_hugging_face_token_in_its_region_and_no_provider_key(account, prod_plan):
    regions = [r.name for r in prod_plan.config.regions]
    gateway_secrets = [n for n in _names(prod_plan) if n != TOKEN]
    assert TOKEN in _names(prod_plan) and gateway_secrets
    for reader in regions:
        models = ("prod", reader, "models")
        assert account.read(models, "prod", TOKEN, reader) == f"prod:{TOKEN}:{reader}"
        for region in regions:
            if region != reader:
                assert account.denied(models, "prod", TOKEN, region), f"{reader} model servers read {region}'s token"
        for name in gateway_secrets:
            assert account.denied(models, "prod", name, reader), f"{reader} model servers read {name}"


def test_a_gateway_role_cannot_read_the_hugging_face_token(account, prod_plan):
    for region in [r.name for r in prod_plan.config.regions]:
        assert account.denied(("prod", region), "prod", TOKEN, region), f"the {region} gateway read the token"


def test_a_gateway_role_reads_its_regions_ledger_password_and_no_other(account, prod_plan):
    """RDS's own secret for each region's ledger password: its gateway reads it; no other region's gateway, no model
    server and no preview gateway can."""
    regions = [r.name for r in prod_plan.config.regions]
    for reader in regions:
        own = json.loads(account.read(("prod", reader), "prod", LEDGER_PASSWORD, reader))
        assert own == {"username": "llmp", "password": f"prod:{reader}"}
        for region in regions:
            if region != reader:
                assert account.denied(("prod", reader), "prod", LEDGER_PASSWORD, region), \
                    f"the {reader} gateway read {region}'s ledger password"
        assert account.denied(("prod", reader, "models"), "prod", LEDGER_PASSWORD, reader)
        assert account.denied(("preview", "us-east-1"), "prod", LEDGER_PASSWORD, reader)
