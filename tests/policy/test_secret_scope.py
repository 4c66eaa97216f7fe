"""Control secret-scope: a stack's secrets use its own keys, each is read only by the roles meant for it (gateway
roles for provider and master keys, model server roles for the Hugging Face token), no policy has a wildcard."""
from __future__ import annotations

from infra.plan.mocks import PlannedResource
from infra.policy.rules.secrets import _wildcards
from tests.policy.helpers import (
    assert_passes,
    assert_rejected,
    find,
    mutated,
    policy_doc,
    result,
    result_of_resources,
    set_policy,
)

SECRET = "aws:secretsmanager/secret:Secret"
SECRET_POLICY = "aws:secretsmanager/secretPolicy:SecretPolicy"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
TOKEN = "llm-platform/{}/huggingface/token"


def test_secrets_are_encrypted_with_the_stacks_own_keys(stack_plan):
    res = result(stack_plan, "secret-scope")
    assert_passes(res)
    keys = {r.outputs["arn"] for r in stack_plan.resources
            if r.type in ("aws:kms/key:Key", "aws:kms/replicaKey:ReplicaKey")}
    secrets = [e for e in res.evidence if e.get("type") == SECRET]
    assert secrets and all(e["key"] in keys for e in secrets)
    assert all(e["secret"].startswith(f"llm-platform/{stack_plan.stack}/") for e in secrets)


def _roles(res, kind: str) -> dict[str, str]:
    return next(e[kind] for e in res.evidence if kind in e)


def test_only_the_stacks_gateway_roles_may_read_its_gateway_secrets(stack_plan):
    res = result(stack_plan, "secret-scope")
    assert_passes(res)
    gateway_roles = _roles(res, "gateway_roles")
    assert sorted(gateway_roles.values()) == sorted(r.name for r in stack_plan.config.regions)
    readers = [e for e in res.evidence if e.get("kind") == "gateway"]
    assert len(readers) == len(gateway_roles), "each gateway role reads its region's copies"
    peer_key = f"llm-platform/{stack_plan.stack}/gateway/peer-key"  # every zone's gateways: see the test below
    for e in [e for e in res.evidence if e.get("type") == SECRET
              and e["secret"] not in (TOKEN.format(stack_plan.stack), peer_key)]:
        zone = stack_plan.config.zone_of(e["region"])
        assert e["readers"] and all(stack_plan.config.zone_of(gateway_roles[r]) == zone for r in e["readers"])


def test_only_the_model_server_roles_read_the_hugging_face_token(prod_plan):
    res = result(prod_plan, "secret-scope")
    assert_passes(res)
    model_roles = _roles(res, "model_server_roles")
    assert sorted(model_roles.values()) == sorted(r.name for r in prod_plan.config.regions)
    assert not set(model_roles) & set(_roles(res, "gateway_roles"))
    tokens = [e for e in res.evidence if e.get("type") == SECRET and e["secret"] == TOKEN.format("prod")]
    assert len(tokens) == len(prod_plan.config.zones), "one token per zone, replicated inside it"
    # The weights stagers download gated models with the token too, each in its own region.
    stagers = _roles(res, "weights_stager_roles")
    assert sorted(stagers.values()) == sorted(r.name for r in prod_plan.config.regions)
    for e in tokens:
        zone = prod_plan.config.zone_of(e["region"])
        in_zone = sorted(r.name for r in prod_plan.config.regions_in(zone))
        assert set(e["readers"]) <= set(model_roles) | set(stagers)
        assert sorted(model_roles[r] for r in e["readers"] if r in model_roles) == in_zone
        assert sorted(stagers[r] for r in e["readers"] if r in stagers) == in_zone
    for e in [e for e in res.evidence if e.get("kind") == "model server"]:
        assert len(e["reads"]) == 1 and ":secret:llm-platform/prod/huggingface/token" in e["reads"][0]


