"""Benchmark: what the response cache's hit path adds, measured in one run on the simulator.

Each target is sent chat requests one at a time over a kept-alive connection (latency, not throughput, is the
question), in rounds whose order alternates so that machine noise hits every target alike:

- bare: a bare aiohttp server on uvloop, as the gateway runs, answering the very bytes the hit returns (JSON, or
  the replayed SSE stream for `stream: true`): the floor, HTTP in and out and nothing else;
- hit: the gateway (one worker, the cache in a real Redis) answering from the cache (`x-llmp-cache: hit`);
- hit, streamed: the same request with `stream: true`, replayed from the same entry as SSE;
- no cache: a second gateway, the same config without `cache:`, sent the hit's request: auth, routing, the simulator;
- miss: the first gateway with a new prompt each time: the same path plus the lookup and the store.

The hit path's added latency is hit minus bare (p50, p99), streamed and not; what the cache adds to a call it does
not answer is miss minus no cache; hit / no cache says what a hit costs next to asking the model at all (here a
simulator answering at once: against a real model a miss takes seconds, a hit the same).

    python bench/gateway_cache.py [--rounds 5] [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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
from procs import free_port, stop_all, wait_port  # bench/procs.py (scripts run from bench/, beside it)

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-FAKE-0123456789abcdef0123456789"
BODY = {"model": "bench-model", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}


def config(sim_port: int, redis_url: str, cache: bool = True) -> dict[str, object]:
    settings: dict[str, object] = {
        "version": 1,
        "gateway": {"master_key": MASTER, "retries": {"attempts": 0}},
        "models": [{"alias": "bench-model", "input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7,
                    "deployments": [{"name": "sim", "model": "sim-model",
                                     "api_base": f"http://127.0.0.1:{sim_port}/v1"}]}],
        "redis": {"url": redis_url},
    }
    if cache:
        settings["cache"] = {"models": ["bench-model"]}
    return settings


def serve_bytes(path: str, port: int) -> None:
    """The bare server: a POST gets the bytes in `path` as JSON, or those in `path`.sse as SSE for `stream: true`
    (run in a process of its own, on uvloop like the gateway, so the floor is not a slower event loop's)."""
    from gateway.server import use_uvloop

    answer, stream = Path(path).read_bytes(), Path(path + ".sse").read_bytes()

    async def handle(request: web.Request) -> web.StreamResponse:
        if orjson.loads(await request.read()).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(stream)
            await response.write_eof()
            return response
        return web.Response(body=answer, content_type="application/json")

    use_uvloop()
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def timed(http: aiohttp.ClientSession, url: str, body: bytes, expect: str | None) -> float:
    started = time.perf_counter()
    async with http.post(url, data=body, headers={"Authorization": f"Bearer {MASTER}",
                                                  "Content-Type": "application/json"}) as resp:
        await resp.read()
        if resp.status != 200 or resp.headers.get("x-llmp-cache") != expect:
            raise SystemExit(f"error: {url} answered {resp.status}, x-llmp-cache "
                             f"{resp.headers.get('x-llmp-cache')!r} (expected {expect!r})")
    return (time.perf_counter() - started) * 1000


TARGETS = ("bare", "hit", "bare_stream", "hit_stream", "nocache", "miss")


async def measure(gateway: str, nocache: str, bare: str, rounds: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    same, streamed = orjson.dumps(BODY), orjson.dumps({**BODY, "stream": True})
    fresh = 0

    def call(name: str) -> tuple[str, bytes, str | None]:
        nonlocal fresh
        if name == "miss":
            fresh += 1
            return gateway, orjson.dumps({**BODY, "messages": [{"role": "user", "content": f"Hi, call {fresh}."}]}), \
                "miss"
        return {"bare": (bare, same, None), "hit": (gateway, same, "hit"), "bare_stream": (bare, streamed, None),
                "hit_stream": (gateway, streamed, "hit"), "nocache": (nocache, same, None)}[name]

    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # warm-up (the answer is stored already)
            for name in TARGETS:
                await timed(http, *call(name))
        for r in range(rounds):
            for name in TARGETS if r % 2 == 0 else tuple(reversed(TARGETS)):
                for _ in range(calls):
                    samples[name].append(await timed(http, *call(name)))
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
        nocache_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        for port, name, cached in ((gw_port, "gateway", True), (nocache_port, "nocache", False)):
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config(sim_port, redis_url, cached)))
            wait_port(port, spawn([sys.executable, "-m", "gateway", "--config", str(path), "--host", "127.0.0.1",
                                   "--port", str(port)], name))
        gateway = f"http://127.0.0.1:{gw_port}/v1/chat/completions"

        async def hit_bytes() -> tuple[bytes, bytes]:
            """The answer as stored (the first call), and the streamed hit's bytes: what the bare server sends."""
            headers = {"Authorization": f"Bearer {MASTER}"}
            async with aiohttp.ClientSession() as http:
                async with http.post(gateway, data=orjson.dumps(BODY), headers=headers) as resp:
                    answer = await resp.read()
                async with http.post(gateway, data=orjson.dumps({**BODY, "stream": True}), headers=headers) as resp:
                    return answer, await resp.read()

        answer = work / "answer.json"
        whole, stream = asyncio.run(hit_bytes())
        answer.write_bytes(whole)
        (work / "answer.json.sse").write_bytes(stream)
        wait_port(bare_port, spawn([sys.executable, __file__, "--serve-bytes", str(answer), "--port",
                                    str(bare_port)], "bare"))
        samples = asyncio.run(measure(gateway, f"http://127.0.0.1:{nocache_port}/v1/chat/completions",
                                      f"http://127.0.0.1:{bare_port}/v1/chat/completions", args.rounds, args.calls))
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
    stats = {name: (pct(v, 50), pct(v, 99), statistics.fmean(v)) for name, v in samples.items()}
    print(f"\ngateway response cache: hit path latency ({args.rounds} rounds x {args.calls} sequential calls each, "
          f"one connection)")
    print(f"{'target':<50}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    labels = {"bare": "bare aiohttp server, same bytes (floor)", "hit": "gateway, cache hit (redis)",
              "bare_stream": "bare aiohttp server, same SSE bytes (floor)",
              "hit_stream": "gateway, cache hit replayed as a stream",
              "nocache": "gateway without cache:, to the simulator",
              "miss": "gateway, cache miss (to the simulator)"}
    for name in TARGETS:
        p50, p99, mean = stats[name]
        print(f"{labels[name]:<50}{p50:>10.3f}{p99:>10.3f}{mean:>10.3f}")

    def over(a: str, b: str) -> str:
        return f"p50 {stats[a][0] - stats[b][0]:.3f} ms, p99 {stats[a][1] - stats[b][1]:.3f} ms"

    print(f"hit path added latency over the floor: {over('hit', 'bare')}")
    print(f"the same, streamed: {over('hit_stream', 'bare_stream')}")
    print(f"what the cache adds to a call it does not answer (miss - no cache): {over('miss', 'nocache')}")
    print(f"hit / no cache latency (p50): {stats['hit'][0] / stats['nocache'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
