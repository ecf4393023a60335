"""The README's "how the code is laid out" map matches the tree: it names every module of the package once."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_map_names_every_module_and_no_module_that_is_gone():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### How the code is laid out", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(?:recipes/)?([a-z_]+\.py)`", section))
    package = ROOT / "minirlhf"
    modules = {f.name for f in [*package.glob("*.py"), *(package / "recipes").glob("*.py")]
               if f.name not in ("__init__.py", "__main__.py")}
    assert modules - named == set(), f"modules the map leaves out: {sorted(modules - named)}"
    assert named - modules == set(), f"the map names modules that do not exist: {sorted(named - modules)}"
    assert "`exercises/`" in section