def test_a_stack_without_a_hugging_face_token_has_no_model_server_roles(preview_plan):
    res = result(preview_plan, "secret-scope")
    assert_passes(res)
    assert _roles(res, "model_server_roles") == {}
    assert TOKEN.format("preview") not in {e.get("secret") for e in res.evidence}


def test_no_policy_the_program_writes_has_a_wildcard(stack_plan):
    res = result(stack_plan, "secret-scope")
    assert_passes(res)
    checked = next(e["policy_documents_checked"] for e in res.evidence if "policy_documents_checked" in e)
    written = [r for r in stack_plan.resources if r.type in ("aws:iam/role:Role", ROLE_POLICY, SECRET_POLICY)]
    assert checked == len(written)  # every trust policy, role policy and secret resource policy


def test_a_deny_all_but_fence_is_not_a_wildcard_grant():
    """The secret resource policy denies GetSecretValue to Principal "*" unless aws:PrincipalArn is a gateway
    role. A wildcard principal is accepted only like this: in a Deny, narrowed by a principal condition."""
    fence = {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "secretsmanager:GetSecretValue",
             "Resource": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s-abc",
             "Condition": {"StringNotEquals": {"aws:PrincipalArn": ["arn:aws:iam::123456789012:role/gw"]}}}
    assert _wildcards({"Statement": [fence]}) == []
    unconditioned = {k: v for k, v in fence.items() if k != "Condition"}
    assert _wildcards({"Statement": [unconditioned]}) == [
        "statement 0 denies a wildcard principal without a condition naming who is exempt"]
    grant = {**fence, "Effect": "Allow"}
    assert _wildcards({"Statement": [grant]}) == ["statement 0 allows a wildcard principal ({'AWS': '*'})"]


def test_the_load_balancer_controllers_policy_is_reviewed_only_as_upstream_publishes_it(prod_plan):
    """Program bug (simulated): one of upstream's Describe statements on "*" gains secretsmanager:GetSecretValue. The
    exception covers upstream's statements verbatim, nothing near them."""
    def widen(rs):
        rp = find(rs, ROLE_POLICY, "eu-west-2-lb-controller")
        doc = policy_doc(rp)
        doc["Statement"][1]["Action"] = [*doc["Statement"][1]["Action"], "secretsmanager:GetSecretValue"]
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "aws:iam/rolePolicy:RolePolicy eu-west-2-lb-controller: statement 1 has a wildcard Resource (*)")


def test_wildcard_resource_in_a_role_policy_is_rejected(prod_plan):
    """Program bug (simulated): the us-east-1 gateway's role policy reads every secret ("Resource": "*")."""
    def widen(rs):
        rp = find(rs, ROLE_POLICY, "us-east-1-gateway-secrets")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"] = "*"
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "aws:iam/rolePolicy:RolePolicy us-east-1-gateway-secrets: ReadStackSecrets has a wildcard "
                    "Resource (*)",
                    "the us-east-1 gateway role may read llm-platform/prod/providers/openai in us-west-2")


def test_secret_policy_allowing_everyone_is_rejected(prod_plan):
    """Program bug (simulated): a secret's resource policy becomes an Allow for Principal "*"."""
    def open_up(rs):
        sp = find(rs, SECRET_POLICY, "llm-platform-secrets-eu-gateway-master-key")
        doc = policy_doc(sp)
        doc["Statement"][0]["Effect"] = "Allow"
        set_policy(sp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, open_up), "secret-scope"),
                    "OnlyThisStacksGatewaysRead allows a wildcard principal",
                    "secret llm-platform/prod/gateway/master-key in eu-north-1: its resource policy grants "
                    "secretsmanager:GetSecretValue")


