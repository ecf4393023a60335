"""Classroom exercises that grade themselves (notebooks/exercises_rlhf.ipynb).

    from minirlhf.exercises import check_compute_gae
    check_compute_gae(my_compute_gae)      # ✔ compute_gae: all N checks passed, or an AssertionError

`python -m minirlhf.exercises.blank notebooks/exercises_rlhf.ipynb exercises_blank.ipynb` turns the
solved notebook into the one students get.
"""
from .checks import (check_compute_gae, check_kl_penalty, check_masked_mean, check_pairwise_loss,
                     check_ppo_policy_loss, check_ranking_loss, check_shape_rewards)

__all__ = ["check_masked_mean", "check_pairwise_loss", "check_ranking_loss", "check_kl_penalty",
           "check_compute_gae", "check_ppo_policy_loss", "check_shape_rewards"]
