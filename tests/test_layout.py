"""The package's layout: an import graph without cycles, no old import paths inside the package, old paths
that still work (with a DeprecationWarning), no attribute hiding a submodule of the same name, and
private Pyro/torch APIs used in one adapter module only.

The import graph is read statically from every module's source (``ast``), so it sees every import that can
run, not only those that ran in this process:

- function-level (lazy) imports count. A lazy import does not fail at import time, but it is a dependency
  all the same: a cycle through one is two modules that each need the other (``data.load`` calling into
  ``streaming``, which calls back into ``data``), and it turns into an import error as soon as someone
  moves the import to the top of the file. Only imports under ``if TYPE_CHECKING:`` are left out: they
  never run;
- importing ``a.b.c`` runs the ``__init__`` of ``a.b`` as well, so an import depends on the target's
  parent packages too, except those the importing module is itself inside (they are already running);
- an old path of :data:`pyro_vae._compat.MOVED` stands for the module it names;
- names built at run time (``importlib.import_module("pyro_vae.data")`` in the registry) are not seen.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TypeGuard

import pytest

import pyro_vae
from pyro_vae._compat import MOVED

PACKAGE_DIR = Path(pyro_vae.__file__).parent
#: The one module allowed to use private Pyro/torch attributes (it adapts them for the rest of the package).
ADAPTER = "pyro_vae._internals"


# --------------------------------------------------------------------------- the import graph


def find_modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under ``package_dir``: dotted name -> (file, is a package ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, methods, branches), except under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _statements(module: str, path: Path, is_package: bool, root: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """Each import statement under ``root`` as (line, modules it runs, dotted names it mentions).

    ``import a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``; ``from X import n`` runs ``X`` (and its parents) and
    also ``X.n`` where that is a module. The names are what a reader sees: ``X.n`` and ``X``."""
    tree = ast.parse(path.read_text(), str(path))
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == root]
            yield node.lineno, targets, targets
            continue
        if node.level:
            base = here[: len(here) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] == root:
            subs = [f"{target}.{a.name}" for a in node.names]
            yield node.lineno, [target, *subs], [*subs, target]


def imported_names(module: str, path: Path, is_package: bool, root: str) -> list[tuple[str, int]]:
    """The dotted names under ``root`` a module's import statements mention, with their line numbers."""
    return [(n, line) for line, _, names in _statements(module, path, is_package, root) for n in names]


def import_graph(package_dir: Path, moved: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module -> the modules whose code importing it runs (see the module docstring for what counts)."""
    modules = find_modules(package_dir)
    moved = moved or {}
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        deps: set[str] = set()
        for _, targets, _ in _statements(name, path, is_package, package_dir.name):
            for target in targets:
                parts = moved.get(target, target).split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    inside = name == dep or name.startswith(dep + ".")  # a package this module is part of
                    if dep in modules and not inside:
                        deps.add(dep)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path ``a -> b -> ... -> a``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the package is small, recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search inside the component)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in the component {component}")


def test_import_graph_has_no_cycles() -> None:
    cycles = find_cycles(import_graph(PACKAGE_DIR, MOVED))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "toy"
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(textwrap.dedent(text))
    return pkg


def test_a_planted_cycle_is_found_even_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "from .b import f\n",
        "a.py": "def g():\n    from .b import f  # lazy: still a dependency\n    return f\n",
        "b.py": "from . import c\ndef f():\n    return 1\n",
        "c.py": "import toy.a\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import E\n",
        "e.py": "from .d import x\n",
    })  # fmt: skip
    cycles = find_cycles(import_graph(pkg))
    assert [set(c) for c in cycles] == [{"toy.a", "toy.b", "toy.c"}]  # d <-> e only under TYPE_CHECKING
    assert cycles[0][0] == cycles[0][-1] and len(cycles[0]) == 4


def test_parent_packages_count_but_a_package_importing_its_own_modules_is_no_cycle(tmp_path: Path) -> None:
    """``sub/__init__`` imports ``sub.x``, which imports its sibling ``sub.y``: fine. ``other`` importing
    ``sub.y`` also runs ``sub/__init__``, so a cycle through ``sub/__init__`` is found."""
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from .x import X\nfrom . import y\n",
        "sub/x.py": "from .y import Y\nX = 1\n",
        "sub/y.py": "Y = 2\n",
        "other.py": "from .sub.y import Y\n",
    }
    pkg = _write_package(tmp_path, files)
    graph = import_graph(pkg)
    assert graph["toy.other"] == {"toy.sub", "toy.sub.y"}
    assert graph["toy.sub.x"] == {"toy.sub.y"}
    assert find_cycles(graph) == []
    (pkg / "sub/x.py").write_text("from .y import Y\nX = 1\n\ndef later():\n    from .. import other\n")
    assert [set(c) for c in find_cycles(import_graph(pkg))] == [{"toy.other", "toy.sub", "toy.sub.x"}]


def test_an_old_path_stands_for_its_new_module(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {"__init__.py": "", "new/__init__.py": "", "new/m.py": "from .. import user\n",
                                    "user.py": "from . import old_m\n"})  # fmt: skip
    assert find_cycles(import_graph(pkg)) == []
    assert [set(c) for c in find_cycles(import_graph(pkg, {"toy.old_m": "toy.new.m"}))] == [{"toy.new.m", "toy.user"}]


# --------------------------------------------------------------------------- old paths


def test_no_module_inside_the_package_imports_an_old_path() -> None:
    found = []
    for name, (path, is_package) in find_modules(PACKAGE_DIR).items():
        for target, line in imported_names(name, path, is_package, "pyro_vae"):
            old = next((o for o in MOVED if target == o or target.startswith(o + ".")), None)
            if old is not None:
                found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line} imports {old} (now {MOVED[old]})")
    assert not found, "\n".join(sorted(set(found)))


_IMPORT_ALL_SCRIPT = """
import importlib, sys, warnings
warnings.filterwarnings("error", message=r".* has moved to ", category=DeprecationWarning)
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
from pyro_vae.registry import GROUPS, REGISTRY
for group in GROUPS:  # the registry imports its built-in modules by name on first use
    REGISTRY.names(group)
print(len(names))
"""


def test_importing_every_module_runs_no_old_path() -> None:
    """The dynamic side of the check above: importing each module (and whatever it imports at run time,
    ``importlib`` included) in a fresh interpreter never goes through an old path."""
    names = [n for n in find_modules(PACKAGE_DIR) if not n.endswith("__main__")]
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL_SCRIPT, *names], check=False, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == str(len(names))


_OLD_PATHS_SCRIPT = """
import importlib, json, sys, types, warnings
import pyro_vae
from pyro_vae._compat import MOVED
top = {n: getattr(pyro_vae, n) for n in pyro_vae.__all__}
out = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and old in str(w.message)]
    out[old] = {
        "same": mod is importlib.import_module(new) and sys.modules[old] is sys.modules[new],
        "name": mod.__name__,
        "warned": deprecations,
    }
