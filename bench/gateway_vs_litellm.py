"""Benchmark: the simulated upstream alone, the llmp gateway, and LiteLLM's proxy in front of it.

All three run on this machine, one worker each, in front of the same vLLM
simulator, configured by the same LiteLLM config file, under the same load
generator (wrk, 16 connections). The machine is shared, so rounds of the
three targets are interleaved and the median round is reported, and every
figure is compared with a baseline measured in the same run.

Reported: requests/s, p50/p99 latency, latency added over the bare upstream at
100 requests/s, streaming time-to-first-byte added, RSS growth over 100k
requests. LiteLLM is installed from PyPI into .bench/litellm-venv on first use.

    python bench/gateway_vs_litellm.py [--rounds 3] [--seconds 5] [--rss-requests 100000] [--skip-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
LITELLM_VENV = BENCH / "litellm-venv"
# 1.106.2: the 1.106 line measured in the issue. Later 1.106.x need a certifi release the package
# index here does not carry, and 1.107.0 is the release reported compromised: never install it.
LITELLM_PIN = "litellm[proxy]==1.106.2"
UPSTREAM_MODEL = "sim-model"
ALIAS = "bench-model"
PROMPT = "Say hello in one short sentence."
CONNECTIONS = 16


@dataclass
class Target:
    name: str
    url: str  # base URL, without /v1
    model: str
    key: str | None
    pid: int | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    results: dict[str, float | str] = field(default_factory=dict)


def serve_passthrough(client: str, port: int, upstream: str) -> None:
    """A bare passthrough: aiohttp server with an aiohttp or httpx client, or Starlette (uvicorn) with aiohttp."""
    if client == "starlette":
        serve_starlette(port, upstream)
        return
    from aiohttp import web

    async def main() -> None:
        if client == "httpx":
            import httpx

            hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

            async def send(data: bytes) -> bytes:
                r = await hx.post(upstream, content=data, headers={"Content-Type": "application/json"})
                return r.content
        else:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

            async def send(data: bytes) -> bytes:
                async with session.post(upstream, data=data, headers={"Content-Type": "application/json"}) as r:
                    return await r.read()

        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=await send(await request.read()), content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_get("/health", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_starlette(port: int, upstream: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    async def handle(request):  # type: ignore[no-untyped-def]
        if "session" not in state:
            state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with state["session"].post(upstream, data=await request.body(),
                                         headers={"Content-Type": "application/json"}) as r:
            return Response(await r.read(), media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", handle, methods=["POST"]),
                            Route("/health", lambda r: PlainTextResponse("ok"))])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, loop="uvloop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("installing wrk (Debian package)", flush=True)
    subprocess.run("apt-get update -qq && apt-get install -y -qq wrk >/dev/null", shell=True, check=True)
    path = shutil.which("wrk")
    if not path:
        sys.exit("error: wrk is missing and could not be installed")
    return path


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / ".pin"
    if exe.exists() and marker.exists() and marker.read_text() == LITELLM_PIN:
        return exe
    print(f"installing {LITELLM_PIN} into {LITELLM_VENV} (first run only)", flush=True)
    BENCH.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    installed = subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_PIN])
    if installed.returncode != 0:
        sys.exit(f"error: could not install {LITELLM_PIN} into {LITELLM_VENV} (pip said why above); "
                 "run with --skip-litellm to benchmark without it")
    marker.write_text(LITELLM_PIN)
    return exe


def litellm_config(upstream_port: int, master_key: str) -> str:
    return f"""model_list:
  - model_name: {ALIAS}
    litellm_params:
      model: hosted_vllm/{UPSTREAM_MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-bench-upstream-FAKE
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 0
general_settings:
  master_key: {master_key}
litellm_settings:
  telemetry: false
"""


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=ROOT, start_new_session=True)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"error: {url} exited during start-up; see {log}:\n{log.read_text()[-2000:]}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.3)
    sys.exit(f"error: {url} not ready after {timeout:.0f}s; see {log}")


def body(target: Target, stream: bool = False) -> bytes:
    return json.dumps({"model": target.model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": 16, "stream": stream}).encode()


def headers(target: Target) -> dict[str, str]:
    h = {"Content-Type": "application/json"}
    if target.key:
        h["Authorization"] = f"Bearer {target.key}"
    return h


def wrk_script(target: Target, stop_after: int | None = None, stream: bool = False) -> Path:
    lua = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body(target, stream).decode())}"]
    lua += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers(target).items()]
    if stop_after:
        # Stop the (single) wrk thread once it has seen `stop_after` responses.
        lua += ["local seen = 0", "function response(status, headers, body)", "  seen = seen + 1",
                f"  if seen >= {stop_after} then wrk.thread:stop() end", "end"]
    fd, path = tempfile.mkstemp(suffix=".lua", dir=BENCH)
    os.write(fd, "\n".join(lua).encode())
    os.close(fd)
    return Path(path)


def run_wrk(wrk: str, target: Target, seconds: float, stop_after: int | None = None,
            stream: bool = False) -> dict[str, float]:
    script = wrk_script(target, stop_after, stream)
    try:
        out = subprocess.run(
            [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s", "-s", str(script),
             target.url + "/v1/chat/completions"],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}
    return {"rps": rps, "requests": total, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


async def fixed_rate_latency(target: Target, rate: float, count: int) -> float:
    """p50 latency (ms) of `count` calls sent at a fixed rate (open loop), one connection pool."""
    latencies: list[float] = []
    payload, hdrs = body(target), headers(target)
    url = target.url + "/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one() -> None:
            started = time.perf_counter()
            async with http.post(url, data=payload, headers=hdrs) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{target.name}: HTTP {resp.status}")
            latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(20):  # warm the connections
            await one()
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return statistics.median(latencies)


async def streaming_ttfb(target: Target, count: int) -> float:
    """p50 time (ms) from sending a streaming request to its first body bytes, calls one after another."""
    samples: list[float] = []
    payload, hdrs = body(target, stream=True), headers(target)
    url = target.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http:
        for i in range(count + 5):
            started = time.perf_counter()
            async with http.post(url, data=payload, headers=hdrs) as resp:
                await resp.content.readany()
                first = time.perf_counter() - started
                await resp.read()
            if i >= 5:
                samples.append(first * 1000)
    return statistics.median(samples)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (LiteLLM may fork its server)."""
    pids = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in pids:
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid in pids:
                    pids.add(int(entry.name))
                    changed = True
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(rounds, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


def fmt(value: float | str | None, unit: str = "", digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}{unit}"


def table(targets: list[Target], litellm: Target | None, gateway: Target) -> str:
    rows = [
        ("requests/s (16 conns)", lambda t: fmt(t.results["rps"], "", 0)),
        ("  x LiteLLM (per round)", lambda t: fmt(t.results.get("x_litellm"), "x") if litellm else "-"),
        ("p50 latency", lambda t: fmt(t.results["p50_ms"], " ms", 2)),
        ("p99 latency", lambda t: fmt(t.results["p99_ms"], " ms", 2)),
        ("streams/s (16 conns)", lambda t: fmt(t.results.get("stream_rps"), "", 0)),
        ("  x LiteLLM", lambda t: fmt(t.results["stream_rps"] / litellm.results["stream_rps"], "x")
         if litellm and "stream_rps" in t.results else "-"),
        ("p50 @ fixed rate", lambda t: fmt(t.results.get("fixed_p50_ms"), " ms", 3)
         + f" @{t.results.get('fixed_rate', 0):.0f}/s"),
        ("  added over upstream", lambda t: fmt(t.results.get("added_p50_ms"), " ms", 3)),
        ("stream TTFB p50", lambda t: fmt(t.results.get("ttfb_ms"), " ms", 3)),
        ("  added over upstream", lambda t: fmt(t.results.get("ttfb_added_ms"), " ms", 3)),
        ("RSS before", lambda t: fmt(t.results.get("rss_before_mb"), " MB")),
        ("RSS after N requests", lambda t: fmt(t.results.get("rss_after_mb"), " MB")
         + (f" (N={int(t.results['rss_requests']):,})" if t.results.get("rss_requests") else "")),
        ("  RSS growth", lambda t: fmt(t.results.get("rss_growth_mb"), " MB")),
    ]
    width = 23
    cols = [t.name for t in targets]
    col = 22
    out = ["".ljust(width) + "".join(c.rjust(col) for c in cols)]
    for label, cell in rows:
        out.append(label.ljust(width) + "".join(cell(t).rjust(col) for t in targets))
    return "\n".join(out)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=100, help="fixed request rate for the added-latency figure")
    parser.add_argument("--rate-count", type=int, default=500)
    parser.add_argument("--ttfb-count", type=int, default=200)
    parser.add_argument("--rss-requests", type=int, default=100_000)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-passthrough", action="store_true", help="leave out the bare passthrough baselines")
    parser.add_argument("--serve-passthrough", choices=("aiohttp", "httpx", "starlette"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()

    BENCH.mkdir(exist_ok=True)
    wrk = ensure_wrk()
    litellm_exe = None if args.skip_litellm else ensure_litellm()
    key = "sk-" + secrets.token_hex(24)  # random per run: nothing to leak
    procs: list[subprocess.Popen[bytes]] = []
    py = sys.executable
    try:
        up_port, gw_port, ll_port = free_port(), free_port(), free_port()
        config = BENCH / "litellm-bench-config.yaml"
        config.write_text(litellm_config(up_port, key))

        upstream_log = BENCH / "upstream.log"
        procs.append(start([py, "-m", "gateway.sim", "--port", str(up_port), "--model", UPSTREAM_MODEL,
                            "--output-tokens", "16", "--name", "upstream"], upstream_log))
        await wait_ready(f"http://127.0.0.1:{up_port}/health", procs[-1], 20, upstream_log)
        upstream = Target("upstream alone", f"http://127.0.0.1:{up_port}", UPSTREAM_MODEL, None, procs[-1].pid)

        gw_log = BENCH / "gateway.log"
        procs.append(start([py, "-m", "gateway", "--config", str(config), "--host", "127.0.0.1",
                            "--port", str(gw_port), "--workers", "1"], gw_log))
        await wait_ready(f"http://127.0.0.1:{gw_port}/health/ready", procs[-1], 20, gw_log)
        gateway = Target("llmp gateway", f"http://127.0.0.1:{gw_port}", ALIAS, key, procs[-1].pid)
        targets = [upstream, gateway]

        if not args.skip_passthrough:
            # Bare passthroughs (aiohttp server, no routing/auth/metrics): how the upstream client was chosen.
            clients = [("aiohttp", py)]
            if litellm_exe is not None:  # httpx as LiteLLM uses it, and Starlette/uvicorn, from LiteLLM's venv
                clients.append(("httpx", str(LITELLM_VENV / "bin" / "python")))
                clients.append(("starlette", str(LITELLM_VENV / "bin" / "python")))
            for client, interpreter in clients:
                port = free_port()
                log = BENCH / f"passthrough-{client}.log"
                procs.append(start([interpreter, str(Path(__file__).resolve()), "--serve-passthrough", client, "--port",
                                    str(port), "--upstream", f"{upstream.url}/v1/chat/completions"], log))
                await wait_ready(f"http://127.0.0.1:{port}/health", procs[-1], 20, log)
                label = {"aiohttp": "aiohttp+aiohttp", "httpx": "aiohttp+httpx", "starlette": "starlette+aiohttp"}
                targets.append(Target(f"bare {label[client]}", f"http://127.0.0.1:{port}", UPSTREAM_MODEL, None,
                                      procs[-1].pid))

        litellm = None
        if litellm_exe is not None:
            ll_log = BENCH / "litellm.log"
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                   "DISABLE_SCHEMA_UPDATE": "True"}
            procs.append(start([str(litellm_exe), "--config", str(config), "--host", "127.0.0.1",
                                "--port", str(ll_port), "--num_workers", "1"], ll_log, env))
            await wait_ready(f"http://127.0.0.1:{ll_port}/health/liveliness", procs[-1], 180, ll_log)
            version = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                                      "import importlib.metadata as m; print(m.version('litellm'))"],
                                     capture_output=True, text=True).stdout.strip()
            litellm = Target(f"LiteLLM {version}", f"http://127.0.0.1:{ll_port}", ALIAS, key, procs[-1].pid)
            targets.append(litellm)

        for t in targets:  # warm-up: connection pools, imports, caches
            run_wrk(wrk, t, 2)
            t.results["rss_before_mb"] = rss_mb(t.pid)
        print(f"throughput: {args.rounds} interleaved rounds of {args.seconds:g}s, wrk -t1 -c{CONNECTIONS}", flush=True)
        for r in range(args.rounds):
            for t in targets:
                result = run_wrk(wrk, t, args.seconds)
                t.rounds.append(result)
                print(f"  round {r + 1} {t.name:>22}: {result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:.2f} ms"
                      f"  p99 {result['p99_ms']:.2f} ms  non-2xx {result['non_2xx']}", flush=True)
        for t in targets:
            t.results.update(median_round(t.rounds))
        if litellm is not None:
            # Targets of one round ran back to back, under the same load from the rest of the machine:
            # the per-round ratio is steadier than a ratio of medians.
            for t in targets:
                t.results["x_litellm"] = statistics.median(
                    mine["rps"] / theirs["rps"] for mine, theirs in zip(t.rounds, litellm.rounds))

        print(f"streaming throughput: one {args.seconds:g}s round each (16 tokens a stream)", flush=True)
        for t in targets:
            if not t.name.startswith("bare"):
                result = run_wrk(wrk, t, args.seconds, stream=True)
                t.results["stream_rps"] = result["rps"]
                print(f"  {t.name:>22}: {result['rps']:>9,.0f} streams/s  p50 {result['p50_ms']:.2f} ms"
                      f"  non-2xx {result['non_2xx']}", flush=True)

        print(f"added latency: {args.rate_count} calls at a fixed {args.rate:g}/s", flush=True)
        for t in targets:
            rate = args.rate
            if t is litellm and t.results["rps"] < args.rate * 2:
                rate = max(5.0, t.results["rps"] / 4)  # below saturation, or the figure is queueing
            count = args.rate_count if rate == args.rate else int(rate * 5)
            t.results["fixed_rate"] = rate
            t.results["fixed_p50_ms"] = await fixed_rate_latency(t, rate, count)
        print(f"streaming TTFB: {args.ttfb_count} sequential streaming calls", flush=True)
        for t in targets:
            if not t.name.startswith("bare"):  # the bare passthroughs buffer whole bodies: no streaming figure
                t.results["ttfb_ms"] = await streaming_ttfb(t, args.ttfb_count if t is not litellm else 50)
        for t in targets[1:]:
            t.results["added_p50_ms"] = t.results["fixed_p50_ms"] - upstream.results["fixed_p50_ms"]
            if "ttfb_ms" in t.results:
                t.results["ttfb_added_ms"] = t.results["ttfb_ms"] - upstream.results["ttfb_ms"]

        print(f"memory: {args.rss_requests:,} requests through the gateway", flush=True)
        gateway.results["rss_before_mb"] = rss_mb(gateway.pid)
        served = 0
        while served < args.rss_requests:
            # wrk runs for a duration, not a count: size each run from the measured rate.
            left = args.rss_requests - served
            seconds = max(1, int(left / max(gateway.results["rps"], 1.0) * 1.05) + 1)
            served += int(run_wrk(wrk, gateway, seconds, stop_after=left)["requests"])
        gateway.results["rss_requests"] = served
        gateway.results["rss_after_mb"] = rss_mb(gateway.pid)
        gateway.results["rss_growth_mb"] = gateway.results["rss_after_mb"] - gateway.results["rss_before_mb"]
        if litellm is not None:
            # 100k calls take LiteLLM about 20 minutes here: report after the calls it did serve.
            served = sum(r["requests"] for r in litellm.rounds)
            litellm.results["rss_requests"] = served
            litellm.results["rss_after_mb"] = rss_mb(litellm.pid)
            litellm.results["rss_growth_mb"] = litellm.results["rss_after_mb"] - litellm.results["rss_before_mb"]

        print()
        print(table(targets, litellm, gateway))
        print()
        summary = {t.name: {"results": t.results, "rounds": t.rounds} for t in targets}
        (BENCH / "gateway_vs_litellm.json").write_text(json.dumps(summary, indent=2))
        if litellm is not None:
            print(f"gateway / LiteLLM requests/s: {gateway.results['x_litellm']:.1f}x, median of per-round ratios "
                  f"({min(g['rps'] / lt['rps'] for g, lt in zip(gateway.rounds, litellm.rounds)):.1f}x to "
                  f"{max(g['rps'] / lt['rps'] for g, lt in zip(gateway.rounds, litellm.rounds)):.1f}x; target >= 40x)")
        print(f"gateway / upstream alone requests/s: {gateway.results['rps'] / upstream.results['rps']:.2f}")
        print(f"added p50 at {args.rate:g}/s: {gateway.results['added_p50_ms']:.3f} ms (target < 1 ms); "
              f"RSS growth over {int(gateway.results['rss_requests']):,} requests: "
              f"{gateway.results['rss_growth_mb']:.1f} MB (target < 10 MB)")
        print(f"raw results: {BENCH / 'gateway_vs_litellm.json'}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
    return 0


if __name__ == "__main__":
    import signal

    # A SIGTERM (timeout, Ctrl-C from make) unwinds through `finally`, which stops the servers started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if "--serve-passthrough" in sys.argv:
        sys.argv.remove("--serve-passthrough")
        client = sys.argv.pop(1)
        flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        serve_passthrough(client, int(flags["--port"]), flags["--upstream"])
        sys.exit(0)
    sys.exit(asyncio.run(main()))
