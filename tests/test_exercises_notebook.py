"""The blank tool: the students' notebook and .py file hold stubs, say nothing about solutions, run, and are never
written over an existing file without --force; the solved notebook holds every exercise in order.
(The checks themselves, both directions and the wrong answers, are test_exercises.py.)
"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minirlhf.exercises import EXERCISES
from minirlhf.exercises.blank import (BEGIN, END, NOTEBOOK_ONLY, TEACHER, YOUR_CODE, blank_source, main, stub,
                                      student_notebook, student_script)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "exercises_rlhf.ipynb"


def cells(nb, kind=None):
    return [c for c in nb["cells"] if kind is None or c["cell_type"] == kind]


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def test_the_solved_notebook_has_every_exercise_in_the_order_of_all():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    intro = source(cells(nb, "markdown")[0])
    assert re.findall(r"^\| \d+ \| `(\w+)`", intro, flags=re.MULTILINE) == list(EXERCISES)
    calls = r"^check_(\w+)\((\w+)\)$"
    checked = [m for c in cells(nb, "code") for m in re.findall(calls, source(c), flags=re.MULTILINE)]
    assert checked == [(n, n) for n in EXERCISES]                    # check_<name>(<name>), once each, in order
    for name in EXERCISES:
        (definition,) = [source(c) for c in cells(nb, "code") if f"\ndef {name}(" in "\n" + source(c)]
        assert BEGIN in definition and END in definition


def test_the_teacher_note_gives_the_commands_that_make_the_students_copies():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    (note,) = [source(c) for c in nb["cells"] if TEACHER in tags(c)]
    for out in ("exercises.ipynb", "exercises.py"):
        assert f"python -m minirlhf.exercises.blank notebooks/exercises_rlhf.ipynb {out}\n" in note
    assert "solved" in note and "--force" in note


def blank(tmp_path, out_name, *extra):
    out = tmp_path / out_name
    assert main([str(NOTEBOOK), str(out), *extra]) == 0
    return out


def test_the_students_notebook_has_stubs_and_says_nothing_about_solutions(tmp_path, capsys):
    nb = json.loads(blank(tmp_path, "exercises.ipynb").read_text(encoding="utf-8"))
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'exercises.ipynb'}: {len(EXERCISES)} solution blocks " \
                                              "replaced by stubs"
    assert not [c for c in nb["cells"] if TEACHER in tags(c)]
    text = "\n".join(source(c) for c in nb["cells"])
    assert "solved" not in text.lower() and "solution" not in text.lower()
    assert set(re.findall(r"minirlhf[\w./]*", text)) == {"minirlhf.exercises"}   # no pointer to the references
    for number, name in enumerate(EXERCISES, 1):
        (definition,) = [source(c) for c in cells(nb, "code") if f"\ndef {name}(" in "\n" + source(c)]
        (fn,) = [n for n in ast.parse(definition).body if isinstance(n, ast.FunctionDef)]
        said = f"exercise {number}: {name} is not written yet — solve it first"
        assert ast.unparse(fn.body[-1]) == f"raise NotImplementedError({said!r})", ast.unparse(fn.body[-1])
        assert f"{stub(name)}\n" in definition and YOUR_CODE in definition
    for c in cells(nb, "code"):
        ast.parse(source(c))
        assert c["outputs"] == [] and c["execution_count"] is None


def test_the_students_demo_cells_say_which_exercise_to_solve_first():
    """Run the students' notebook unsolved, cell by cell: every demo cell stops on the first stub it calls, and
    says which exercise that is (not a bare `NotImplementedError:`); every check cell fails its check."""
    nb, _ = student_notebook(json.loads(NOTEBOOK.read_text(encoding="utf-8")))
    namespace, demos = {}, []
    for c in cells(nb, "code"):
        try:
            exec(compile(source(c), "<cell>", "exec"), namespace)
        except NotImplementedError as e:
            assert NOTEBOOK_ONLY in tags(c) and not source(c).startswith("check_"), source(c)
            number, name = re.fullmatch(r"exercise (\d+): (\w+) is not written yet — solve it first", str(e)).groups()
            assert EXERCISES[int(number) - 1] == name
            demos.append(name)
        except AssertionError as e:
            assert source(c).startswith("check_") and "not implemented yet" in str(e), str(e)
    # the demos after exercises 4, 7, 10 (its first call is shape_rewards, exercise 8), 11 and 12
    assert demos == ["top_p_filter", "kl_penalty", "shape_rewards", "dpo_loss", "best_of_n_expectation"]


def test_the_students_script_runs_and_reports_every_stub(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "exercises.py"
    made = subprocess.run([sys.executable, "-m", "minirlhf.exercises.blank", str(NOTEBOOK), str(out)],
                          capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    script = out.read_text(encoding="utf-8")
    assert "solved" not in script.lower() and BEGIN not in script
    assert set(re.findall(r"minirlhf[\w./]*", script)) == {"minirlhf.exercises"}
    ran = subprocess.run([sys.executable, out.name], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    for name in EXERCISES:
        assert f"✘ {name}: not implemented yet" in ran.stdout, ran.stdout
    assert ran.stdout.rstrip().endswith(f"0 of {len(EXERCISES)} exercises pass")
    one = subprocess.run([sys.executable, out.name, "top_p_filter"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert one.returncode == 1 and one.stdout.splitlines() == [
        "✘ top_p_filter: not implemented yet (your function raised NotImplementedError: exercise 4: top_p_filter is "
        "not written yet — solve it first): write its body, then check it again", "0 of 1 exercises pass"], one.stdout
    unknown = subprocess.run([sys.executable, out.name, "top_q"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stdout == "" and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "no exercise 'top_q'" in unknown.stderr and "4 top_p_filter" in unknown.stderr
    again = subprocess.run([sys.executable, "-m", "minirlhf.exercises.blank", str(NOTEBOOK), str(out)],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "--force" in again.stderr


def test_the_notebooks_solutions_pass_as_a_script(tmp_path):
    """The answer key (the .py file with the solutions kept) runs and every exercise passes."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    script, n = student_script(nb, "key.py", blank=False)
    assert n == 0 and BEGIN in script
    (tmp_path / "key.py").write_text(script, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    ran = subprocess.run([sys.executable, "key.py"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in EXERCISES:
        assert f"✔ {name}: all" in ran.stdout
    assert "check_masked_mean(masked_mean)" not in script                       # check calls stay in the notebook


def test_blank_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "exercises.ipynb"
    out.write_text("the students' work", encoding="utf-8")
    assert main([str(NOTEBOOK), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert out.read_text(encoding="utf-8") == "the students' work"
    blank(tmp_path, "exercises.ipynb", "--force")
    assert json.loads(out.read_text(encoding="utf-8"))["cells"]


def test_blank_never_writes_over_the_solved_notebook(tmp_path, capsys):
    solved = tmp_path / "solved.ipynb"
    solved.write_bytes(NOTEBOOK.read_bytes())
    assert main([str(solved), str(solved), "--force"]) == 2
    assert "solved notebook itself" in capsys.readouterr().err
    assert solved.read_bytes() == NOTEBOOK.read_bytes()


@pytest.mark.parametrize("case", ["suffix", "missing", "not json", "unclosed block"])
def test_blank_reports_bad_input_in_one_line(case, tmp_path, capsys):
    src, out = NOTEBOOK, tmp_path / "exercises.ipynb"
    if case == "suffix":
        out = tmp_path / "exercises.txt"
    elif case == "missing":
        src = tmp_path / "nowhere.ipynb"
    elif case == "not json":
        src = tmp_path / "bad.ipynb"
        src.write_text("{", encoding="utf-8")
    else:
        src = tmp_path / "bad.ipynb"
        src.write_text(json.dumps({"cells": [{"cell_type": "code", "source": f"{BEGIN}\nx = 1\n"}]}), encoding="utf-8")
    assert main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_blank_source_replaces_solution_blocks_with_a_stub():
    src = f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    y = x + 1\n    return y\n    {END}\n\nprint(1)\n"
    assert blank_source(src) == f"def f(x):\n    \"\"\"doc\"\"\"\n    {stub('f')}\n\nprint(1)\n"
    assert stub("f") == 'raise NotImplementedError("f is not written yet — solve it first")  # your code here'
    nested = f"def outer():\n    def top_p_filter(z, p):\n        {BEGIN}\n        return z\n        {END}\n" \
             f"    # a comment at the outer indent\n    {BEGIN}\n    return 1\n    {END}\n"
    assert blank_source(nested) == f"def outer():\n    def top_p_filter(z, p):\n        {stub('top_p_filter')}\n" \
                                   f"    # a comment at the outer indent\n    {stub('outer')}\n"
    assert "exercise 4: top_p_filter" in stub("top_p_filter") and "this exercise" in stub(None)
    for bad in (f"    {BEGIN}\n    x = 1\n", f"x = 1\n{END}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"):
        with pytest.raises(ValueError):
            blank_source(bad)
