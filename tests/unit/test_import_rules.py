"""The layers import one way: contract <- engine <- worker, contract <- service; read off the source.

Each rule is checked on the transitive closure of a package's imports through our own modules, so a
contract module that pulled in RQ would break the engine's rule too.
"""

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("contract", "engine", "service", "worker", "cli")


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(name: str) -> frozenset[str]:
    """Every module name `name`'s file imports, at any depth of its code (lazy imports too)."""
    file = _module_file(name)
    if file is None:
        return frozenset()
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(found)


def _closure(package: str) -> dict[str, str]:
    """Every module reachable from `package`'s modules through our own modules: name -> importer."""
    start = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / package).rglob("*.py")
    ]
    seen: dict[str, str] = {name: "" for name in start}
    todo = list(start)
    while todo:
        name = todo.pop()
        for imported in _imports(name):
            if imported in seen:
                continue
            seen[imported] = name
            if imported.split(".")[0] in OURS and _module_file(imported):
                todo.append(imported)
    return seen


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{importer} imports {name}"
        for name, importer in _closure(package).items()
        if importer and name.split(".")[0] in forbidden
    )


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("engine", ("service", "worker", "cli", "redis", "rq", "fastapi", "starlette", "uvicorn")),
        (
            "contract",
            ("engine", "service", "worker", "cli", "torch", "fastapi", "starlette", "prometheus_client"),
        ),
        ("service", ("engine", "worker", "cli", "torch")),
        ("worker", ("service", "cli", "fastapi", "starlette")),
    ],
)
def test_each_layer_imports_only_what_is_below_it(package, forbidden):
    assert _offenders(package, forbidden) == []


def test_the_rules_see_a_violation():
    """The closure follows our modules: a contract module importing RQ reaches the engine's rule."""
    closure = _closure("service")
    assert "rq" in {name.split(".")[0] for name in closure}, "service reaches RQ through contract.queue"
