"""The stack against the world facts: instance types offered where pools run, zones, reservations, node allocatable."""
from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from infra.catalog import load_catalog
from infra.cli import EXIT_CONFIG, main
from infra.config import ConfigError, parse
from infra.plan.run import Plan, run_program
from infra.scheduling import POOL_LABEL
from tests.stacks import stack_raw, write_stack

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
SUBNET = "aws:ec2/subnet:Subnet"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def problems_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        parse(raw, "prod")
    return exc.value.problems


def in_eu_west_1(raw: dict[str, Any]) -> dict[str, Any]:
    """The old prod layout: the third region moved back to eu-west-1."""
    raw["residency"]["eu"] = ["eu-west-1", "eu-west-2"]
    raw["regions"][2]["name"] = "eu-west-1"
    for model in raw["models"]:
        model["regions"] = ["eu-west-1" if r == "eu-north-1" else r for r in model["regions"]]
    return raw


# -- offerings ------------------------------------------------------------------------------------

def test_pool_type_not_offered_in_region_is_rejected_naming_where_it_is() -> None:
    problems = problems_of(in_eu_west_1(stack_raw("prod")))
    offered = ", ".join(load_catalog().regions_offering("p5.48xlarge"))
    assert ("llm-platform:regions[2].pools[0].instance_types[0]",
            f"p5.48xlarge is not offered in eu-west-1 (offered in: {offered})") in problems
    assert "eu-north-1" in offered and "eu-west-1" not in offered and "eu-central-1" not in offered


def test_g6e_and_g6_are_not_offered_in_eu_west_1() -> None:
    problems = dict(problems_of(in_eu_west_1(stack_raw("prod"))))
    assert problems["llm-platform:regions[2].pools[1].instance_types[0]"].startswith(
        "g6e.12xlarge is not offered in eu-west-1")
    assert problems["llm-platform:regions[2].pools[2].instance_types[1]"].startswith(
        "g6.xlarge is not offered in eu-west-1")


