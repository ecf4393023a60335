"""A verifiable reward, learnt from scratch on a laptop CPU: multi-digit addition, "12+345=" -> "<answer>357</answer>".

    ALPHABET ──char tokenizer + a random GPT-2──▶ init/    digits are single tokens
    train problems, answered by an imperfect teacher ──SFT──▶ sft/   it copies the teacher's slips
    train prompts ──GRPO, RLOO (and PPO), scored by the reward function──▶ grpo/ rloo/ ppo/
    before (sft) vs after (each method), on held-out and on harder problems ──▶ arithmetic.json, arithmetic.md,
    arithmetic.png (accuracy and response lengths over training)

Room for RL. SFT learns what its demonstrations show, mistakes included: half of them (`teacher_slips`) come from a
teacher who forgets its first carry (58+67 -> 115), so sft/ learns to write that slip too, on top of its own
errors. The reward knows nothing of the teacher: it checks the sum. So the RL stages have something to remove that
more imitation would not. (With a perfect teacher, `--teacher_slips=0`, and a shorter SFT, RL moved held-out
accuracy by about 2 points in the tuning runs, within noise: the README says how they were run.)

No reward model: the reward is a function of the text (arithmetic_task.arithmetic_reward, TinyZero's 1.0 for the
right sum, 0.1 for a well-formed wrong one, 0 otherwise), so there is nothing to over-optimise but the task itself.
Every figure is reported for held-out problems of the trained digits (never seen in SFT or RL, in either order)
and for harder ones (an operand with more digits than any trained): greedy accuracy, pass@1/4/16 from
`eval_samples` samples at temperature 1 (Chen et al. 2021's unbiased estimator), the share of well-formed
answers, and the mean response length (tokens, EOS included) of right and of wrong samples.

CPU: `minirlhf arithmetic` (the README gives the measured minutes on 2 cores), `--quick` toy size (seconds).
GPU: `minirlhf arithmetic --device cuda` (and larger --n_layer/--n_embd).

Simplifications, said out loud: the RL prompts are the SFT problems' prompts (one training split); there is no
"think" section (TinyZero's <think>), so a right answer's length is fixed by its digits and only wrong answers'
lengths can move; each method starts from the same sft/ and is its own stage (cached, like the demo's).
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..checkpoint import load_json, save_json
from ..config import validate
from ..data import Demonstration
from ..errors import InputError
from ..grpo import GRPOConfig, RLOOConfig, train_grpo
from ..model import GPT, GPTConfig
from ..plots import figure, save_figure
from ..ppo import PPOConfig, train_ppo
from ..runtime import machine, resolve_device, seed_everything
from ..sft import SFTConfig, train_sft
from ..tokenizer import BYTE_TOKENS, SPECIALS, Tokenizer
from . import arithmetic_task as task
from .demo_report import print_header
from .stages import StagedConfig, Stages, chained_hashes, check_out_dir, mark_done, stage_digest, stage_record

METHODS = ("grpo", "rloo", "ppo")
KS = (1, 4, 16)


def _sft() -> SFTConfig:
    return SFTConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=20, val_fraction=0.02, eval_every=250)


def _grpo() -> GRPOConfig:
    return GRPOConfig(iterations=150, batch_size=256, group_size=8, max_new_tokens=24, lr=2e-4, kl_coef=0.0,
                      ppo_epochs=1, num_minibatches=1)


def _rloo() -> RLOOConfig:
    return RLOOConfig(iterations=150, batch_size=256, group_size=8, max_new_tokens=24, lr=2e-4, kl_coef=0.0,
                      ppo_epochs=1, num_minibatches=1)


def _ppo() -> PPOConfig:
    return PPOConfig(iterations=150, batch_size=256, max_new_tokens=24, lr=2e-4, kl_coef=0.0, ppo_epochs=1,
                     num_minibatches=1)


@dataclass
class ArithmeticConfig(StagedConfig):
    seed: int = 0
    """Seed of every stage (problems, init, sampling)."""
    device: str = "cpu"
    """cpu or cuda, for every stage."""
    min_digits: int = 1
    """Fewest digits of an operand."""
    train_digits: int = 3
    """Most digits of an operand in the training and held-out problems."""
    hard_digits: int = 4
    """Most digits of an operand in the harder problems (at least one operand has more than train_digits)."""
    train_problems: int = 20000
    """Training problems: SFT's demonstrations, and RL's prompt pool."""
    heldout_problems: int = 500
    """Held-out problems of the trained digits (none is a training problem, in either order)."""
    harder_problems: int = 200
    """Harder problems (more digits than any trained)."""
    teacher_slips: float = 0.5
    """Share of the SFT demonstrations written by a teacher who forgets its first carry (58+67 -> 115): the
    imperfection SFT copies and a verifiable reward does not reward (0: a perfect teacher)."""
    n_layer: int = 2
    """The GPT-2's layers."""
    n_head: int = 4
    """Its attention heads."""
    n_embd: int = 128
    """Its width."""
    block_size: int = 40
    """Its context: a prompt of two hard_digits operands and the longest response must fit."""
    sft: SFTConfig = field(default_factory=_sft)
    """Stage 2, SFT on the training problems with their teacher's answers, the loss on the answer only
    (--sft.<key>)."""
    grpo: GRPOConfig = field(default_factory=_grpo)
    """GRPO from sft/ with the reward function (--grpo.<key>): G = 8 answers a prompt, β = 0 (as DAPO and
    Dr. GRPO: the reward is verifiable, there is no reward model to be fooled)."""
    rloo: RLOOConfig = field(default_factory=_rloo)
    """RLOO, the same budget (--rloo.<key>): leave-one-out baseline over the G answers."""
    ppo: PPOConfig = field(default_factory=_ppo)
    """PPO, the same number of samples (--ppo.<key>): a value head and GAE instead of a group baseline."""
    methods: str = ",".join(METHODS)
    """Comma-separated RL methods to run, from grpo, rloo, ppo."""
    eval_samples: int = 16
    """Samples at temperature 1 per held-out or harder problem (pass@k needs k <= eval_samples)."""
    curve_every: int = 15
    """RL iterations between the training curve's points (0: no curve)."""
    curve_problems: int = 64
    """Problems of each split a curve point samples (curve_samples each)."""
    curve_samples: int = 4
    """Samples per problem at a curve point."""
    quick: bool = False
    """Set by --quick (toy sizes): the report then says its numbers mean nothing."""

    def __post_init__(self):
        validate(self, positive=("min_digits", "train_digits", "hard_digits", "train_problems", "heldout_problems",
                                 "harder_problems", "n_layer", "n_head", "n_embd", "block_size", "eval_samples",
                                 "curve_problems", "curve_samples"), non_negative=("curve_every",),
                 unit_interval=("teacher_slips",))
        if not self.min_digits <= self.train_digits < self.hard_digits:
            raise InputError(f"--min_digits <= --train_digits < --hard_digits is needed, got {self.min_digits}, "
                             f"{self.train_digits}, {self.hard_digits}")
        unknown = set(self.method_list()) - set(METHODS)
        if unknown or not self.method_list():
            raise InputError(f"--methods: unknown or none ({', '.join(sorted(unknown))}); choose from "
                             f"{', '.join(METHODS)}")
        if self.n_embd % self.n_head:
            raise InputError(f"--n_embd={self.n_embd} must be a multiple of --n_head={self.n_head}")
        try:
            task.check_splits_possible(self.heldout_problems, self.min_digits, self.train_digits)
        except ValueError as e:
            raise InputError(f"--heldout_problems: {e}") from None
        for name in self.method_list():
            need = answer_tokens(self.train_digits)
            if getattr(self, name).max_new_tokens < need:
                raise InputError(f"--{name}.max_new_tokens={getattr(self, name).max_new_tokens} is too small: the "
                                 f"longest training answer takes {need} tokens (EOS included)")
        room = 1 + len(task.Problem(10 ** self.hard_digits - 1, 10 ** self.hard_digits - 1).prompt)
        longest = max([eval_tokens(self)] + [getattr(self, m).max_new_tokens for m in self.method_list()])
        if self.block_size < room + longest:
            raise InputError(f"--block_size={self.block_size} is too small: the longest prompt takes {room} tokens "
                             f"and the longest response {longest}")

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]