def test_secret_on_the_default_key_is_rejected(prod_plan):
    """Program bug (simulated): a secret is created without kms_key_id (AWS's default aws/secretsmanager key)."""
    resources = mutated(prod_plan, lambda rs: find(rs, SECRET, "llm-platform-secrets-us-providers-groq")
                        .inputs.pop("kmsKeyId"))
    assert_rejected(result_of_resources(prod_plan, resources, "secret-scope"),
                    "secret llm-platform/prod/providers/groq in us-east-1 is encrypted with the account's default key")


def test_non_gateway_role_reading_secrets_is_rejected(prod_plan):
    """Program bug (simulated): the node role of us-east-1 gets a policy reading the stack's secrets, and a
    secret policy exempts it from the deny."""
    def grant_nodes(rs):
        nodes = find(rs, "aws:iam/role:Role", "us-east-1-nodes")
        gateway_policy = find(rs, ROLE_POLICY, "us-east-1-gateway-secrets")
        rs.append(PlannedResource(ROLE_POLICY, "us-east-1-nodes-secrets", "global",
                                  {"role": nodes.outputs["name"], "policy": gateway_policy.inputs["policy"]}))
        sp = find(rs, SECRET_POLICY, "llm-platform-secrets-us-providers-openai")
        doc = policy_doc(sp)
        doc["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"].append(nodes.outputs["arn"])
        set_policy(sp, "policy", doc)
    node_role_arn = find(prod_plan.resources, "aws:iam/role:Role", "us-east-1-nodes").outputs["arn"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, grant_nodes), "secret-scope"),
                    "us-east-1-nodes-secrets lets us-east-1-nodes read stack secrets",
                    f"exempts {node_role_arn} from its deny, which is not a gateway role of stack prod")


def test_unreviewed_managed_policy_is_rejected(prod_plan):
    """Program bug (simulated): a role gets the AWS managed SecretsManagerReadWrite policy attached."""
    resources = mutated(prod_plan, lambda rs: rs.append(PlannedResource(
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "us-east-1-nodes-secrets", "global",
        {"role": "us-east-1-nodes-d73a9a2", "policyArn": "arn:aws:iam::aws:policy/SecretsManagerReadWrite"})))
    assert_rejected(result_of_resources(prod_plan, resources, "secret-scope"),
                    "attaches arn:aws:iam::aws:policy/SecretsManagerReadWrite, which is not on the reviewed list")


def test_a_model_server_role_that_can_read_a_provider_key_is_rejected(prod_plan):
    """Program bug (simulated): the us-east-1 model servers' role policy also reads the OpenAI key there."""
    def widen(rs):
        openai = find(rs, SECRET, "llm-platform-secrets-us-providers-openai").outputs["arn"]
        rp = find(rs, ROLE_POLICY, "us-east-1-models-token")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"].append(openai)
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "us-east-1-models-token: the us-east-1 model server role may read "
                    "llm-platform/prod/providers/openai, which only gateway roles may read")


def test_a_gateway_role_that_can_read_the_hugging_face_token_is_rejected(prod_plan):
    """Program bug (simulated): the eu-north-1 gateway's role policy also reads the token, and the token's
    resource policy exempts the gateway role from its deny."""
    def widen(rs):
        token = find(rs, SECRET, "llm-platform-secrets-eu-huggingface-token")
        rp = find(rs, ROLE_POLICY, "eu-north-1-gateway-secrets")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"].append(token.outputs["arn"])
        set_policy(rp, "policy", doc)
        gateway_role = find(rs, "aws:iam/role:Role", "eu-north-1-gateway").outputs["arn"]
        sp = find(rs, SECRET_POLICY, "llm-platform-secrets-eu-huggingface-token")
        fence = policy_doc(sp)
        fence["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"].append(gateway_role)
        set_policy(sp, "policy", fence)
    gateway_role = find(prod_plan.resources, "aws:iam/role:Role", "eu-north-1-gateway").outputs["arn"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "eu-north-1-gateway-secrets: the eu-north-1 gateway role may read "
                    "llm-platform/prod/huggingface/token, which only model server roles may read",
                    f"exempts {gateway_role} from its deny, which is not a model server role of stack prod")


