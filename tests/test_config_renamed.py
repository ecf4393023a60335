"""A renamed setting (config.py's `renamed` ClassVar): the old key is still read, with one FutureWarning, on the
command line, in a recipe's groups, in an old run's train_config.json; --help lists only the new name."""
import dataclasses
import json
import warnings
from typing import ClassVar

import pytest

from minirlhf.config import TrainConfig, apply_overrides, config_help, from_dict, renamed_keys
from minirlhf.errors import InputError
from minirlhf.recipes.sentiment_zh import DemoConfig
from minirlhf.reward import RewardConfig
from minirlhf.run import resume_config
from minirlhf.sft import SFTConfig


def test_an_old_key_on_the_command_line_sets_the_new_one_with_a_warning():
    with pytest.warns(FutureWarning, match=r"^--grad_clip is now --max_grad_norm$"):
        c = apply_overrides(SFTConfig(), ["--grad_clip=0.5"])
    assert c.max_grad_norm == 0.5
    with pytest.warns(FutureWarning, match=r"^--sft\.grad_clip is now --sft\.max_grad_norm$"):
        d = apply_overrides(DemoConfig(), ["--sft.grad_clip=0.25"])
    assert d.sft.max_grad_norm == 0.25 and d.reward.max_grad_norm == 1.0


def test_the_new_key_gives_no_warning_and_a_bad_value_names_the_key_given():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_overrides(RewardConfig(), ["--max_grad_norm=0"]).max_grad_norm == 0
    with pytest.warns(FutureWarning), pytest.raises(InputError, match="--grad_clip: expected float"):
        apply_overrides(RewardConfig(), ["--grad_clip=big"])


def test_an_old_key_out_of_its_group_is_answered_with_the_new_dotted_names():
    with pytest.raises(InputError, match=r"did you mean .*sft\.max_grad_norm"):
        apply_overrides(DemoConfig(), ["--grad_clip=0.5"])


def test_help_lists_the_new_name_only():
    assert "--max_grad_norm=" in config_help(SFTConfig) and "grad_clip" not in config_help(SFTConfig)
    assert "grad_clip" not in config_help(DemoConfig()) and "renamed" not in config_help(RewardConfig)
    assert "renamed" not in {f.name for f in dataclasses.fields(TrainConfig)}


def test_from_dict_reads_an_old_record_and_the_new_name_wins_when_both_are_there():
    with pytest.warns(FutureWarning, match="--grad_clip is now --max_grad_norm"):
        assert from_dict(RewardConfig, {"grad_clip": 0.2, "steps": 3}).max_grad_norm == 0.2
    with pytest.warns(FutureWarning):
        assert from_dict(RewardConfig, {"grad_clip": 0.2, "max_grad_norm": 0.7}).max_grad_norm == 0.7
    old_demo = dataclasses.asdict(DemoConfig(sft=SFTConfig(max_grad_norm=0.5)))   # its ppo group keeps max_grad_norm
    for group in ("pretrain", "sft", "reward"):
        old_demo[group]["grad_clip"] = old_demo[group].pop("max_grad_norm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert from_dict(DemoConfig, old_demo) == DemoConfig(sft=SFTConfig(max_grad_norm=0.5))
    assert sorted(str(w.message) for w in caught) == [f"--{g}.grad_clip is now --{g}.max_grad_norm"
                                                      for g in ("pretrain", "reward", "sft")]


def test_renames_of_a_subclass_add_to_its_bases():
    @dataclasses.dataclass
    class Longer(TrainConfig):
        renamed: ClassVar[dict[str, str]] = {"epochs": "steps"}

    assert renamed_keys(Longer) == {"grad_clip": "max_grad_norm", "epochs": "steps"}
    with pytest.warns(FutureWarning, match="--epochs is now --steps"):
        assert apply_overrides(Longer(), ["--epochs=7"]).steps == 7


def test_resuming_a_run_recorded_under_the_old_name_changes_nothing(tmp_path):
    record = {**dataclasses.asdict(SFTConfig(max_grad_norm=0.3)), "trainer": "sft"}
    record["grad_clip"] = record.pop("max_grad_norm")
    (tmp_path / "train_config.json").write_text(json.dumps(record))
    with pytest.warns(FutureWarning):
        assert resume_config(tmp_path, "sft", SFTConfig, []) == SFTConfig(max_grad_norm=0.3)
    with pytest.warns(FutureWarning), pytest.raises(InputError, match="--allow-changed=max_grad_norm"):
        resume_config(tmp_path, "sft", SFTConfig, ["--max_grad_norm=0.5"])
    with pytest.warns(FutureWarning):
        assert resume_config(tmp_path, "sft", SFTConfig, ["--grad_clip=0.5"], "grad_clip").max_grad_norm == 0.5


def test_grpos_epochs_is_ppo_epochs_everywhere_an_old_name_can_come_from():
    from minirlhf.grpo import GRPOConfig, RLOOConfig
    from minirlhf.recipes.stages import stage_record
    for cls in (GRPOConfig, RLOOConfig):
        with pytest.warns(FutureWarning, match=r"^--epochs is now --ppo_epochs$") as caught:
            assert cls(epochs=3) == cls(ppo_epochs=3)                      # a notebook's constructor call
        assert caught[0].filename == __file__                              # the warning names the caller's line
        with pytest.warns(FutureWarning, match=r"^--epochs is now --ppo_epochs$"):
            assert apply_overrides(cls(), ["--epochs=2"]).ppo_epochs == 2  # the command line
        with pytest.warns(FutureWarning):
            assert from_dict(cls, {"epochs": 5}).ppo_epochs == 5          # an old run's train_config.json
        assert stage_record(cls(ppo_epochs=2))["epochs"] == 2 and "ppo_epochs" not in stage_record(cls())
    assert GRPOConfig().ppo_epochs == 1 and "--epochs" not in config_help(GRPOConfig)
