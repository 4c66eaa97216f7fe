"""`llmp plan` shows the EC2 vCPU quotas a stack needs per region at max scale, and prices reserved pools."""
from __future__ import annotations

import copy
import json

from infra.catalog import HOURS_PER_MONTH, load_catalog
from infra.cli import main
from infra.plan.cost import estimate
from infra.plan.quotas import quota_needs
from infra.plan.run import Plan


def _need(needs, region: str, code: str):
    return next(n for n in needs if n.region == region and n.code == code)


def test_plan_json_lists_per_region_the_quotas_prod_needs_at_max_scale(capsys) -> None:
    main(["plan", "--stack", "prod", "--format", "json"])
    quotas = json.loads(capsys.readouterr().out)["quotas"]
    p = next(q for q in quotas if q["region"] == "us-east-1" and q["code"] == "L-417A185B")
    # Each p5.48xlarge holds 192 vCPU of "Running On-Demand P instances"; the h100 pool grows to 2 nodes.
    assert (p["quota"], p["market"], p["vcpus_at_max_scale"]) == ("Running On-Demand P instances", "on-demand", 384)
    spot = next(q for q in quotas if q["region"] == "eu-west-2" and q["market"] == "spot")
    assert (spot["code"], spot["vcpus_at_max_scale"]) == ("L-3819A6DF", 6 * 8)  # 6 x g6.2xlarge
    assert {q["region"] for q in quotas} == {"us-east-1", "us-west-2", "eu-north-1", "eu-west-2"}


def test_plan_table_and_markdown_show_the_quota_codes(capsys) -> None:
    for fmt in ("table", "markdown"):
        main(["plan", "--stack", "prod", "--format", fmt])
        out = capsys.readouterr().out
        assert "L-417A185B" in out and "L-DB2E81BA" in out and "L-3819A6DF" in out, fmt


def test_a_spot_gpu_pool_counts_against_the_spot_quota_of_its_class(prod_plan: Plan) -> None:
    resources = copy.deepcopy(prod_plan.resources)
    h100 = next(r for r in resources if r.name == "us-west-2-h100" and r.type.endswith("NodePool"))
    requirements = h100.inputs["spec"]["template"]["spec"]["requirements"]
    next(r for r in requirements if r["key"] == "karpenter.sh/capacity-type")["values"] = ["spot"]
    needs = quota_needs(resources)
    assert _need(needs, "us-west-2", "L-7212CCBC").vcpus == 384  # All P Spot Instance Requests
    assert not any(n.region == "us-west-2" and n.code == "L-417A185B" for n in needs)


def test_reserved_pools_are_priced_at_the_catalogs_rate_and_shown_as_reserved(prod_plan: Plan) -> None:
    cost = estimate(prod_plan.resources, prod_plan.config.budget.monthly_usd)
    h100 = next(p for p in cost.pools if p.region == "eu-west-2" and p.pool == "h100")
    assert h100.capacity == "reserved"
    hourly = load_catalog().hourly_usd("p5.48xlarge", "eu-west-2", spot=False)
    assert round(h100.monthly_usd_max, 2) == round(hourly * 2 * HOURS_PER_MONTH, 2)
    batch = next(p for p in cost.pools if p.region == "eu-west-2" and p.pool == "batch")
    # Spot is priced per family and region: g6 in eu-west-2 is not g6e in us-east-1.
    assert load_catalog().hourly_usd("g6.xlarge", "eu-west-2", True) != (
        load_catalog().hourly_usd("g6.xlarge", "eu-west-2", False)
        * load_catalog().families["g6e"].prices["us-east-1"][1])
    assert batch.capacity == "spot"
