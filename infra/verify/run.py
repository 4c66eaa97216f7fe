"""`llmp verify --stack NAME`: every check of a deployed stack, in order, and its exit code (0, 1 fail, 2 usage)."""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from pathlib import Path

import httpx2

from infra.verify.calls import Endpoints, Gateways, chat, health, refused_outside_zone, session
from infra.verify.cluster import cluster_checks
from infra.verify.results import Check, failed, to_json, to_text
from infra.verify.targets import Targets, targets

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
KEY_ENV = "LLMP_VERIFY_KEY"


class UsageError(Exception):
    """Bad usage: said on standard error, exit 2."""


def pairs(values: list[str] | None, flag: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise UsageError(f"{flag}: {value!r} is not {what}")
        out[name] = target
    return out


def check_url(url: str) -> None:
    """An --endpoint URL httpx2 can call: parsed now, so a bad one is a usage error, not a traceback later."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint: {url} is not an http:// or https:// URL")
    try:
        host = httpx2.URL(url).host
    except (httpx2.InvalidURL, ValueError) as exc:
        raise UsageError(f"--endpoint: {url} is not a valid URL ({exc})") from None
    if not host:
        raise UsageError(f"--endpoint: {url} names no host")


def _loopback(url: str) -> bool:
    host = httpx2.URL(url).host
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def known_stacks(root: Path) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def called_hosts(t: Targets) -> list[str]:
    return [*(r.host for r in t.regions), *t.zone_hosts.values(), t.global_host]


def run(t: Targets, kubeconfig: str | None, contexts: dict[str, str], gateways: Gateways,
        timeout: float) -> list[Check]:
    """Per region: its cluster, its gateway's readiness and stores, session affinity, restricted models refused;
    then a chat call through each zone's name and through the global name."""
    checks: list[Check] = []
    for region in t.regions:
        checks += cluster_checks(region, t, kubeconfig, contexts.get(region.name, region.context), timeout)
        own = {r.deployment: r.floor for r in region.releases if r.floor >= 1}
        checks.append(health(gateways, region.name, region.host, own))
        if region.session_model is not None:
            checks.append(session(gateways, region.name, region.host, region.session_model,
                                  next(r.deployment for r in region.releases if r.model == region.session_model)))
        for model, zone in region.restricted_elsewhere:
            checks.append(refused_outside_zone(gateways, region.name, region.host, model, zone))
    for zone, host in t.zone_hosts.items():
        zone_model = t.zone_models.get(zone)
        checks.append(chat(gateways, "zones", host, zone_model, t.deployments(zone_model, zone)) if zone_model else
                      failed("zones", f"chat via {host}", f"no model is served warm in every region of zone {zone}"))
    if t.global_model is not None:
        checks.append(chat(gateways, "global", t.global_host, t.global_model, t.deployments(t.global_model)))
    else:
        checks.append(failed("global", f"chat via {t.global_host}", "no model is served warm in every zone"))
    return checks


def verify(args: argparse.Namespace) -> int:
    """The `verify` command: usage problems exit 2 with one line on standard error, never a traceback."""
    from infra.config import PR_STACK, ROOT, ConfigError, parse, read_stack, read_stack_file, stack_file

    try:
        if args.config_file:
            path = Path(args.config_file)
            stack = args.stack or path.name.removeprefix("Pulumi.").removesuffix(".yaml")
            cfg = parse(read_stack_file(path), stack, str(path))
        else:
            if not (stack_file(args.stack).exists() or PR_STACK.match(args.stack)):
                raise UsageError(f"--stack: no stack {args.stack!r} (no {stack_file(args.stack).name}); stacks: "
                                 f"{', '.join(known_stacks(ROOT))}, or pr-<number> for a pull request's")
            raw, source = read_stack(args.stack)
            cfg = parse(raw, args.stack, source)
        t = targets(cfg)
        contexts = pairs(args.context, "--context", "REGION=CONTEXT")
        unknown = sorted(set(contexts) - {r.name for r in t.regions})
        if unknown:
            raise UsageError(f"--context: {', '.join(unknown)} is not a region of stack {cfg.stack} "
                             f"(regions: {', '.join(r.name for r in t.regions)})")
        endpoints = pairs(args.endpoint, "--endpoint", "NAME=URL")
        hosts = called_hosts(t)
        strays = sorted(n for n in endpoints if n.lower() not in hosts)
        if strays:
            raise UsageError(f"--endpoint: {', '.join(strays)} is not a name verify calls (names: {', '.join(hosts)})")
        for url in endpoints.values():
            check_url(url)
        if not (math.isfinite(args.timeout) and args.timeout > 0):  # inf and nan overflow the socket timeouts
            raise UsageError(f"--timeout: {args.timeout} is not a positive number of seconds")
        key = args.key or os.environ.get(KEY_ENV, "")
        if not key:
            raise UsageError(f"a gateway key is needed for the chat checks: set {KEY_ENV} (or give --key, which "
                             "shows in `ps`)")
    except (UsageError, ConfigError) as exc:
        print(f"llmp verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for url in endpoints.values():
        if url.startswith("http://") and not _loopback(url):
            print(f"llmp verify: warning: {url} is plain http:// off this machine: the key travels in clear",
                  file=sys.stderr)
    gateways = Gateways(Endpoints(endpoints), key, args.timeout)
    try:
        checks = run(t, args.kubeconfig, contexts, gateways, args.timeout)
    finally:
        gateways.close()
    sys.stdout.write(to_json(cfg.stack, checks) if args.format == "json" else to_text(checks))
    return EXIT_OK if all(c.status == "PASS" for c in checks) else EXIT_FAIL
