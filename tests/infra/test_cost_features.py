"""The gateway's cost features in the stack config (`gateway.ladders`, `gateway.cache`, `gateway.batch`): validated
with the key named, and rendered into each region's gateway config in the shapes the gateway parses, with only
models of the region's own zone."""
from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from infra.catalog import load_catalog
from infra.cli import EXIT_CONFIG, main
from infra.components.batch_files import FILES_PREFIX
from infra.config import ConfigError, StackConfig, cache_room_bytes, parse
from infra.gateway_config import StoreRefs, dropped_ladders, gateway_config
from infra.plan.run import Plan
from tests.infra.rendered_sections import sections
from tests.stacks import stack_raw, write_stack

RELEASE = "kubernetes:helm.sh/v3:Release"
PROD_REGIONS = ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2"]


def gateway_configs(plan: Plan) -> dict[str, dict[str, Any]]:
    return {r.region: r.inputs["values"]["config"] for r in plan.of_type(RELEASE)
            if str(r.inputs["chart"]).endswith("charts/gateway")}


def problems(raw: dict[str, Any], stack: str = "prod") -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse(raw, stack)
    return dict(err.value.problems)


# -- the rendered sections --------------------------------------------------------------------------------------

def test_every_prod_gateway_offers_auto_caches_its_rungs_and_keeps_batch_files_in_its_zones_bucket(
        prod_plan: Plan) -> None:
    configs = gateway_configs(prod_plan)
    assert sorted(configs) == sorted(PROD_REGIONS)
    buckets = {b.region: b.outputs["bucket"] for b in prod_plan.of_type("aws:s3/bucket:Bucket")
               if b.name.endswith("-batch-files")}
    assert sorted(buckets) == ["eu-north-1", "us-east-1"]  # each zone's first region
    for region, config in configs.items():
        checked = sections(config)  # the design's shapes and cross-references
        assert [(ladder.alias, ladder.rungs) for ladder in checked.ladders] == \
            [("auto", ["llama-3-1-8b", "llama-3-3-70b"])]
        assert [r.start_at for r in checked.ladders[0].rules] == ["llama-3-3-70b", "llama-3-3-70b"]
        cache = checked.cache
        assert cache is not None and cache.models == ["llama-3-1-8b", "llama-3-3-70b"]
        assert (cache.scope, cache.ttl_seconds, cache.hit_cost_fraction) == ("team", 3600, 0.0)
        batch = checked.batch
        assert batch is not None and batch.files.s3 is not None and batch.models == {}
        home = "us-east-1" if region.startswith("us-") else "eu-north-1"
        assert (batch.files.s3.bucket, batch.files.s3.region, batch.files.s3.prefix) == \
            (buckets[home], home, FILES_PREFIX)
        assert batch.files.s3.kms_key_id is not None and f":kms:{home}:" in batch.files.s3.kms_key_id
        assert batch.price_fraction == 0.5
        # Every model says its tier; the batch model is the spot pools' one.
        tiers = {m["alias"]: m["tier"] for m in config["models"]}
        assert tiers["qwen2-5-7b-batch"] == "batch" and tiers["llama-3-1-8b"] == "interactive"


def test_the_prod_cache_fits_half_of_what_the_redis_node_leaves_for_data(prod_plan: Plan) -> None:
    """cache.r7g.large holds 13.07 GiB (infra/catalog.yaml); ElastiCache reserves 25%; the cache takes at most half
    of the rest."""
    room = cache_room_bytes("prod", load_catalog())
    assert room == int(13.07 * (1 << 30) * 0.75 * 0.5)
    assert prod_plan.config.gateway.cache is not None
    assert prod_plan.config.gateway.cache.max_bytes <= room


def test_the_preview_gateway_caches_and_batches_like_prod_without_a_ladder(preview_plan: Plan) -> None:
    (config,) = gateway_configs(preview_plan).values()
    checked = sections(config)
    assert checked.ladders == [] and checked.cache is not None and checked.batch is not None
    assert checked.batch.files.s3 is not None and checked.batch.files.s3.region == "us-east-1"


