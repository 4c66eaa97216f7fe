"""The exit codes of every `llmp` command and the `--help` text that lists them (the infra CLI re-exports them).

Standard library only and in `gateway/`: `llmp gateway` and `llmp keys` run on hosts without the infra extra,
and the gateway never imports `infra`. Shared numbers mean the same thing everywhere: 0 done, 2 something to fix
on the caller's side, named in one message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # the command line, a config or a file it names is wrong: one message names it

# llmp plan / report / reap / catalog (infra/cli.py)
EXIT_POLICY = 1  # a mandatory policy control fails
EXIT_CONFIG = EXIT_USAGE
EXIT_PROGRAM = 3  # the program under the mock engine, or an outside command or API, failed

# llmp gateway (gateway/cli.py, gateway/demo.py)
EXIT_LISTEN = 3  # the port is in use, or binding it is not permitted
EXIT_START = 4  # the port was free, but something the app starts with failed (a spool directory, a store)

# llmp keys (gateway/keys_cli.py)
EXIT_REFUSED = 1  # the gateway answered with an error
EXIT_UNREACHABLE = 3  # the gateway cannot be reached at --url


def epilog(*rows: tuple[int, str]) -> str:
    """`exit codes:` and one aligned line per code, continuation lines indented under the text."""
    lines = ["exit codes:"]
    for code, text in rows:
        lines.append(f"  {code}  " + text.replace("\n", "\n     "))
    return "\n".join(lines)


INFRA_EPILOG = epilog(
    (EXIT_OK, "done (plan: no mandatory policy control fails)"),
    (EXIT_POLICY, "plan: a mandatory policy control fails (the output lists it)"),
    (EXIT_CONFIG, "something to fix on your side, named in one message: the command line, the stack config or a file "
                  "it\nnames, or a part of llm-platform (or the Pulumi CLI) this command needs that is not installed "
                  "here"),
    (EXIT_PROGRAM, "something failed that is not your input: the program under the mock engine (a bug), or an "
                   "outside\ncommand or API (reap's Pulumi CLI, catalog refresh's AWS calls)"),
)
GATEWAY_EPILOG = epilog(
    (EXIT_OK, "stopped cleanly (Ctrl-C or SIGTERM, after draining)"),
    (EXIT_USAGE, "the command line or the config is wrong (one line names the option or field)"),
    (EXIT_LISTEN, "cannot listen on --host:--port (the port is in use, or binding it is not permitted)"),
    (EXIT_START, "the port was free but the gateway could not start (one line names what failed: a spool directory,\n"
                 "a store); what had started is stopped"),
)
KEYS_EPILOG = epilog(
    (EXIT_OK, "done"),
    (EXIT_REFUSED, "the gateway answered with an error (its status and message are printed)"),
    (EXIT_USAGE, "the command line is wrong, or no master key was given"),
    (EXIT_UNREACHABLE, "the gateway cannot be reached at --url"),
)
