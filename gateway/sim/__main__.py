"""Command line of the simulator: `python -m gateway.sim --port 8001 --ttft 0.05 --tokens-per-s 50`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gateway.sim.server import FAULTS, SimServer, SimSettings
from gateway.sim.structured import MISBEHAVIOURS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.sim", description="vLLM-compatible model server simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="serve only this model name (repeatable), as vLLM's --served-model-name; other "
                             "names get vLLM's 404. Default: any name a request gives (listed as sim-model)")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="stream pace; 0 = all at once")
    parser.add_argument("--output-tokens", type=int, default=8)
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--name", default="sim")
    parser.add_argument("--legacy-errors", action="store_true",
                        help="answer faults in older vLLM's flat error shape ({\"object\": \"error\", ...})")
    parser.add_argument("--misbehave", action="append", default=[], metavar="MODEL=KIND",
                        help=f"answer requests for MODEL (* for any) as a weak model does, KIND one of "
                             f"{', '.join(MISBEHAVIOURS)} (repeatable): what a ladder escalates on")
    parser.add_argument("--shutdown-timeout", type=float, default=0.0,
                        help="on SIGTERM, as vLLM's flag: refuse new requests (503) and let those in flight "
                             "finish for up to this many seconds; 0 (vLLM's default) aborts them")
    args = parser.parse_args(argv)
    misbehave = {}
    for item in args.misbehave:
        model, _, kind = item.partition("=")
        if not model or kind not in MISBEHAVIOURS:
            parser.error(f"--misbehave {item!r}: expected MODEL=KIND, KIND one of {', '.join(MISBEHAVIOURS)}")
        misbehave[model] = kind
    settings = SimSettings(
        models=tuple(args.model or ["sim-model"]),
        any_model=not args.model,
        ttft=args.ttft,
        tokens_per_s=args.tokens_per_s,
        output_tokens=args.output_tokens,
        fault=args.fault,
        name=args.name,
        legacy_errors=args.legacy_errors,
        misbehave=misbehave,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is a dependency; plain asyncio still works
        pass

    async def serve() -> None:
        server = SimServer(settings, args.host, args.port)
        server.sim._keep = 0  # long runs keep no request bodies
        await server.start()
        serving = "any model name" if settings.any_model else ", ".join(settings.models)
        print(f"simulator {args.name} serving {serving} at {server.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # vLLM treats both alike
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        admission = server.sim.admission
        print(f"simulator {args.name} draining: {admission.in_flight} in flight, new requests refused, "
              f"up to {args.shutdown_timeout:g}s", flush=True)
        aborted = await server.drain(args.shutdown_timeout)
        print(f"simulator {args.name} stopped: {admission.finished_in_drain} finished while draining, "
              f"{aborted} aborted, {admission.refused} refused", flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
