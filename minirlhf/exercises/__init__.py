"""Classroom exercises that grade themselves (notebooks/exercises_rlhf.ipynb), ARENA / minitorch style.

    from minirlhf.exercises import check_compute_gae
    check_compute_gae(my_compute_gae)      # ✔ compute_gae: all N checks passed, or an AssertionError

Each `check_<name>(fn)` runs the student's `fn` next to minirlhf's own function on random cases (several
seeds and shapes, garbage stored under the padding) and on hand-built cases whose answer is known without
any reference (a perfect value function gives zero advantage, padding changes nothing, ratio 1 makes the
PPO loss −mean(A), ...). A failure raises AssertionError naming the case, with the expected and actual
values and a HINT; when the output is what a known mistake gives, the hint names the mistake.

`grade(globals())` runs every check whose function a script defines and prints one line per exercise;
`grade(globals(), ["top_p_filter"])` (or `["4"]`) runs only the exercises named or numbered.
`python -m minirlhf.exercises.blank` makes the students' notebook or .py file from the solved notebook.
"""
import sys

from .advantages_checks import check_compute_gae, check_kl_penalty, check_shape_rewards
from .grpo_checks import check_group_advantages
from .ops_checks import check_masked_mean, check_masked_whiten, check_shifted_logprobs
from .overopt_checks import check_best_of_n_expectation
from .policy_checks import check_dpo_loss, check_ppo_policy_loss
from .reward_checks import check_pairwise_loss, check_ranking_loss
from .sampling_checks import check_top_p_filter

# In the notebook's order; check_<name> grades the function <name>.
__all__ = ["check_masked_mean", "check_masked_whiten", "check_shifted_logprobs", "check_top_p_filter",
           "check_pairwise_loss", "check_ranking_loss", "check_kl_penalty", "check_shape_rewards",
           "check_compute_gae", "check_ppo_policy_loss", "check_dpo_loss", "check_best_of_n_expectation",
           "check_group_advantages"]

EXERCISES = tuple(name.removeprefix("check_") for name in __all__)


def selected(names) -> list[str]:
    """The exercises that `names` (a script's command-line arguments) name, by name or number, in the notebook's
    order; every exercise when there are none. An unknown one raises ValueError listing the valid names."""
    if not names:
        return list(EXERCISES)
    numbers = {str(i): name for i, name in enumerate(EXERCISES, 1)}
    unknown = [n for n in names if n not in EXERCISES and n not in numbers]
    if unknown:
        listed = ", ".join(f"{i} {name}" for i, name in numbers.items())
        raise ValueError(f"no exercise {unknown[0]!r}; give a name or a number: {listed}")
    chosen = {numbers.get(n, n) for n in names}
    return [name for name in EXERCISES if name in chosen]


def grade(namespace: dict, names=()) -> int:
    """Check every exercise's function found in `namespace` (a script's globals()), or only those that `names`
    gives (by name or number: `python exercises.py top_p_filter` or `... 4`), carrying on after a failure;
    print ✔ or ✘ (with the hint) per exercise and a total. Returns 0 when all pass, 1 when one fails, and 2
    (after a one-line error on stderr) when a name is not an exercise's."""
    try:
        chosen = selected(names)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    passed = 0
    for name in chosen:
        if not callable(namespace.get(name)):
            print(f"✘ {name}: there is no function named {name}")
            continue
        try:
            globals()[f"check_{name}"](namespace[name])
            passed += 1
        except AssertionError as e:
            print(f"✘ {e}")
    print(f"{passed} of {len(chosen)} exercises pass")
    return 0 if passed == len(chosen) else 1
