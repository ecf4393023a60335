"""Turn the solved exercise notebook into the students' one: every solution block becomes a stub.

    python -m minirlhf.exercises.blank notebooks/exercises_rlhf.ipynb exercises_blank.ipynb

A solution block is the lines from `# ---- solution ----` to `# ---- end solution ----` (both
included) in a code cell; it is replaced by `raise NotImplementedError  # your code here`, indented
like the marker. Outputs and execution counts are cleared. Plain JSON: no Jupyter package needed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN, END = "# ---- solution ----", "# ---- end solution ----"
STUB = "raise NotImplementedError  # your code here"


def blank_source(source: str) -> str:
    """The code with every solution block replaced by the stub; an unclosed block is an error."""
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}{STUB}\n")
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} is never closed by {END!r}")
    return "".join(out)


def blank_notebook(src, dst) -> int:
    """Write the students' notebook to `dst`; return the number of solution blocks removed."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    n = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        n += sum(line.strip().startswith(BEGIN) for line in source.splitlines())
        cell["source"] = blank_source(source).splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return n


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    n = blank_notebook(argv[0], argv[1])
    print(f"{argv[1]}: {n} solution blocks replaced by stubs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
