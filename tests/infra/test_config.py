"""The stack config: the shipped stacks load, and each kind of mistake is refused with exit 2 naming the key."""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from infra.catalog import load_catalog
from infra.cli import EXIT_CONFIG, main
from infra.config import ROOT, ConfigError, namespace_problems, parse
from tests.stacks import stack_raw, write_stack

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets raw[path] (dotted keys, [i] indices) to value."""
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = _split(path)
        node: Any = raw
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return mutate


def _split(path: str) -> list[Any]:
    parts: list[Any] = []
    for piece in path.replace("]", "").split("."):
        name, *indices = piece.split("[")
        parts.append(name)
        parts.extend(int(i) for i in indices)
    return parts


_DELETE = object()

# (what is wrong, mutation of the prod stack, the key path the message must name, words it must contain)
BAD_CONFIGS: list[tuple[str, Mutation, str, str]] = [
    ("unknown instance type", _set("regions[0].pools[0].instance_types[0]", "p9.96xlarge"),
     "llm-platform:regions[0].pools[0].instance_types[0]", "unknown instance type 'p9.96xlarge'"),
    ("model's pool missing in one of its regions", _set("models[1].pool", "h100-only-east"),
     "llm-platform:models[1].pool", "pool 'h100-only-east' is missing in region us-east-1"),
    ("region outside its residency zone", _set("regions[2].residency", "us"),
     "llm-platform:regions[2].name", "region eu-north-1 is outside residency zone 'us'"),
    ("pool min above max", _set("regions[0].pools[1].min_nodes", 9),
     "llm-platform:regions[0].pools[1].min_nodes", "min_nodes (9) is above max_nodes (2)"),
    ("GPUs per replica above the pool's instance", _set("models[1].gpus", 8),
     "llm-platform:models[1].gpus", "8 GPUs per replica, but pool mid in us-east-1 has instances with only 4 GPU(s)"),
    ("replica min above max", _set("models[0].replicas", {"min": 3, "max": 2}),
     "llm-platform:models[0].replicas.min", "min (3) is above max (2)"),
    ("undefined residency zone", _set("regions[0].residency", "apac"),
     "llm-platform:regions[0].residency", "zone 'apac' is not defined"),
    ("capacity type not on-demand, spot or reserved", _set("regions[0].pools[2].capacity", "preemptible"),
     "llm-platform:regions[0].pools[2].capacity", "'on-demand', 'spot' or 'reserved'"),
    ("budget missing", _set("budget", _DELETE), "llm-platform:budget", "required key is missing"),
    ("misspelt key", _set("models[0].replica", {"min": 1, "max": 2}),
     "llm-platform:models[0].replica", "unknown key"),
    ("restricted model with a hosted fallback", _set("failover.hosted_fallbacks.mistral-small-24b", ["together/x"]),
     "llm-platform:failover.hosted_fallbacks.mistral-small-24b", "restricted to zone 'eu'"),
    ("tensor parallel size vLLM cannot use", _set("models[0].gpus", 3),
     "llm-platform:models[0].gpus", "needs 1, 2, 4 or 8"),
    ("model in a region the stack does not have", _set("models[0].regions[0]", "ap-south-1"),
     "llm-platform:models[0].regions[0]", "'ap-south-1' is not one of llm-platform:regions"),
    ("cluster API open to the internet", _set("cluster.public_access_cidrs", ["0.0.0.0/0"]),
     "llm-platform:cluster.public_access_cidrs[0]", "opens the API to the internet"),
    ("pool too small for its models at max replicas", _set("regions[0].pools[0].max_nodes", 1),
     "llm-platform:regions[0].pools[0].max_nodes", "needs 2 nodes for its models at max replicas"),
    ("restricted model placed outside its zone", _set("models[2].regions", ["eu-north-1", "us-east-1"]),
     "llm-platform:models[2].regions[1]", "restricted to zone 'eu' but us-east-1 is in zone 'us'"),
    ("non-GPU instance in a GPU pool", _set("regions[0].pools[2].instance_types", ["m7i.xlarge"]),
     "llm-platform:regions[0].pools[2].instance_types[0]", "has no GPU"),
    ("negative budget", _set("budget.monthly_usd", -5), "llm-platform:budget.monthly_usd", "greater than 0"),
    ("gateway domain outside its DNS zone", _set("gateway.domain", "api.other.example.org"),
     "llm-platform:gateway.domain", "is not inside the DNS zone llm.example.com"),
    ("prod stack declared as preview", _set("environment", "preview"),
     "llm-platform:environment", "the prod stack must have environment 'prod'"),
    ("VPC block with host bits", _set("network", {"cidr": "10.60.1.0/16"}),
     "llm-platform:network.cidr", "without host bits"),
    ("VPC block too small for six /19 subnets", _set("network", {"cidr": "10.60.0.0/18"}),
     "llm-platform:network.cidr", "needs a /8 to /16"),
    ("two regions on one VPC block", _set("regions[1].cidr", "10.40.0.0/16"),
     "llm-platform:regions[1].cidr", "VPC block 10.40.0.0/16 overlaps 10.40.0.0/16 (us-east-1)"),
    ("a region's VPC block too small for six /19 subnets", _set("regions[2].cidr", "10.90.0.0/20"),
     "llm-platform:regions[2].cidr", "needs a /8 to /16"),
    ("no room after network.cidr for the other regions' blocks", _set("network", {"cidr": "255.255.0.0/16"}),
     "llm-platform:network.cidr", "no room after 255.255.0.0/16"),
    ("cluster API allow-listing a documentation range", _set("cluster.public_access_cidrs", ["203.0.113.0/24"]),
     "llm-platform:cluster.public_access_cidrs[0]", "203.0.113.0/24 is a documentation range (RFC 5737)"),
    ("deploy repository that is not owner/name", _set("deploy", {"repository": "https://github.com/x"}),
     "llm-platform:deploy.repository", "is not a GitHub repository as owner/name"),
    ("hosted fallback that names no known provider", _set("failover.hosted_fallbacks.llama-3-1-8b", ["acme/x"]),
     "llm-platform:failover.hosted_fallbacks.llama-3-1-8b[0]", "with provider one of openai"),
    ("Bedrock fallback through a global inference profile", _set("failover.hosted_fallbacks.llama-3-1-8b", [
        "bedrock/global.anthropic.claude-3-5-haiku-20241022-v1:0"]),
     "llm-platform:failover.hosted_fallbacks.llama-3-1-8b[0]", "is a global inference profile"),
    ("Bedrock profile no gateway of the model can call", _set("failover.hosted_fallbacks.llama-3-1-8b", [
        "bedrock/apac.anthropic.claude-3-5-haiku-20241022-v1:0"]),
     "llm-platform:failover.hosted_fallbacks.llama-3-1-8b[0]", "callable only from apac regions"),
    ("cost allocation tag switch not a boolean", _set("budget.activate_cost_allocation_tag", "maybe"),
     "llm-platform:budget.activate_cost_allocation_tag", "boolean"),
    ("budget alert threshold given twice", _set("budget.alert_thresholds_pct", [50, 50]),
     "llm-platform:budget.alert_thresholds_pct", "lists a threshold twice"),
    ("more budget alerts than AWS allows", _set("budget.alert_thresholds_pct", [10, 20, 30, 40, 50]),
     "llm-platform:budget.alert_thresholds_pct", "at most 4 items"),
    ("cluster admin that is a user, not a role", _set("cluster.admin_roles", ["arn:aws:iam::123456789012:user/alice"]),
     "llm-platform:cluster.admin_roles[0]", "neither an IAM role name nor a role ARN"),
    ("cluster admin listed twice", _set("cluster.admin_roles", ["ops", "ops"]),
     "llm-platform:cluster.admin_roles[1]", "ops is listed twice"),
    ("the Hugging Face token named as a Kubernetes Secret (the old key)",
     _set("secrets", {"providers": ["openai"], "huggingface_token_secret": "hf-token"}),
     "llm-platform:secrets.huggingface_token_secret", "write `llm-platform:secrets.huggingface_token: true`"),
    ("an interactive model at zero replicas", _set("models[1].replicas.min", 0),
     "llm-platform:models[1].replicas.min", "0 is only for `tier: batch` models, which scale to zero while idle"),
    ("a real region the catalog has no GPU facts for", _set("regions[3].name", "eu-central-2"),
     "llm-platform:regions[3].name", "eu-central-2 (Europe (Zurich)) is an AWS region, but infra/catalog.yaml"),
    ("a misspelt region", _set("regions[3].name", "eu-wset-2"),
     "llm-platform:regions[3].name", "unknown AWS region 'eu-wset-2' (not one of the commercial regions"),
    ("a misspelt region in a residency zone", _set("residency.eu", ["eu-north-1", "eu-west-2", "eu-wset-1"]),
     "llm-platform:residency.eu", "did you mean eu-west-1"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_the_key(case, tmp_path, capsys) -> None:
    _, mutate, key, words = case
    raw = stack_raw("prod")
    mutate(raw)
    path = write_stack(tmp_path, raw)
    assert main(["plan", "--stack", "prod", "--config-file", str(path)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    line = next((ln for ln in err.splitlines() if ln.strip().startswith(key + ":")), None)
    assert line is not None, f"no line names {key}:\n{err}"
    assert words in line


def test_each_region_gets_its_own_vpc_block_counting_up_from_network_cidr() -> None:
    raw = stack_raw("prod")
    cfg = parse(raw, "prod")
    base = int(ipaddress.IPv4Network(cfg.network.cidr).network_address)
    blocks = [ipaddress.IPv4Network(cfg.vpc_cidr(r.name)) for r in cfg.regions]
    assert [int(b.network_address) - base for b in blocks] == [i * 2**16 for i in range(len(cfg.regions))]
    raw["regions"][-1] = {**raw["regions"][-1], "cidr": "172.20.0.0/16"}
    assert parse(raw, "prod").vpc_cidr(cfg.regions[-1].name) == "172.20.0.0/16"


def test_all_problems_are_reported_at_once() -> None:
    raw = stack_raw("prod")
    raw["regions"][0]["pools"][0]["instance_types"] = ["p9.96xlarge"]
    raw["models"][0]["replicas"] = {"min": 5, "max": 1}
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod")
    keys = [k for k, _ in exc.value.problems]
    assert "llm-platform:regions[0].pools[0].instance_types[0]" in keys
    assert "llm-platform:models[0].replicas.min" in keys


def test_unreadable_yaml_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  llm-platform:budget: [unclosed\n")
    assert main(["plan", "--config-file", str(path)]) == EXIT_CONFIG
    assert "not valid YAML" in capsys.readouterr().err


def test_missing_stack_file_exits_2(capsys) -> None:
    assert main(["plan", "--stack", "no-such-stack"]) == EXIT_CONFIG
    assert "Pulumi.no-such-stack.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("stack", ["prod", "preview"])
def test_shipped_stacks_are_valid(stack: str) -> None:
    cfg = parse(stack_raw(stack), stack)
    assert cfg.environment == stack


def test_prod_spans_two_zones_and_four_regions() -> None:
    cfg = parse(stack_raw("prod"), "prod")
    assert {z: [r.name for r in cfg.regions_in(z)] for z in cfg.zones} == {
        "us": ["us-east-1", "us-west-2"], "eu": ["eu-north-1", "eu-west-2"]}
    pools = {p.name: p for p in cfg.regions[0].pools}
    assert pools["h100"].instance_types == ["p5.48xlarge"] and not pools["h100"].spot
    assert pools["mid"].instance_types[0].startswith("g6e.") and not pools["mid"].spot
    assert pools["batch"].spot and {t.split(".")[0] for t in pools["batch"].instance_types} == {"g6e", "g6"}
    big = next(m for m in cfg.models if m.pool == "h100")
    assert (big.gpus, big.quantization) == (8, "fp8")
    for model in cfg.models:
        for zone in {cfg.zone_of(r) for r in model.regions}:
            assert len([r for r in model.regions if cfg.zone_of(r) == zone]) >= 2, model.name


def test_preview_is_one_region_spot_only_with_a_small_budget() -> None:
    cfg = parse(stack_raw("preview"), "preview")
    assert [r.name for r in cfg.regions] == ["us-east-1"]
    assert all(p.spot for p in cfg.regions[0].pools)
    assert cfg.budget.monthly_usd <= 5000


def test_a_pool_must_start_big_enough_for_its_models_floors() -> None:
    """min_nodes says what the models' floors fill: a pool of an interactive model keeps its first replica's node
    (the batch pool may be 0: its model idles at zero)."""
    raw = stack_raw("prod")
    raw["regions"][0]["pools"][1]["min_nodes"] = 0
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod")
    assert ("llm-platform:regions[0].pools[1].min_nodes",
            "pool mid in us-east-1 needs 1 node(s) for its models' minimum replicas (one at least, none for a batch "
            "model that idles at zero), but min_nodes is 0") in exc.value.problems


def test_replicas_of_different_models_share_nodes_when_counting() -> None:
    """eu mid: 2 x 8B (1 GPU) and 1 x 24B (2 GPUs) fit on one 4-GPU node."""
    raw = stack_raw("prod")
    raw["regions"][2]["pools"][1]["min_nodes"] = 1
    parse(raw, "prod")


def test_the_catalog_knows_every_commercial_region_from_its_dated_source() -> None:
    catalog = load_catalog()
    assert "commercial-regions" in catalog.sources and catalog.as_of
    # Regions that opened after the GPU facts were gathered are still regions, not "unknown".
    for region in ("eu-central-2", "ap-southeast-5", "mx-central-1", "ca-west-1", "il-central-1"):
        assert region in catalog.commercial_regions
        assert "has no GPU facts" in (catalog.region_problem(region) or "")
    assert set(catalog.regions) <= set(catalog.commercial_regions)  # every region with facts is a real one
    assert catalog.region_problem("us-east-1") is None


def test_a_residency_zone_may_list_a_real_region_that_runs_no_pool() -> None:
    raw = stack_raw("prod")
    raw["residency"]["eu"].append("eu-central-2")
    assert "eu-central-2" in parse(raw, "prod").residency["eu"]


@pytest.mark.parametrize("key, words", [
    ("gateway", "a key without its namespace is not read: write `llm-platform:gateway`"),
    ("llm-platform:gatway", "unknown key; did you mean llm-platform:gateway?"),
    ("llm-platfrom:gateway", "namespace 'llm-platfrom' is not this project's: write `llm-platform:gateway`"),
    ("llmp:budget", "namespace 'llmp' is not this project's: write `llm-platform:budget`"),
])
def test_a_key_the_program_would_never_read_is_refused_by_name(key, words, tmp_path, capsys) -> None:
    # Pulumi gives the program only `llm-platform:*` through pulumi.Config("llm-platform"): a key under another
    # namespace, or none, would be silently dropped.
    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    doc["config"][key] = doc["config"]["llm-platform:gateway"]
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["plan", "--config-file", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"  {key}: {words}" in err and "Traceback" not in err


def test_keys_of_the_engine_and_providers_are_not_ours_to_refuse() -> None:
    # Only a namespace spelled like ours is taken for a typo: a provider's key named like one of our fields
    # (`azure:environment`, a real azure-native setting) is that provider's.
    assert namespace_problems({"pulumi:disable-default-providers": ["*"], "aws:region": "us-east-1",
                               "azure:environment": "public", "gcp:region": "europe-west1",
                               "llm-platform:gateway": {}}) == ([], [])
    assert namespace_problems({"llm_platform:gateway": {}})[0] == [
        ("llm_platform:gateway", "namespace 'llm_platform' is not this project's: write `llm-platform:gateway` "
                                 "(the program reads only llm-platform:*)")]


def test_the_legacy_config_form_is_read_as_pulumi_reads_it(tmp_path) -> None:
    # `<namespace>:config:<name>` is still accepted by Pulumi and read as `<namespace>:<name>`
    # (pulumi/pulumi sdk/go/common/resource/config/key.go, ParseKey).
    from infra.config import read_stack_file

    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    doc["config"]["llm-platform:config:gateway"] = doc["config"].pop("llm-platform:gateway")
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert read_stack_file(path) == stack_raw("prod")


def test_the_running_program_warns_about_keys_it_does_not_read_and_refuses_only_typos(monkeypatch) -> None:
    # A running stack's config includes an ESC environment's pulumiConfig (un-namespaced keys land in the project's
    # namespace); such a key is named in a warning, not a reason to refuse `pulumi up`.
    import pulumi
    from pulumi.runtime.config import CONFIG

    from infra.config import from_pulumi, to_pulumi_config

    warned: list[str] = []
    monkeypatch.setattr(pulumi, "get_stack", lambda: "prod")
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warned.append(message))
    legacy = {k.replace("llm-platform:", "llm-platform:config:", 1) if k == "llm-platform:gateway" else k: v
              for k, v in to_pulumi_config(stack_raw("prod")).items()}
    token = CONFIG.set({**legacy, "llm-platform:escDatabaseUrl": "postgres://x", "azure:environment": "public"})
    try:
        config = from_pulumi()
    finally:
        CONFIG.reset(token)
    assert config.gateway.domain == stack_raw("prod")["gateway"]["domain"]
    assert warned == ["llm-platform:escDatabaseUrl: unknown key, not read by llm-platform (keys: "
                      + ", ".join(f for f in type(config).model_fields if f != "stack") + ")"]
    # A stack file, read offline, stays strict: nothing but this project and the providers writes it.
    assert namespace_problems({"llm-platform:escDatabaseUrl": "x"})[0] == [("llm-platform:escDatabaseUrl", warned[0]
                                                                            .split(": ", 1)[1])]


def test_the_program_refuses_a_stray_key_the_engine_hands_it(monkeypatch) -> None:
    import pulumi
    from pulumi.runtime.config import CONFIG

    from infra.config import from_pulumi, to_pulumi_config

    monkeypatch.setattr(pulumi, "get_stack", lambda: "prod")
    token = CONFIG.set({**to_pulumi_config(stack_raw("prod")), "llm-platform:gatway": "{}"})
    try:
        with pytest.raises(ConfigError) as exc:
            from_pulumi()
    finally:
        CONFIG.reset(token)
    assert exc.value.problems == [("llm-platform:gatway", "unknown key; did you mean llm-platform:gateway?")]
