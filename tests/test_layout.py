"""Project layout rules: core/ never imports streamlit; app.py only builds navigation; imports point
one way (core/analysis is pure array functions, the service depends on the Ray backend and not back);
no part of core/service/ is over 700 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by full dotted name, function-local imports included
    (``from core import service`` gives ``core`` and ``core.service``; relative imports resolved)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def _importing(paths, banned: tuple[str, ...]) -> dict[str, list[str]]:
    """``{file: [banned modules it imports]}`` for the files that import any of ``banned``."""
    out = {}
    for p in paths:
        found = sorted(m for m in _modules(p) if any(m == b or m.startswith(b + ".") for b in banned))
        if found:
            out[str(p.relative_to(ROOT))] = found
    return out


def test_core_never_imports_streamlit():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py") if "streamlit" in _imports(p)]
    assert offenders == [], f"core/ must not import streamlit: {offenders}"


def test_top_level_layout():
    for name in ("app.py", "pages", "core", "cache", "tests", "requirements.txt", "README.md", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_torch_load_always_weights_only():
    for p in list((ROOT / "core").rglob("*.py")) + list((ROOT / "pages").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" \
                    and getattr(getattr(node.func, "value", None), "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, \
                    f"{p}:{node.lineno} torch.load without weights_only=True"


def test_analysis_is_pure_array_functions():
    """core/analysis knows nothing of models, data sets, stored features, the service or Ray:
    callers hand it arrays (and, for the sharded reducers, their per-shard map step)."""
    banned = ("core.distributed", "core.service", "core.extraction", "core.models", "core.datasets")
    offenders = _importing(sorted((ROOT / "core" / "analysis").rglob("*.py")), banned)
    assert offenders == {}, f"core/analysis must not import {', '.join(banned)}: {offenders}"


def test_distributed_does_not_import_the_service():
    """The service calls the Ray backend with built models and image sets, never the reverse."""
    assert _importing([ROOT / "core" / "distributed.py"], ("core.service",)) == {}


def test_service_parts_are_short():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "core" / "service").glob("*.py")}
    assert sizes and max(sizes.values()) <= 700, f"split core/service/ files over 700 lines: {sizes}"