def test_plan_of_a_stack_with_a_type_not_offered_exits_2(tmp_path, capsys) -> None:
    path = write_stack(tmp_path, in_eu_west_1(stack_raw("prod")))
    assert main(["plan", "--stack", "prod", "--config-file", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "llm-platform:regions[2].pools[0].instance_types[0]: p5.48xlarge is not offered in eu-west-1" in err


def test_pool_whose_types_share_no_zone_is_rejected_naming_the_zones() -> None:
    """ca-central-1 offers p5 in cac1-az4 only and g6 in cac1-az1/az2: no node could start for both."""
    raw = stack_raw("preview")
    raw["residency"]["us"] = ["us-east-1", "ca-central-1"]
    raw["regions"][0]["name"] = "ca-central-1"
    raw["models"][0]["regions"] = ["ca-central-1"]
    raw["regions"][0]["pools"][0]["instance_types"] = ["p5.48xlarge", "g6.xlarge"]
    problems = dict(problems_of(raw))
    assert problems["llm-platform:regions[0].pools[0].instance_types"] == (
        "no zone of ca-central-1's network (cac1-az1, cac1-az2, cac1-az4) offers all of pool l40s-spot's types "
        "(p5.48xlarge: cac1-az4; g6.xlarge: cac1-az1, cac1-az2); split the pool or drop a type")


def test_prod_runs_every_pool_where_its_types_are_offered() -> None:
    cfg, catalog = parse(stack_raw("prod"), "prod"), load_catalog()
    zones = {r.residency for r in cfg.regions}
    assert zones == {"us", "eu"} and all(len(cfg.regions_in(z)) == 2 for z in zones)
    for region in cfg.regions:
        for pool in region.pools:
            for itype in pool.instance_types:
                assert catalog.zones_offering(itype, region.name), (region.name, itype)


def _subnet_zones(plan: Plan) -> dict[str, str]:
    return {str(s.outputs.get("id")): s.inputs["availabilityZoneId"] for s in plan.of_type(SUBNET)}


def _groups(plan: Plan) -> dict[tuple[str, str], Any]:
    return {(g.region, g.inputs["labels"][POOL_LABEL]): g for g in plan.of_type(NODE_GROUP)}


def _pool_subnets(plan: Plan) -> dict[tuple[str, str], list[str]]:
    """Each pool's subnets: a node group's, or a Karpenter EC2NodeClass's selector terms (by id)."""
    out = {key: list(g.inputs["subnetIds"]) for key, g in _groups(plan).items()}
    for node_class in plan.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        out[(node_class.region, node_class.inputs["metadata"]["name"])] = [
            t["id"] for t in node_class.inputs["spec"]["subnetSelectorTerms"]]
    return out


def _node_class(plan: Plan, region: str, pool: str) -> Any:
    return next(c for c in plan.of_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
                if c.region == region and c.inputs["metadata"]["name"] == pool)


def test_pools_use_only_the_subnets_of_zones_that_offer_their_types(prod_plan: Plan) -> None:
    zone_of, subnets = _subnet_zones(prod_plan), _pool_subnets(prod_plan)
    # eu-north-1 offers g6e and g6 in eun1-az1 and eun1-az2 only; the VPC also spans eun1-az3.
    assert sorted(zone_of[s] for s in subnets[("eu-north-1", "mid")]) == ["eun1-az1", "eun1-az2"]
    assert sorted(zone_of[s] for s in subnets[("eu-north-1", "batch")]) == ["eun1-az1", "eun1-az2"]
    assert sorted(zone_of[s] for s in subnets[("eu-north-1", "system")]) == ["eun1-az1", "eun1-az2", "eun1-az3"]
    catalog = load_catalog()
    for (region, pool), ids in subnets.items():
        types = prod_plan.config.region(region).pool(pool).instance_types if pool != "system" else []
        for subnet in ids:
            assert all(zone_of[subnet] in catalog.zones_offering(t, region) for t in types), (region, pool)
    for node_pool in prod_plan.of_type("kubernetes:karpenter.sh/v1:NodePool"):
        zones = next(r["values"] for r in node_pool.inputs["spec"]["template"]["spec"]["requirements"]
                     if r["key"] == "topology.k8s.aws/zone-id")
        assert sorted(zones) == sorted(zone_of[s] for s in subnets[(node_pool.region,
                                                                     node_pool.inputs["metadata"]["name"])])


# -- reserved capacity ----------------------------------------------------------------------------

def _with_reservation(kind: str = "odcr", az: str = "use1-az4", rid: str = "cr-0123456789abcdef0") -> dict:
    raw = stack_raw("prod")
    raw["regions"][0]["pools"][0]["reservation"] = {"kind": kind, "id": rid, "availability_zone": az}
    return raw


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda raw: raw["regions"][0]["pools"][0].update(reservation={"kind": "odcr", "id": "cr-123",
                                                                      "availability_zone": "use1-az4"}),
     "llm-platform:regions[0].pools[0].reservation.id", "is not a capacity reservation id"),
    (lambda raw: raw["regions"][0]["pools"][0]["reservation"].update(availability_zone="eun1-az1"),
     "llm-platform:regions[0].pools[0].reservation.availability_zone", "eun1-az1 is not a zone of us-east-1"),
    (lambda raw: raw["regions"][0]["pools"][0]["reservation"].update(availability_zone="us-east-1a"),
     "llm-platform:regions[0].pools[0].reservation.availability_zone", "is not a zone ID"),
    (lambda raw: raw["regions"][0]["pools"][0].pop("reservation"),
     "llm-platform:regions[0].pools[0].reservation", "capacity 'reserved' needs a reservation"),
    (lambda raw: raw["regions"][0]["pools"][0].update(capacity="on-demand"),
     "llm-platform:regions[0].pools[0].capacity", "must be 'reserved'"),
    (lambda raw: raw["regions"][2]["pools"][0]["reservation"].update(availability_zone="euw2-az1"),
     "llm-platform:regions[2].pools[0].reservation.availability_zone", "euw2-az1 is not a zone of eu-north-1"),
])
def test_bad_reservation_is_rejected_naming_the_key(mutate, key: str, words: str) -> None:
    raw = stack_raw("prod")
    mutate(raw)
    problems = problems_of(raw)
    assert any(path == key and words in msg for path, msg in problems), problems


def test_odcr_pool_targets_its_reservation_in_its_zone_only(prod_plan: Plan) -> None:
    zone_of, subnets = _subnet_zones(prod_plan), _pool_subnets(prod_plan)
    assert [zone_of[s] for s in subnets[("us-east-1", "h100")]] == ["use1-az4"]
    spec = _node_class(prod_plan, "us-east-1", "h100").inputs["spec"]
    assert spec["capacityReservationSelectorTerms"] == [{"id": "cr-0123456789abcdef0"}]


