"""The package's edges: no import cycles among module-level imports, the comm simulator does not load
the cube-group engines, and the public surface (sorted ``__all__`` lists that the shipped models and
benchmarks keep to)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ascend_jax"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (not under ``if TYPE_CHECKING``, not
    inside functions)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != mod and n.startswith("ascend_jax"):
                    graph[mod].add(n)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(module_graph())
    # packages import their submodules by design (a package __init__ re-exporting), so only cycles
    # between two plain modules count
    plain = [c for c in found if any(not (PKG / Path(*m.split(".")[1:]) / "__init__.py").exists() for m in c)]
    assert plain == [], plain


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_the_comm_simulator_does_not_load_the_cube_group_engines():
    code = (
        "import sys, ascend_jax.aicpu as a\n"
        "a.run_comm_reference(a.p2p_job(8))\n"
        "print(sorted(m for m in sys.modules if m.startswith('ascend_jax.cube_group')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the public surface ------------------------------------------------------------------------------

#: the packages whose ``__all__`` is public surface: the top level and the subpackages it points to
PUBLIC_PACKAGES = (
    "ascend_jax",
    "ascend_jax.aicpu",
    "ascend_jax.cube_group.engine",
    "ascend_jax.cube_group.reference",
    "ascend_jax.sanitizer",
)

#: scripts owned elsewhere that still reach past the surface, with the names they use; an entry must
#: shrink when its script is fixed (test_pending_private_imports_are_still_there fails otherwise)
PENDING: dict[str, set[str]] = {}


def _ruff_order(name: str) -> tuple:
    """RUF022's "isort-style" order of ``__all__``: SCREAMING_CASE, then CamelCase, then the rest."""
    return (not name.isupper(), not name[:1].isupper(), name)


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_public_all_is_one_sorted_run_of_existing_names(package):
    mod = importlib.import_module(package)
    names = list(mod.__all__)
    assert names == sorted(names, key=_ruff_order), f"{package}.__all__ is not sorted"
    assert len(set(names)) == len(names)
    assert not [n for n in names if n.startswith("_")]
    for name in names:
        getattr(mod, name)  # every listed name resolves (the lazy ones included)


def test_top_level_all_is_the_lazy_export_table():
    import ascend_jax

    assert set(ascend_jax.__all__) == set(ascend_jax._ORIGIN)


def _is_module(mod_name: str) -> bool:
    try:
        return importlib.util.find_spec(mod_name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def public_name_violations(path: Path) -> list[str]:
    """Names a script takes from ``ascend_jax`` that are not public: each ``from M import n`` and each
    ``alias.n`` on an imported ``ascend_jax`` module must find ``n`` in the ``__all__`` of a public
    package ``M`` (importing a public subpackage itself as a module is fine)."""
    tree = ast.parse(path.read_text())
    bad: list[str] = []
    modules: dict[str, str] = {}  # local name -> the ascend_jax module it is bound to

    def check(module: str, name: str, where: int) -> None:
        if name.startswith("_"):
            bad.append(f"{path.name}:{where}: {module}.{name} (private)")
            return
        if f"{module}.{name}" in PUBLIC_PACKAGES:
            return
        if module not in PUBLIC_PACKAGES:
            bad.append(f"{path.name}:{where}: {module}.{name} ({module} is not a public package)")
        elif name not in importlib.import_module(module).__all__:
            bad.append(f"{path.name}:{where}: {module}.{name} (not in {module}.__all__)")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != "ascend_jax":
                    continue
                if a.asname:
                    if a.name not in PUBLIC_PACKAGES:
                        bad.append(f"{path.name}:{node.lineno}: import {a.name} (not a public package)")
                    modules[a.asname] = a.name
                else:
                    modules["ascend_jax"] = "ascend_jax"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ascend_jax":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in PUBLIC_PACKAGES:
                    modules[a.asname or a.name] = full
                elif not a.name.startswith("_") and _is_module(full):
                    bad.append(f"{path.name}:{node.lineno}: {full} (a module that is not a public package)")
                else:
                    check(node.module, a.name, node.lineno)
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:  # whole chains only
            chain = []
            value: ast.expr = node
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                module = modules[value.id]
                for attr in reversed(chain):
                    if f"{module}.{attr}" in PUBLIC_PACKAGES:
                        module = f"{module}.{attr}"
                        continue
                    check(module, attr, node.lineno)
                    break
    return sorted(set(bad))


SCRIPTS = sorted([*(ROOT / "models").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_models_and_benchmarks_use_only_public_names(path):
    rel = path.relative_to(ROOT).as_posix()
    found = public_name_violations(path)
    pending = PENDING.get(rel, set())
    assert [f for f in found if not any(p in f for p in pending)] == []


def test_pending_private_imports_are_still_there():
    for rel, names in PENDING.items():
        found = " ".join(public_name_violations(ROOT / rel))
        assert [n for n in names if n not in found] == [], f"{rel} is fixed: remove it from PENDING"


def test_the_public_name_check_finds_private_and_deep_names(tmp_path):
    script = tmp_path / "m.py"
    script.write_text(
        "import ascend_jax as aj\n"
        "from ascend_jax import simulate\n"
        "from ascend_jax.cube_group import engine\n"
        "from ascend_jax.message import CUBE_MATMUL_MSG\n"
        "from ascend_jax.aicpu import _secret\n"
        "aj.run(engine.prepare, aj.gm.GlobalMemory, aj.CubeGroupKernel)\n"
        "engine._mesh(None)\n"
    )
    found = public_name_violations(script)
    assert any("ascend_jax.message.CUBE_MATMUL_MSG" in f for f in found)
    assert any("ascend_jax.aicpu._secret (private)" in f for f in found)
    assert any("ascend_jax.gm" in f for f in found)
    assert any("ascend_jax.cube_group.engine._mesh (private)" in f for f in found)
    assert len(found) == 4, found


# -- keyword-only arguments after the program ----------------------------------------------------------

#: public functions that take a second positional argument, and why
TWO_POSITIONAL = {
    "run": "run(program, config): the settings are the run's second input",
    "numerics_report": "numerics_report(program, results): the report compares the two",
    "pack_message": "pack_message(dtype, fields): the fields are packed into the type",
}
#: the comm simulator's run and job functions (its hccl_* / kernel functions mirror C signatures)
COMM_RUNNERS = ("p2p_job", "p2p_thread_job", "ring_job", "run_comm", "run_comm_batch", "run_comm_reference")


def _positional(fn) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def _public_functions():
    import ascend_jax
    import ascend_jax.aicpu

    for name in ascend_jax.__all__:
        if inspect.isfunction(getattr(ascend_jax, name)):
            yield f"ascend_jax.{name}", getattr(ascend_jax, name)
    for name in COMM_RUNNERS:
        yield f"ascend_jax.aicpu.{name}", getattr(ascend_jax.aicpu, name)


def test_public_functions_take_keywords_after_the_program():
    too_many = {}
    for qual, fn in _public_functions():
        allowed = 2 if qual.rpartition(".")[2] in TWO_POSITIONAL else 1
        extra = _positional(fn)[allowed:]
        if extra:
            too_many[qual] = extra
    assert too_many == {}
