"""The gateway part installs what the gateway imports and nothing of the Pulumi SDKs."""
from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions

from tests.packaging.deps import LOCK_ALL, LOCK_GATEWAY, PULUMI_SDKS, ROOT, lock_pins, normalize, part


def test_gateway_part_asks_for_no_pulumi_sdk() -> None:
    names = {r.name for r in part({"gateway"})}
    assert names & PULUMI_SDKS == set()
    assert "aiohttp" in names and "asyncpg" in names


def test_infra_and_test_parts_do_ask_for_every_pulumi_sdk() -> None:
    assert {r.name for r in part({"infra"})} >= PULUMI_SDKS
    everything = {r.name for r in part({"test"})}
    assert everything >= PULUMI_SDKS and {r.name for r in part({"gateway"})} <= everything


def test_gateway_lock_holds_no_pulumi_sdk_nor_what_only_they_need() -> None:
    gateway = set(lock_pins(LOCK_GATEWAY))
    assert not {n for n in gateway if n.startswith("pulumi")}
    assert "grpcio" in lock_pins(LOCK_ALL) and "grpcio" not in gateway


def _third_party_imports(package_dir) -> dict[str, str]:
    """{top-level module: first file importing it} for every non-stdlib, non-project import under package_dir."""
    found: dict[str, str] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in {"gateway", "__future__"}:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_gateway_lock_installs_every_module_the_gateway_imports() -> None:
    dists = packages_distributions()
    locked = set(lock_pins(LOCK_GATEWAY))
    missing = {module: where for module, where in _third_party_imports(ROOT / "gateway").items()
               if not {normalize(d) for d in dists.get(module, [module])} & locked}
    assert missing == {}, "the gateway imports these (first importer shown) but its part does not install them"