@pytest.mark.parametrize("stack", ["prod", "preview"])
def test_rendered_configs_load_in_the_gateway(stack: str, prod_plan: Plan, preview_plan: Plan) -> None:
    """Every stack's every gateway config, as rendered, is accepted by the gateway's own parser (what it runs at
    start): a rejected one would crash-loop the pods after a successful `up`."""
    from gateway.config.native import parse_native

    plan = {"prod": prod_plan, "preview": preview_plan}[stack]
    configs = gateway_configs(plan)
    assert sorted(configs) == sorted(r.name for r in plan.config.regions)
    for config in configs.values():
        parsed = parse_native(config)
        assert bool(parsed.ladders) == bool(plan.config.gateway.ladders)
        assert parsed.cache is not None and parsed.batch is not None and parsed.batch.files.s3 is not None


def test_the_gateway_refuses_the_sections_the_program_must_never_render() -> None:
    """The same parser judges the rendered sections: each mistake below is one the stack config's checks must keep
    from being rendered, and the gateway would refuse it at start."""
    def model(alias: str, tier: str) -> dict[str, Any]:
        return {"alias": alias, "tier": tier, "deployments": [
            {"name": f"{alias}-d", "model": alias, "api_base": "http://127.0.0.1:9/v1"}]}

    base = {"models": [model("a", "interactive"), model("b", "batch")], "ledger": {"store": "sqlite:///x.db"}}
    sections(base)  # the base is valid: each case below fails for its own mistake
    for bad in ({"ladders": [{"alias": "a", "rungs": ["a", "b"]}]},            # shadows a model
                {"ladders": [{"alias": "x", "rungs": ["a", "zzz"]}]},          # unknown rung
                {"ladders": [{"alias": "x", "rungs": ["a"]}]},                 # one rung
                {"cache": {"models": ["zzz"]}},
                {"cache": {"models": ["a"], "scope": "world"}},
                {"cache": {"models": ["a"], "ttl": 5}},                        # unknown key
                {"batch": {"files": {"local_dir": "/x", "s3": {"bucket": "b", "region": "r"}}}},
                {"batch": {"files": {"local_dir": "/x"}, "models": {"a": "a"}}}):  # not a batch model
        with pytest.raises(ValidationError):
            sections({**base, **bad})
    with pytest.raises(ValidationError, match="needs a 'ledger'"):
        sections({"models": base["models"], "batch": {"files": {"local_dir": "/x"}}})


# The shape of RDS's own secret's ARN (an example account number, never a real one).
SECRET_ARN = "arn:aws:secretsmanager:eu-north-1:123456789012:secret:rds!db-example"


# -- zones ------------------------------------------------------------------------------------------------------

def _ladder_on_eu_only_model() -> StackConfig:
    raw = stack_raw("prod")
    raw["gateway"]["ladders"].append({"alias": "eu-auto", "rungs": ["llama-3-1-8b", "mistral-small-24b"]})
    raw["gateway"]["cache"]["models"].append("mistral-small-24b")
    return parse(raw, "prod")


def test_a_ladder_with_a_rung_its_zone_does_not_serve_is_dropped_there_never_pointed_at_another_zone() -> None:
    cfg = _ladder_on_eu_only_model()
    for region in cfg.regions:
        config = gateway_config(cfg, region, StoreRefs("postgresql://x", SECRET_ARN, None))
        aliases = [ladder["alias"] for ladder in config["ladders"]]
        cached = config["cache"]["models"]
        if region.residency == "eu":
            assert aliases == ["auto", "eu-auto"] and "mistral-small-24b" in cached
            assert dropped_ladders(cfg, region) == []
        else:
            assert aliases == ["auto"] and "mistral-small-24b" not in cached
            assert dropped_ladders(cfg, region) == [("eu-auto", ["mistral-small-24b"])]
        sections(config)


