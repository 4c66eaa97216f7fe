"""Runs LiteLLM's own proxy test files, unmodified, against the gateway: the files listed in `files.txt`, read
from `$LITELLM_TESTS_DIR`, with only their base URL rewritten, and one gateway process for the whole run started
from a LiteLLM config.yaml (master key `sk-1234`, accepted with `--dev`), PostgreSQL and the simulator behind it.

LiteLLM's tests are not copied into this repository (README.md beside this file says why), so without
`$LITELLM_TESTS_DIR` this directory collects nothing; `test_runner.py` proves the runner itself in every run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway.litellm_proxy_tests.conftest import litellm_config
from tests.gateway.servers import ROOT, PostgresServer, SimProcess, free_port, wait_port

HERE = Path(__file__).parent
ENV = "LITELLM_TESTS_DIR"
# LiteLLM's tests call its proxy at one fixed address (CI starts it with `litellm --port 4000`); that address,
# and nothing else in the file, is rewritten to the gateway's.
PROXY_ADDRESS = re.compile(r"http://(?:0\.0\.0\.0|localhost|127\.0\.0\.1):4000")

# Left out, each with its reason (README.md mirrors this list): real providers, LiteLLM-only parameters,
# LiteLLM's CI database, or a wait far beyond this suite's time.
LEFT_OUT: dict[str, str] = {
    "test_openai_endpoints.py::test_chat_completion_old_key": "a key that exists only in LiteLLM's CI database",
    "test_users.py::test_users_budgets_reset": "skipped upstream; sleeps 70 s up to three times",
    "test_team.py::test_team_alias": "LiteLLM-only team `model_aliases` (accepted and reported in `ignored_fields`, "
                                     "not applied)",
    "test_team.py::test_users_in_team_budget": "LiteLLM-only per-member budgets (`/team/member_update` with "
                                               "`max_budget_in_team`) and a 90 s wait for LiteLLM's spend queue",
    "test_team.py::test_team_member_add_email": "imports `tests.test_users` from LiteLLM's own repository layout",
    "test_end_users.py::test_end_user_specific_region": "LiteLLM-only `allowed_model_region` on a model "
                                                        "(`gpt-3.5-turbo-end-user-test`) with a region, "
                                                        "answered in `x-litellm-model-region`",
}

# Real differences of the gateway from LiteLLM's key API, each expected to fail until the gateway is changed.
DIFFERENCES: dict[str, str] = {
    "test_team.py::test_team_update_sc_2": "LiteLLM also makes the caller (the master key's user) a member of a team "
                                           "it creates, so it counts 12 members; the gateway keeps the 11 it was "
                                           "given",
    "test_team.py::test_team_delete": "no POST /team/delete (404)",
    "test_end_users.py::test_end_user_new": "no POST /end_user/new (end users are not built)",
    "test_end_users.py::test_enduser_tpm_limits_non_master_key": "no POST /budget/new, no /end_user/new: the "
                                                                 "end user's tpm_limit is not enforced",
    "test_end_users.py::test_enduser_tpm_limits_with_master_key": "no POST /budget/new, no /end_user/new: the "
                                                                  "end user's tpm_limit is not enforced",
}


def _listed() -> list[str]:
    lines = (line.strip() for line in (HERE / "files.txt").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class LiteLLMTestFiles(pytest.File):
    """`files.txt`: each LiteLLM file it names, from $LITELLM_TESTS_DIR, rewritten to the gateway's address."""

    def collect(self) -> Iterable[pytest.Module]:
        source = os.environ.get(ENV)
        if not source:
            return []
        tests_dir = Path(source)
        missing = [name for name in _listed() if not (tests_dir / name).is_file()]
        if missing:
            raise pytest.UsageError(f"{ENV}={source}: no {', '.join(missing)} there (LiteLLM's tests/ directory?)")
        copies = Path(tempfile.mkdtemp(prefix="litellm-tests-"))
        self.config.add_cleanup(lambda: shutil.rmtree(copies, ignore_errors=True))
        address = f"http://127.0.0.1:{proxy_port(self.config)}"
        modules = []
        for name in _listed():
            (copies / name).write_text(PROXY_ADDRESS.sub(address, (tests_dir / name).read_text()))
            modules.append(pytest.Module.from_parent(self, path=copies / name))
        return modules


PORT = pytest.StashKey[int]()


def proxy_port(config: pytest.Config) -> int:
    if PORT not in config.stash:
        config.stash[PORT] = free_port()
    return config.stash[PORT]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path == HERE / "files.txt":
        return LiteLLMTestFiles.from_parent(parent, path=file_path)
    return None


def upstream_name(item: pytest.Item) -> str:
    return f"{item.path.name}::{item.name}"


def from_litellm(item: pytest.Item) -> bool:
    return isinstance(item.parent, pytest.Module) and isinstance(item.parent.parent, LiteLLMTestFiles)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        if not from_litellm(item):
            kept.append(item)
        elif upstream_name(item) in LEFT_OUT:
            dropped.append(item)
        else:
            if upstream_name(item) in DIFFERENCES:
                item.add_marker(pytest.mark.xfail(strict=True, reason=DIFFERENCES[upstream_name(item)]))
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def litellm_proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway where LiteLLM's tests look for their proxy, as LiteLLM's CI runs it: one process for the run."""
    workdir = tmp_path_factory.mktemp("litellm-proxy")
    postgres = PostgresServer()
    sim = SimProcess(workdir, "sim", "127.0.0.1", free_port())
    port = proxy_port(request.config)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(litellm_config(sim.base_url, postgres.url)))
    gateway: subprocess.Popen[Any] | None = None
    try:
        with open(workdir / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config_path), "--host", "127.0.0.1",
                 "--port", str(port), "--dev"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_port(port, 30, gateway)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in (gateway, sim.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        postgres.stop()


@pytest.fixture(autouse=True)
def _proxy_for_litellm_tests(request: pytest.FixtureRequest) -> None:
    # LiteLLM's tests take no fixture (they find the proxy at its address), so the proxy is brought in here.
    if from_litellm(request.node):
        request.getfixturevalue("litellm_proxy")
