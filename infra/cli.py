"""`llmp`: the project's one command line (plan, report, gateway, keys, verify).

Only the standard library at module level: a gateway host installs `llm-platform[gateway]` without the
Pulumi SDKs, and `llmp gateway` must still run there. Each command imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_POLICY, EXIT_PROGRAM  # stdlib only, shared with the gateway
from gateway.exit_codes import INFRA_EPILOG as EPILOG

if TYPE_CHECKING:  # imported where they run: these need the Pulumi SDKs
    from infra.plan.cost import CostEstimate
    from infra.plan.run import Plan
    from infra.policy.rules.base import ControlResult

DISTRIBUTION = "llm-platform"
# Top-level modules that only the `infra` extra installs (see pyproject.toml).
INFRA_ONLY_MODULES = frozenset({"pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_policy", "rich", "httpx2"})


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _stack_values(args: argparse.Namespace) -> tuple[dict, str, str]:
    """(llm-platform values, stack name, where they came from) for --stack / --config-file."""
    from infra.config import read_stack, read_stack_file

    if args.config_file:
        path = Path(args.config_file)
        stack = args.stack or path.name.removeprefix("Pulumi.").removesuffix(".yaml")
        return read_stack_file(path), stack, str(path)
    stack = args.stack or "prod"
    raw, source = read_stack(stack)
    return raw, stack, source


def _plan(args: argparse.Namespace) -> tuple[Plan, CostEstimate, list[ControlResult]]:
    """Load, validate and run the stack under the mock engine. Returns (plan, cost, results) or exits."""
    from infra.config import ConfigError
    from infra.plan.cost import HELM_RELEASE, estimate
    from infra.plan.progress import Progress, render_charts
    from infra.plan.run import ProgramError, run_program

    with Progress() as progress:  # the phases on stderr, when it is a terminal
        try:
            raw, stack, source = _stack_values(args)
            progress.phase(f"running the Pulumi program for stack {stack} under the mock engine")
            plan = run_program(raw, stack, source)
        except ConfigError as exc:
            print(f"llmp: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        except ProgramError as exc:
            print(f"llmp: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_PROGRAM) from None
        from infra.policy.rules import evaluate

        progress.phase(f"rendering {len(plan.of_type(HELM_RELEASE))} Helm charts")
        render_charts(plan)
        progress.phase("evaluating policy controls")
        results = evaluate(plan)
    return plan, estimate(plan.resources, plan.config.budget.monthly_usd), results


def cmd_plan(args: argparse.Namespace) -> int:
    from infra.plan import render
    from infra.plan.summary import summarize
    from infra.policy.rules import MANDATORY

    plan, cost, results = _plan(args)
    regions = summarize(plan, cost)
    fmt = {"json": render.to_json, "markdown": render.to_markdown, "table": render.to_table,
           "html": render.to_html}[args.format]
    sys.stdout.write(fmt(plan, regions, cost, results))
    failed = [r for r in results if r.status == "fail" and r.enforcement == MANDATORY]
    return EXIT_POLICY if failed else EXIT_OK


def _write(path: str, text: str, option: str) -> bool:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        print(f"llmp: {option}: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return False
    print(f"wrote {path}", file=sys.stderr)
    return True


def cmd_report(args: argparse.Namespace) -> int:
    from infra.policy.proof_run import ProofRunError, run_proofs
    from infra.policy.report import PICTURES, picture_file, pictures, render_report, verdict
    from infra.policy.rules import CONTROLS

    plan, cost, results = _plan(args)
    if args.topology_svg:  # only the picture (the README's docs/prod-topology.svg is made this way)
        return EXIT_OK if _write(args.topology_svg, pictures(plan, cost).topology, "--topology-svg") else EXIT_CONFIG
    proofs = None
    if args.with_tests:
        print("running the tests that prove the controls…", file=sys.stderr)
        try:
            proofs = run_proofs(t for c in CONTROLS for t in c.proven_by)
        except ProofRunError as exc:
            print(f"llmp: --with-tests: {exc}", file=sys.stderr)
            return EXIT_PROGRAM
    files = None
    if args.output and args.format == "markdown":  # Markdown links its pictures as files beside it
        files = {name: picture_file(Path(args.output).name, name) for name in PICTURES}
    text = render_report(plan, results, args.format, proofs=proofs, picture_files=files)
    if not args.output:
        sys.stdout.write(text)
    elif not _write(args.output, text, "--output"):  # the report first: a path that fails is the one asked for
        return EXIT_CONFIG
    drawn = pictures(plan, cost).named() if files else {}
    for name, file in (files or {}).items():
        if not _write(str(Path(args.output).with_name(file)), drawn[name], "--output"):
            return EXIT_CONFIG
    return EXIT_POLICY if verdict(results, proofs)[1] else EXIT_OK


def cmd_preview_config(args: argparse.Namespace) -> int:
    """Print the Pulumi.<pr-n>.yaml an ephemeral PR stack is created with."""
    import yaml

    from infra.config import (
        NAMESPACE,
        PREVIEW_TEMPLATE,
        ConfigError,
        parse,
        preview_config,
        read_config_map,
        read_stack_file,
        stack_file,
    )

    try:
        now = datetime.fromisoformat(args.now) if args.now else None
    except ValueError as exc:
        print(f"llmp: --now: {exc} (give an ISO time such as 2026-11-23T08:00:00+00:00)", file=sys.stderr)
        return EXIT_CONFIG
    template = stack_file(PREVIEW_TEMPLATE)
    try:
        config_map = read_config_map(template)
        raw = preview_config(read_stack_file(template), args.stack, now)
        parse(raw, args.stack, f"{template} (as {args.stack})")
    except ConfigError as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    others = {k: v for k, v in config_map.items() if not k.startswith(NAMESPACE + ":")}
    config = {**others, **{f"{NAMESPACE}:{k}": v for k, v in raw.items()}}
    sys.stdout.write(f"# Config of the ephemeral stack {args.stack}, made from {template.name} by "
                     f"`llmp preview-config`.\n")
    sys.stdout.write(yaml.safe_dump({"config": config}, sort_keys=False))
    return EXIT_OK


def cmd_deploy_hub_targets(args: argparse.Namespace) -> int:
    """Print the `--target` URN globs of the bootstrap `pulumi up`: the deploy hub's network and runner only."""
    from infra.components.deploy_hub import bootstrap_targets
    from infra.config import ConfigError, parse, read_stack

    try:
        raw, source = read_stack(args.stack)
        cfg = parse(raw, args.stack, source)
    except ConfigError as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for target in bootstrap_targets(cfg.stack, cfg.deploy_hub.name):
        print(f"--target={target}")
    return EXIT_OK


