"""`llmp gateway` start-up: what binds, what is refused, and how a failure is reported (one line, its exit code)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.exit_codes import EXIT_LISTEN, EXIT_START, EXIT_USAGE
from gateway.server import CannotListen, listen_socket
from tests.gateway.conftest import KEY as KEY_FOR_CLI
from tests.ports import free_port


def gateway_config(tmp_path: Path, **extra: object) -> Path:
    doc = {"version": 1, "gateway": {"master_key": KEY_FOR_CLI},
           "models": [{"alias": "m", "deployments": [{"name": "d", "model": "m", "api_base": "http://x/v1"}]}],
           **extra}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_gateway(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "dev", "-m", "gateway", *argv], capture_output=True, text=True,
                          timeout=60, env=env if env is not None else dict(os.environ))


def test_a_start_up_failure_after_the_port_is_bound_is_named_as_such_and_leaves_nothing_open(tmp_path) -> None:
    # The ledger's spool directory cannot be made: that is not "cannot listen". -X dev makes aiohttp report an
    # upstream session left open ("Unclosed client session"); the app's _stop closes it after a failed start.
    config = gateway_config(tmp_path, ledger={"store": f"sqlite:///{tmp_path / 'ledger.db'}",
                                              "spool_dir": "/proc/nope/spool"})
    result = run_gateway("--config", str(config), "--host", "127.0.0.1", "--port", str(free_port()))
    assert result.returncode == EXIT_START == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llmp gateway: cannot start: ") and "/proc/nope" in last, result.stderr
    assert "cannot listen" not in result.stderr
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr


def test_only_a_bind_failure_is_cannot_listen() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CannotListen) as err:
            listen_socket("127.0.0.1", busy.getsockname()[1], False)
    assert isinstance(err.value, OSError) and err.value.strerror == "Address already in use"
    with pytest.raises(CannotListen):
        listen_socket("no-such-host.invalid", 0, False)


def test_every_address_a_host_name_resolves_to_is_bound() -> None:
    # asyncio's create_server binds every getaddrinfo result (Lib/asyncio/base_events.py, create_server); so must
    # the socket bound before the app starts, or `--host localhost` answers on 127.0.0.1 and refuses ::1.
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6: the test needs ::1")
    port = free_port()
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    socks = listen_socket("localhost", port, False)
    try:
        bound = {s.getsockname()[0] for s in socks}
        assert bound == resolved and len(socks) == len(resolved)
        for s in socks:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in socks:
            s.close()


def test_dev_listens_on_this_machine_and_a_published_key_is_refused_beyond_it(tmp_path) -> None:
    from gateway.cli import parser

    config = gateway_config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["gateway"]["master_key"] = "sk-local-dev-key"  # gateway/README.md's recipe, with --dev
    config.write_text(yaml.safe_dump(doc))
    result = run_gateway("--config", str(config), "--dev", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("llmp gateway: config error: ")
    assert "--host 0.0.0.0: gateway.master_key is 16 characters; at least 32 are required; --dev accepts example and " \
           "short keys on this machine only" in result.stderr
    from gateway.http.auth import check_master_key_on

    check_master_key_on("127.0.0.1", "sk-local-dev-key", dev=True)  # the README recipe, on its default host
    check_master_key_on("::1", "sk-local-dev-key", dev=True)
    args = parser().parse_args(["--config", str(config), "--dev"])
    assert args.host is None  # resolved to 127.0.0.1 with --dev (and --demo), 0.0.0.0 otherwise
    from gateway.cli import default_host

    assert default_host(args) == "127.0.0.1"
    assert default_host(parser().parse_args(["--config", str(config)])) == "0.0.0.0"


def test_a_port_in_use_is_still_cannot_listen(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_gateway("--config", str(gateway_config(tmp_path)), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == EXIT_LISTEN, result.stderr
