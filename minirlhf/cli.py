"""The `minirlhf` command line. Every stage is `minirlhf <stage> --flags [--key=value ...]`.

`--key=value` pairs override fields of the stage's config dataclass (`minirlhf <stage> --help` lists
them with their docstrings; `--key value` is read as `--key=value`); an unknown key is an error naming the
valid ones and the nearest, by full dotted name. Bad input ends with one line on stderr (`file:line: what is
wrong`) and exit status 2, before anything is overwritten: a missing or malformed flag too (argparse's usage
block is left to --help), and warnings are one line each.
A run that diverges (a NaN or inf loss, reward or gradient) ends with one line too, and exit status 3.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .config import apply_overrides, config_help
from .errors import InputError, TrainingDiverged

INPUT_FLAGS = ("text", "tokenizer", "data", "prompts", "init", "reward")  # paths a training command reads


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and flags are never abbreviated (so a config
    key such as --lr can never be taken for a prefix of another flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _training_parser(sub, name: str, help: str, config_cls, length_flag: str = "steps"):
    from .run import FREE_ON_RESUME
    p = sub.add_parser(name, help=help, description=help, epilog=config_help(config_cls),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (a self-contained model directory)")
    p.add_argument("--seed", type=int, help="random seed (same seed, same numbers on CPU)")
    p.add_argument("--device", help="cpu (default) or cuda (bf16 autocast)")
    p.add_argument(f"--{length_flag}", type=int, dest=length_flag, help=f"number of {length_flag}")
    p.add_argument("--save-every", type=int, dest="save_every", help="checkpoint every N (for --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the run's recorded settings "
                        "(train_config.json): a setting not given here keeps the run's value, one given must "
                        f"equal it (see --allow-changed); --{length_flag} may grow")
    p.add_argument("--allow-changed", dest="allow_changed", metavar="KEY,KEY",
                   help="with --resume: the settings that may differ from the run's (e.g. lr,batch_size); each "
                        "change is recorded in train_config.json's resumes. Never needed for "
                        f"{', '.join(FREE_ON_RESUME)}, nor for a longer --{length_flag}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(config_cls=config_cls, length_flag=length_flag)
    return p


def _config_from_args(args, overrides, config=None, flags=()):
    """Config dataclass defaults (or a recipe's preset, `config`; or, with --resume, the run's recorded settings)
    <- --key=value overrides <- the named flags (--seed, --device, and a trainer's --save-every and
    --steps/--iterations, and `flags`)."""
    overrides = _joined(overrides, getattr(args, "argv", []))
    flags = ("seed", "device", "save_every", getattr(args, "length_flag", None), *flags)
    named = [f"--{k}={getattr(args, k)}" for k in flags if k and getattr(args, k, None) is not None]
    if getattr(args, "resume", False):
        from .run import resume_config
        return resume_config(args.out, getattr(args, "algo", args.command), args.config_cls, overrides + named,
                             args.allow_changed, args.length_flag)
    if getattr(args, "allow_changed", None):
        raise InputError("--allow-changed only applies with --resume (a new run takes any settings)")
    return apply_overrides(args.config_cls() if config is None else config, overrides + named)


def _joined(overrides: list[str], argv: list[str]) -> list[str]:
    """`--key value` -> `--key=value`, for the config keys argparse left over (every named flag, and its value, is
    taken first): when `value` does not start with `--` and came right after `--key` on the command line, so
    `--kl_coef --resume 0.1` (a stray 0.1 after a named flag) stays an error."""
    pairs, out, i = set(zip(argv, argv[1:])), [], 0
    while i < len(overrides):
        item, value = overrides[i], overrides[i + 1] if i + 1 < len(overrides) else None
        if (item.startswith("--") and "=" not in item and value is not None and not value.startswith("--")
                and (item, value) in pairs):
            out.append(f"{item}={value}")
            i += 2
        else:
            out.append(item)
            i += 1
    return out


def cmd_pretrain(args, overrides):
    from .data import load_texts
    from .sft import pretrain
    from .tokenizer import Tokenizer
    config = _config_from_args(args, overrides)
    texts = load_texts(args.text)
    tokenizer = Tokenizer.from_file(args.tokenizer) if args.tokenizer else None
    pretrain(texts, args.out, config, tokenizer, resume=args.resume, overwrite=args.overwrite)
    _done(f"saved model to {args.out}")


def cmd_sample(args, overrides):
    import torch

    from .model import GPT, RewardModel
    from .runtime import resolve_device
    from .sampling import fit_to_context, generate
    from .tokenizer import Tokenizer
    if overrides:
        raise InputError(f"sample takes no --key=value overrides, got {overrides[0]!r}")
    if args.n < 1 or args.max_new_tokens < 1 or args.temperature <= 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        raise InputError("sample needs --n >= 1, --max-new-tokens >= 1, --temperature > 0, --top-k >= 0 and "
                         f"0 < --top-p <= 1; got {args.n}, {args.max_new_tokens}, {args.temperature}, "
                         f"{args.top_k}, {args.top_p}")
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    model = GPT.from_pretrained(args.model).to(resolve_device(args.device)).eval()
    tokenizer.check_model(model.config, args.model)
    RewardModel.warn_if_one(args.model, "sampling")
    # the response gets what the prompt leaves of the context; a prompt that fills it keeps its end (one warning)
    whole = tokenizer.encode_prompt(args.prompt)
    prompt, max_new_tokens = fit_to_context(whole, args.max_new_tokens, model.config.block_size)
    # what the model read: a cut prompt is printed as its kept end, after "…"
    shown = args.prompt if len(prompt) == len(whole) else "…" + tokenizer.decode(prompt)
    out = generate(model, [prompt] * args.n, max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                   generator=torch.Generator().manual_seed(args.seed), compile_step=args.compile)
    for text in tokenizer.decode_batch(out.responses.tolist()):
        print(shown + text)


def _reward_fn_from_args(args):
    """--reward_fn specs (summed with --reward_weights) as one reward function, or None for --reward DIR: exactly
    one of the two must be given (ppo, grpo, best-of-n)."""
    reward_fn = None
    if args.reward_fn:  # reward functions as code (reward_fns.py), summed with --reward_weights
        from .reward_fns import combine, load_reward_fn, parse_weights
        fns = [load_reward_fn(spec) for spec in args.reward_fn]
        reward_fn = combine(fns, args.reward_fn, parse_weights(args.reward_weights, len(fns)))
    elif args.reward_weights is not None:
        raise InputError("--reward_weights weighs --reward_fn functions, and none was given")
    if (args.reward is None) == (reward_fn is None):
        raise InputError("give --reward DIR (a reward model) or --reward_fn module:function (reward functions), "
                         "one of the two")
    return reward_fn


def _add_reward_args(p):
    p.add_argument("--reward", help="the reward model directory (or --reward_fn)")
    p.add_argument("--reward_fn", action="append", metavar="MODULE:FUNCTION",
                   help="a reward function, fn(prompts, responses, prompt_ids, response_ids) -> one number a "
                        "response (minirlhf.reward_fns); repeat for several, summed")
    p.add_argument("--reward_weights", metavar="W,W,...", help="weights of the --reward_fn functions (default 1 each)")


def cmd_best_of_n(args, overrides):
    """Best-of-n (rejection sampling): n samples of each prompt, the one the reward scores highest kept."""
    import json
    from pathlib import Path

    from .data import load_prompts
    from .evaluation import best_of_n, best_of_n_kl_bound
    from .model import GPT, RewardModel
    from .rollout import TextReward
    from .runtime import resolve_device
    from .tokenizer import Tokenizer
    if overrides:
        raise InputError(f"best-of-n takes no --key=value overrides, got {overrides[0]!r}")
    if args.n < 1 or args.max_new_tokens < 1 or args.temperature <= 0:
        raise InputError(f"best-of-n needs --n >= 1, --max-new-tokens >= 1 and --temperature > 0; got {args.n}, "
                         f"{args.max_new_tokens}, {args.temperature}")
    reward_fn = _reward_fn_from_args(args)
    prompts = [str(p) for p in load_prompts(args.prompts)]
    device = resolve_device(args.device)
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    policy = GPT.from_pretrained(args.model).to(device).eval()
    tokenizer.check_model(policy.config, args.model)
    RewardModel.warn_if_one(args.model, "sampling")
    if reward_fn is None:
        reward = RewardModel.from_pretrained(args.reward).to(device).eval()
        tokenizer.check_model(reward.config, args.reward)
    else:
        reward = TextReward(reward_fn, tokenizer)
    kept = best_of_n(policy, reward, tokenizer, prompts, 1, args.n, args.max_new_tokens, args.temperature,
                     seed=args.seed)
    lines = [json.dumps({"prompt": p, "response": r, "score": round(x, 6), "n": args.n}, ensure_ascii=False)
             for p, r, x in zip(kept.prompts, kept.responses, kept.rewards)]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    else:
        print("\n".join(lines))
    print(f"best-of-{args.n} of {len(prompts)} prompts: mean score {sum(kept.rewards) / len(kept.rewards):+.4f}; "
          f"KL to the model ≤ {best_of_n_kl_bound(args.n):.3f} nats (log n − (n−1)/n)"
          + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)


def cmd_online(args, overrides):
    """ppo, grpo (--algo rloo: RLOOConfig's defaults): load --prompts, RL-train from --init against --reward with
    the parser's `train`, save to --out."""
    from .data import load_prompts
    from .grpo import RLOOConfig
    if getattr(args, "algo", None) == "rloo":
        args.config_cls = RLOOConfig  # the same fields, RLOO's defaults (k1 KL in the reward)
    config = _config_from_args(args, overrides)
    reward_fn = _reward_fn_from_args(args)
    args.train(load_prompts(args.prompts), args.init, args.reward, args.out, config, resume=args.resume,
               overwrite=args.overwrite, reward_fn=reward_fn)
    _done(f"saved {getattr(args, 'algo', args.command).upper()} policy to {args.out}")


def cmd_reward(args, overrides):
    from pathlib import Path

    from .data import load_preferences
    from .reward import train_reward_model
    from .tokenizer import Tokenizer
    config = _config_from_args(args, overrides, flags=("loss",))
    examples = load_preferences(args.data)
    tokenizer = Tokenizer.from_file(Path(args.init) / "tokenizer.json")
    train_reward_model(examples, args.init, args.out, config, tokenizer, resume=args.resume, overwrite=args.overwrite)
    _done(f"saved reward model to {args.out}")


# ---------------------------------------------------------------- the offline trainers: DPO, RRHF, SFT

def cmd_offline(args, overrides):
    """dpo, rrhf, sft: load --data (pairs, rankings, demonstrations: the parser's `load`), train from --init with
    the parser's `train`, save to --out."""
    config = _config_from_args(args, overrides)
    args.train(args.load(args.data), args.init, args.out, config, resume=args.resume, overwrite=args.overwrite)
    _done(f"saved {args.command.upper()} policy to {args.out}")


def cmd_recipe(args, overrides):
    """demo, compare, overopt, arithmetic: the recipe's preset (--quick: its toy one) <- overrides; run it, print
    its report."""
    config = _config_from_args(args, overrides, args.quick_preset() if args.quick else args.preset())
    out = args.out or f"runs/{args.command}" + ("-quick" if args.quick else "")
    args.print_report(args.run_recipe(out, config), out)


def cmd_evaluate(args, overrides):
    """A demo directory: its own before/after evaluation (report.json). A trainer's policy run: evaluate_run."""
    from pathlib import Path
    if overrides:
        raise InputError(f"evaluate takes no --key=value overrides, got {overrides[0]!r}")
    given = [f"--{k.replace('_', '-')}" for k in EVALUATE_FLAGS if getattr(args, k) is not None]
    if (Path(args.run) / "demo.json").is_file():
        from .recipes.demo_report import print_report
        from .recipes.sentiment_zh import evaluate_saved_run
        if given:
            raise InputError(f"{', '.join(given)}: for a trainer's run (e.g. {Path(args.run) / 'policy'}), not a demo "
                             f"run, which is evaluated on its own prompts, models and settings")
        print_report(evaluate_saved_run(args.run), args.run)
        return
    from .evaluate_run import evaluate_policy_run, print_evaluation
    print_evaluation(evaluate_policy_run(args.run, args.prompts, args.ref, args.reward, args.n or 8,
                                         args.max_new_tokens, args.temperature, args.seed or 0, args.device or "cpu"))


EVALUATE_FLAGS = ("prompts", "ref", "reward", "n", "max_new_tokens", "temperature", "seed", "device")


def cmd_plot(args, overrides):
    from .plots import plot_run
    if overrides:
        raise InputError(f"plot takes no --key=value overrides, got {overrides[0]!r}")
    for path in plot_run(args.run):
        print(path)


def cmd_doctor(args, overrides):
    """Replay the health checks (diagnostics.py) over a run's metrics.jsonl: a report and DIR/doctor.png."""
    from .doctor import doctor, print_report
    if overrides:
        raise InputError(f"doctor takes no --key=value overrides, got {overrides[0]!r}")
    print_report(doctor(args.run), args.run)


def build_parser() -> argparse.ArgumentParser:
    from .sft import PretrainConfig
    from . import __version__
    parser = _Parser(prog="minirlhf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"minirlhf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _training_parser(sub, "pretrain", "train a tokenizer and a GPT-2 on text (the reference policy)",
                         PretrainConfig)
    p.add_argument("--text", required=True, help="a .txt (one document a line) or .jsonl ({\"text\": ...}) file")
    p.add_argument("--tokenizer", help="an existing tokenizer.json to use instead of training one")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("sample", help="print continuations of a prompt from a model directory",
                       description="print continuations of a prompt from a model directory")
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", required=True, help="the text to continue (the printed samples start with it)")
    p.add_argument("--n", type=int, default=4, help="number of samples (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48, dest="max_new_tokens",
                   help="length limit of each sample, cut (with a warning) to what the prompt leaves of the "
                        "model's context (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, dest="top_k",
                   help="keep the k most likely tokens, 0 keeps all (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, dest="top_p",
                   help="keep the smallest set of tokens with this much probability (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the draws: same seed, same samples (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token step: faster per token, after tens of seconds of compiling")
    p.set_defaults(fn=cmd_sample)

    help = ("best-of-n (rejection sampling): n samples of each prompt, the one a reward model or reward functions "
            "score highest kept, as JSONL {prompt, response, score, n}")
    p = sub.add_parser("best-of-n", help=help, description=help)
    p.add_argument("--model", required=True, help="the policy directory to sample from")
    p.add_argument("--prompts", required=True, help='a .jsonl file of {"prompt": ...} lines')
    _add_reward_args(p)
    p.add_argument("--n", type=int, default=16, help="samples a prompt, the best kept (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=24, dest="max_new_tokens",
                   help="length limit of each sample (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--out", help="write the JSONL here (default: print it)")
    p.set_defaults(fn=cmd_best_of_n)

    # -- the online trainers: PPO, GRPO and RLOO (the policy learns from its own samples) --
    from .grpo import GRPOConfig, train_grpo
    from .ppo import PPOConfig, train_ppo
    for name, help, config_cls, train in (
            ("ppo", "RL-train a policy with PPO against a reward model", PPOConfig, train_ppo),
            ("grpo", "RL-train a policy with GRPO or RLOO (a group of responses per prompt, no critic) against a "
                     "reward model", GRPOConfig, train_grpo)):
        p = _training_parser(sub, name, help, config_cls, length_flag="iterations")
        if name == "grpo":
            p.add_argument("--algo", choices=("grpo", "rloo"), default="grpo",
                           help="grpo: group-normalised advantages, k3 KL loss term; rloo: leave-one-out baseline, "
                                "k1 KL in the reward (default kl_estimator=k1) (default: grpo)")
        p.add_argument("--prompts", required=True, help='a .jsonl file of {"prompt": ...} lines')
        p.add_argument("--init", required=True, help="the pretrained policy directory (also the frozen reference)")
        _add_reward_args(p)
        p.set_defaults(fn=cmd_online, train=train)

    from .reward import LOSSES, RewardConfig
    p = _training_parser(sub, "reward", "train a reward model on preference pairs or rankings", RewardConfig)
    p.add_argument("--data", required=True, help="a .jsonl file of pairs {prompt, chosen, rejected} "
                                                  "or rankings {query, responses, scores}")
    p.add_argument("--init", required=True, help="the pretrained LM directory the trunk (and tokenizer) come from")
    p.add_argument("--loss", choices=LOSSES, help="reward loss (default auto: pairwise for pairs, ranking for "
                                                  "rankings; sigmoid_rank, for teaching, saturates)")
    p.set_defaults(fn=cmd_reward)

    # -- the offline trainers: DPO, RRHF, SFT on demonstrations (the policy learns from fixed responses) --
    from . import data
    from .dpo import DPOConfig, train_dpo
    p = _training_parser(sub, "dpo", "train a policy on preference pairs with DPO (no reward model, no sampling)",
                         DPOConfig)
    p.add_argument("--data", required=True, help="a .jsonl file of pairs {prompt, chosen, rejected}")
    p.add_argument("--init", required=True, help="the pretrained policy directory (also the frozen reference)")
    p.set_defaults(fn=cmd_offline, load=data.load_pairs, train=train_dpo)

    from .rrhf import RRHFConfig, train_rrhf
    p = _training_parser(sub, "rrhf", "train a policy on ranked responses with RRHF (ranking loss + SFT on the best)",
                         RRHFConfig)
    p.add_argument("--data", required=True, help="a .jsonl file of rankings {query, responses, scores[, sources]}")
    p.add_argument("--init", required=True, help="the pretrained policy directory")
    p.set_defaults(fn=cmd_offline, load=data.load_rankings, train=train_rrhf)

    from .sft import SFTConfig, train_sft
    p = _training_parser(sub, "sft", "fine-tune a policy on {prompt, response} demonstrations (loss on the "
                         "response tokens only)", SFTConfig)
    p.add_argument("--data", required=True, help='a .jsonl file of {"prompt": ..., "response": ...} lines')
    p.add_argument("--init", required=True, help="the pretrained policy directory")
    p.set_defaults(fn=cmd_offline, load=data.load_demonstrations, train=train_sft)

    from .recipes import arithmetic, compare, overopt, sentiment_zh
    from .recipes.demo_report import print_report
    for name, help, config_cls, quick, run, report in (
            ("demo", "the flagship: Chinese review-sentiment RLHF, end to end, offline",
             sentiment_zh.DemoConfig, sentiment_zh.quick_config, sentiment_zh.run_demo, print_report),
            ("compare", "PPO, GRPO, RLOO, DPO, RRHF and best-of-n on the flagship task: the reward-KL frontier",
             compare.CompareConfig, compare.quick_compare_config, compare.run_compare, compare.print_compare),
            ("overopt", "reward over-optimisation against a known gold (Gao et al. 2022): proxies trained on gold "
             "labels, best-of-n and PPO against each, gold and proxy against sqrt(KL)", overopt.OveroptConfig,
             overopt.quick_overopt_config, overopt.run_overoptimization, overopt.print_overoptimization),
            ("arithmetic", "a verifiable reward from scratch: multi-digit addition, SFT then GRPO, RLOO and PPO with "
             "a format + correctness reward; accuracy and pass@k on held-out and harder problems",
             arithmetic.ArithmeticConfig, arithmetic.quick_arithmetic_config, arithmetic.run_arithmetic,
             arithmetic.print_arithmetic)):
        p = sub.add_parser(name, help=help, description=help, epilog=config_help(config_cls()),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--quick", action="store_true", help="toy sizes, the same pipeline (what the tests run)")
        p.add_argument("--out", help=f"run directory (default runs/{name}, or runs/{name}-quick)")
        p.add_argument("--device", help="cpu (default) or cuda")
        p.add_argument("--seed", type=int)
        p.set_defaults(fn=cmd_recipe, preset=config_cls, quick_preset=quick, run_recipe=run, print_report=report)

    help = ("evaluate a policy run against its reference: reward, KL, distinct-n and samples (a demo directory: "
            "its own before/after report)")
    p = sub.add_parser("evaluate", help=help, description=help)
    p.add_argument("--run", required=True, help="a directory written by minirlhf demo, or by a policy trainer "
                                                "(ppo, grpo, dpo, rrhf, sft); the latter gets DIR/evaluation.json")
    p.add_argument("--prompts", help='a trainer\'s run: the prompts, a .jsonl file of {"prompt": ...} lines')
    p.add_argument("--ref", help="a trainer's run: the reference policy directory (the run's --init)")
    p.add_argument("--reward", help="a trainer's run: the reward model directory")
    p.add_argument("--n", type=int, help="a trainer's run: samples per prompt (default 8)")
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens",
                   help="a trainer's run: response length cap (default: the run's max_new_tokens, else 24 or half "
                        "the context)")
    p.add_argument("--temperature", type=float, help="a trainer's run: sampling temperature (default: the run's, "
                                                     "else 1.0)")
    p.add_argument("--seed", type=int, help="a trainer's run: seed of the draws (default 0)")
    p.add_argument("--device", help="a trainer's run: cpu (default) or cuda")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("plot", help="plot a run's metrics.jsonl into its plots/ folder (the figures and file "
                                    "names the run itself draws: minirlhf.plots.FIGURES)")
    p.add_argument("--run", required=True, help="run or stage directory holding metrics.jsonl")
    p.set_defaults(fn=cmd_plot)

    help = ("why isn't it learning? replay the health checks over a run's metrics.jsonl: what looked healthy, what "
            "fired and when, what to try, and DIR/doctor.png")
    p = sub.add_parser("doctor", help=help, description=help)
    p.add_argument("--run", required=True, help="a run directory (demo, compare, overopt, or any trainer's --out), "
                                                "finished or still running")
    p.set_defaults(fn=cmd_doctor)
    return parser


def _done(message: str):
    from .runtime import is_main_process
    if is_main_process():
        print(message)


def _check_inputs_outside_out(args):
    """No training command may write into (or, with --overwrite, delete) a file or directory it reads."""
    from .trainstate import check_inputs_outside
    if getattr(args, "config_cls", None) is not None:
        check_inputs_outside(args.out, [getattr(args, k) for k in INPUT_FLAGS if getattr(args, k, None)])


def main(argv=None) -> int:
    from .runtime import barrier, is_main_process, shutdown_distributed
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args, rest = parser.parse_known_args(argv)
    args.argv = argv  # _joined reads `--key value` pairs off it
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning  # restored by catch_warnings on the way out
        if not is_main_process():
            warnings.simplefilter("ignore")  # torchrun: rank 0 speaks for all
        try:
            _check_inputs_outside_out(args)
            args.fn(args, rest)
            barrier()  # torchrun: no rank tears the process group down while another still writes or talks
        except (InputError, TrainingDiverged) as e:
            from .tracking import close_progress_bars
            close_progress_bars()  # a run stopped mid-way: its bar's line ends first
            print(str(e), file=sys.stderr)
            return 3 if isinstance(e, TrainingDiverged) else 2
        except KeyboardInterrupt:
            print(f"minirlhf {args.command}: interrupted", file=sys.stderr)
            return 130
        finally:
            shutdown_distributed()
    return 0