def cmd_reap(args: argparse.Namespace) -> int:
    """Destroy pr-<n> stacks past their expiry (needs the Pulumi CLI, logged in)."""
    import subprocess

    from infra.reaper import reap, summary

    now = datetime.now(UTC)
    try:
        verdicts = reap(now, args.dry_run)
    except FileNotFoundError:
        print("llmp: reap needs the Pulumi CLI on PATH", file=sys.stderr)
        return EXIT_CONFIG
    except subprocess.CalledProcessError as exc:
        print(f"llmp: `{' '.join(exc.cmd)}` failed:\n{exc.stderr}", file=sys.stderr)
        return EXIT_PROGRAM
    except RuntimeError as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        return EXIT_PROGRAM
    sys.stdout.write(summary(verdicts, args.dry_run))
    return EXIT_PROGRAM if any(v.failed for v in verdicts) else EXIT_OK


def cmd_ci_role(args: argparse.Namespace) -> int:
    """Print the trust and permission policies of a GitHub Actions deploy role."""
    import json

    from infra.ci_access import ci_roles, image_push_role
    from infra.config import ConfigError, load_file, stack_file

    if not (args.account_id.isdigit() and len(args.account_id) == 12):
        print("llmp: --account-id: an AWS account id is 12 digits", file=sys.stderr)
        return EXIT_CONFIG
    if args.repository.count("/") != 1:
        print("llmp: --repository: give it as <owner>/<name>", file=sys.stderr)
        return EXIT_CONFIG
    try:
        preview, prod = load_file(stack_file("preview"), "preview"), load_file(stack_file("prod"), "prod")
    except ConfigError as exc:
        print(f"llmp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    roles = {**ci_roles(args.account_id, args.repository, preview.gateway.domain, prod.gateway.domain),
             "gateway-image": image_push_role(args.account_id, args.repository)}
    print(json.dumps(roles[args.role], indent=2))
    return EXIT_OK


def cmd_catalog_refresh(args: argparse.Namespace) -> int:
    """Rebuild infra/catalog.yaml's EC2 facts from AWS's APIs (needs AWS credentials)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from infra.catalog import CATALOG_FILE
    from infra.catalog_refresh import refresh

    session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
    output = Path(args.output) if args.output else CATALOG_FILE
    try:
        doc = refresh(session, CATALOG_FILE, output, regions=args.region or None)
    except (BotoCoreError, ClientError, RuntimeError) as exc:
        print(f"llmp: catalog refresh failed, {output} is unchanged: {exc}", file=sys.stderr)
        return EXIT_PROGRAM
    from infra.plan.readme_numbers import COMMAND as README_COMMAND

    # New prices move the prod plan's cost, which README.md states (tests/infra/test_readme.py checks it).
    print(f"wrote {output} (as of {doc['as_of']}, {len(doc['regions'])} regions, {len(doc['instances'])} "
          f"instance types)\nREADME.md states the prod plan's cost: rewrite its numbers with `{README_COMMAND}`",
          file=sys.stderr)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a stack after `pulumi up`: clusters, gateways, chat, sessions, residency (infra/verify/)."""
    from infra.verify.run import verify

    return verify(args)


