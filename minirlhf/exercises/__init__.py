"""Classroom exercises that grade themselves (notebooks/exercises_rlhf.ipynb), ARENA / minitorch style.

    from minirlhf.exercises import check_compute_gae
    check_compute_gae(my_compute_gae)      # ✔ compute_gae: all N checks passed, or an AssertionError

Each `check_<name>(fn)` runs the student's `fn` next to minirlhf's own function on random cases (several
seeds and shapes, garbage stored under the padding) and on hand-built cases whose answer is known without
any reference (a perfect value function gives zero advantage, padding changes nothing, ratio 1 makes the
PPO loss −mean(A), ...). A failure raises AssertionError naming the case, with the expected and actual
values and a HINT; when the output is what a known mistake gives, the hint names the mistake.

`grade(globals())` runs every check whose function a script defines and prints one line per exercise.
`python -m minirlhf.exercises.blank` makes the students' notebook or .py file from the solved notebook.
"""
from .advantages_checks import check_compute_gae, check_kl_penalty, check_shape_rewards
from .ops_checks import check_masked_mean, check_masked_whiten, check_shifted_logprobs
from .policy_checks import check_dpo_loss, check_ppo_policy_loss
from .reward_checks import check_pairwise_loss, check_ranking_loss
from .sampling_checks import check_top_p_filter

# In the notebook's order; check_<name> grades the function <name>.
__all__ = ["check_masked_mean", "check_masked_whiten", "check_shifted_logprobs", "check_top_p_filter",
           "check_pairwise_loss", "check_ranking_loss", "check_kl_penalty", "check_shape_rewards",
           "check_compute_gae", "check_ppo_policy_loss", "check_dpo_loss"]

EXERCISES = tuple(name.removeprefix("check_") for name in __all__)


def grade(namespace: dict) -> int:
    """Check every exercise's function found in `namespace` (a script's globals()), carrying on after a
    failure; print ✔ or ✘ (with the hint) per exercise and a total. Returns 0 when all pass, else 1."""
    passed = 0
    for name in EXERCISES:
        if not callable(namespace.get(name)):
            print(f"✘ {name}: there is no function named {name}")
            continue
        try:
            globals()[f"check_{name}"](namespace[name])
            passed += 1
        except AssertionError as e:
            print(f"✘ {e}")
    print(f"{passed} of {len(EXERCISES)} exercises pass")
    return 0 if passed == len(EXERCISES) else 1
