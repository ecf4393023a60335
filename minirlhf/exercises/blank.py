"""Make the students' copy of the solved exercise notebook: a notebook, or a plain Python file.

    python -m minirlhf.exercises.blank notebooks/exercises_rlhf.ipynb exercises.ipynb
    python -m minirlhf.exercises.blank notebooks/exercises_rlhf.ipynb exercises.py

In both, every solution block (the lines from `# ---- solution ----` to `# ---- end solution ----` in a
code cell) becomes a stub, indented like the marker, that names the exercise it stands for:

    raise NotImplementedError("exercise 4: top_p_filter is not written yet — solve it first")  # your code here

so that a demo cell run before its exercise is solved says which one to solve. The cells tagged "teacher"
(the note that the notebook is solved and where the reference implementations live) are left out. The
notebook keeps every other cell, with outputs and execution counts cleared. The .py file keeps the
explanations as comments and the code, but not the cells tagged "notebook-only" (check calls and demos):
running it grades every exercise with minirlhf.exercises.grade, or only those named on its command line
(`python exercises.py top_p_filter`, or its number, `python exercises.py 4`). An existing output file is
not overwritten unless --force is given. Plain JSON: no Jupyter package needed.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

from ..errors import InputError
from . import EXERCISES

BEGIN, END = "# ---- solution ----", "# ---- end solution ----"
YOUR_CODE = "# your code here"
TEACHER, NOTEBOOK_ONLY = "teacher", "notebook-only"
DEF = re.compile(r"(\s*)(?:async\s+)?def\s+(\w+)\s*\(")

SCRIPT_HEADER = '''"""RLHF exercises that grade themselves.

Fill in every function body that says `{your_code}`, then run

    python {name}                  # every exercise
    python {name} top_p_filter     # only that one (or give its number: 4)

It checks each function on random and hand-built cases and prints, per exercise, ✔ or ✘ with a hint.
What each function must do is in the comments above it.
"""'''
SCRIPT_FOOTER = '''if __name__ == "__main__":
    import sys

    from minirlhf.exercises import grade
    sys.exit(grade(globals(), sys.argv[1:]))'''


def stub(function: str | None) -> str:
    """The line a solution block inside `def function(...)` becomes: it raises NotImplementedError saying which
    exercise to solve, so that a demo calling it says so instead of a bare `NotImplementedError:`."""
    if function in EXERCISES:
        what = f"exercise {EXERCISES.index(function) + 1}: {function}"
    else:
        what = function or "this exercise"
    return f'raise NotImplementedError("{what} is not written yet — solve it first")  {YOUR_CODE}'


def blank_source(source: str) -> str:
    """The code with every solution block replaced by the stub of the function it is in (the innermost `def`
    indented less than the marker); an unclosed block is an error."""
    out, inside, defs = [], False, []          # defs: (indent, name) of the functions the line is inside
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        indent = line[:len(line) - len(line.lstrip())]
        if not inside and stripped and (not stripped.startswith("#") or stripped.startswith(BEGIN)):
            # code (or the marker, indented as the code it replaces) closes the defs indented as much or more;
            # any other comment may sit at any indent
            defs = [(i, name) for i, name in defs if len(i) < len(indent)]
            if match := DEF.match(line):
                defs.append((match.group(1), match.group(2)))
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            out.append(f"{indent}{stub(defs[-1][1] if defs else None)}\n")
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} is never closed by {END!r}")
    return "".join(out)


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _blanked(cell, i: int) -> tuple[str, int]:
    """A code cell's source with its solutions blanked, and how many blocks there were."""
    source = _source(cell)
    try:
        return blank_source(source), sum(line.strip().startswith(BEGIN) for line in source.splitlines())
    except ValueError as e:
        raise InputError(f"cell {i}: {e}") from None


def student_notebook(nb: dict) -> tuple[dict, int]:
    """The students' notebook (teacher cells out, solutions blanked, outputs cleared) and the stub count."""
    cells, n = [], 0
    for i, cell in enumerate(nb["cells"]):
        if TEACHER in _tags(cell):
            continue
        cell = copy.deepcopy(cell)
        if cell["cell_type"] == "code":
            source, k = _blanked(cell, i)
            cell["source"], cell["outputs"], cell["execution_count"] = source.splitlines(keepends=True), [], None
            n += k
        cells.append(cell)
    return {**nb, "cells": cells}, n


def student_script(nb: dict, name: str = "exercises.py", blank: bool = True) -> tuple[str, int]:
    """The students' .py file and the stub count: markdown as comments, code cells (solutions blanked,
    or kept with blank=False for an answer key), no teacher or notebook-only cells, grading under __main__."""
    parts, n = [SCRIPT_HEADER.format(your_code=YOUR_CODE, name=name)], 0
    for i, cell in enumerate(nb["cells"]):
        if _tags(cell) & {TEACHER, NOTEBOOK_ONLY}:
            continue
        if cell["cell_type"] == "markdown":
            parts.append("\n".join(f"# {line}".rstrip() for line in _source(cell).strip("\n").splitlines()))
        elif cell["cell_type"] == "code":
            source, k = _blanked(cell, i) if blank else (_source(cell), 0)
            parts.append(source.strip("\n"))
            n += k
    parts.append(SCRIPT_FOOTER)
    return "\n\n\n".join(parts) + "\n", n


def write_student_copy(solved, out, force: bool = False) -> int:
    """Write the students' copy of `solved` to `out` (.ipynb or .py); return the number of stubs."""
    solved, out = Path(solved), Path(out)
    if out.suffix not in (".ipynb", ".py"):
        raise InputError(f"{out}: the output must end in .ipynb (a notebook) or .py (a Python file)")
    if not solved.is_file():
        raise InputError(f"{solved}: no such file")
    if out.exists() and out.resolve() == solved.resolve():
        raise InputError(f"{out}: that is the solved notebook itself; choose another output file")
    if out.exists() and not force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    try:
        nb = json.loads(solved.read_text(encoding="utf-8"))
        nb["cells"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{solved}: not a Jupyter notebook (JSON with a 'cells' list)") from None
    if out.suffix == ".ipynb":
        student, n = student_notebook(nb)
        text = json.dumps(student, indent=1, ensure_ascii=False) + "\n"
    else:
        text, n = student_script(nb, out.name)
    out.write_text(text, encoding="utf-8")
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minirlhf.exercises.blank",
                                     description="Make the students' copy of the solved exercise notebook.")
    parser.add_argument("solved", help="the solved notebook, e.g. notebooks/exercises_rlhf.ipynb")
    parser.add_argument("out", help="the students' copy: exercises.ipynb (a notebook) or exercises.py (a script)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    args = parser.parse_args(argv)
    try:
        n = write_student_copy(args.solved, args.out, force=args.force)
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} solution blocks replaced by stubs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
