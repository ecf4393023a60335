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
import re
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from minirlhf import exercises
from minirlhf.tokenizer import STAND_IN

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
    assert re.search(r"characters replaced by □: \d+ of \d+", text)    # the tokenizer keeps the demo's stand-in
    assert has_plot(nb), "no plot shown"
    assert any("text/html" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), "no tokenviz HTML"


def check_reward_models(nb):
    text = text_of(nb)
    assert "all worked examples match" in text and "✘" not in text
    assert "same loss and gradient both ways, every K: True" in text   # InstructGPT batching changes only the cost
    assert has_plot(nb), "no plot shown"


def percent_after(text: str, label: str) -> int:
    """The percentage printed right after `label` (e.g. 'became likelier: 87%')."""
    match = re.search(re.escape(label) + r"\s*(\d+)%", text)
    assert match, f"no '{label} N%' in the notebook's output"
    return int(match.group(1))


def check_ppo_by_hand(nb):
    text = text_of(nb)
    assert "iteration 0: log π == log π_ref on every token of a rollout: True" in text   # the policy starts as the reference
    assert "every row: r_t + β KL_t is the score on the last real token and 0 elsewhere: True" in text
    assert "every row: r_t = 0 on padding: True" in text
    assert "GAE hand loop matches compute_gae: True" in text
    assert "trainer.advantages == shape_rewards -> compute_gae -> masked_whiten by hand: True" in text
    for sign in ("+1", "-1"):                                      # the clipped surrogate, both signs of A
        assert f"A = {sign}: ppo_policy_loss = -min(ρA, clip(ρ)A): True" in text
    assert text.count("gradient 0 exactly where clipped: True") == 2
    assert "ratio on first minibatch: 1.000000" in text and "1 and 0 up to float rounding: True" in text
    assert percent_after(text, "tokens with A > 0 that became likelier:") > 50     # the update follows the advantages
    assert percent_after(text, "tokens with A < 0 that became less likely:") > 50
    assert has_plot(nb), "no plot shown"
    assert any("text/html" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), "no tokenviz HTML"


def check_sentiment_rlhf(nb):
    text = text_of(nb)
    assert "every PPO iteration logged: True" in text
    assert "reproduced report.json's pool reward, KL and distinct-2 from the saved models: True" in text
    assert has_plot(nb), "no plot shown"


def check_dpo_derivation(nb):
    text = text_of(nb)
    assert "J(π) = β log Z - β KL(π ‖ π*) on 5 random policies: True" in text
    assert "π* matches gradient ascent: max |Δ| < 1e-3" in text
    assert re.search(r"max of J found: .* equal to 1e-6: True", text)                   # the maximum is β log Z
    assert re.search(r"r - implicit reward is one constant .* equal to β log Z = .*: True", text)
    assert "the same from π* and π_ref alone, no r, no Z: True" in text
    assert "DPO loss at the reference: 0.693147   log 2 = 0.693147" in text
    assert "DPO on exact preferences reaches π*: max |Δ| < 1e-3" in text
    assert "TV to π* shrinks as the sample grows: True" in text
    assert "DPO = the Bradley–Terry reward fitted on the same pairs + its closed-form optimum: True" in text
    assert re.search(r"gradients with and without the reference agree as β → 0: .* > 0.9999: True", text)
    assert "reference-free DPO on exact preferences reaches softmax(r/β): max |Δ| < 1e-3" in text
    assert "IPO training reaches its least-squares optimum: True" in text
    assert has_plot(nb), "no plot shown"


def check_rrhf_grpo_rloo_compare(nb):
    text = text_of(nb)
    # 1. RRHF: minirlhf's losses against plain loops and against the numbers of a run of the authors' trainer
    assert "RRHF hand-made example: minirlhf == plain loop: True" in text
    assert "the walk-through's 3.7421 / 1.0950 / 4.8371, within the rounding of its printed scores: True" in text
    assert "gradient of L_rank = (mis-ordered pairs as the worse) - (as the better): True" in text
    assert "the authors' code on 1-D rewards: -2.5" in text and "rrhf_loss on (1, K): 2.8 = plain loop: True" in text
    assert "batch of 3 queries with a candidate mask = the mean of the per-query losses: True" in text
    # 2. group advantages, aggregation, the loss value at ratio 1
    assert "every scale and RLOO == plain loop: True" in text
    assert "RLOO's advantages sum to 0 in every group: True" in text
    assert "RLOO = G/(G-1) x (r - group mean), i.e. scale='none' x 4/3: True" in text
    assert "prompt C (equal rewards): every advantage exactly 0 under every scale, no NaN: True" in text
    assert "weights from autograd == the table's formulas, 0 on padding: True" in text
    assert "loss at ratio 1 == -aggregate(A) for all three: True" in text
    assert "prompt C (equal rewards): gradient exactly 0 on its 4 responses: True" in text
    # 3. GRPOTrainer and RLOO on one rollout: where the KL goes, and the loss value
    assert "GRPO: advantages from the scores alone (group_advantages), KL = k3 per token: True" in text
    assert "RLOO: advantages from score - β Σ_t k1 (rloo_advantages), k1 per token: True" in text
    assert "policy loss at ratio 1 = -token_mean(A), kl_loss = token_mean(k3): True" in text
    assert "-token_mean(A) = -Cov(|y|, A) / mean|y|: True" in text
    assert re.search(r"∂k3/∂log π = 1 - π_ref/π on every token .*: True", text)
    assert "every iteration logged, GRPO and RLOO: True;  first-minibatch ratio exactly 1 in every iteration: True" \
        in text
    # 4. the comparison: every method, one start, best-of-n at its bound, the table and the figure shown
    assert "every method in the report: True;  every trained method's curve starts at the same evaluation of sft: True" \
        in text
    assert "best-of-n's KL is the bound log n - (n-1)/n: True" in text
    assert "frontier.png exists: True" in text
    outputs = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    assert any("| rrhf |" in d.get("text/markdown", "") and "| best-of-" in d["text/markdown"] for d in outputs), \
        "compare.md not shown"
    assert sum("image/png" in d for d in outputs) >= 2, "the GRPO/RLOO curves and frontier.png are not both shown"


