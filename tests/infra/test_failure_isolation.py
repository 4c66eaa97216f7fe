"""What one region keeps when AWS refuses part of it: a GPU pool without capacity fails its own models only."""
from __future__ import annotations

import pulumi
import pytest

from infra.plan.mocks import PlanMocks
from infra.plan.run import ProgramError, run_program
from tests.stacks import stack_raw

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"


class NoCapacityFor(PlanMocks):
    """A cloud where one node group cannot be created (EC2's InsufficientInstanceCapacity, or no quota)."""

    def __init__(self, node_group: str) -> None:
        super().__init__()
        self.node_group = node_group

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        if args.typ == NODE_GROUP and args.name == self.node_group:
            raise RuntimeError(f"creating EKS Node Group ({args.name}): InsufficientInstanceCapacity")
        return super().new_resource(args)


def first_pool_without_capacity() -> tuple[dict, str, str, list]:
    """Prod, in a cloud that cannot start its first region's first GPU pool: (config, region, pool, what the
    update still creates, as `pulumi up --continue-on-error` would)."""
    raw = stack_raw("prod")
    region, pool = raw["regions"][0]["name"], raw["regions"][0]["pools"][0]["name"]
    mocks = NoCapacityFor(f"{region}-{pool}")
    with pytest.raises(ProgramError, match="InsufficientInstanceCapacity"):
        run_program(raw, "prod", mocks=mocks)
    return raw, region, pool, mocks.resources


def test_a_gpu_pool_without_capacity_leaves_its_regions_load_balancer_gateway_and_dns_up() -> None:
    _, region, _, created = first_pool_without_capacity()
    releases = {r.name for r in created if r.type == RELEASE}
    assert f"{region}-aws-load-balancer-controller" in releases
    assert f"{region}-nvidia-device-plugin" in releases
    assert f"{region}-gateway" in releases
    assert {f"{region}-keda", f"{region}-metrics-server"} <= releases  # the gateway waits for them
    records = {r.name for r in created if r.type == "aws:route53/record:Record"}
    assert any(name.endswith(f"{region}-latency") for name in records), records
    assert any(name.endswith(f"{region}-direct") for name in records), records


def test_a_gpu_pool_without_capacity_fails_only_the_models_it_carries() -> None:
    raw, region, pool, created = first_pool_without_capacity()
    releases = {r.name for r in created if r.type == RELEASE}
    for model in raw["models"]:
        if region not in model["regions"]:
            continue
        served = f"{region}-{model['name']}" in releases
        assert served == (model["pool"] != pool), model["name"]
    # Every other region is whole.
    for other in raw["regions"][1:]:
        for model in raw["models"]:
            if other["name"] in model["regions"]:
                assert f"{other['name']}-{model['name']}" in releases
