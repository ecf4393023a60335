"""A finished run directory is reused: the stage hashes of the demo's and the comparison's presets are the ones
their runs recorded (a change here re-trains every user's finished runs), and a renamed setting changes none."""
import dataclasses
from typing import ClassVar

from minirlhf.recipes.compare import METHODS, method_settings, quick_compare_config
from minirlhf.recipes.demo_config import DemoConfig, quick_config, stage_hashes
from minirlhf.recipes.stages import stage_digest, stage_record

# what stage.json recorded in runs of `minirlhf demo --quick`, `compare --quick` and `demo` made before issue 19
QUICK = {"pretrain": "08f46836babeafce", "sft": "e31e2b2f154127ec", "reward": "6b2b2b425844c0cc",
         "policy": "ba3b4d3170ddefc5"}
FULL = {"pretrain": "44043f931a4ccbc9", "sft": "34b76a7cfbcaac93", "reward": "4b952abb1bbc9b06",
        "policy": "b57be93fe19a732f"}
QUICK_METHODS = {"ppo": "7b76c9f786448018", "grpo": "2bc9765d432f2edf", "rloo": "8e09e2c850c5885d",
                 "dpo": "eab53c1d5f10ca8f", "rrhf": "f8551568f75f79fc", "best_of_n": "98020c684c633279"}


def test_the_demo_presets_keep_their_stage_hashes():
    assert stage_hashes(quick_config()) == QUICK
    assert stage_hashes(DemoConfig()) == FULL


def test_the_comparison_methods_keep_their_stage_hashes():
    config = quick_compare_config()
    upstream = stage_hashes(config.stage("demo"))["reward"]
    assert {m: stage_digest(upstream, method_settings(m, config)) for m in METHODS} == QUICK_METHODS


@dataclasses.dataclass
class Old:
    clip: float = 1.0
    steps: int = 3


@dataclasses.dataclass
class New:
    renamed: ClassVar[dict[str, str]] = {"clip": "max_norm"}
    max_norm: float = 1.0
    steps: int = 3


def test_a_renamed_setting_is_recorded_under_its_old_name_so_no_hash_changes():
    assert list(stage_record(New())) == ["clip", "steps"]
    assert stage_digest("", stage_record(New(max_norm=0.5))) == stage_digest("", stage_record(Old(clip=0.5)))
    assert stage_digest("", stage_record(New(max_norm=0.5))) != stage_digest("", stage_record(New()))