def test_the_plan_warns_for_each_region_a_ladder_is_dropped_in() -> None:
    import logging

    from infra.plan.run import run_program

    raw = stack_raw("prod")
    raw["gateway"]["ladders"].append({"alias": "eu-auto", "rungs": ["llama-3-1-8b", "mistral-small-24b"]})
    seen: list[str] = []

    class Warnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("llm-platform.plan.prod")  # the logger the plan hands the mock engine
    handler = Warnings(logging.WARNING)
    logger.addHandler(handler)
    try:
        plan = run_program(raw, "prod")
    finally:
        logger.removeHandler(handler)
    dropped = sorted(m for m in seen if "gateway.ladders eu-auto" in m)
    assert dropped == [f"gateway.ladders eu-auto: not offered in {r}: its zone 'us' serves no mistral-small-24b (a "
                       f"gateway never calls another zone's models)" for r in ("us-east-1", "us-west-2")]
    configs = gateway_configs(plan)
    assert [ladder["alias"] for ladder in configs["us-east-1"]["ladders"]] == ["auto"]
    assert [ladder["alias"] for ladder in configs["eu-west-2"]["ladders"]] == ["auto", "eu-auto"]


# -- config errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "key", "words"), [
    (lambda g: g["ladders"][0].update(rungs=["llama-3-1-8b", "llama-3-3-7b"]), "gateway.ladders[0].rungs[1]",
     "no model named 'llama-3-3-7b'"),
    (lambda g: g["ladders"][0].update(alias="llama-3-1-8b"), "gateway.ladders[0].alias", "is a model's name"),
    (lambda g: g["ladders"][0].update(rungs=["llama-3-1-8b"]), "gateway.ladders[0].rungs", "at least 2"),
    (lambda g: g["ladders"][0]["rules"][0].update(start_at="gpt-4o"), "gateway.ladders[0].rules[0].start_at",
     "not a rung of auto"),
    (lambda g: g["ladders"][0]["rules"].append({"start_at": "llama-3-3-70b"}), "gateway.ladders[0].rules[2]",
     "exactly one condition"),
    (lambda g: g["ladders"][0]["rules"].append({"tools": True, "prompt_tokens_over": 9, "start_at": "llama-3-3-70b"}),
     "gateway.ladders[0].rules[2]", "exactly one condition"),
    (lambda g: g["ladders"][0]["rules"].append({"tools": False, "start_at": "llama-3-3-70b"}),
     "gateway.ladders[0].rules[2].tools", "write tools: true"),
    (lambda g: g["cache"].update(models=[]), "gateway.cache.models", "names no model, team or key"),
    (lambda g: g["ladders"][0].update(pins={"teams": {"research": "gpt-4o"}}), "gateway.ladders[0].pins.teams.research",
     "not a rung of auto"),
    (lambda g: g["ladders"][0].update(escalate_on=["error", "slow"]), "gateway.ladders[0].escalate_on[1]",
     "'error', 'invalid_json', 'length' or 'empty'"),
    (lambda g: g["ladders"].append({"alias": "auto", "rungs": ["llama-3-1-8b", "llama-3-3-70b"]}),
     "gateway.ladders[1].alias", "defined more than once"),
    (lambda g: g["cache"].update(models=["llama3"]), "gateway.cache.models[0]", "no model named 'llama3'"),
    (lambda g: g["cache"].update(max_bytes=64 << 30), "gateway.cache.max_bytes", "do not fit the prod Redis"),
    (lambda g: g["cache"].update(hit_cost_fraction=1.5), "gateway.cache.hit_cost_fraction", "less than or equal"),
    (lambda g: g["cache"].update(scope="org"), "gateway.cache.scope", "'team' or 'key'"),
    (lambda g: g["cache"].update(ttl=60), "gateway.cache.ttl", "unknown key"),
    (lambda g: g["cache"].update(max_entry_bytes=300 << 20, max_bytes=200 << 20), "gateway.cache.max_entry_bytes",
     "above max_bytes"),
    (lambda g: g["batch"].update(models={"llama-3-1-8b": "llama-3-3-70b"}), "gateway.batch.models.llama-3-1-8b",
     "`tier: interactive` model; batch lines run on `tier: batch` models only"),
    (lambda g: g["batch"].update(models={"gpt-4o": "qwen2-5-7b-batch"}), "gateway.batch.models.gpt-4o",
     "no model named 'gpt-4o'"),
    (lambda g: g["batch"].update(price_fraction=0), "gateway.batch.price_fraction", "greater than 0"),
    (lambda g: g["batch"].update(retention_days=0), "gateway.batch.retention_days", "greater than or equal to 1"),
    (lambda g: g["batch"].update(files={"local_dir": "/tmp"}), "gateway.batch.files", "unknown key"),
], ids=["unknown rung", "alias is a model", "one rung", "rule start_at not a rung", "rule matching every call",
        "rule with both conditions", "tools false", "cache for nobody", "pin not a rung", "unknown escalation",
        "alias twice", "cache model unknown", "cache larger than redis",
        "hit fraction above 1", "unknown scope", "unknown cache key", "entry above the cap", "batch to interactive",
        "batch from unknown", "free batch", "no retention", "files are the program's"])
