"""Benchmark: offline plan time for stacks of 1, 4 and 9 regions, against the bare SDK import cost."""
from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from infra.catalog import load_catalog

ROOT = Path(__file__).resolve().parent.parent
# Every region infra/catalog.yaml says offers both p5 and g6: the only ones a copy of prod's pools can run in.
REGIONS = ["us-east-1", "us-west-2", "eu-north-1", "eu-west-2", "us-east-2", "ap-northeast-1", "ap-southeast-2",
           "ca-central-1", "ap-south-1"]
RUNS = 3
TARGET_PROD_SECONDS = 5.0


def zone(region: str) -> str:
    return {"us": "us", "ca": "us", "eu": "eu", "ap": "ap"}[region[:2]]


def stack_with(n: int) -> dict:
    """The prod stack grown (or shrunk) to the first n regions, every model in every region of its zones."""
    doc = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())
    config = doc["config"]
    template = config["llm-platform:regions"][2]  # an EU region: it carries every pool
    regions = REGIONS[:n]
    catalog = load_catalog()
    config["llm-platform:residency"] = {}
    for r in regions:
        config["llm-platform:residency"].setdefault(zone(r), []).append(r)
    config["llm-platform:regions"] = [{**copy.deepcopy(template), "name": r, "residency": zone(r),
                                       "pools": [_pool_in(p, r, catalog) for p in template["pools"]]}
                                      for r in regions]
    for model in config["llm-platform:models"]:
        allowed = [r for r in regions if model.get("residency") in (None, zone(r))]
        model["regions"] = allowed or regions[:1]
        if model.get("residency") and not any(zone(r) == model["residency"] for r in regions):
            model.pop("residency")
    config["llm-platform:budget"]["monthly_usd"] = 10_000_000
    config["llm-platform:failover"]["min_regions_per_model"] = 1
    return doc


def _pool_in(pool: dict, region: str, catalog) -> dict:
    """The template pool, on the capacity market and types the region offers (L4s where it has no L40S)."""
    pool = copy.deepcopy(pool)
    if pool.pop("reservation", None):
        pool["capacity"] = "on-demand"  # the template's reservation lives in the template's zone
    types = [t for t in pool["instance_types"] if catalog.zones_offering(t, region)]
    pool["instance_types"] = types or [t.replace("g6e.", "g6.") for t in pool["instance_types"]]
    return pool


def timed(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):  # 1: a policy failed, still a complete plan
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return statistics.median(times)


def main() -> int:
    llmp = [sys.executable, "-m", "infra.cli"]
    baseline = timed([sys.executable, "-c", "import pulumi, pulumi_aws, pulumi_kubernetes, infra.platform"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 4, len(REGIONS)):
            path = Path(tmp) / f"Pulumi.bench{n}.yaml"
            path.write_text(yaml.safe_dump(stack_with(n)))
            seconds = timed([*llmp, "plan", "--config-file", str(path), "--stack", f"bench{n}", "--format", "json"])
            resources = subprocess.run([*llmp, "plan", "--config-file", str(path), "--stack", f"bench{n}",
                                        "--format", "json"], cwd=ROOT, capture_output=True, text=True).stdout
            rows.append((n, seconds, resources.count('"type":')))
    prod = timed([*llmp, "plan", "--stack", "prod", "--format", "json"])

    print(f"plan scaling (median of {RUNS} runs, fresh process each; baseline = importing the SDKs "
          f"and the program: {baseline:.2f} s)")
    print(f"{'regions':>8} {'resources':>10} {'seconds':>8} {'x baseline':>11} {'s/region':>9}")
    for n, seconds, count in rows:
        print(f"{n:>8} {count:>10} {seconds:>8.2f} {seconds / baseline:>11.2f} {seconds / n:>9.2f}")
    verdict = "ok" if prod < TARGET_PROD_SECONDS else "OVER TARGET"
    print(f"prod stack: {prod:.2f} s ({prod / baseline:.2f}x baseline; "
          f"target < {TARGET_PROD_SECONDS:.0f} s: {verdict})")
    return 0 if prod < TARGET_PROD_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
