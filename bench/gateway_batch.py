"""Benchmark: Batch API throughput on the simulator, as a ratio of the same lines sent as interactive calls.

One gateway (one worker, SQLite ledger, local file store) in front of one vLLM simulator. A 2,000-line
/v1/chat/completions batch is uploaded and created with the official openai client, and polled until it
completes: lines/s from create to completed (validation, every line's admission, upstream call, result and spend
row in one store transaction, and the output file). Then the same 2,000 requests are sent as interactive calls by
a client holding the batch's concurrency in flight: calls/s. Both use the same virtual key; the batch's governor
is told not to yield (no interactive traffic runs beside it). Rounds alternate the two; medians are reported.

    python bench/gateway_batch.py [--lines 2000] [--concurrency 8] [--rounds 2] [--ttft 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import openai
import yaml
from procs import free_port, stop_all, wait_port  # bench/procs.py (scripts run from bench/, beside it)

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-FAKE-0123456789abcdef0123456789"
MODEL, BATCH_MODEL = "bench-model", "bench-model-batch"


def config(sim_port: int, work: Path, concurrency: int) -> dict:
    sim = f"http://127.0.0.1:{sim_port}/v1"
    prices = {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}
    return {
        "version": 1,
        "gateway": {"master_key": MASTER},
        "models": [{"alias": MODEL, "deployments": [{"name": "interactive", "model": MODEL, "api_base": sim}],
                    **prices},
                   {"alias": BATCH_MODEL, "tier": "batch",
                    "deployments": [{"name": "spot", "model": MODEL, "api_base": sim}], **prices}],
        "ledger": {"spool_dir": str(work / "spool"), "store": f"sqlite:///{work / 'ledger.db'}"},
        "batch": {"files": {"local_dir": str(work / "files")}, "concurrency": concurrency,
                  "yield_to_interactive": 0, "models": {MODEL: BATCH_MODEL}},
    }


def request(i: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"summarise document {i}"}], "max_tokens": 16}


def run_batch(oai: openai.OpenAI, lines: int) -> float:
    data = b"".join(json.dumps({"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": request(i)}).encode() + b"\n" for i in range(lines))
    uploaded = oai.files.create(file=("docs.jsonl", io.BytesIO(data)), purpose="batch")
    started = time.perf_counter()
    batch = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.02)
        batch = oai.batches.retrieve(batch.id)
    elapsed = time.perf_counter() - started
    counts = batch.request_counts
    if batch.status != "completed" or counts is None or counts.completed != lines:
        sys.exit(f"error: batch ended {batch.status} with {counts}")
    out = oai.files.content(batch.output_file_id or "").content.splitlines()
    if len({json.loads(x)["custom_id"] for x in out}) != lines:
        sys.exit("error: the output does not hold every custom_id once")
    return lines / elapsed


async def run_interactive(url: str, key: str, lines: int, concurrency: int) -> float:
    todo = iter(range(lines))
    failures = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal failures
        for i in todo:
            async with http.post(url + "/v1/chat/completions", json=request(i),
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                failures += resp.status != 200

    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        sys.exit(f"error: {failures} interactive calls failed")
    return lines / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttft", type=float, default=0.005, help="the simulator's seconds before an answer")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmp-bench-batch-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sim_port, gw_port = free_port(), free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port", str(sim_port), "--ttft",
                                       str(args.ttft), "--output-tokens", "16"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(sim_port, procs[-1])
        path = work / "gateway.yaml"
        path.write_text(yaml.safe_dump(config(sim_port, work, args.concurrency)))
        with open(work / "gateway.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path), "--port",
                                           str(gw_port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        wait_port(gw_port, procs[-1])
        url = f"http://127.0.0.1:{gw_port}"
        made = urllib.request.Request(url + "/key/generate", data=b"{}", method="POST", headers={
            "Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"})
        with urllib.request.urlopen(made, timeout=10) as resp:
            key = json.loads(resp.read())["key"]
        oai = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        asyncio.run(run_interactive(url, key, 200, args.concurrency))  # warm-up
        batch_rates, call_rates = [], []
        for _ in range(args.rounds):
            batch_rates.append(run_batch(oai, args.lines))
            call_rates.append(asyncio.run(run_interactive(url, key, args.lines, args.concurrency)))
    finally:
        stop_all(procs)
    batch_rate, call_rate = statistics.median(batch_rates), statistics.median(call_rates)
    print(f"\ngateway batch throughput ({args.rounds} rounds x {args.lines} lines, concurrency {args.concurrency}, "
          f"simulator ttft {args.ttft * 1000:.0f} ms)")
    print(f"{'target':<44}{'lines/s':>10}")
    print(f"{'batch (create -> completed, output checked)':<44}{batch_rate:>10.0f}")
    print(f"{'same lines as interactive calls':<44}{call_rate:>10.0f}")
    print(f"throughput ratio batch/interactive: {batch_rate / call_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
