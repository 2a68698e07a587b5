"""Project layout rules (issue #28): no import cycles anywhere (imports inside functions count);
core/ in folders by role with at most 6 top-level files; core/analysis imports nothing of the engine;
nothing under core/ imports streamlit; pages and ui/ talk to the service (and the figures) only;
service modules import their siblings directly; one registry pattern; one settings module."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_DIRS = ("core", "ui", "pages", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, Path]:
    files = [p for d in PROJECT_DIRS for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]
    return {_module_name(p): p for p in files}


MODULES = _project_files()


def _imported_names(path: Path) -> set[str]:
    """Every dotted name ``path`` imports, function-local imports included, relative ones resolved:
    ``from core.demo import build, profiles`` gives ``core.demo.build`` and ``core.demo.profiles``."""
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


def _edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` depends on: for each imported name, the longest project module
    it names (``from core.service import probe`` -> ``core.service.probe``; a name re-exported by a
    package's ``__init__`` -> the package)."""
    out = set()
    for name in _imported_names(path):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                out.add(candidate)
                break
    return out - {_module_name(path)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root), on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w), on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    """The walk itself: a three-module ring is one cycle, a chain none (so the rule below can fail)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    graph = {m: _edges(p, MODULES) for m, p in MODULES.items()}
    assert _cycles(graph) == [], "import cycles (imports inside functions count)"


def test_core_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert len(top) <= 6, f"core/ keeps at most 6 top-level .py files, has {top}"
    folders = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"analysis", "service", "data", "store", "present", "demo"} <= folders, folders


def test_core_never_imports_streamlit():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py")
                 if any(n == "streamlit" or n.startswith("streamlit.") for n in _imported_names(p))]
    assert offenders == [], f"core/ must not import streamlit: {offenders}"


def _importing(paths, allowed: tuple[str, ...], scope: str = "core") -> dict[str, list[str]]:
    """``{file: [modules of scope it imports outside allowed]}``."""
    out = {}
    for p in paths:
        found = sorted(m for m in _imported_names(p) if (m == scope or m.startswith(scope + "."))
                       and not any(m == a or m.startswith(a + ".") for a in allowed))
        if found:
            out[str(p.relative_to(ROOT))] = found
    return out


def test_analysis_is_pure_array_functions():
    """core/analysis knows nothing of models, data sets, stored features, the service or Ray:
    callers hand it arrays (and, for the sharded reducers, their per-shard map step)."""
    offenders = _importing(sorted((ROOT / "core" / "analysis").rglob("*.py")), ("core.analysis", "core.errors"))
    # ``from core import errors`` style names the package itself: allow only that form of it
    offenders = {f: [m for m in ms if m != "core"] for f, ms in offenders.items()}
    assert {f: ms for f, ms in offenders.items() if ms} == {}, "core/analysis imports the engine"


def test_pages_and_ui_talk_to_the_service_only():
    """widgets -> core.service -> figures: pages and ui/ import the service, the presentation
    layer (figures, export, report) and the errors, nothing deeper (no analysis, demo, store...)."""
    files = sorted((ROOT / "pages").glob("*.py")) + sorted((ROOT / "ui").glob("*.py")) + [ROOT / "app.py"]
    allowed = ("core.service", "core.present", "core.errors")
    offenders = {f: [m for m in ms if m != "core"] for f, ms in _importing(files, allowed).items()}
    assert {f: ms for f, ms in offenders.items() if ms} == {}


def test_service_modules_import_siblings_directly():
    """Not through core/service/__init__.py (which only re-exports): ``from core.service.catalog import
    task``, never ``from core.service import task`` or ``from core import service`` inside the service."""
    offenders = []
    for p in sorted((ROOT / "core" / "service").glob("*.py")):
        if p.name == "__init__.py":
            continue
        deps = _edges(p, MODULES)
        if "core.service" in deps:
            offenders.append(p.name)
    assert offenders == []


def test_the_ray_backend_does_not_import_the_service():
    """The service calls the Ray backend with built models and image sets, never the reverse."""
    assert _importing([ROOT / "core" / "store" / "ray_backend.py"], ("core.store", "core.data", "core.analysis",
                                                                     "core.errors", "core.config", "core.hashing")) \
        in ({}, {"core/store/ray_backend.py": ["core"]})


def test_service_parts_are_short():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "core" / "service").glob("*.py")}
    assert sizes and max(sizes.values()) <= 700, f"split core/service/ files over 700 lines: {sizes}"


def test_every_public_service_function_has_a_docstring():
    import importlib

    missing = []
    for path in sorted((ROOT / "core" / "service").glob("[!_]*.py")):
        module = f"core.service.{path.stem}"
        mod = importlib.import_module(module)
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ == module and not name.startswith("_") and not inspect.getdoc(fn):
                missing.append(f"{module}.{name}")
    assert missing == [], f"public service functions without a docstring: {missing}"


def _environment_reads(path: Path) -> list[int]:
    """Lines where ``path`` reads the environment (``os.environ.get``, ``os.getenv``, ``os.environ[...]``
    as a value, ``x in os.environ``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "getenv" or (f.attr == "get" and ast.unparse(f.value) == "os.environ"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(ast.unparse(c) == "os.environ" for c in node.comparators):
            lines.append(node.lineno)
    return lines


def test_settings_are_read_in_one_place():
    """Only core/config.py reads FILTERSCOPE_* variables (core/present/export.py reads kaleido's own
    BROWSER_PATH, which is not ours)."""
    offenders = {}
    for p in sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "ui").glob("*.py")) + \
            sorted((ROOT / "pages").glob("*.py")):
        if p == ROOT / "core" / "config.py":
            continue
        lines = _environment_reads(p)
        text = p.read_text().splitlines()
        ours = [n for n in lines if "BROWSER_PATH" not in text[n - 1]]
        if ours:
            offenders[str(p.relative_to(ROOT))] = ours
    assert offenders == {}, f"environment read outside core/config.py: {offenders}"


