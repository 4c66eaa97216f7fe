"""Secrets on the first `up`: each exists with a placeholder value before any reader starts, and a real
value put in later is never overwritten by the program."""
from __future__ import annotations

import boto3
import pulumi
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.components.secrets import PLACEHOLDER, PLACEHOLDER_IGNORES, PLACEHOLDER_STAGES
from infra.plan.run import Plan, run_program
from tests.stacks import stack_raw

SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"


# Values the program itself writes, whole (infra/components/gateway_stores.py): the Redis URL follows the store.
PROGRAM_WRITTEN = ("/gateway/redis-url",)
# A random first value instead of the placeholder: the gateways must agree on it before any of them starts.
GENERATED = ("/gateway/peer-key",)


def test_every_gateway_secret_has_a_value_before_the_gateway_starts(prod_plan: Plan) -> None:
    secrets = [s for s in prod_plan.of_type(SECRET) if "/huggingface/" not in s.inputs["name"]]
    versions = {v.inputs["secretId"]: v for v in prod_plan.of_type(VERSION)}
    assert secrets
    for secret in secrets:
        version = versions.get(secret.outputs["arn"])
        assert version is not None, f"{secret.inputs['name']} has no first version"
        value = version.inputs["secretString"]  # marked secret by the provider schema: kept out of logs and state
        assert version.region == secret.region  # written where the primary lives; replicas copy it
        if secret.inputs["name"].endswith(PROGRAM_WRITTEN):
            continue
        assert version.inputs["versionStages"] == ["AWSCURRENT", "LLMP_PLACEHOLDER"]
        if secret.inputs["name"].endswith(GENERATED):
            assert isinstance(value, dict) and len(value["value"]) >= 32 and value["value"] != PLACEHOLDER
        else:
            assert isinstance(value, dict) and value["value"] == PLACEHOLDER


def test_the_hugging_face_token_has_no_placeholder_that_model_downloads_would_send(prod_plan: Plan) -> None:
    tokens = [s for s in prod_plan.of_type(SECRET) if s.inputs["name"].endswith("/huggingface/token")]
    assert tokens, "prod serves gated models"
    written = {v.inputs["secretId"] for v in prod_plan.of_type(VERSION)}
    assert not written & {t.outputs["arn"] for t in tokens}


def test_a_value_put_in_later_is_never_written_over() -> None:
    seen: dict[str, list[str]] = {}

    def observe(args: pulumi.ResourceTransformationArgs) -> None:
        if args.type_ == VERSION and not args.name.endswith("-gateway-redis-url"):  # PROGRAM_WRITTEN
            seen[args.name] = list(args.opts.ignore_changes or [])

    run_program(stack_raw("prod"), "prod", observe=observe)
    assert seen
    for name, ignored in seen.items():
        assert {"secretString", "versionStages"} <= set(ignored), name
    assert PLACEHOLDER_IGNORES == ["secretString", "versionStages"]


@mock_aws
def test_secrets_manager_refuses_to_read_a_secret_that_has_no_value_yet() -> None:
    """Why the placeholder exists: the gateway reads its keys at start, and this is what it got."""
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.create_secret(Name="llm-platform/prod/providers/openai")
    with pytest.raises(ClientError) as err:
        sm.get_secret_value(SecretId="llm-platform/prod/providers/openai")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


@mock_aws
def test_a_placeholder_with_only_the_default_labels_is_left_unlabelled_by_two_later_puts() -> None:
    """Why the program's placeholder carries a label of its own (LLMP_PLACEHOLDER, asserted above): Secrets
    Manager deletes versions left with no label, the provider would then drop the placeholder from state and
    the next `up` would create it again, as AWSCURRENT, over the real key (terraform-provider-aws#37302).
    PutSecretValue moves only AWSCURRENT and AWSPREVIOUS (AWS API reference, PutSecretValue: VersionStages);
    moto drops other labels too, so only the failure without one is reproduced here."""
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = "llm-platform/prod/gateway/master-key"
    sm.create_secret(Name=name)
    placeholder = sm.put_secret_value(SecretId=name, SecretString=PLACEHOLDER)["VersionId"]
    for value in ("first-real-key-0123456789abcdef", "second-real-key-0123456789abcdef"):
        sm.put_secret_value(SecretId=name, SecretString=value)
    stages = {v["VersionId"]: v.get("VersionStages", []) for v in
              sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]}
    assert stages.get(placeholder, []) == []
    assert PLACEHOLDER_STAGES == ["AWSCURRENT", "LLMP_PLACEHOLDER"]


@mock_aws
def test_a_key_put_after_the_first_up_becomes_the_current_value() -> None:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = "llm-platform/prod/providers/openai"
    sm.create_secret(Name=name)
    first = sm.put_secret_value(SecretId=name, SecretString=PLACEHOLDER)["VersionId"]  # what `up` writes
    sm.put_secret_value(SecretId=name, SecretString="sk-operator-set-this")  # the operator, later
    assert sm.get_secret_value(SecretId=name)["SecretString"] == "sk-operator-set-this"
    # The program's version still exists, demoted: refreshing it shows only its stages changed, which
    # the program ignores, so the next `up` writes nothing.
    old = sm.get_secret_value(SecretId=name, VersionId=first)
    assert old["SecretString"] == PLACEHOLDER and old["VersionStages"] == ["AWSPREVIOUS"]