def answer_tokens(digits: int) -> int:
    """Tokens of the longest answer to two operands of `digits` digits, EOS included."""
    return len(task.OPEN) + (digits + 1) + len(task.CLOSE) + 1


def eval_tokens(config: ArithmeticConfig) -> int:
    """The evaluation's length cap: the longest harder answer and 2 tokens of slack (longer is wrong anyway)."""
    return answer_tokens(config.hard_digits) + 2


def quick_arithmetic_config() -> ArithmeticConfig:
    """`--quick`: toy sizes, the same pipeline (what the tests run)."""
    c = ArithmeticConfig()
    small = dict(iterations=4, batch_size=16, num_minibatches=1)
    return replace(c, quick=True, train_digits=2, hard_digits=3, train_problems=400, heldout_problems=16,
                   harder_problems=16, n_layer=1, n_head=2, n_embd=32, block_size=36,
                   sft=replace(c.sft, steps=20, batch_size=16, warmup_steps=2, eval_every=10),
                   grpo=replace(c.grpo, group_size=4, **small), rloo=replace(c.rloo, group_size=4, **small),
                   ppo=replace(c.ppo, **small), eval_samples=16, curve_every=2, curve_problems=4, curve_samples=2)


def splits(config: ArithmeticConfig) -> task.Splits:
    return task.make_splits(config.train_problems, config.heldout_problems, config.harder_problems,
                            config.min_digits, config.train_digits, config.hard_digits, config.seed)


