"""The recipes' modules import one way: no circle (TYPE_CHECKING imports included), no private name of another
module, and every module imports on its own in a fresh interpreter."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "minirlhf" / "recipes"
MODULES = sorted(p.stem for p in RECIPES.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> list[tuple[str, list[str]]]:
    """(the recipes module imported, the names taken from it) for each `from .x import ...` / `from . import x`."""
    out = []
    for node in ast.walk(ast.parse((RECIPES / f"{module}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.append((node.module, [a.name for a in node.names]))
            else:
                out += [(a.name, []) for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:   # from ..plots import x
            out.append(("../" + node.module, [a.name for a in node.names]))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {dep for dep, _ in imports_of(m) if dep in MODULES} for m in MODULES}


def test_the_graph_sees_the_imports_it_must():
    g = graph()
    assert {"demo_config", "shared_stages", "evaluator", "demo_report"} <= g["sentiment_zh"]
    assert "stages" in g["demo_config"]


def find_circle(g: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in `g` (module -> the modules it imports), as a path back to its start; None if none."""
    done, path = set(), []

    def visit(m):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        path.append(m)
        for dep in sorted(g.get(m, ())):
            if (found := visit(dep)) is not None:
                return found
        path.pop()
        done.add(m)
        return None

    return next((c for m in sorted(g) if (c := visit(m)) is not None), None)


def test_find_circle_finds_one_and_only_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_among_the_recipes():
    assert find_circle(graph()) is None


def test_the_other_recipes_build_on_the_shared_modules_not_on_each_other_or_the_demo():
    g = graph()
    for m in ("compare", "overopt"):
        assert not g[m] & {"sentiment_zh", "compare", "overopt"}, (m, g[m])


def test_no_private_name_is_imported_from_another_module():
    bad = [(m, dep, n) for m in MODULES for dep, names in imports_of(m) for n in names if n.startswith("_")]
    assert not bad


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module):
    subprocess.run([sys.executable, "-c", f"import minirlhf.recipes.{module}"], check=True, timeout=120)