def test_a_model_server_role_reading_another_regions_token_is_rejected(prod_plan):
    """Program bug (simulated): the us-east-1 model servers may read the token's us-west-2 copy too."""
    def widen(rs):
        rp = find(rs, ROLE_POLICY, "us-east-1-models-token")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"].append(doc["Statement"][0]["Resource"][0].replace(":us-east-1:", ":us-west-2:"))
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "the us-east-1 model server role may read llm-platform/prod/huggingface/token in us-west-2")


def test_model_servers_running_as_the_gateway_role_are_rejected(prod_plan):
    """Program bug (simulated): the us-east-1 model releases are given the gateway's role."""
    def share(rs):
        gateway_role = find(rs, "aws:iam/role:Role", "us-east-1-gateway").outputs["arn"]
        for r in rs:
            if r.type == "kubernetes:helm.sh/v3:Release" and r.region == "us-east-1" \
                    and str(r.inputs.get("chart", "")).endswith("charts/vllm"):
                r.inputs["values"]["serviceAccount"]["roleArn"] = gateway_role
    gateway_role = find(prod_plan.resources, "aws:iam/role:Role", "us-east-1-gateway").outputs["arn"]
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, share), "secret-scope"),
                    f"{gateway_role} is both a gateway role and a model server role")
def test_deploy_runner_vpc_grant_beside_another_action_is_rejected(preview_plan):
    """The runner's role may hold the VPC network-interface calls on "*" (AWS documents them so) and nothing else:
    program bug (simulated): secretsmanager:GetSecretValue slips into that statement."""
    hub = preview_plan.config.deploy_hub.name

    def widen(rs):
        rp = find(rs, ROLE_POLICY, f"{hub}-deploy-hub-runner")
        doc = policy_doc(rp)
        doc["Statement"][0]["Action"].append("secretsmanager:GetSecretValue")
        set_policy(rp, "policy", doc)
    assert_passes(result(preview_plan, "secret-scope"))
    assert_rejected(result_of_resources(preview_plan, mutated(preview_plan, widen), "secret-scope"),
                    f"{hub}-deploy-hub-runner: PlaceTheRunnerInTheVpc has a wildcard Resource (*)")


LEDGER = "aws:rds/instance:Instance"
ROLE = "aws:iam/role:Role"


def _managed_secret(plan_resources, region: str) -> str:
    return find(plan_resources, LEDGER, f"{region}-gateway-ledger").outputs["masterUserSecrets"][0]["secretArn"]


def test_each_gateway_reads_its_regions_redis_url_peer_key_and_ledger_password(stack_plan):
    res = result(stack_plan, "secret-scope")
    assert_passes(res)
    stack = stack_plan.stack
    for region in (r.name for r in stack_plan.config.regions):
        needs = next(e for e in res.evidence if e.get("gateway_region") == region)
        assert sorted(needs["reads_store_secrets"]) == sorted([
            f"llm-platform/{stack}/gateway/peer-key", f"llm-platform/{stack}/gateway/redis-url",
            f"the RDS-managed master password of {region}-gateway-ledger"])
        grant = policy_doc(find(stack_plan.resources, ROLE_POLICY, f"{region}-gateway-secrets"))
        assert _managed_secret(stack_plan.resources, region) in grant["Statement"][0]["Resource"]
    # The Redis URL's own fence exempts its region's gateway role alone.
    for url in (e for e in res.evidence if e.get("secret") == f"llm-platform/{stack}/gateway/redis-url"):
        assert url["replicas"] == []
        assert url["readers"] == [find(stack_plan.resources, ROLE, f"{url['region']}-gateway").outputs["arn"]]