changed = [n for n, v in top.items() if getattr(pyro_vae, n) is not v]
print(json.dumps({"old": out, "top_level_changed": changed}))
"""


@pytest.fixture(scope="module")
def old_paths() -> dict:
    """Every old path imported in a fresh interpreter (this one may have imported some already)."""
    proc = subprocess.run(
        [sys.executable, "-c", _OLD_PATHS_SCRIPT], check=False, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_the_new_module_with_a_deprecation_warning(old_paths: dict, old: str) -> None:
    got = old_paths["old"][old]
    assert got["same"], f"{old} is not the module object of {MOVED[old]}"
    assert got["name"] == MOVED[old]
    assert got["warned"], f"no DeprecationWarning: was {old} imported already, by a module inside pyro_vae?"
    assert len(got["warned"]) == 1 and MOVED[old] in got["warned"][0]


def test_importing_the_old_paths_changes_no_top_level_name(old_paths: dict) -> None:
    """``import pyro_vae.evaluate`` (an old path) must not replace the function ``pyro_vae.evaluate``."""
    assert old_paths["top_level_changed"] == []


def test_the_package_guard_keeps_a_function_an_old_path_would_hide() -> None:
    from pyro_vae import _compat

    pkg = types.ModuleType("toypkg")
    pkg.__class__ = _compat.Package
    mod = types.ModuleType("toypkg.new.thing")
    pkg.thing = len  # a function named like the old module
    pkg.other = 1
    MOVED["toypkg.thing"] = "toypkg.new.thing"
    try:
        pkg.thing = mod  # what the import system does after importing the old path
        pkg.fresh = mod  # no function there: the old path is bound as usual
        pkg.other = 2  # ordinary assignments are untouched
    finally:
        del MOVED["toypkg.thing"]
    assert pkg.thing is len and pkg.fresh is mod and pkg.other == 2
    pkg.thing = mod  # not an old path any more: plain assignment
    assert pkg.thing is mod


# --------------------------------------------------------------------------- names and modules


def _packages() -> list[str]:
    return [n for n, (_, is_package) in find_modules(PACKAGE_DIR).items() if is_package]


@pytest.mark.parametrize("package", _packages())
def test_no_attribute_hides_a_submodule_of_the_same_name(package: str) -> None:
    """``import pyro_vae.x.y as m`` gives the module ``y``, never a function re-exported under its name."""
    import importlib

    pkg = importlib.import_module(package)
    hidden = []
    for name in find_modules(PACKAGE_DIR):
        parent, _, child = name.rpartition(".")
        if parent != package or child == "__main__":
            continue
        attr = getattr(pkg, child, None)
        if attr is not None and not isinstance(attr, types.ModuleType):
            hidden.append(f"{package}.{child} is {type(attr).__name__} {attr!r}, not the module {name}")
    assert not hidden, "\n".join(hidden)


def test_compare_is_the_subpackage_and_calling_it_is_deprecated(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyro_vae.compare as c

    assert c is pyro_vae.compare and isinstance(c, types.ModuleType)
    assert callable(c.plan) and callable(c.compare)
    seen = []
    monkeypatch.setattr(c, "compare", lambda *a, **k: seen.append((a, k)) or "result")
    with pytest.warns(DeprecationWarning, match=r"pyro_vae\.compare\.compare"):
        assert pyro_vae.compare(None, ["trace"], seeds=(0,)) == "result"  # type: ignore[operator]
    assert seen == [((None, ["trace"]), {"seeds": (0,)})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from pyro_vae.compare import compare  # the documented form: no warning

    assert compare is c.compare


def test_importing_the_package_sets_no_global_pyro_setting() -> None:
    code = (
        "import pyro, torch; before = dict(pyro.settings.get()); dtype = torch.get_default_dtype(); "
        "import pyro_vae; after = dict(pyro.settings.get()); "
        "assert after == before, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}; "
        "assert torch.get_default_dtype() == dtype"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- private Pyro/torch APIs

#: Private names of the standard library the package may use (documented, stable): not Pyro's or torch's.
_STDLIB_PRIVATE = {"os._exit", "sys._getframe", "argparse._SubParsersAction"}
_NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def _defined_names(trees: list[ast.AST]) -> set[str]:
    """Every name the package itself defines: functions, classes, variables, attributes, parameters."""
    names: set[str] = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, (ast.Name, ast.Attribute)) and isinstance(n.ctx, ast.Store):
                names.add(n.id if isinstance(n, ast.Name) else n.attr)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                names.add(n.target.id)
            elif isinstance(n, ast.Call) and _is_setattr(n.func) and len(n.args) >= 2 and _is_str(n.args[1]):
                names.add(n.args[1].value)  # setattr(obj, "_name", v), object.__setattr__(self, "_name", v)
    return names


def _is_str(node: ast.expr) -> TypeGuard[ast.Constant]:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_setattr(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "setattr") or (
        isinstance(func, ast.Attribute) and func.attr == "__setattr__"
    )


def private_uses(package_dir: Path, adapter: str) -> list[str]:
    """Uses of private Pyro/torch names outside ``adapter``: imports of a private module or name from
    ``pyro``/``torch``, and any ``obj._name`` where the package defines no ``_name`` itself."""
    modules = find_modules(package_dir)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in modules.items()}
    own = _defined_names(list(trees.values()))
    found = []
    for name, tree in trees.items():
        if name == adapter:
            continue
        where = modules[name][0].relative_to(package_dir.parent)
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                names = [] if isinstance(n, ast.Import) else [a.name for a in n.names]
                for m in mods:
                    if m.split(".")[0] in ("pyro", "torch") and (
                        any(p.startswith("_") for p in m.split(".")) or any(x.startswith("_") for x in names)
                    ):
                        found.append(f"{where}:{n.lineno}: {ast.unparse(n)}")
            elif isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
                text = ast.unparse(n)
                if n.attr not in own and n.attr not in _NAMEDTUPLE_API and text not in _STDLIB_PRIVATE:
                    found.append(f"{where}:{n.lineno}: {text}")
    return found


def test_private_pyro_and_torch_names_are_used_only_in_the_adapter() -> None:
    found = private_uses(PACKAGE_DIR, ADAPTER)
    assert not found, f"private Pyro/torch names outside {ADAPTER}:\n" + "\n".join(found)


def test_the_private_name_check_finds_planted_uses(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "_internals.py": "from pyro.poutine.runtime import _PYRO_STACK\n",
        "a.py": "import torch\nfrom pyro.poutine.runtime import _PYRO_STACK\ndef f(m):\n    return m._parameters\n",
        "b.py": "import torch._dynamo\nclass B:\n    def __init__(self):\n        self._mine = 1\n"
                "        object.__setattr__(self, '_set', 2)\n"
                "    def g(self):\n        return self._mine, self._set, os._exit\n",
    })  # fmt: skip
    found = private_uses(pkg, "toy._internals")
    assert len(found) == 3, found
    assert any("_PYRO_STACK" in f and "a.py" in f for f in found)
    assert any("m._parameters" in f for f in found) and any("torch._dynamo" in f for f in found)