def check_run_doctor(nb):
    text = text_of(nb)
    for rule in ("zero_std_groups", "truncated", "ratio_outliers"):     # each broken run, diagnosed by its rule
        assert f": {rule}: " in text, f"the doctor did not name {rule}"
    assert "stopped: iteration" in text and "--stop_on names it" in text
    assert has_plot(nb), "doctor.png not shown"


def check_gold_sandbox(nb):
    text = text_of(nb)
    assert "a positive loop" in text and "gold/ trained in" in text, "the gold's parts on hand-made texts not shown"
    assert text.count("agrees with the gold on") >= 2, "each proxy's agreement with the gold not shown"
    assert "best-of-n on a pool of" in text and has_plot(nb), "best-of-n's gold and proxy curves not drawn"


def check_verifiable_rewards(nb):
    text = text_of(nb)
    assert "a training problem among the held-out (either order): False" in text, "the splits are not shown apart"
    assert "the recipe's 1.0" in text and "the recipe's 0.1" in text, "the reward function is not compared"
    assert "formula 0.6429   every subset 0.6429" in text, "pass@2 of 3 right in 8 is not checked by enumeration"
    assert "run_arithmetic took" in text and "| grpo |" in text and has_plot(nb), "GRPO's before/after not shown"


CHECKS = {"exercises_rlhf.ipynb": check_exercises, "07_verifiable_rewards.ipynb": check_verifiable_rewards,
          "08_run_doctor.ipynb": check_run_doctor,
          "09_gold_sandbox.ipynb": check_gold_sandbox, "tour.ipynb": check_tour,
          "01_gpt_and_sampler.ipynb": check_gpt_and_sampler, "02_reward_models.ipynb": check_reward_models,
          "03_ppo_by_hand.ipynb": check_ppo_by_hand, "04_sentiment_rlhf.ipynb": check_sentiment_rlhf,
          "05_dpo_derivation.ipynb": check_dpo_derivation,
          "06_rrhf_grpo_rloo_compare.ipynb": check_rrhf_grpo_rloo_compare}


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


# The notebooks that train a char tokenizer as the demo does (recipes/sentiment_zh.py). 06 is not among them yet.
STAND_IN_NOTEBOOKS = ("01_gpt_and_sampler.ipynb", "02_reward_models.ipynb", "03_ppo_by_hand.ipynb", "tour.ipynb")


@pytest.mark.parametrize("name", STAND_IN_NOTEBOOKS)
def test_a_char_tokenizer_keeps_the_stand_in_and_the_texts_use_it(name):
    """Every cell that trains a char tokenizer gives it the demo's stand-in and maps the texts onto it with
    replace_unknown, so that no model learns to write byte tokens, which decode to `�` (tokenizer.py says why)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    calls = [(c.source, m.group(1)) for c in nb.cells if c.cell_type == "code"
             for m in re.finditer(r"Tokenizer\.train\(([^)]*kind=\"char\"[^)]*)\)", c.source)]
    assert calls, f"{name} trains no char tokenizer"
    for cell, arguments in calls:
        assert f'stand_in="{STAND_IN}"' in arguments, arguments
        assert re.search(r"(\w+(, \w+)*) = tok\.replace_unknown\(", cell), cell


def test_the_tour_states_the_running_time_measured_on_a_two_core_cpu():
    """The title and the introduction say the same, and what was measured: 19–25 s at the full budget, run as
    test_notebook_runs runs it (nbclient, kernel start included), on a 2-core CPU shared with other work."""
    intro = nbformat.read(ROOT / "notebooks" / "tour.ipynb", as_version=4).cells[0].source
    title, words = intro.splitlines()[0], " ".join(intro.split())
    assert title.endswith("on a 2-core CPU, in under half a minute"), title
    assert "about 20–25 seconds on a 2-core CPU" in words and "about a minute" not in words


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env):
    workdir, tmpdir = kernel_env
    nb = execute(path, workdir)
    assert not any(workdir.iterdir()), f"{path.name} wrote into the working directory: {sorted(workdir.iterdir())}"
    left = sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith(TOOL_CACHES))
    assert not left, f"{path.name} left files in its temporary directory: {left}"
    if path.name in CHECKS:                            # a notebook without an entry gets the checks above only
        CHECKS[path.name](nb)
