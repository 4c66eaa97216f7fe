"""Real servers for governance tests: Redis, PostgreSQL and gateway processes, each bounded by timeouts."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 10, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class PostgresServer:
    """A throwaway cluster in a temp dir (initdb + pg_ctl), run as the postgres user when we are root."""

    def __init__(self) -> None:
        on_path = shutil.which("initdb")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([on_path] if on_path else [])
        if not found:
            pytest.fail("PostgreSQL server is not installed: `make test` installs it (apt-get install postgresql)")
        bindir = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="llmp-pg-"))
        self.port = free_port()
        prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        self._prefix, self._pg_ctl, self._data = prefix, str(bindir / "pg_ctl"), str(data)
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*prefix, self._pg_ctl, "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w",
                        "-t", "60", "start"], check=True, capture_output=True, timeout=90)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self._prefix, self._pg_ctl, "-D", self._data, "-m", "immediate", "-w", "-t", "30", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


async def new_database(server: PostgresServer, prefix: str) -> str:
    """A fresh, empty database on `server` (one per test: tests never see each other's rows): its DSN."""
    import asyncpg

    name = f"{prefix}_{time.monotonic_ns()}"
    conn = await asyncpg.connect(server.url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


class GatewayProcess:
    """`python -m gateway` in a process of its own, on a free port, its stdout (the JSON log) in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "gw",
                 env: dict[str, str] | None = None) -> None:
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.workdir = workdir
        self.name = name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> GatewayProcess:
        self.runs += 1
        out = open(self.workdir / f"{self.name}.{self.runs}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        out.close()
        wait_port(self.port, timeout, self.proc)
        return self

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"{self.name}.*.log")))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def admin(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        import json

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


class SimProcess:
    """`python -m gateway.sim` in a process of its own (a vLLM pod), its stdout in a file."""

    def __init__(self, workdir: Path, name: str, host: str, port: int, *args: str) -> None:
        self.name, self.host, self.port = name, host, port
        self.out_path = workdir / f"{name}.log"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.sim", "--name", name, "--host", host, "--port", str(port), *args],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 20
        while "serving" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulator {name} did not start: {self.output()}")
            time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> tuple[bytes, float]:
    """Everything a server sends on `sock` until it closes the connection, and when it closed (seconds from now).
    A reset after the answer (a server closing with bytes of ours unread) ends the read, not the test."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started