def test_the_peer_key_is_the_only_secret_every_zones_gateways_read(prod_plan):
    res = result(prod_plan, "secret-scope")
    assert_passes(res)
    peer = next(e for e in res.evidence if e.get("secret") == "llm-platform/prod/gateway/peer-key")
    assert sorted(peer["readers"]) == sorted(find(prod_plan.resources, ROLE, f"{r.name}-gateway").outputs["arn"]
                                             for r in prod_plan.config.regions)
    # The same exemption on a zone's own secret is refused: only the peer key crosses zones.
    us_role = find(prod_plan.resources, ROLE, "us-east-1-gateway").outputs["arn"]

    def exempt_us_gateway(rs):
        sp = find(rs, SECRET_POLICY, "llm-platform-secrets-eu-gateway-master-key")
        fence = policy_doc(sp)
        fence["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"].append(us_role)
        set_policy(sp, "policy", fence)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, exempt_us_gateway), "secret-scope"),
                    "secret llm-platform/prod/gateway/master-key (zone 'eu') exempts the gateway role of "
                    "us-east-1, in another zone")


def test_another_regions_gateway_reading_a_redis_url_or_ledger_password_is_rejected(prod_plan):
    """Program bug (simulated): the us-west-2 gateway role may read us-east-1's Redis URL and ledger password, and
    that Redis URL's fence exempts it."""
    east = {r.inputs["name"]: r for r in prod_plan.of_type(SECRET) if r.region == "us-east-1"}
    url = east["llm-platform/prod/gateway/redis-url"]
    west_role = find(prod_plan.resources, ROLE, "us-west-2-gateway").outputs["arn"]

    def widen(rs):
        rp = find(rs, ROLE_POLICY, "us-west-2-gateway-secrets")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"] += [url.outputs["arn"], _managed_secret(rs, "us-east-1")]
        set_policy(rp, "policy", doc)
        sp = find(rs, SECRET_POLICY, url.name)
        fence = policy_doc(sp)
        fence["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"] = [
            *fence["Statement"][0]["Condition"]["StringNotEquals"]["aws:PrincipalArn"], west_role]
        set_policy(sp, "policy", fence)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "us-west-2-gateway-secrets: the us-west-2 gateway role may read "
                    "llm-platform/prod/gateway/redis-url in us-east-1",
                    "may read the RDS-managed master password of us-east-1-gateway-ledger in us-east-1",
                    "secret llm-platform/prod/gateway/redis-url in us-east-1 exempts the gateway role of us-west-2")


def test_a_role_other_than_the_gateway_reading_the_ledger_password_is_rejected(prod_plan):
    """Program bug (simulated): the eu-north-1 model server role may read that region's ledger password."""
    def widen(rs):
        rp = find(rs, ROLE_POLICY, "eu-north-1-models-token")
        doc = policy_doc(rp)
        granted = doc["Statement"][0]["Resource"]
        doc["Statement"][0]["Resource"] = [*([granted] if isinstance(granted, str) else granted),
                                           _managed_secret(rs, "eu-north-1")]
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, widen), "secret-scope"),
                    "model server role may read the RDS-managed master password of eu-north-1-gateway-ledger, which "
                    "only gateway roles may read")


def test_a_gateway_role_that_cannot_read_its_stores_secrets_is_rejected(prod_plan):
    """Program bug (simulated): the eu-west-2 gateway's grant lost the peer key and the ledger password."""
    def narrow(rs):
        rp = find(rs, ROLE_POLICY, "eu-west-2-gateway-secrets")
        doc = policy_doc(rp)
        doc["Statement"][0]["Resource"] = [a for a in doc["Statement"][0]["Resource"]
                                           if "peer-key" not in a and "rds!db-" not in a]
        set_policy(rp, "policy", doc)
    assert_rejected(result_of_resources(prod_plan, mutated(prod_plan, narrow), "secret-scope"),
                    "the gateway role of eu-west-2 may not read llm-platform/prod/gateway/peer-key in eu-west-2",
                    "may not read the RDS-managed master password of eu-west-2-gateway-ledger in eu-west-2")
