"""Benchmark: what the response cache's hit path adds, measured in one run on the simulator.

Three targets, each sent the same non-streamed chat request one at a time over a kept-alive connection (latency,
not throughput, is the question), in alternating rounds so that machine noise hits all three:

- hit: the gateway (one worker, the cache in a real Redis) answering from the cache (`x-llmp-cache: hit`);
- bare: a bare aiohttp server answering the very bytes the hit returns (the floor: HTTP in and out, no gateway);
- miss: the gateway with a new prompt each time, so every call is a miss: auth, lookup, the simulator, the store.

The hit's added latency is hit minus bare (p50, p99); the ratio hit/miss says what a hit costs next to going to the
model at all (here a simulator answering at once: against a real model a miss takes seconds, a hit the same).

    python bench/gateway_cache.py [--rounds 5] [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-FAKE-0123456789abcdef0123456789"
BODY = {"model": "bench-model", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: a process exited during start-up (code {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"error: nothing listening on {port} after {timeout}s")


def config(sim_port: int, redis_url: str) -> dict[str, object]:
    return {
        "version": 1,
        "gateway": {"master_key": MASTER, "retries": {"attempts": 0}},
        "models": [{"alias": "bench-model", "input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7,
                    "deployments": [{"name": "sim", "model": "sim-model",
                                     "api_base": f"http://127.0.0.1:{sim_port}/v1"}]}],
        "redis": {"url": redis_url},
        "cache": {"models": ["bench-model"]},
    }


def serve_bytes(path: str, port: int) -> None:
    """The bare server: every POST gets the bytes in `path`, as JSON (run in a process of its own)."""
    answer = Path(path).read_bytes()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def timed(http: aiohttp.ClientSession, url: str, body: bytes, expect: str | None) -> float:
    started = time.perf_counter()
    async with http.post(url, data=body, headers={"Authorization": f"Bearer {MASTER}",
                                                  "Content-Type": "application/json"}) as resp:
        await resp.read()
        if resp.status != 200 or (expect is not None and resp.headers.get("x-llmp-cache") != expect):
            raise SystemExit(f"error: {url} answered {resp.status}, x-llmp-cache "
                             f"{resp.headers.get('x-llmp-cache')!r} (expected {expect!r})")
    return (time.perf_counter() - started) * 1000


async def measure(gateway: str, bare: str, rounds: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"hit": [], "bare": [], "miss": []}
    same = orjson.dumps(BODY)
    fresh = 0
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # warm-up, and the first call stores the answer
            await timed(http, gateway, same, None)
            await timed(http, bare, same, None)
        for r in range(rounds):
            order = ("hit", "bare", "miss") if r % 2 == 0 else ("miss", "bare", "hit")
            for name in order:
                for _ in range(calls):
                    if name == "hit":
                        samples[name].append(await timed(http, gateway, same, "hit"))
                    elif name == "bare":
                        samples[name].append(await timed(http, bare, same, None))
                    else:
                        fresh += 1
                        body = {**BODY, "messages": [{"role": "user", "content": f"Say hello, call {fresh}."}]}
                        samples[name].append(await timed(http, gateway, orjson.dumps(body), "miss"))
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--serve-bytes", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bytes:
        serve_bytes(args.serve_bytes, args.port)
        return 0
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        sys.exit("error: redis-server is not installed (apt-get install redis-server; `make redis`)")
    work = Path(tempfile.mkdtemp(prefix="llmp-bench-cache-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(work / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    try:
        redis_port, sim_port, gw_port, bare_port = free_port(), free_port(), free_port(), free_port()
        wait_port(redis_port, spawn([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], "redis"))
        wait_port(sim_port, spawn([sys.executable, "-m", "gateway.sim", "--port", str(sim_port)], "sim"))
        path = work / "gateway.yaml"
        path.write_text(yaml.safe_dump(config(sim_port, f"redis://127.0.0.1:{redis_port}/0")))
        wait_port(gw_port, spawn([sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1",
                                  "--port", str(gw_port)], "gateway"))
        gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"

        async def first_answer() -> bytes:
            async with aiohttp.ClientSession() as http, http.post(
                    gateway, data=orjson.dumps(BODY), headers={"Authorization": f"Bearer {MASTER}"}) as resp:
                return await resp.read()

        answer = work / "answer.json"
        answer.write_bytes(asyncio.run(first_answer()))
        wait_port(bare_port, spawn([sys.executable, __file__, "--serve-bytes", str(answer), "--port",
                                    str(bare_port)], "bare"))
        samples = asyncio.run(measure(gateway, f"http://127.0.0.1:{bare_port}/v1/chat/completions", args.rounds,
                                      args.calls))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    stats = {name: (pct(v, 50), pct(v, 99), statistics.fmean(v)) for name, v in samples.items()}
    print(f"\ngateway response cache: hit path latency ({args.rounds} rounds x {args.calls} sequential calls each, "
          f"one connection)")
    print(f"{'target':<46}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    labels = {"bare": "bare aiohttp server, same bytes (floor)", "hit": "gateway, cache hit (redis)",
              "miss": "gateway, cache miss (to the simulator)"}
    for name in ("bare", "hit", "miss"):
        p50, p99, mean = stats[name]
        print(f"{labels[name]:<46}{p50:>10.3f}{p99:>10.3f}{mean:>10.3f}")
    added50, added99 = stats["hit"][0] - stats["bare"][0], stats["hit"][1] - stats["bare"][1]
    print(f"hit path added latency over the floor: p50 {added50:.3f} ms, p99 {added99:.3f} ms")
    print(f"hit / miss latency (p50): {stats['hit'][0] / stats['miss'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
