"""What a new user trips on at the command line (issues 12 and 15), through the real `python -m minirlhf`:
`sample --help` shows its defaults; `sample` fits --max-new-tokens to the context with one warning, and warns
on a reward-model directory; `reward --loss sigmoid_rank` trains with that loss and says it saturates; `plot`
redraws a run's plots/ under the names the run gave them. Round 2: `--version`; a near-miss config key is
answered with its full dotted name; `--key value` is read as `--key=value`; `sample` prints the prompt the
model read, cut."""
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import importlib.metadata

import pytest

from conftest import write_tiny_rl_dirs
from minirlhf import Tokenizer

TEXTS = ["这家店的菜很好吃，服务也不错", "电影太长了，有点无聊", "质量很好，下次还来", "快递很慢，包装也破了"]
BLOCK = 24
LONG = "".join(TEXTS)   # 50 characters: more than the BLOCK-token context


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "minirlhf", *map(str, argv)], capture_output=True, text=True,
                          timeout=300)


def warning_lines(r) -> list[str]:
    """stderr's warning lines (a training command's progress bar also writes to stderr)."""
    return [x for x in r.stderr.replace("\r", "\n").splitlines() if x.startswith("warning:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = write_tiny_rl_dirs(tmp_path_factory.mktemp("cli"), TEXTS, block_size=BLOCK)
    (w / "pairs.jsonl").write_text("".join(json.dumps({"prompt": "", "chosen": t, "rejected": t[::-1]},
                                                      ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    cases = {
        "help": ["sample", "--help"],
        "defaults on a small context": ["sample", "--model", w / "sft", "--prompt", "好"],
        "reward model": ["sample", "--model", w / "reward", "--prompt", "好", "--max-new-tokens", 8],
        "sigmoid_rank": ["reward", "--data", w / "pairs.jsonl", "--init", w / "sft", "--out", w / "rm_sigmoid",
                         "--loss", "sigmoid_rank", "--steps", 4, "--val_fraction=0", "--normalize=false"],
        "version": ["--version"],
        "near-miss key": ["demo", "--quick", "--ppo.kl_coeff=0.1", "--out", w / "never_demo"],
        "spaced values": ["dpo", "--data", w / "pairs.jsonl", "--init", w / "sft", "--out", w / "dpo_spaced",
                          "--steps", 2, "--lr", "0.002", "--beta", "0.3", "--val_fraction", "0"],
        "stray value": ["dpo", "--data", w / "pairs.jsonl", "--init", w / "sft", "--out", w / "never_dpo",
                        "--lr", "--overwrite", "0.002"],
        "long prompt": ["sample", "--model", w / "sft", "--prompt", LONG, "--max-new-tokens", 8, "--n", 2],
        "dpo on a reward model": ["dpo", "--data", w / "pairs.jsonl", "--init", w / "reward", "--out", w / "dpo_rm",
                                  "--steps", 1, "--val_fraction=0"],
        "texts.csv": ["pretrain", "--text", w / "texts.csv", "--out", w / "never_pretrain"],
        "pretrain help": ["pretrain", "--help"],
    }
    (w / "texts.csv").write_text("text\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(cases, pool.map(lambda argv: cli(*argv), cases.values())))
    return w, done


def test_sample_help_shows_the_defaults(world):
    r = world[1]["help"]
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for default in ("(default: 4)", "(default: 48)", "(default: 1.0)", "(default: 0)", "(default: cpu)"):
        assert default in text, default


def test_sample_fits_max_new_tokens_to_the_context_with_one_warning(world):
    w, done = world
    r = done["defaults on a small context"]
    assert r.returncode == 0, r.stderr
    room = BLOCK - len(Tokenizer.from_file(w / "sft" / "tokenizer.json").encode_prompt("好"))
    assert r.stderr.strip().splitlines() == [f"warning: --max-new-tokens 48 cut to {room}: the prompt takes "
                                             f"{BLOCK - room} of the model's {BLOCK} positions (block_size)"]
    samples = r.stdout.strip().splitlines()
    assert len(samples) == 4 and all(s.startswith("好") for s in samples)


def test_sample_warns_on_a_reward_model_directory(world):
    w, done = world
    r = done["reward model"]
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a reward model: sampling its trunk" in lines[0], lines
    assert len(r.stdout.strip().splitlines()) == 4


def test_reward_trains_with_sigmoid_rank_and_says_it_saturates(world):
    w, done = world
    r = done["sigmoid_rank"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x for x in warning_lines(r) if "sigmoid_rank" in x] == [
        "warning: --loss sigmoid_rank is the original Chinese rank-list example's plain-sigmoid loss, there for "
        "teaching: it saturates (a confidently wrong pair gets no gradient); log σ (ranking, pairwise) is the "
        "right loss"]
    out = w / "rm_sigmoid"
    assert json.loads((out / "train_config.json").read_text())["loss"] == "sigmoid_rank"
    losses = [json.loads(x)["reward/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(-1 < x < 0 for x in losses)   # -mean σ(·): what no log σ loss can be


def test_plot_redraws_a_trainers_plots_under_the_same_names(world, tmp_path):
    w, done = world
    assert done["sigmoid_rank"].returncode == 0
    run = w / "rm_sigmoid"
    shutil.copy(run / "metrics.jsonl", tmp_path / "metrics.jsonl")
    r = cli("plot", "--run", tmp_path)
    assert r.returncode == 0, r.stderr
    drew = sorted(p.name for p in (run / "plots").glob("*.png"))   # by the trainer (Run.finish)
    assert "reward_model.png" in drew and sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == drew
    assert sorted(r.stdout.split()) == sorted(str(tmp_path / "plots" / n) for n in drew)


def test_version_prints_the_package_version(world):
    r = world[1]["version"]
    assert r.returncode == 0 and r.stdout == f"minirlhf {importlib.metadata.version('minirlhf')}\n"
    import minirlhf
    assert minirlhf.__version__ == importlib.metadata.version("minirlhf")


def test_a_near_miss_key_is_answered_with_its_full_dotted_name(world):
    w, done = world
    r = done["near-miss key"]
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (w / "never_demo").exists()
    assert r.stderr.startswith("unknown config key 'ppo.kl_coeff' (did you mean ppo.kl_coef?); valid keys: "
                               "ppo.max_new_tokens, ppo.temperature,")
    assert " ppo.seed," not in r.stderr   # a stage takes the demo's seed: not a key to offer


def test_a_config_key_and_its_value_may_be_two_words(world):
    w, done = world
    r = done["spaced values"]
    assert r.returncode == 0, r.stderr[-2000:]
    recorded = json.loads((w / "dpo_spaced" / "train_config.json").read_text())
    assert (recorded["lr"], recorded["beta"], recorded["val_fraction"], recorded["steps"]) == (0.002, 0.3, 0.0, 2)


def test_a_value_away_from_its_key_is_not_taken_for_it(world):
    w, done = world
    r = done["stray value"]      # argparse takes --overwrite, leaving --lr and 0.002, which were not side by side
    assert r.returncode == 2 and not (w / "never_dpo").exists()
    assert r.stderr.strip() == "--lr needs a value: config overrides are written --lr=VALUE"


def test_sample_prints_the_prompt_it_read_when_it_is_cut(world):
    w, done = world
    r = done["long prompt"]
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.from_file(w / "sft" / "tokenizer.json")
    keep = BLOCK - min(8, BLOCK // 2)       # sampling.fit_to_context keeps the prompt's end
    read = tok.decode(tok.encode_prompt(LONG)[-keep:])
    assert LONG.endswith(read) and len(read) < len(LONG)
    samples = r.stdout.strip().splitlines()
    assert len(samples) == 2 and all(s.startswith("…" + read) and LONG[:-len(read)] not in s for s in samples)


def test_dpo_warns_when_its_init_is_a_reward_model(world):
    r = world[1]["dpo on a reward model"]
    assert r.returncode == 0, r.stderr[-2000:]
    lines = warning_lines(r)
    assert len(lines) == 1 and "is a reward model: training its trunk, which was trained to score text" in lines[0]


def test_pretrain_names_the_accepted_formats_and_says_when_to_use_bpe(world):
    w, done = world
    r = done["texts.csv"]
    assert r.returncode == 2 and r.stderr.strip() == (
        f"{w / 'texts.csv'}: a text file must be .txt (one document a line) or .jsonl "
        "({\"text\": ...} a line), got '.csv'"), r.stderr
    assert not (w / "never_pretrain").exists()
    text = " ".join(done["pretrain help"].stdout.split())
    assert "use bpe for English" in text, text