def demonstrations(problems: list[task.Problem], slips: float, seed: int) -> list[Demonstration]:
    """SFT's data: each problem with its teacher's answer, a seeded share `slips` of them with the first carry
    forgotten (task.Problem.teacher_answer)."""
    rng = random.Random(seed + 1)
    return [Demonstration(p.prompt, p.teacher_answer(rng.random() < slips)) for p in problems]


def stage_settings(config: ArithmeticConfig) -> dict[str, dict]:
    """What each stage's hash covers, in pipeline order; each RL method's is chained on sft's (run_method)."""
    data = {k: getattr(config, k) for k in ("min_digits", "train_digits", "hard_digits", "train_problems",
                                             "heldout_problems", "harder_problems", "teacher_slips")}
    return {"init": {"alphabet": task.ALPHABET, "model": [config.n_layer, config.n_head, config.n_embd,
                                                         config.block_size], "seed": config.seed},
            "sft": {"data": data, "sft": stage_record(config.stage("sft"))}}


def method_settings(name: str, config: ArithmeticConfig) -> dict:
    return {"method": name, "config": stage_record(config.stage(name)),
            "curve": [config.curve_every, config.curve_problems, config.curve_samples]}


def stage_hashes(config: ArithmeticConfig) -> dict[str, str]:
    return chained_hashes(stage_settings(config))


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate(model: GPT, tokenizer: Tokenizer, problems: list[task.Problem], config: ArithmeticConfig,
             seed: int) -> dict:
    """Greedy accuracy and sampled_stats over eval_samples samples a problem."""
    cap = eval_tokens(config)
    greedy, _ = task.sample_answers(model, tokenizer, problems, 1, cap, seed, greedy=True)
    texts, lengths = task.sample_answers(model, tokenizer, problems, config.eval_samples, cap, seed)
    accuracy = sum(task.score(p.prompt, t) == task.CORRECT_SCORE for p, t in zip(problems, greedy)) / len(problems)
    return {"greedy_accuracy": accuracy, **task.sampled_stats(problems, config.eval_samples, texts, lengths),
            "examples": [{"prompt": p.prompt, "greedy": g} for p, g in list(zip(problems, greedy))[:4]]}


