"""Project layout rules: core/ never imports streamlit; app.py only builds navigation."""
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
