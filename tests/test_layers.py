"""The package's layers import one way (the order the README's layout section states), and no recipe imports
another recipe: checked on every internal import, module-level and function-local alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "distillir"

# Lowest first; a module may import from its own layer and the layers before it.
LAYERS = [
    ("errors", "utils", "models"),
    ("data",),
    ("evaluation",),
    ("retrievers",),
    ("rankers",),
    ("readers",),
    ("teachers",),
    ("losses",),
    ("training",),
    ("recipes",),
    ("demo", "cli"),
]
LAYER_OF = {package: i for i, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `distillir...` import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distillir"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("distillir")]
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in MODULES} - {None}
    assert packages <= set(LAYER_OF), f"packages without a layer: {sorted(packages - set(LAYER_OF))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_from_a_higher_layer(path):
    source = package_of(module_name(path))
    if source is None:  # distillir/__init__.py
        return
    upward = [f"line {line}: {target}" for line, target in internal_imports(path)
              if package_of(target) is not None and LAYER_OF[package_of(target)] > LAYER_OF[source]]
    assert not upward, f"{path.relative_to(SRC)} imports from a higher layer: {upward}"


@pytest.mark.parametrize("path", sorted((SRC / "recipes").glob("*.py")), ids=lambda p: p.name)
def test_no_recipe_imports_another_recipe(path):
    shared = ("distillir.recipes.common",)
    others = [f"line {line}: {target}" for line, target in internal_imports(path)
              if target.startswith("distillir.recipes.") and not target.startswith(shared)]
    assert not others, f"{path.name} imports another recipe: {others}"


def test_the_check_sees_function_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from distillir.recipes.dpr import DPRRecipe\n")
    assert internal_imports(probe) == [(2, "distillir.recipes.dpr")]
