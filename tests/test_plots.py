"""plots.py: one table names every figure; a constant β gets no panel; no metric is left undrawn."""
import pytest

from minirlhf.plots import FIGURES, OTHER, figures_for, plot_run

pytest.importorskip("matplotlib")


def ppo_rows(kl_coefs):
    return [{"iteration": i + 1, "env/reward_mean": 0.1 * i, "objective/kl": 0.2 * i, "objective/kl_coef": beta,
             "objective/entropy": 3.0 - 0.1 * i, "tokens/response_len": 20 - i, "ppo/policy_loss": -0.01 * i,
             "ppo/value_loss": 0.5, "ppo/ratio_mean": 1.0, "time/update_s": 0.3, "note": "text is not plotted"}
            for i, beta in enumerate(kl_coefs)]


def test_constant_beta_gets_no_panel_and_response_length_has_one():
    figs = figures_for(ppo_rows([0.3, 0.3, 0.3]), "iteration")
    assert figs["rlhf.png"][1] == ["env/reward_mean", "objective/kl", "objective/entropy", "tokens/response_len"]
    assert all("objective/kl_coef" not in keys for _, keys in figs.values())


def test_moving_beta_keeps_its_panel():
    figs = figures_for(ppo_rows([0.3, 0.25, 0.2]), "iteration")
    assert "objective/kl_coef" in figs["rlhf.png"][1]


def test_every_other_numeric_metric_lands_in_other_png():
    rows = ppo_rows([0.3, 0.3])
    figs = figures_for(rows, "iteration")
    assert set(figs) == {"rlhf.png", "ppo_losses.png", OTHER}
    assert figs[OTHER][1] == ["ppo/ratio_mean", "time/update_s"]
    drawn = [k for _, keys in figs.values() for k in keys]
    assert len(drawn) == len(set(drawn))                       # each metric in one figure only
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))} - {"iteration"}
    assert set(drawn) == numeric - {"objective/kl_coef"}


def test_a_figure_is_drawn_only_for_runs_that_logged_its_first_metric():
    rows = [{"step": s, "train/loss": 5.0 - s, "val/loss": 5.5 - s, "time/elapsed_s": float(s)} for s in (1, 2)]
    assert set(figures_for(rows, "step")) == {"lm_loss.png", OTHER}
    rows = [{"step": s, "reward/loss": 0.7, "val/loss": 0.69, "reward/accuracy": 0.5} for s in (1, 2)]
    assert set(figures_for(rows, "step")) == {"reward_model.png"}
    assert set(FIGURES) >= {"lm_loss.png", "reward_model.png", "rlhf.png", "ppo_losses.png"}


def test_plot_run_writes_the_named_files(tmp_path):
    rows = ppo_rows([0.3, 0.3, 0.3])
    paths = plot_run(tmp_path, rows)
    assert sorted(p.name for p in paths) == sorted(figures_for(rows, "iteration"))
    assert all(p.parent == tmp_path / "plots" and p.stat().st_size > 0 for p in paths)


def test_rlhf_figure_is_titled_by_the_method_and_promises_a_judge_only_when_there_is_one():
    from minirlhf.plots import figures_for
    grpo = [{"iteration": i, "env/reward_mean": 0.1 * i, "objective/kl": 0.1, "grpo/loss": 0.0} for i in (1, 2)]
    assert figures_for(grpo, "iteration")["rlhf.png"][0] == "GRPO: reward, KL"
    judged = [dict(r, **{"ppo/policy_loss": 0.0, "eval/judge_positive_rate": 0.5}) for r in grpo[:1]]
    title = figures_for(judged, "iteration")["rlhf.png"][0]
    assert title.startswith("PPO: reward, KL, judge") and "smaller sample" in title
