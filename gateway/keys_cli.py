"""`llmp keys ...`: virtual keys, teams and spend through a running gateway's admin API (master key only).

    llmp keys generate [--alias A] [--team T] [--models m1,m2] [--max-budget USD] [--budget-duration 30d]
                       [--rpm N] [--tpm N] [--parallel N] [--duration 90d] [--residency eu] [--max-tokens N]
    llmp keys list [--team T]
    llmp keys info KEY_OR_TOKEN
    llmp keys update KEY_OR_TOKEN [same options as generate; `none` clears a limit]
    llmp keys delete KEY_OR_TOKEN... | --alias A...          (alias: revoke)
    llmp keys team-new TEAM_ID [--alias A] [--max-budget ...] [--rpm ...] ...
    llmp keys spend [--by key|team|model|day] [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--key K] [--team T]

Common: --url (default $LLMP_GATEWAY_URL or http://127.0.0.1:4000), --master-key (default $LLMP_MASTER_KEY),
--json (print the API's JSON instead of a table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gateway.exit_codes import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, KEYS_EPILOG

DEFAULT_URL = "http://127.0.0.1:4000"


EPILOG = KEYS_EPILOG


class CliError(Exception):
    """A failure `main` prints as one line, with the exit code it means."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def _whole_number_or_none(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or `none` to clear it)") from None


def _amount_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount in USD (or `none` to clear it)") from None