def curve_point(model: GPT, tokenizer: Tokenizer, data: task.Splits, config: ArithmeticConfig, it: int) -> dict:
    """One point of the training curve: sampled accuracy (pass@1) and lengths on the first curve_problems of the
    held-out and of the harder split (the same problems and seed at every point: common random numbers)."""
    row = {"iteration": it}
    for split in ("heldout", "harder"):
        problems = getattr(data, split)[:config.curve_problems]
        texts, lengths = task.sample_answers(model, tokenizer, problems, config.curve_samples, eval_tokens(config),
                                        config.seed + 11)
        stats = task.sampled_stats(problems, config.curve_samples, texts, lengths, ks=(1,))
        row.update({f"{split}/{k}": v for k, v in stats.items()})
    return row


# ---------------------------------------------------------------------------------------------- the stages

def make_init(init_dir: Path, config: ArithmeticConfig) -> Tokenizer:
    """A char tokenizer holding exactly the task's characters (one token each) and a randomly initialised GPT-2."""
    tokenizer = Tokenizer.train([task.ALPHABET], len(SPECIALS) + len(BYTE_TOKENS) + len(task.ALPHABET), "char")
    seed_everything(config.seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=config.n_layer, n_head=config.n_head,
                          n_embd=config.n_embd, block_size=config.block_size))
    model.save_pretrained(init_dir, tokenizer)
    return tokenizer


def run_method(name: str, out: Path, config: ArithmeticConfig, stages: Stages, data: task.Splits,
               tokenizer: Tokenizer, show_progress: bool) -> dict:
    """Train (or reuse) one RL method from sft/ against the reward function; its curve and seconds."""
    method_dir, settings = out / name, method_settings(name, config)
    digest = stage_digest(stages.hashes["sft"], settings)
    if not stages.must_run(method_dir, digest, settings):
        return load_json(method_dir / "curve.json")
    t0, cfg, curve = time.time(), config.stage(name), []

    def on_iteration(trainer, row):
        it = row["iteration"]
        if config.curve_every and (it % config.curve_every == 0 or it == cfg.iterations):
            curve.append({**curve_point(trainer.policy, tokenizer, data, config, it),
                          "train/reward": row["env/reward_mean"], "train/response_len": row.get("tokens/response_len")})

    if config.curve_every:
        start = curve_point(GPT.from_pretrained(out / "sft").to(resolve_device(config.device)).eval(), tokenizer,
                            data, config, 0)
        curve.append(start)
    train = train_ppo if name == "ppo" else train_grpo
    train([p.prompt for p in data.train], out / "sft", None, method_dir, cfg, overwrite=True,
          reward_fn=task.arithmetic_reward, show_progress=show_progress, on_iteration=on_iteration)
    result = {"curve": curve, "seconds": round(time.time() - t0, 1)}
    save_json(method_dir / "curve.json", result)
    mark_done(method_dir, digest, result["seconds"], settings)
    return result


def run_arithmetic(out_dir="runs/arithmetic", config: ArithmeticConfig = ArithmeticConfig(),
                   show_progress: bool = True) -> dict:
    """Run (or reuse) every stage; evaluate sft and each method; write arithmetic.json/.md/.png; return the report."""
    out = Path(out_dir)
    check_out_dir(out, "arithmetic run", marker="arithmetic_config.json")
    t_start, seconds = time.time(), {}
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "arithmetic_config.json", asdict(config))
    stages = Stages(stage_hashes(config), stage_settings(config))
    data = splits(config)
    device = resolve_device(config.device)

    if stages.must_run(out / "init"):                                   # 1. tokenizer and a random GPT-2
        t0 = time.time()
        make_init(out / "init", config)
        mark_done(out / "init", stages.hashes["init"], time.time() - t0, stages.settings["init"])
    tokenizer = Tokenizer.from_file(out / "init" / "tokenizer.json")
    if stages.must_run(out / "sft"):                                    # 2. SFT on worked answers
        t0 = time.time()
        demos = demonstrations(data.train, config.teacher_slips, config.seed)
        train_sft(demos, out / "init", out / "sft", config.stage("sft"), overwrite=True, show_progress=show_progress)
        mark_done(out / "sft", stages.hashes["sft"], time.time() - t0, stages.settings["sft"])
    seconds["sft"] = load_json(out / "sft" / "stage.json")["seconds"]

    results = {}                                                        # 3. RL, one stage per method
    for name in config.method_list():
        results[name] = run_method(name, out, config, stages, data, tokenizer, show_progress)
        seconds[name] = results[name]["seconds"]

    t0 = time.time()                                                    # 4. before vs after
    load = lambda d: GPT.from_pretrained(d).to(device).eval()  # noqa: E731
    models = {"sft": load(out / "sft"), **{name: load(out / name) for name in results}}
    evaluation = {name: {split: evaluate(m, tokenizer, getattr(data, split), config, config.seed + 5)
                         for split in ("heldout", "harder")} for name, m in models.items()}
    seconds["evaluate"] = round(time.time() - t0, 1)
    seconds["this_invocation"] = round(time.time() - t_start, 1)
    report = {"task": {"train_problems": len(data.train), "heldout_problems": len(data.heldout),
                       "harder_problems": len(data.harder), "digits": [config.min_digits, config.train_digits,
                                                                       config.hard_digits],
                       "reward": "1.0 right sum in <answer></answer>, 0.1 well-formed but wrong, 0 otherwise"},
              "evaluation": evaluation, "curves": {k: v["curve"] for k, v in results.items()},
              "seconds": seconds, "config": asdict(config), "machine": machine(config.device)}
    save_json(out / "arithmetic.json", report)
    (out / "arithmetic.md").write_text(table(evaluation), encoding="utf-8")
    if any(report["curves"].values()):
        plot_curves(report["curves"], out / "arithmetic.png")
    return report