def test_a_bad_ladder_cache_or_batch_setting_is_refused_naming_the_key(edit, key: str, words: str) -> None:
    raw = stack_raw("prod")
    edit(raw["gateway"])
    found = problems(raw)
    assert f"llm-platform:{key}" in found, found
    assert words in found[f"llm-platform:{key}"], found


@pytest.mark.parametrize("zone", ["europe-north-and-west-long", "EU", "eu_1"])
def test_a_zone_name_no_batch_bucket_can_carry_is_refused_naming_it(zone: str) -> None:
    """llmp-prod-batch-<zone>- is the bucket's prefix: more than 37 characters, or anything but lowercase letters,
    digits and hyphens, and S3 (or the provider) refuses the bucket at the first `up`."""
    raw = stack_raw("prod")
    raw["residency"][zone] = raw["residency"].pop("eu")
    for region in raw["regions"]:
        region["residency"] = zone if region["residency"] == "eu" else region["residency"]
    for model in raw["models"]:
        if model.get("residency") == "eu":
            model["residency"] = zone
    found = problems(raw)
    assert f"names the batch bucket prefix 'llmp-prod-batch-{zone}-'" in found[f"llm-platform:residency.{zone}"]
    del raw["gateway"]["batch"]  # no batch, no bucket: the name is never used
    parse(raw, "prod")


def test_a_ladder_no_zone_can_serve_is_refused() -> None:
    raw = stack_raw("prod")
    for model in raw["models"]:
        if model["name"] == "llama-3-1-8b":
            model["regions"] = ["us-east-1", "us-west-2"]
    raw["gateway"]["ladders"][0]["rungs"] = ["llama-3-1-8b", "mistral-small-24b"]
    found = problems(raw)
    assert "no residency zone serves every rung (llama-3-1-8b, mistral-small-24b)" in \
        found["llm-platform:gateway.ladders[0].rungs"]


def test_llmp_plan_exits_2_naming_the_bad_ladder(tmp_path, capsys) -> None:
    raw = stack_raw("prod")
    raw["gateway"]["ladders"][0]["rungs"] = ["llama-3-1-8b", "llama-9"]
    path = write_stack(tmp_path, raw)
    assert main(["plan", "--stack", "prod", "--config-file", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "llm-platform:gateway.ladders[0].rungs[1]: no model named 'llama-9'" in err and str(path.name) in err
    assert "Traceback" not in err


def test_a_cache_for_models_a_zone_does_not_serve_is_left_out_of_that_zones_gateways() -> None:
    """The gateway refuses a cache that names nothing to cache: a region offering none of its models gets none."""
    raw = stack_raw("prod")
    raw["gateway"]["cache"]["models"] = ["mistral-small-24b"]
    cfg = parse(raw, "prod")
    for region in cfg.regions:
        config = gateway_config(cfg, region, StoreRefs("postgresql://x", SECRET_ARN, None))
        assert ("cache" in config) == (region.residency == "eu"), region.name
        sections(config)
