"""`llmp catalog refresh`: rebuilds the EC2 facts of catalog.yaml from AWS's own APIs, in the snapshot's format.

Needs credentials that may call ec2:DescribeAvailabilityZones, ec2:DescribeInstanceTypeOfferings,
ec2:DescribeInstanceTypes, ec2:DescribeSpotPriceHistory and pricing:GetProducts. The EKS calendar, quota codes
and fixed prices are kept from the current file (they have no API of their own worth trusting over the docs).
The new file is written next to the old one and renamed over it only once it is complete and loads.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from infra.catalog import CATALOG_FILE, parse_catalog

PRICING_REGION = "us-east-1"  # the Price List API answers from us-east-1 (and a few others), for every region
BASE_REGION = "us-east-1"  # per-type prices are stored for it; other regions as per-family factors


def quota_class(family: str) -> str:
    # EC2's vCPU quota classes (ec2-instance-quotas.html): P, G and VT, and Standard for A, C, D, H, I, M, R, T, Z.
    if family.startswith("p"):
        return "P"
    if family.startswith(("g", "vt")):
        return "G"
    return "Standard"


def max_pods(itype: dict[str, Any], known: int | None) -> int:
    """The snapshot's figure (eni-max-pods.txt) if it has one; else the same file's ENI formula."""
    if known:
        return known
    net = itype["NetworkInfo"]
    pods: int = net["MaximumNetworkInterfaces"] * (net["Ipv4AddressesPerInterface"] - 1) + 2
    return pods


def instance_row(itype: dict[str, Any], price: float, pods: int) -> list[Any]:
    gpus = (itype.get("GpuInfo") or {}).get("Gpus") or []
    gpu = gpus[0] if gpus else None
    return [gpu["Name"] if gpu else None, sum(g["Count"] for g in gpus),
            round(gpu["MemoryInfo"]["SizeInMiB"] / 1024) if gpu else 0,
            itype["VCpuInfo"]["DefaultVCpus"], itype["MemoryInfo"]["SizeInMiB"] // 1024,
            (itype.get("InstanceStorageInfo") or {}).get("TotalSizeInGB", 0), pods, round(price, 4)]


def on_demand_prices(pricing: Any, region: str, types: set[str]) -> dict[str, float]:
    """Linux, shared tenancy, no pre-installed software, as billed: the list price per hour of each type."""
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in (
        ("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
        ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]
    prices: dict[str, float] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"}
        if token:
            kwargs["NextToken"] = token
        page = pricing.get_products(**kwargs)
        for item in page["PriceList"]:
            product = json.loads(item) if isinstance(item, str) else item
            name = product["product"]["attributes"].get("instanceType")
            if name not in types:
                continue
            for term in product["terms"].get("OnDemand", {}).values():
                for dim in term["priceDimensions"].values():
                    usd = float(dim["pricePerUnit"]["USD"])
                    if usd > 0:
                        prices[name] = usd
        token = page.get("NextToken")
        if not token:
            return prices


def spot_prices(ec2: Any, types: list[str], now: datetime) -> dict[str, list[float]]:
    history = ec2.describe_spot_price_history(InstanceTypes=types, ProductDescriptions=["Linux/UNIX"],
                                              StartTime=now - timedelta(hours=1), EndTime=now)
    found: dict[str, list[float]] = {}
    for row in history["SpotPriceHistory"]:
        found.setdefault(row["InstanceType"], []).append(float(row["SpotPrice"]))
    return found


def commercial_regions() -> tuple[dict[str, str], str]:
    """Every region of the commercial partition with its name, from the installed botocore's endpoints.json (the
    SDK's own list: partition `aws`, `regions`), and the source line that says which botocore it came from."""
    import botocore
    import botocore.loaders

    endpoints = botocore.loaders.Loader().load_data("endpoints")
    partition = next(p for p in endpoints["partitions"] if p["partition"] == "aws")
    regions = {name: str(info.get("description", name)) for name, info in sorted(partition["regions"].items())}
    source = (f"botocore {botocore.__version__} botocore/data/endpoints.json, partition \"aws\", `regions` (the "
              f"SDK's list of the commercial partition's regions and their descriptions), read by `llmp catalog "
              f"refresh`; https://docs.aws.amazon.com/global-infrastructure/latest/regions/aws-regions.html")
    return regions, source