def _limit_options(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option not given is absent (unchanged on update); `none` given means "clear it".
    keep = argparse.SUPPRESS
    p.add_argument("--alias", dest="alias", default=keep, help="a name for it, unique")
    p.add_argument("--models", default=keep, help="comma-separated model aliases (default: all)")
    p.add_argument("--max-budget", type=_amount_or_none, default=keep, metavar="USD", help="spend cap per period")
    p.add_argument("--budget-duration", default=keep, metavar="PERIOD", help="30s, 10m, 24h, 30d, 1mo")
    p.add_argument("--rpm", type=_whole_number_or_none, default=keep, metavar="N", help="requests per minute")
    p.add_argument("--tpm", type=_whole_number_or_none, default=keep, metavar="N", help="tokens per minute")
    p.add_argument("--parallel", type=_whole_number_or_none, default=keep, metavar="N",
                   help="max parallel requests")
    p.add_argument("--residency", default=keep, metavar="ZONE", help="the only residency zone it may reach")


def _key_options(p: argparse.ArgumentParser) -> None:
    keep = argparse.SUPPRESS
    p.add_argument("--team", default=keep, metavar="TEAM_ID", help="the team it belongs to")
    p.add_argument("--duration", default=keep, metavar="PERIOD", help="expires after: 30d, 24h, ...")
    p.add_argument("--max-tokens", type=_whole_number_or_none, default=keep, metavar="N",
                   help="cap on max_tokens per call")
    p.add_argument("--max-request-bytes", type=_whole_number_or_none, default=keep, metavar="N",
                   help="largest request body")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("LLMP_GATEWAY_URL", DEFAULT_URL),
                        help=f"the gateway's base URL (default: $LLMP_GATEWAY_URL, else {DEFAULT_URL})")
    common.add_argument("--master-key", default=os.environ.get("LLMP_MASTER_KEY"), metavar="KEY",
                        help="the gateway's master key (default: $LLMP_MASTER_KEY)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    p = argparse.ArgumentParser(prog="llmp keys", description="Manage virtual keys through the gateway's admin API",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:  # every command's --help lists the exit codes
        return sub.add_parser(name, parents=[common], help=help, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    gen = command("generate", help="create a key (shown once)")
    _limit_options(gen)
    _key_options(gen)
    upd = command("update", help="change a key's settings")
    upd.add_argument("key")
    _limit_options(upd)
    _key_options(upd)
    upd.add_argument("--block", action="store_true", help="refuse every call with it until --unblock")
    upd.add_argument("--unblock", action="store_true", help="accept calls with it again")
    ls = command("list", help="list live keys")
    ls.add_argument("--team", metavar="TEAM_ID", help="only this team's keys")
    info = command("info", help="one key's settings and spend")
    info.add_argument("key", help="the key, or its token")
    for name in ("delete", "revoke"):
        d = command(name, help="revoke keys (refused on every replica within seconds)")
        d.add_argument("keys", nargs="*", help="keys, or their tokens")
        d.add_argument("--alias", action="append", default=[], dest="aliases", help="revoke the key with this alias")
    team = command("team-new", help="create a team")
    team.add_argument("team_id")
    _limit_options(team)
    spend = command("spend", help="spend per key, team, model or day")
    spend.add_argument("--by", choices=("key", "team", "model", "day"), default="key", help="group by (default key)")
    spend.add_argument("--start", metavar="YYYY-MM-DD", help="first day counted")
    spend.add_argument("--end", metavar="YYYY-MM-DD", help="last day counted")
    spend.add_argument("--key", help="only this key (or token)")
    spend.add_argument("--team", metavar="TEAM_ID", help="only this team")
    return p


def _fields(args: argparse.Namespace, update: bool) -> dict[str, Any]:
    mapping = {"alias": "key_alias", "max_budget": "max_budget", "budget_duration": "budget_duration",
               "rpm": "rpm_limit", "tpm": "tpm_limit", "parallel": "max_parallel_requests", "residency": "residency",
               "team": "team_id", "duration": "duration", "max_tokens": "max_tokens",
               "max_request_bytes": "max_request_bytes"}
    body: dict[str, Any] = {}
    given = set(vars(args))
    for option, field in mapping.items():
        if option in given:
            body[field] = getattr(args, option)
    # "none" clears a limit on update; on generate it just means "no limit".
    if not update:
        body = {k: v for k, v in body.items() if v is not None}
    if getattr(args, "models", None):
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if getattr(args, "block", False):
        body["blocked"] = True
    if getattr(args, "unblock", False):
        body["blocked"] = False
    return body


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.master_key:
        raise CliError("no master key: pass --master-key or set LLMP_MASTER_KEY", EXIT_USAGE)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method, headers={
        "Authorization": f"Bearer {args.master_key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the gateway at {args.url}: {reason}", EXIT_UNREACHABLE) from None


def _shown(value: Any) -> str:
    """A value as a person reads it: `-` for none (not Python's `None`)."""
    return "-" if value is None or value == "" else str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_shown(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    c = args.command
    if c == "generate":
        out = call(args, "POST", "/key/generate", _fields(args, update=False))
        return json.dumps(out, indent=2) if args.json else (
            f"key: {out['key']}\n(shown once: store it now)\ntoken: {out['token_id']}\n"
            f"alias: {_shown(out.get('key_alias'))}\nteam: {_shown(out.get('team_id'))}\n"
            f"expires: {_shown(out.get('expires'))}")
    if c == "update":
        out = call(args, "POST", "/key/update", {"key": args.key, **_fields(args, update=True)})
        return json.dumps(out, indent=2)
    if c == "list":
        query = f"?team_id={urllib.parse.quote(args.team)}" if args.team else ""
        out = call(args, "GET", "/key/list" + query)
        return json.dumps(out, indent=2) if args.json else _table(out["data"], [
            "token", "key_name", "key_alias", "team_id", "max_budget", "budget_duration", "rpm_limit", "tpm_limit",
            "expires"])
    if c == "info":
        return json.dumps(call(args, "GET", "/key/info?key=" + urllib.parse.quote(args.key)), indent=2)
    if c in ("delete", "revoke"):
        if not args.keys and not args.aliases:
            raise CliError("give keys (or tokens) to revoke, or --alias", EXIT_USAGE)
        out = call(args, "POST", "/key/delete", {"keys": args.keys, "key_aliases": args.aliases})
        return json.dumps(out, indent=2) if args.json else "revoked: " + ", ".join(out["deleted_keys"])
    if c == "team-new":
        body = {k: v for k, v in _fields(args, update=False).items() if k != "key_alias"}
        if getattr(args, "alias", None):
            body["team_alias"] = args.alias
        return json.dumps(call(args, "POST", "/team/new", {"team_id": args.team_id, **body}), indent=2)
    if c == "spend":
        params = {"group_by": args.by}
        for name, value in (("start_date", args.start), ("end_date", args.end), ("key", args.key),
                            ("team_id", args.team)):
            if value:
                params[name] = value
        out = call(args, "GET", "/spend/report?" + urllib.parse.urlencode(params))
        if args.json:
            return json.dumps(out, indent=2)
        first = {"key": ["key_alias", "key_token"], "team": ["team_id"], "model": ["model"], "day": ["day"]}[args.by]
        return _table(out["data"], [*first, "requests", "prompt_tokens", "completion_tokens", "spend"]) + \
            f"\ntotal spend: {out['total_spend']:.6f} USD"
    raise CliError(f"unknown command {c}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(run(args))
    except CliError as exc:
        print(f"llmp keys: {exc}", file=sys.stderr)
        return exc.code
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
