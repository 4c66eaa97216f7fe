"""The gateway's shape: no import cycle among its modules, no module over 400 lines.

Static analysis with `ast`: every import counts, wherever it stands (module level,
inside a function, under `if TYPE_CHECKING:`), since an import moved into a function
or behind TYPE_CHECKING to dodge a cycle still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def gateway_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules.get(name, Path()).name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The gateway modules `name` imports, resolved to modules (`from pkg import mod` names `pkg.mod`)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                package = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import gateway.x.y` of an attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = gateway_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle_among_gateway_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (every import counts, function-level and TYPE_CHECKING ones too):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_no_gateway_module_over_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in gateway_modules().items()}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): {long}"


def test_the_analysis_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle through a function-level import and one through TYPE_CHECKING are both found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": set()}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway.x import X\n"
        "def f():\n    from gateway import y\n    import gateway.z.w\n"
    )
    path = tmp_path / "m.py"
    path.write_text(source)
    modules = {name: Path(name) for name in ("gateway", "gateway.x", "gateway.y", "gateway.z", "gateway.m")}
    assert imports_of("gateway.m", path, modules) == {"gateway.x", "gateway.y", "gateway.z"}


def test_no_two_functions_repeat_the_same_body() -> None:
    """A body written twice (docstrings aside, six lines or more) drifts apart when one copy is fixed: fold it."""
    bodies: dict[str, list[str]] = {}
    for name, path in gateway_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (node.end_lineno or 0) - node.lineno < 5:
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            bodies.setdefault(ast.dump(ast.Module(body=body, type_ignores=[])), []).append(f"{name}.{node.name}")
    repeated = [names for names in bodies.values() if len(names) > 1]
    assert not repeated, f"the same body in several functions: {repeated}"
