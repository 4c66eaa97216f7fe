"""Bedrock access proven by IAM enforcement (moto): a gateway's role may call (Converse, ConverseStream) exactly the
Bedrock models its config names, in its own region, and a cross-region profile's foundation model elsewhere only
through that profile.

The role gets the trust policy and the Bedrock policy the program writes, verbatim, through moto's IAM API (which
validates the documents as IAM does). moto has no Bedrock runtime to call, so each request is judged by moto's
IAM policy evaluation, the engine its enforcement runs on every call: the action, the resource ARN, and the
`bedrock:InferenceProfileArn` context key that Bedrock sets when a call arrives through a profile
(docs.aws.amazon.com/bedrock/latest/userguide/geographic-cross-region-inference.html).
"""
from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from infra.plan.run import Plan
from tests.policy.helpers import plan_of, stack_raw

HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
PROFILE = f"us.{HAIKU}"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE = "aws:iam/role:Role"


@pytest.fixture(scope="module")
def plan() -> Plan:
    raw = stack_raw("preview")
    raw["residency"] = {"us": ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]}
    raw["failover"] = {**raw["failover"], "hosted_fallbacks": {"qwen2-5-1-5b": [f"bedrock/{PROFILE}"]}}
    return plan_of(raw, "preview")


@pytest.fixture(scope="module")
def gateway_policy(plan: Plan) -> IAMPolicy:
    """The us-east-1 gateway's Bedrock policy, as IAM (moto) stored it on the role the program defines."""
    grant = next(r for r in plan.resources if r.type == ROLE_POLICY and r.name == "us-east-1-gateway-bedrock")
    role = next(r for r in plan.resources if r.type == ROLE and r.outputs.get("name") == grant.inputs["role"])
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        iam.create_role(RoleName="gateway", AssumeRolePolicyDocument=role.inputs["assumeRolePolicy"])
        iam.put_role_policy(RoleName="gateway", PolicyName="bedrock", PolicyDocument=grant.inputs["policy"])
        stored = iam.get_role_policy(RoleName="gateway", PolicyName="bedrock")["PolicyDocument"]
    return IAMPolicy(json.dumps(stored))


def allowed(policy: IAMPolicy, action: str, arn: str, through: str | None = None) -> bool:
    """`through`: the profile a call arrived by. moto counts a condition key the request lacks as matching; in AWS
    it matches no value ("If the key ... is not present in the request context, the values do not match",
    docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html): a direct call
    is played with an empty value, which no StringEquals on an ARN matches either."""
    context = {"bedrock:InferenceProfileArn": through or ""}
    return policy.is_action_permitted(action, arn, incoming_condition_values=context) == PermissionResult.PERMITTED


def profile_arn(region: str) -> str:
    return f"arn:aws:bedrock:{region}:123456789012:inference-profile/{PROFILE}"


def model_arn(region: str, model: str = HAIKU) -> str:
    return f"arn:aws:bedrock:{region}::foundation-model/{model}"


@pytest.mark.parametrize("action", ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"])
def test_gateway_role_may_converse_through_its_profile_in_its_region(gateway_policy, action):
    """Converse is authorized as InvokeModel, ConverseStream as InvokeModelWithResponseStream; a call by a profile
    carries the profile's ARN as `bedrock:InferenceProfileArn`, for the profile and for the model it lands on."""
    assert allowed(gateway_policy, action, profile_arn("us-east-1"), through=profile_arn("us-east-1"))
    for region in ("us-east-1", "us-east-2", "us-west-1", "us-west-2"):  # where the profile may route the call
        assert allowed(gateway_policy, action, model_arn(region), through=profile_arn("us-east-1"))


def test_gateway_role_may_not_call_the_model_directly_where_the_profile_merely_routes(gateway_policy):
    assert not allowed(gateway_policy, "bedrock:InvokeModel", model_arn("us-east-2"))


@pytest.mark.parametrize("arn", [
    profile_arn("eu-west-1"),  # the same profile id, another region
    f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.{HAIKU}",
    model_arn("eu-central-1"),
    model_arn("us-east-1", "anthropic.claude-opus-4-20250514-v1:0"),  # a model the config does not name
])
def test_gateway_role_may_not_invoke_other_models_or_regions(gateway_policy, arn):
    assert not allowed(gateway_policy, "bedrock:InvokeModel", arn, through=profile_arn("us-east-1"))


@pytest.mark.parametrize("action", ["bedrock:CreateModelCustomizationJob", "bedrock:InvokeAgent",
                                    "bedrock:PutModelInvocationLoggingConfiguration"])
def test_gateway_role_may_do_nothing_else_with_bedrock(gateway_policy, action):
    assert not allowed(gateway_policy, action, profile_arn("us-east-1"), through=profile_arn("us-east-1"))


def test_only_gateways_that_render_bedrock_get_a_bedrock_grant(plan):
    grants = sorted(r.name for r in plan.resources if r.type == ROLE_POLICY and r.name.endswith("-bedrock"))
    assert grants == ["us-east-1-gateway-bedrock"]