def test_every_setting_is_documented():
    """Every FILTERSCOPE_* name the project mentions is a documented setting of core.config."""
    import re

    from core import config

    named = set()
    for d in ("core", "ui", "pages", "tests", "bench"):
        for p in (ROOT / d).rglob("*.py"):
            named |= set(re.findall(r"FILTERSCOPE_[A-Z0-9_]*[A-Z0-9]", p.read_text()))
    assert named - set(config.SETTINGS) == set()
    assert all(s.doc and s.name in (config.__doc__ or "") for s in config.SETTINGS.values())


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    from core import config

    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "a"))
    assert config.cache_path() == tmp_path / "a"
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "b"))
    assert config.cache_path() == tmp_path / "b"
    with config.override(FILTERSCOPE_DEMO="tiny", FILTERSCOPE_CACHE=None):
        assert config.demo_profile() == "tiny" and config.cache_path() == config.PROJECT_ROOT / "cache"
    assert config.cache_path() == tmp_path / "b"
    monkeypatch.setenv("FILTERSCOPE_CACHE_GB", "0.5")
    assert config.cache_size_limit() == 2**29
    monkeypatch.setenv("FILTERSCOPE_CACHE_GB", "lots")
    from core.errors import InputError
    with pytest.raises(InputError, match="FILTERSCOPE_CACHE_GB"):
        config.cache_size_limit()
    assert set(config.worker_environment()) >= {"FILTERSCOPE_CACHE", "FILTERSCOPE_CACHE_GB"}


def test_one_registry_pattern():
    """Model kinds, dataset prefixes and detection loaders are registries of one class; the demo's
    entries are there once its build module is imported (which none of the registries imports)."""
    from core.data.datasets import DATASETS
    from core.data.models import MODEL_KINDS
    from core.data.registry import Registry
    from core.demo import build  # noqa: F401  (registers demo: in all three)
    from core.tasks.rcnn import DETECTION_LOADERS

    for reg, builtin in ((MODEL_KINDS, "tv"), (DATASETS, "voc2007"), (DETECTION_LOADERS, "voc2007")):
        assert isinstance(reg, Registry) and {builtin, "demo"} <= set(reg.names())


def test_registry_errors_name_the_closest_entries():
    from core.data.registry import Registry
    from core.errors import InputError

    reg = Registry("model kind", "Use tv:<arch>.")
    reg.register("tv", 1)

    @reg.register("demo")
    def _demo():
        return 2

    assert reg.get("demo") is _demo and reg.names() == ["demo", "tv"] and "tv" in reg
    with pytest.raises(InputError, match=r"unknown model kind 'dem'; did you mean 'demo'\?.*Use tv"):
        reg.get("dem")
    with pytest.raises(InputError, match="without ':'"):
        reg.register("a:b", 3)


def test_top_level_layout():
    for name in ("app.py", "pages", "core", "cache", "tests", "requirements.txt", "README.md", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_tests_mirror_the_package():
    """tests/<folder> for each folder of core/ (analysis, data, store, present, demo, tasks, service)
    and tests/pages for the pages."""
    folders = {p.name for p in (ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(f for f in folders | {"pages"} if not list((ROOT / "tests" / f).glob("test_*.py")))
    assert missing == [], f"tests/ lacks folders mirroring core/: {missing}"


def test_readme_layout_matches_the_tree():
    """Every core/ folder and top-level file is named in README's Layout section."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 1)] if "\n## " in layout[1:] else layout
    names = [p.name for p in (ROOT / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names += [p.name for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py"]
    assert [n for n in names if n not in layout] == []
    assert len(readme.splitlines()) <= 160


def test_torch_load_always_weights_only():
    for p in list((ROOT / "core").rglob("*.py")) + list((ROOT / "pages").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" \
                    and getattr(getattr(node.func, "value", None), "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, \
                    f"{p}:{node.lineno} torch.load without weights_only=True"