# ---------------------------------------------------------------------------------------------- the report

def fmt(x, spec=".3f") -> str:
    return "—" if x is None else format(x, spec)


def table(evaluation: dict) -> str:
    """Markdown: one row per model and split (sft is the before, each method an after)."""
    ks = [k for k in KS if f"pass@{k}" in next(iter(evaluation.values()))["heldout"]]
    head = ["model", "split", "greedy acc", "pass@1 ± se", *[f"pass@{k}" for k in ks if k > 1], "well-formed",
            "len right", "len wrong"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for split in ("heldout", "harder"):
        for name, e in evaluation.items():
            s = e[split]
            cells = [name, split, fmt(s["greedy_accuracy"]), f"{fmt(s['pass@1'])} ± {fmt(s['pass@1_se'])}",
                     *[fmt(s[f"pass@{k}"]) for k in ks if k > 1],
                     fmt(s["format_rate"]), fmt(s["length_right"], ".1f"), fmt(s["length_wrong"], ".1f")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict, path):
    """Held-out and harder accuracy, the training reward, and the lengths of right (solid) and wrong (dashed)
    held-out samples, against the RL iteration: one line per method."""
    fig = figure(figsize=(16, 3.8))
    axes = fig.subplots(1, 4)
    for name, curve in curves.items():
        its = [p["iteration"] for p in curve]
        line, = axes[0].plot(its, [p["heldout/pass@1"] for p in curve], marker="o", ms=3, label=name)
        axes[1].plot(its, [p["harder/pass@1"] for p in curve], marker="o", ms=3, color=line.get_color(), label=name)
        pts = [(p["iteration"], p["train/reward"]) for p in curve if "train/reward" in p]
        axes[2].plot([x for x, _ in pts], [y for _, y in pts], color=line.get_color(), label=name)
        for key, ls in (("heldout/length_right", "-"), ("heldout/length_wrong", "--")):
            pts = [(p["iteration"], p[key]) for p in curve if p.get(key) is not None]
            axes[3].plot([x for x, _ in pts], [y for _, y in pts], ls=ls, color=line.get_color(),
                         label=f"{name} {key.split('_')[1]}")
    titles = ("held-out accuracy (sampled, T=1)", "harder accuracy (more digits)", "training reward (mean)",
              "held-out length (tokens): right —, wrong --")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[3].legend(fontsize=7)
    return save_figure(fig, path, "Addition from scratch: RL on a verifiable reward after SFT on an imperfect teacher")


def print_arithmetic(report: dict, out) -> None:
    print_header(report, out, "arithmetic", report["config"]["quick"])
    print(table(report["evaluation"]))
    if report["curves"] and any(report["curves"].values()):
        print(f"curves: {Path(out) / 'arithmetic.png'}")
