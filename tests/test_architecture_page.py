"""The Architecture page (docs/architecture.md) matches the tree: one row per module of the
package, every file a recipe names exists, and the engines keep apart as the page says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ascend_jax"
PAGE = ROOT / "docs" / "architecture.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_every_module_has_one_row_and_every_row_a_module():
    rows = re.findall(r"^\| `([^`]+\.py)` \|", _section(PAGE.read_text(), "Modules"), flags=re.M)
    modules = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(rows) == len(set(rows)), "a module has two rows"
    assert sorted(rows) == modules, {
        "modules without a row": sorted(set(modules) - set(rows)),
        "rows without a module": sorted(set(rows) - set(modules)),
    }


def test_every_file_a_recipe_names_exists():
    recipes = _section(PAGE.read_text(), "Recipes")
    paths = set(re.findall(r"`((?:ascend_jax|tests|docs|models|benchmarks)/[^`\s]+)`", recipes))
    assert len(paths) >= 12  # the four recipes name their files
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == [], missing


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_reference_and_the_engine_import_nothing_of_each_other():
    ref = PKG / "cube_group" / "reference"
    eng = PKG / "cube_group" / "engine"
    for folder, other in ((ref, "ascend_jax.cube_group.engine"), (eng, "ascend_jax.cube_group.reference")):
        for path in folder.glob("*.py"):
            bad = sorted(m for m in _imports(path) if m == other or m.startswith(other + "."))
            assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
