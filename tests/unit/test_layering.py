"""The import rules of DESIGN.md's map, read from the source (ast), so that they stay true.

- ``protocol`` (wire shapes) imports no repository, scheduling, engine or server code:
  codecs read the engine's objects through the Protocols of ``protocol.types``.
- ``repository`` imports no protocol or server code (nor what sits above it: the
  engine, the data plane, the warm-up that decodes a V2 request).
- No module imports a private name (``_x``) from another module.
- Only the engine reads its registry (``engine.registry``): the rest ask the engine.
- Exactly one place records a request's metrics and access-log line (the data plane).

Type-only imports (under ``TYPE_CHECKING``) count: a layer that names another's types
depends on it. What breaks a rule today is listed below, each with its reason; an entry
that no longer matches anything fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "ligeiro"

# Per layer, the modules (and packages) it must not import.
FORBIDDEN = {
    "ligeiro.protocol": (
        "ligeiro.repository",
        "ligeiro.scheduling",
        "ligeiro.engine",
        "ligeiro.dataplane",
        "ligeiro.server",
    ),
    "ligeiro.repository": (
        "ligeiro.protocol",
        "ligeiro.server",
        "ligeiro.engine",
        "ligeiro.dataplane",
        "ligeiro.warmup",
    ),
}

# (importing module, imported module): why it is allowed for now.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}

# (importing module, imported module, name): why it is allowed for now.
PRIVATE_EXCEPTIONS: dict[tuple[str, str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_generated" not in p.parts)


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """Each ligeiro module ``path`` imports, with the name taken from it (``from m import
    name``; None for ``import m``)."""
    module = _module_name(path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "ligeiro"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] == "ligeiro":
                found += [(target, a.name) for a in node.names]
    return found


def _is_module(name: str) -> bool:
    """Whether ``name`` (dotted) is a module or package of the source tree."""
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer_breaks() -> dict[tuple[str, str], int]:
    breaks: dict[tuple[str, str], int] = {}
    for path in _sources():
        module = _module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for target, name in _imports(path):
                full = f"{target}.{name}" if name and _is_module(f"{target}.{name}") else target
                if any(full == f or full.startswith(f + ".") for f in forbidden):
                    breaks[(module, full)] = breaks.get((module, full), 0) + 1
    return breaks


def _private_imports() -> set[tuple[str, str, str]]:
    found = set()
    for path in _sources():
        module = _module_name(path)
        for target, name in _imports(path):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if _is_module(f"{target}.{name}"):
                continue  # a private module of the package: importing it is what it is for
            found.add((module, target, name))
    return found


def test_the_rules_see_the_imports() -> None:
    """The parser finds what is known to be there, relative and absolute imports alike."""
    engine = {t for t, _ in _imports(PACKAGE / "engine.py")}
    assert "ligeiro.repository.registry" in engine
    codec = _imports(PACKAGE / "protocol" / "codec.py")
    assert ("ligeiro.protocol.types", "TensorSpecLike") in codec


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    breaks = {
        pair
        for pair in _layer_breaks()
        if pair[0] == layer or pair[0].startswith(layer + ".")
    }
    unexpected = sorted(breaks - LAYER_EXCEPTIONS.keys())
    assert not unexpected, f"{layer} imports what it must not: {unexpected}"


def test_no_private_name_is_imported_from_another_module() -> None:
    unexpected = sorted(_private_imports() - PRIVATE_EXCEPTIONS.keys())
    assert not unexpected, f"private names imported across modules: {unexpected}"


def test_every_exception_is_still_needed() -> None:
    """An entry whose import is gone is removed, so the allow-lists only shrink."""
    stale = sorted(LAYER_EXCEPTIONS.keys() - _layer_breaks().keys())
    stale += sorted(PRIVATE_EXCEPTIONS.keys() - _private_imports())
    assert not stale, f"allow-list entries that match nothing any more: {stale}"


def _calls(attribute: str) -> list[str]:
    """Where ``….attribute(…)`` is called: ``module:line`` each."""
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == attribute
            ):
                found.append(f"{_module_name(path)}:{node.lineno}")
    return found


def test_only_the_engine_reads_its_registry() -> None:
    reach = []
    for path in _sources():
        if _module_name(path) == "ligeiro.engine":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "registry":
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name.endswith("engine"):
                    reach.append(f"{_module_name(path)}:{node.lineno}")
    assert not reach, f"reaching through engine.registry: {reach}"


def test_one_place_records_a_request() -> None:
    """Metrics and the access log see each request once, from ``DataPlane._observe``."""
    observed = _calls("observe_request")
    logged = [c for c in _calls("record") if c.startswith("ligeiro.dataplane:")]
    assert len(observed) == 1 and observed[0].startswith("ligeiro.dataplane:"), observed
    assert len(logged) == 1, logged
    assert not [c for c in _calls("record") if c.startswith("ligeiro.server")], "a transport logs"
