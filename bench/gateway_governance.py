"""Benchmark: gateway throughput with governance on (virtual key, Redis-backed limits and budget, spend ledger)
as a ratio of the bare data path (master key only), measured in the same run.

Both gateways run one worker each in front of the same vLLM simulator and are driven by
the same load generator (wrk, 16 connections, one thread). Rounds alternate between the
two so that machine noise hits both; the median round of each is reported. The governed
gateway's key has RPM, TPM, parallel and budget limits (set high enough never to refuse),
and belongs to a team with limits too: every request is admitted against both scopes,
from allowance leased from a real Redis (the `scripts/req` column: Lua round trips per
request), settled, and written to the spool. At the end the ledger is checked to hold
one row per answered request.

    python bench/gateway_governance.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from procs import free_port, stop_all, wait_port  # bench/procs.py (scripts run from bench/, beside it)

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-FAKE-0123456789abcdef0123456789"
CONNECTIONS = 16
TARGET_RATIO = 0.60


def ensure(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    print(f"installing {package} (Debian package)", flush=True)
    subprocess.run(f"apt-get update -qq && apt-get install -y -qq {package} >/dev/null", shell=True, check=True)
    path = shutil.which(binary)
    if not path:
        sys.exit(f"error: {binary} is missing and could not be installed")
    return path


def config(sim_port: int, governed: bool, work: Path, redis_url: str) -> dict:
    doc: dict = {
        "version": 1,
        "gateway": {"master_key": MASTER, "retries": {"attempts": 0}},
        "models": [{"alias": "bench-model", "input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7,
                    "deployments": [{"name": "sim", "model": "sim-model",
                                     "api_base": f"http://127.0.0.1:{sim_port}/v1"}]}],
    }
    if governed:
        doc["redis"] = {"url": redis_url, "on_unavailable": "fail-closed"}
        doc["ledger"] = {"spool_dir": str(work / "spool"), "store": f"sqlite:///{work / 'ledger.db'}"}
    return doc


def admin(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wrk(binary: str, url: str, key: str, seconds: int, work: Path) -> dict[str, float]:
    body = json.dumps({"model": "bench-model", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})
    script = work / "post.lua"
    script.write_text("\n".join([
        'wrk.method = "POST"', f"wrk.body = {json.dumps(body)}",
        'wrk.headers["Content-Type"] = "application/json"', f'wrk.headers["Authorization"] = "Bearer {key}"']))
    out = subprocess.run([binary, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                          "-s", str(script), url + "/v1/chat/completions"],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}
    return {"rps": rps, "requests": total, "non_2xx": int(bad.group(1)) if bad else 0, "p50_ms": lat["50"],
            "p99_ms": lat["99"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_scripts(port: int) -> int:
    """Lua scripts Redis has run so far (the limiter's round trips)."""
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k.startswith(("cmdstat_evalsha", "cmdstat_eval")))


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    wrk_bin = ensure("wrk", "wrk")
    redis_bin = ensure("redis-server", "redis-server")
    work = Path(tempfile.mkdtemp(prefix="llmp-bench-gov-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        redis_port, sim_port = free_port(), free_port()
        wait_port(redis_port, spawn([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], "redis"))
        wait_port(sim_port, spawn([sys.executable, "-m", "gateway.sim", "--port", str(sim_port)], "sim"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        urls = {}
        pids = {"redis": procs[0].pid}
        for name, governed in (("bare", False), ("governed", True)):
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config(sim_port, governed, work, redis_url)))
            port = free_port()
            proc = spawn([sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1",
                          "--port", str(port)], name)
            wait_port(port, proc)
            pids[name] = proc.pid
            urls[name] = f"http://127.0.0.1:{port}"
        admin(urls["governed"], "/team/new", {"team_id": "bench", "rpm_limit": 10_000_000, "tpm_limit": 10**12,
                                              "max_budget": 1e9, "budget_duration": "30d"})
        key = admin(urls["governed"], "/key/generate", {
            "team_id": "bench", "rpm_limit": 10_000_000, "tpm_limit": 10**12, "max_parallel_requests": 1000,
            "max_budget": 1e9, "budget_duration": "30d"})["key"]
        keys = {"bare": MASTER, "governed": key}
        rounds: dict[str, list[dict[str, float]]] = {"bare": [], "governed": []}
        for name in ("bare", "governed"):  # warm-up
            wrk(wrk_bin, urls[name], keys[name], 1, work)
        for r in range(args.rounds):
            order = ("bare", "governed") if r % 2 == 0 else ("governed", "bare")
            for name in order:
                before = {n: cpu_seconds(pids[n]) for n in (name, "redis")}
                scripts = redis_scripts(redis_port)
                result = wrk(wrk_bin, urls[name], keys[name], args.seconds, work)
                done = result["requests"] or 1
                result["cpu_us"] = (cpu_seconds(pids[name]) - before[name]) / done * 1e6
                result["redis_us"] = (cpu_seconds(pids["redis"]) - before["redis"]) / done * 1e6
                result["redis_calls"] = (redis_scripts(redis_port) - scripts) / done
                rounds[name].append(result)
        answered = sum(x["requests"] - x["non_2xx"] for x in rounds["governed"])
        time.sleep(1.5)  # the ledger flushes every 0.5 s
        with sqlite3.connect(work / "ledger.db") as db:
            rows = db.execute("SELECT COUNT(*) FROM llmp_spend WHERE key_token != 'master'").fetchone()[0]
    finally:
        stop_all(procs)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p99_ms", "non_2xx", "cpu_us",
                                                                   "redis_us", "redis_calls")}
           for name, rs in rounds.items()}
    ratio = med["governed"]["rps"] / med["bare"]["rps"]
    print(f"\ngateway governance overhead ({args.rounds} rounds x {args.seconds}s, {CONNECTIONS} connections, "
          f"median round)")
    print(f"{'target':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}{'CPU us/req':>12}"
          f"{'redis us/req':>14}{'scripts/req':>13}")
    labels = {"bare": "bare data path (master key)", "governed": "auth + redis limits + ledger"}
    for name in ("bare", "governed"):
        m = med[name]
        print(f"{labels[name]:<34}{m['rps']:>10.0f}{m['p50_ms']:>10.2f}{m['p99_ms']:>10.2f}{m['non_2xx']:>10.0f}"
              f"{m['cpu_us']:>12.0f}{m['redis_us']:>14.0f}{m['redis_calls']:>13.3f}")
    print(f"throughput ratio governed/bare: {ratio:.2f} (target >= {TARGET_RATIO:.2f})")
    print(f"ledger rows for the governed key: {rows} (answered: {answered} timed + warm-up)")
    shutil.rmtree(work, ignore_errors=True)
    if med["governed"]["non_2xx"] or rows < answered:
        print("error: the governed gateway refused requests or lost ledger records", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