def test_capacity_block_pool_selects_its_block_like_an_odcr() -> None:
    """Karpenter reads a reservation's type (default or capacity-block) from EC2 itself (EC2NodeClass status
    capacityReservations[].reservationType, pkg/apis/v1/ec2nodeclass_status.go @ v1.14.1) and launches into a
    block with the capacity-block market: the pool names the block by id, as it names an ODCR."""
    plan = run_program(_with_reservation(kind="capacity-block"), "prod")
    spec = _node_class(plan, "us-east-1", "h100").inputs["spec"]
    assert spec["capacityReservationSelectorTerms"] == [{"id": "cr-0123456789abcdef0"}]
    pool = next(p for p in plan.of_type("kubernetes:karpenter.sh/v1:NodePool") if p.name == "us-east-1-h100")
    requirements = {r["key"]: r["values"] for r in pool.inputs["spec"]["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == ["reserved"]
    assert requirements["node.kubernetes.io/instance-type"] == ["p5.48xlarge"]


# -- versions ---------------------------------------------------------------------------------------

def test_every_node_group_is_pinned_to_the_control_plane_version(prod_plan: Plan) -> None:
    clusters = {c.region: c.inputs["version"] for c in prod_plan.of_type("aws:eks/cluster:Cluster")}
    assert set(clusters.values()) == {"1.35"}
    for group in prod_plan.of_type(NODE_GROUP):
        assert group.inputs.get("version") == clusters[group.region], group.name


# -- node allocatable -------------------------------------------------------------------------------

def test_kube_reserved_cpu_matches_the_eks_ami_formula_published_example() -> None:
    """nodeadm's getCPUMillicoresToReserve on 16 vCPUs: 60 + 10 + 10 + 30 = 110m."""
    from infra.catalog import kube_reserved_cpu_millicores, kube_reserved_memory_mib
    assert kube_reserved_cpu_millicores(16) == 110
    assert kube_reserved_cpu_millicores(1) == 60
    assert kube_reserved_memory_mib(29) == 574  # 11 x 29 + 255, an m5.large


def test_allocatable_is_capacity_minus_reservations_and_eviction_threshold() -> None:
    m7i = load_catalog().instance("m7i.xlarge")  # 4 vCPU, 16 GiB, 58 pods
    assert m7i.allocatable_cpu_millicores == 4000 - 80
    assert m7i.allocatable_memory_mib == 16 * 1024 - (11 * 58 + 255) - 100
    p5 = load_catalog().instance("p5.48xlarge")  # 192 vCPU, 2048 GiB, 100 pods
    assert p5.allocatable_cpu_millicores == 192000 - (60 + 10 + 10 + 470)
    assert p5.allocatable_memory_mib == 2048 * 1024 - 1355 - 100


# -- the snapshot itself ----------------------------------------------------------------------------

def test_the_snapshot_is_dated_sourced_and_consistent() -> None:
    catalog = load_catalog()
    assert catalog.as_of and {"offerings", "ec2-pricing", "eks-calendar", "max-pods"} <= set(catalog.sources)
    for family in catalog.families.values():
        for region, zones in family.offered.items():
            assert set(zones) <= set(catalog.regions[region]), (family.name, region)
            assert region in family.prices, (family.name, region)
    for itype in catalog.instances.values():
        assert itype.family in catalog.families, itype.name


def test_a_capacity_block_stack_passes_every_control() -> None:
    """The controls read a Capacity Block group's one type from its label, not from instanceTypes (it has none)."""
    from infra.policy.rules import evaluate
    plan = run_program(_with_reservation(kind="capacity-block"), "prod", on=date(2026, 11, 25))
    results = evaluate(plan)
    assert [(r.id, r.violations) for r in results if r.status != "pass"] == []
    hygiene = next(r for r in results if r.id == "gpu-pool-hygiene")
    assert next(e for e in hygiene.evidence if e["resource"] == "us-east-1-h100")["gpu"] is True


def test_reserved_pools_replace_nodes_in_place_since_their_reservation_has_no_spare(prod_plan: Plan) -> None:
    """A surge node (EKS's default update launches before it drains) cannot start in a reservation sized to
    its pool: reserved pools update with MINIMAL (terminate, then launch), the others keep DEFAULT."""
    for (region, pool_name), group in _groups(prod_plan).items():
        pool = prod_plan.config.region(region).pool(pool_name)
        if pool is None:
            continue
        expected = "MINIMAL" if pool.reserved else "DEFAULT"
        assert group.inputs["updateConfig"] == {"maxUnavailable": 1, "updateStrategy": expected}, (region, pool_name)
    assert any(p.reserved for r in prod_plan.config.regions for p in r.pools)
