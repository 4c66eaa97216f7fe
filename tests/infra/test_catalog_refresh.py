"""`llmp catalog refresh`: the snapshot rebuilt from EC2's APIs (moto) and the Price List API (botocore Stubber)."""
from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

from infra.catalog import CATALOG_FILE, load_catalog, parse_catalog
from infra.catalog_refresh import refresh, write_atomically

REGIONS = ["us-east-1", "eu-north-1"]
EU_FACTOR = 1.07


def price_item(instance_type: str, region: str, usd: float) -> str:
    """One GetProducts PriceList entry, in the shape the Price List API documents (a JSON string per product)."""
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": f"SKU{instance_type}{region}",
                    "attributes": {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
                                   "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {"SKU.JRTCKXETXF": {
            "sku": "SKU", "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": "JRTCKXETXF",
            "priceDimensions": {"SKU.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                "pricePerUnit": {"USD": f"{usd:.10f}"}, "rateCode": "SKU.JRTCKXETXF.6YS6EN2CT7"}}}}},
        "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z"})


class Session:
    """A boto3 session whose Price List client is stubbed; EC2 goes to moto."""

    def __init__(self, pricing):
        self.pricing = pricing

    def client(self, name: str, region_name: str):
        return self.pricing if name == "pricing" else boto3.client(name, region_name=region_name)


def stubbed_pricing(fail: bool = False):
    client = boto3.client("pricing", region_name="us-east-1")
    stub = Stubber(client)
    catalog = load_catalog()
    for region in sorted(REGIONS):
        if fail and region == "us-east-1":
            stub.add_client_error("get_products", "ThrottlingException", "Rate exceeded")
            continue
        factor = 1.0 if region == "us-east-1" else EU_FACTOR
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            price_item(t.name, region, t.on_demand_usd_h * factor) for t in catalog.instances.values()]})
    stub.activate()
    return client


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    shutil.copy(CATALOG_FILE, path)
    return path


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def test_refresh_rebuilds_the_snapshot_from_aws_apis_in_the_same_format(aws, snapshot: Path) -> None:
    refresh(Session(stubbed_pricing()), snapshot, today=date(2026, 11, 25), regions=REGIONS)
    fresh = parse_catalog(yaml.safe_load(snapshot.read_text()))  # the loader the program uses reads it
    assert fresh.as_of == "2026-11-25" and "llmp catalog refresh" in fresh.sources["offerings"]
    assert fresh.regions["eu-north-1"] == ["eun1-az1", "eun1-az2", "eun1-az3"]
    assert fresh.zones_offering("p5.48xlarge", "eu-north-1")  # from DescribeInstanceTypeOfferings
    p5 = fresh.instance("p5.48xlarge")  # from DescribeInstanceTypes and the us-east-1 price
    assert (p5.gpu, p5.gpus, p5.vcpus, p5.memory_gib, p5.on_demand_usd_h) == ("H100", 8, 192, 2048, 55.04)
    assert fresh.families["p5"].prices["eu-north-1"][0] == EU_FACTOR and fresh.families["p5"].quota == "P"
    assert fresh.families["g6e"].quota == "G" and fresh.families["m7i"].quota == "Standard"
    assert fresh.kubernetes_versions == load_catalog().kubernetes_versions  # kept: no API is trusted over the docs
    assert fresh.instance("m7i.xlarge").max_pods == 58


def test_refresh_rebuilds_the_commercial_regions_from_botocore_and_names_its_version(aws, snapshot: Path) -> None:
    # Copied forward, the list would carry an old date's regions under a new as_of.
    import botocore

    doc = yaml.safe_load(snapshot.read_text())
    doc["commercial_regions"] = {"us-east-1": "stale"}
    snapshot.write_text(yaml.safe_dump(doc))
    refresh(Session(stubbed_pricing()), snapshot, today=date(2026, 11, 25), regions=REGIONS)
    fresh = parse_catalog(yaml.safe_load(snapshot.read_text()))
    assert fresh.commercial_regions["us-east-1"] == "US East (N. Virginia)"
    assert fresh.commercial_regions["eu-north-1"] == "Europe (Stockholm)"
    assert set(fresh.regions) <= set(fresh.commercial_regions)
    assert fresh.sources["commercial-regions"].startswith(f"botocore {botocore.__version__} ")


def test_catalog_refresh_says_how_to_rewrite_the_readmes_numbers(aws, monkeypatch, capsys) -> None:
    import infra.catalog_refresh
    from infra.cli import EXIT_OK, main

    monkeypatch.setattr(infra.catalog_refresh, "refresh", lambda *a, **k: {"as_of": "2026-11-25", "regions": {},
                                                                           "instances": {}})
    assert main(["catalog", "refresh", "--output", "/dev/null"]) == EXIT_OK
    assert "python -m infra.plan.readme_numbers" in capsys.readouterr().err


def test_a_refresh_that_fails_midway_leaves_the_snapshot_untouched(aws, snapshot: Path) -> None:
    before = snapshot.read_text()
    with pytest.raises(Exception, match="Rate exceeded"):
        refresh(Session(stubbed_pricing(fail=True)), snapshot, regions=REGIONS)
    assert snapshot.read_text() == before
    assert [p.name for p in snapshot.parent.iterdir()] == ["catalog.yaml"]


def test_a_snapshot_that_would_not_load_is_never_written(snapshot: Path) -> None:
    before = snapshot.read_text()
    broken = yaml.safe_load(before)
    del broken["families"]["p5"]["prices"]
    with pytest.raises(KeyError):
        write_atomically(broken, snapshot)
    assert snapshot.read_text() == before
    assert [p.name for p in snapshot.parent.iterdir()] == ["catalog.yaml"]
