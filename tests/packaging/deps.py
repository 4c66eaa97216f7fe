"""Read the dependency lists of pyproject.toml and the lock files, offline, for the packaging tests."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK_ALL = ROOT / "requirements" / "all.lock"
LOCK_GATEWAY = ROOT / "requirements" / "gateway.lock"
PULUMI_SDKS = {"pulumi", "pulumi-aws", "pulumi-kubernetes", "pulumi-policy"}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(?:==\s*([^;\s]+))?\s*(?:;\s*(.*))?$")
_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name: what pip and uv compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    name: str            # normalized
    extras: frozenset[str]
    version: str | None  # the `==` pin, or None
    marker: str | None


def parse_requirement(text: str) -> Requirement:
    m = _REQUIREMENT.match(text)
    if not m:
        raise ValueError(f"pyproject.toml: cannot read requirement {text!r} "
                         f"(write it as name[extras]==version; marker)")
    extras = frozenset(e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip())
    return Requirement(normalize(m.group(1)), extras, m.group(3), m.group(4))


def project(pyproject: Path = PYPROJECT) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def part(extras: set[str], pyproject: Path = PYPROJECT) -> list[Requirement]:
    """What `pip install .[extras]` asks for: the base plus each extra, following `llm-platform[...]` references."""
    proj = project(pyproject)
    own, optional = normalize(proj["name"]), proj.get("optional-dependencies", {})
    wanted, seen, out = set(extras), set(), [parse_requirement(r) for r in proj.get("dependencies", [])]
    while wanted - seen:
        extra = (wanted - seen).pop()
        seen.add(extra)
        if extra not in optional:
            raise KeyError(f"pyproject.toml: optional-dependencies has no extra {extra!r}")
        for req in map(parse_requirement, optional[extra]):
            if req.name == own:
                wanted |= req.extras
            else:
                out.append(req)
    return out


def every_extra(pyproject: Path = PYPROJECT) -> set[str]:
    return set(project(pyproject).get("optional-dependencies", {}))


def lock_pins(lock: Path) -> dict[str, str]:
    """{normalized name: version} of every package a uv/pip-compile lock pins."""
    return {normalize(m.group(1)): m.group(2) for m in map(_LOCK_LINE.match, lock.read_text().splitlines()) if m}


def lock_entries(lock: Path) -> dict[str, str]:
    """{normalized name: the whole entry text (pin, markers, hashes, `# via` lines)}."""
    entries: dict[str, str] = {}
    current = None
    for line in lock.read_text().splitlines():
        m = _LOCK_LINE.match(line)
        if m:
            current = normalize(m.group(1))
            entries[current] = line
        elif current and line.startswith((" ", "\t")):
            entries[current] += "\n" + line
    return entries


def locked_as_top_level(lock: Path) -> set[str]:
    """Packages the lock says it holds because pyproject.toml asks for them."""
    return {name for name, text in lock_entries(lock).items() if "llm-platform (pyproject.toml)" in text}


def stale(pyproject: Path, lock: Path, extras: set[str]) -> list[str]:
    """Every way the lock disagrees with pyproject.toml for that part; empty when it is current."""
    pins, wanted = lock_pins(lock), part(extras, pyproject)
    problems = []
    for req in wanted:
        if req.name not in pins:
            problems.append(f"{req.name}: in pyproject.toml, missing from {lock.name}")
        elif req.version and pins[req.name] != req.version:
            problems.append(f"{req.name}: pyproject.toml pins {req.version}, {lock.name} has {pins[req.name]}")
    for name in sorted(locked_as_top_level(lock) - {r.name for r in wanted}):
        problems.append(f"{name}: {lock.name} holds it for pyproject.toml, which no longer asks for it")
    return problems
