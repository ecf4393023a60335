"""Every notebook in notebooks/ runs top to bottom in a fresh kernel, with MINIRLHF_NOTEBOOK_BUDGET=small, from an
empty temporary working directory that it must leave empty; committed notebooks carry no outputs.

The notebooks are found by glob, so a new one is tested without editing this file; what a notebook must print
(beyond "no error") is in CHECKS, by file name. The kernel is this interpreter (a kernelspec written for
sys.executable and put first on JUPYTER_PATH), so the test needs no `jupyter kernelspec install` on a fresh machine
and never picks up another Python's kernel; the repository root is put on the kernel's PYTHONPATH, so the
notebooks run against this checkout. TMPDIR points into the test's own directory, so a notebook's temporary
files never collect in the machine's /tmp, and we can see whether it removed them.
"""
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from minirlhf import exercises

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
TOOL_CACHES = ("torchinductor_",)    # what torch itself keeps in TMPDIR, whatever the notebook does


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A python3 kernelspec for sys.executable, found before any other; the checkout importable; the small
    budget; an empty working directory and an empty TMPDIR, returned as (workdir, tmpdir)."""
    data_dir = tmp_path / "jupyter"
    write_kernel_spec(data_dir / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(data_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("MINIRLHF_NOTEBOOK_BUDGET", "small")
    workdir, tmpdir = tmp_path / "work", tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    return workdir, tmpdir


def execute(path: Path, workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()                                   # raises CellExecutionError on the first failing cell
    kernel = json.loads((Path(os.environ["JUPYTER_PATH"]) / "kernels" / "python3" / "kernel.json").read_text())
    assert kernel["argv"][0] == sys.executable
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def text_of(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def has_plot(nb) -> bool:
    return any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def check_exercises(nb):
    """Every check_<name> that minirlhf.exercises exports ran in the notebook and passed."""
    text = text_of(nb)
    names = [n[len("check_"):] for n in exercises.__all__ if n.startswith("check_")]
    assert names, "minirlhf.exercises exports no check_ functions"
    for name in names:
        assert f"✔ {name}: all" in text, f"no passing check for {name} in the notebook's output"


def check_tour(nb):
    text = text_of(nb)
    assert "same tokens: True" in text                 # the padding-invariance claim holds when it runs
    assert "iteration 10" in text
    assert has_plot(nb), "no plot shown"


def check_gpt_and_sampler(nb):
    text = text_of(nb)
    assert "equal: True" in text                       # the parameter count's closed form
    assert "cached == recomputed, token for token: True" in text
    assert "alone == batched: True" in text
    assert "batched with 好 under the padding == batched: True" in text
    assert "draws of removed tokens: 0" in text and "draws of removed tokens: 1" not in text
    assert has_plot(nb), "no plot shown"
    assert any("text/html" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), "no tokenviz HTML"


def check_reward_models(nb):
    text = text_of(nb)
    assert "all worked examples match" in text and "✘" not in text
    assert "same loss and gradient both ways, every K: True" in text   # InstructGPT batching changes only the cost
    assert has_plot(nb), "no plot shown"


CHECKS = {"exercises_rlhf.ipynb": check_exercises, "tour.ipynb": check_tour,
          "01_gpt_and_sampler.ipynb": check_gpt_and_sampler, "02_reward_models.ipynb": check_reward_models}


def test_notebooks_are_found_and_every_check_has_its_notebook():
    assert NOTEBOOKS, "no notebooks found"
    gone = sorted(set(CHECKS) - {p.name for p in NOTEBOOKS})
    assert not gone, f"CHECKS names notebooks that do not exist (renamed?): {gone}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{path.name}: clear the outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env):
    workdir, tmpdir = kernel_env
    nb = execute(path, workdir)
    assert not any(workdir.iterdir()), f"{path.name} wrote into the working directory: {sorted(workdir.iterdir())}"
    left = sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith(TOOL_CACHES))
    assert not left, f"{path.name} left files in its temporary directory: {left}"
    if path.name in CHECKS:                            # a notebook without an entry gets the checks above only
        CHECKS[path.name](nb)