def rebuild(session: Any, current: dict[str, Any], today: date, regions: list[str] | None = None) -> dict[str, Any]:
    """A new snapshot: the current one's instance types and regions (or `regions`), re-read from AWS."""
    types = sorted(current["instances"])
    regions = regions or list(current["regions"])
    now = datetime.now(UTC)
    pricing = session.client("pricing", region_name=PRICING_REGION)
    specs = {t["InstanceType"]: t for t in session.client("ec2", region_name=BASE_REGION)
             .describe_instance_types(InstanceTypes=types)["InstanceTypes"]}
    missing = set(types) - set(specs)
    if missing:
        raise RuntimeError(f"describe-instance-types does not know {', '.join(sorted(missing))}")
    od = {r: on_demand_prices(pricing, r, set(types)) for r in sorted({*regions, BASE_REGION})}
    base = od[BASE_REGION]
    if set(types) - set(base):
        raise RuntimeError(f"no {BASE_REGION} on-demand price for {', '.join(sorted(set(types) - set(base)))}")

    zones: dict[str, list[str]] = {}
    offered: dict[str, dict[str, set[str]]] = {}  # family -> region -> zone IDs
    ratios: dict[str, dict[str, list[float]]] = {}
    spots: dict[str, dict[str, list[float]]] = {}
    for region in regions:
        ec2 = session.client("ec2", region_name=region)
        zone_rows = ec2.describe_availability_zones(
            Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])["AvailabilityZones"]
        zones[region] = sorted(z["ZoneId"] for z in zone_rows)
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone-id", Filters=[{"Name": "instance-type", "Values": types}])
        for page in pages:
            for row in page["InstanceTypeOfferings"]:
                family = row["InstanceType"].split(".", 1)[0]
                offered.setdefault(family, {}).setdefault(region, set()).add(row["Location"])
        spot = spot_prices(ec2, types, now)
        for t in types:
            family = t.split(".", 1)[0]
            if t in od[region]:
                ratios.setdefault(family, {}).setdefault(region, []).append(od[region][t] / base[t])
                for p in spot.get(t, []):
                    spots.setdefault(family, {}).setdefault(region, []).append(p / od[region][t])

    families: dict[str, Any] = {}
    for family in sorted({t.split(".", 1)[0] for t in types}):
        where = {r: sorted(z) for r, z in sorted(offered.get(family, {}).items())}
        prices = {r: [round(statistics.median(ratios[family][r]), 3),
                      round(statistics.median(spots.get(family, {}).get(r) or [1.0]), 3)]
                  for r in where if r in ratios.get(family, {})}
        families[family] = {"quota": quota_class(family), "checked": [t for t in types if t.startswith(family + ".")],
                            "offered": where, "prices": prices}
    known_pods = {name: row[6] for name, row in current["instances"].items()}
    instances = {t: instance_row(specs[t], base[t], max_pods(specs[t], known_pods.get(t))) for t in types}
    sources = dict(current.get("sources") or {})
    sources["offerings"] = (f"ec2:DescribeInstanceTypeOfferings (availability-zone-id), ec2:DescribeInstanceTypes, "
                            f"ec2:DescribeSpotPriceHistory and pricing:GetProducts, read by `llmp catalog refresh` "
                            f"on {today.isoformat()}")
    sources["region-prices"] = "per family and region: median on-demand ratio to us-east-1 and median spot fraction"
    # Rebuilt, not copied forward: as_of moves with every refresh, so every list under it must be as fresh.
    every_region, sources["commercial-regions"] = commercial_regions()
    return {"as_of": today.isoformat(), "sources": sources, "regions": zones, "families": families,
            "fixed_hourly": current["fixed_hourly"], "instances": instances, "quotas": current["quotas"],
            "kubernetes_versions": current["kubernetes_versions"],
            "commercial_regions": every_region,
            "data_stores": current.get("data_stores") or {}}


def write_atomically(doc: dict[str, Any], path: Path) -> None:
    """Write `doc` to `path` only if it is a loadable catalog; a crash midway leaves the old file untouched."""
    parse_catalog(doc)  # refuse a snapshot the program could not read
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write("# EC2 facts rebuilt by `llmp catalog refresh`; see infra/catalog_refresh.py for the calls.\n")
            yaml.safe_dump(doc, out, sort_keys=False, default_flow_style=None, width=120)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refresh(session: Any, source: Path = CATALOG_FILE, output: Path | None = None, today: date | None = None,
            regions: list[str] | None = None) -> dict[str, Any]:
    current = yaml.safe_load(source.read_text())
    doc = rebuild(session, current, today or datetime.now(UTC).date(), regions)
    write_atomically(doc, output or source)
    return doc