def _add_stack_args(p: argparse.ArgumentParser, stack_required: bool = False) -> None:
    p.add_argument("--stack", required=stack_required,
                   help="stack name: reads Pulumi.<stack>.yaml (default: prod, or the --config-file's name)")
    p.add_argument("--config-file", help="a Pulumi.<stack>.yaml to plan instead of the stack's own file")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmp", description="llm-platform: plan, report and run the LLM serving platform",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"llmp {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="offline plan of a stack: resources, cost, policy controls")
    _add_stack_args(plan)
    plan.add_argument("--format", choices=["table", "json", "markdown", "html"], default="table",
                      help="table (default: for a terminal), json (only JSON on stdout), markdown (a PR comment) "
                           "or html (with its pictures)")
    plan.set_defaults(func=cmd_plan)

    report = sub.add_parser("report", help="compliance report of a stack's policy controls; exits 1 when a "
                                           "mandatory control fails (or, with --with-tests, a proof test fails)")
    _add_stack_args(report)
    report.add_argument("--format", choices=["markdown", "html"], default="markdown",
                        help="html carries its pictures inline; markdown links them as SVG files beside --output")
    report.add_argument("--output", "-o", help="write to this file instead of standard output")
    report.add_argument("--with-tests", action="store_true",
                        help="run the tests that prove each control (pytest, from a checkout) and show their results")
    report.add_argument("--topology-svg", metavar="PATH",
                        help="write only the topology picture of the stack's plan to PATH (no report)")
    report.set_defaults(func=cmd_report)

    preview = sub.add_parser("preview-config", help="print the config of an ephemeral pr-<number> stack")
    preview.add_argument("stack", help="the stack, pr-<pull request number>")
    preview.add_argument("--now", help="ISO time the expiry counts from (default: now)")
    preview.set_defaults(func=cmd_preview_config)

    hub = sub.add_parser("deploy-hub-targets", help="--target globs of the bootstrap `pulumi up` (deploy runner only)")
    hub.add_argument("stack", help="the stack (prod, or pr-<number>)")
    hub.set_defaults(func=cmd_deploy_hub_targets)

    reaper = sub.add_parser("reap", help="destroy ephemeral pr-<number> stacks past their expiry")
    reaper.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    reaper.set_defaults(func=cmd_reap)

    ci_role = sub.add_parser("ci-role", help="IAM trust and permission policies for a GitHub deploy role")
    ci_role.add_argument("role", choices=["preview", "prod", "gateway-image"])
    ci_role.add_argument("--account-id", required=True, help="the AWS account the stacks live in")
    ci_role.add_argument("--repository", required=True, help="the GitHub repository, <owner>/<name>")
    ci_role.set_defaults(func=cmd_ci_role)

    catalog = sub.add_parser("catalog", help="the world facts snapshot (infra/catalog.yaml)")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    refresh = catalog_sub.add_parser("refresh", help="rebuild the EC2 facts from AWS's APIs (needs credentials)")
    refresh.add_argument("--region", action="append", help="a region to read (repeat; default: the snapshot's)")
    refresh.add_argument("--profile", help="AWS profile to use (default: the usual credential chain)")
    refresh.add_argument("--output", "-o", help="write here instead of infra/catalog.yaml")
    refresh.set_defaults(func=cmd_catalog_refresh)

    check = sub.add_parser("verify", help="check a deployed stack after `pulumi up` (clusters, gateways, chat)")
    check.add_argument("--stack", required=True, help="the stack: reads Pulumi.<stack>.yaml")
    check.add_argument("--config-file", help="a Pulumi.<stack>.yaml to read instead of the stack's own file")
    check.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    check.add_argument("--context", action="append", metavar="REGION=NAME",
                       help="kube context of a region (repeat; default: the cluster's name, llmp-<stack>-<region>)")
    check.add_argument("--endpoint", action="append", metavar="NAME=URL",
                       help="call this URL for a gateway DNS name (repeat; default: https://NAME)")
    check.add_argument("--key", help="gateway key for the chat calls; prefer setting $LLMP_VERIFY_KEY (a flag shows "
                                      "in `ps` to every user of the machine); never printed")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")
    check.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or json")
    check.set_defaults(func=cmd_verify)

    for name, command in sub.choices.items():  # every command's --help says what its exit code means
        if name != "report":  # report's exit codes are its own (see `llmp report --help`)
            command.epilog, command.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    sub.add_parser("gateway", help="run the OpenAI-compatible gateway (see `llmp gateway --help`)", add_help=False)
    sub.add_parser("keys", help="virtual keys, teams and spend on a running gateway (see `llmp keys --help`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gateway"]:
        from gateway.cli import main as gateway_main

        return gateway_main(argv[1:])
    if argv[:1] == ["keys"]:
        from gateway.keys_cli import main as keys_main

        return keys_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SystemExit as exc:
        return int(exc.code or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in INFRA_ONLY_MODULES:
            raise
        print(f"llmp {args.command}: needs the infra part of {DISTRIBUTION}, which is not installed here "
              f"(no module {exc.name!r}); install it with: pip install '{DISTRIBUTION}[infra]'", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
