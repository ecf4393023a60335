"""Health checks of a run, live and after the fact: "why isn't it learning?" as named rules over metrics rows.

    a Rule = its name, the metrics it reads, a threshold (a DiagnosticsConfig field), a measure over the rows so
             far (None: not applicable yet), and a message naming the likely cause and the setting to try

`Watch` runs every rule on each row a trainer logs (run.Run.log calls it, so PPO, GRPO, RLOO and the step
trainers share one hook): a rule that fires says so once, on the progress bar's stream, and its record goes into
that row of metrics.jsonl under "diagnostics"; the run goes on unless `--stop_on` names the rule. `minirlhf
doctor` (doctor.py) replays the same rules over a finished run's metrics.jsonl, so live and offline agree.

The rules only read metrics: they draw no random numbers and change nothing that is trained. Their thresholds
are set so that the demo's healthy run passes all of them (README, "Why isn't it learning?"), not tuned per task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

from .errors import InputError

ONLINE_PREFIXES = ("ppo", "grpo", "rloo")
STEP_PREFIXES = ("train", "sft", "reward", "dpo", "rrhf")


@dataclass
class DiagnosticsConfig:
    """Thresholds of the health checks (--diagnostics.<key>); they only watch, and never change what is trained."""
    window: int = 5
    """Rows (iterations or steps) a rule averages over before it judges: one noisy row fires nothing."""
    warmup: int = 10
    """Iterations before the rules about a trained policy (entropy, value, KL, length) judge."""
    zero_std_frac_max: float = 0.5
    """GRPO/RLOO: share of groups whose rewards are all equal (no gradient) above which `zero_std_groups` fires."""
    truncated_frac_max: float = 0.9
    """Share of responses cut at max_new_tokens without EOS above which `truncated` fires."""
    clipfrac_max: float = 0.4
    """Share of tokens whose ratio is clipped above which `clipfrac_high` fires (the demo's PPO reaches 0.25)."""
    approx_kl_max: float = 0.1
    """Mean ½(log π − log π_old)² of the update above which `approx_kl_high` fires."""
    ratio_max: float = 100.0
    """Largest π/π_old on any token of an update above which `ratio_outliers` fires (the demo's PPO reaches 7)."""
    kl_min: float = -0.5
    """`negative_kl` fires when objective/kl (k1, nats per response) averages below this: beyond noise."""
    entropy_collapse: float = 0.25
    """`entropy_collapse` fires when the entropy falls below this share of the first iteration's."""
    entropy_explosion: float = 1.5
    """`entropy_explosion` fires when the entropy rises above this multiple of the first iteration's."""
    explained_variance_min: float = 0.0
    """PPO: the critic's explained variance below which, after warm-up, `value_useless` fires."""
    kl_per_token_max: float = 0.5
    """`kl_racing` fires when the KL to the reference passes this many nats per response token while the
    reward still rises."""
    length_reward_corr: float = 0.9
    """`length_hacking` fires when reward and response length correlate above this over the run's iterations ..."""
    length_growth: float = 1.5
    """... and the responses have grown to this multiple of their first length."""
    reward_start_mean: float = 1.0
    """Normalised reward model: |mean score| of the first iteration (the reference's own samples, normalised to
    mean 0, std 1) above which `reward_off_normalisation` fires; so does a std off 1 by more than a factor 2 ..."""
    reward_drift_max: float = 5.0
    """... or a mean score later beyond this many reference standard deviations (the model extrapolating)."""
    eval_drop: float = 0.1
    """`eval_falls` fires when the judge's eval/ curve, smoothed over 3 evaluations, falls this far below its best
    while the reward rises."""
    val_loss_rise: float = 0.1
    """Step trainers: `overfitting` fires when val/loss rises this share above its best while the loss falls."""
    loss_flat: float = 0.001
    """Step trainers: `loss_flat` fires when the loss stays within this share of its start, its mean and its last
    values alike (nothing learns: DPO stuck at log 2)."""


# ---------------------------------------------------------------------------------------------- metric helpers

def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Rows(list):
    """The rows a Watch has seen, each metric's finite values indexed as the rows arrive: a rule reads a series in
    O(1) rather than scanning every row again at every row (which made a long run's checks quadratic)."""

    def __init__(self):
        super().__init__()
        self.at: dict[str, list[int]] = {}        # metric -> indices of the rows holding a finite value of it
        self.values: dict[str, list[float]] = {}  # metric -> those values, in order

    def append(self, row: dict):
        for k, v in row.items():
            if _num(v):
                self.at.setdefault(k, []).append(len(self))
                self.values.setdefault(k, []).append(v)
        super().append(row)


def indexed(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(row index, value) of every row with a finite `key`."""
    if isinstance(rows, Rows):
        return list(zip(rows.at.get(key, []), rows.values.get(key, [])))
    return [(i, r[key]) for i, r in enumerate(rows) if _num(r.get(key))]


def series(rows: list[dict], key: str) -> list[float]:
    """The finite values of `key`, in order (read-only: a Watch's own list)."""
    if isinstance(rows, Rows):
        return rows.values.get(key, [])
    return [r[key] for r in rows if _num(r.get(key))]


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def recent(rows, key, n):
    """Mean of the last `n` values of `key`, or None until there are `n`."""
    s = series(rows, key)
    return _mean(s[-n:]) if len(s) >= n else None


def prefix_of(rows: list[dict]) -> str | None:
    """The algorithm or objective that logged the rows: ppo/grpo/rloo, or a step trainer's loss prefix."""
    keys = {k for r in rows[-3:] for k in r}
    for p in ONLINE_PREFIXES:
        if f"{p}/approx_kl" in keys or f"{p}/loss" in keys or f"{p}/policy_loss" in keys:
            return p
    return next((p for p in STEP_PREFIXES if f"{p}/loss" in keys), None)


def _online(rows) -> bool:
    return prefix_of(rows) in ONLINE_PREFIXES


def _pearson(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return None if sx == 0 or sy == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


# ---------------------------------------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Rule:
    name: str
    reads: str          # the metrics it reads, as the README's table names them
    threshold: str | float  # the DiagnosticsConfig field it compares with (a number: a measure in its units)
    above: bool         # fires when the measure is above the threshold (else below)
    measure: Callable   # (rows so far, config, context) -> float | None (None: not applicable yet)
    what: str           # what the measure is, for the message
    cause: str
    fix: str

    def limit(self, c: DiagnosticsConfig) -> float:
        return getattr(c, self.threshold) if isinstance(self.threshold, str) else self.threshold

    def fires(self, value, c: DiagnosticsConfig) -> bool:
        t = self.limit(c)
        return value is not None and (value > t if self.above else value < t)


def _p(rows, name):
    return f"{prefix_of(rows)}/{name}"


def _zero_std(rows, c, ctx):
    return recent(rows, _p(rows, "zero_std_frac"), c.window) if _online(rows) else None


def _truncated(rows, c, ctx):
    return recent(rows, "tokens/truncated_frac", c.window)


def _clipfrac(rows, c, ctx):
    return recent(rows, _p(rows, "clipfrac"), c.window) if _online(rows) else None


def _approx_kl(rows, c, ctx):
    return recent(rows, _p(rows, "approx_kl"), c.window) if _online(rows) else None


def _ratio_max(rows, c, ctx):
    return recent(rows, _p(rows, "ratio_max"), 1) if _online(rows) else None


def _negative_kl(rows, c, ctx):
    return recent(rows, "objective/kl", c.window)


def _entropy_ratio(rows, c, ctx):
    s = series(rows, "objective/entropy")
    if len(s) < max(c.warmup, c.window) or s[0] <= 0:
        return None
    return _mean(s[-c.window:]) / s[0]


def _explained_variance(rows, c, ctx):
    if len(series(rows, "ppo/explained_variance")) < max(c.warmup, c.window):
        return None
    return recent(rows, "ppo/explained_variance", c.window)


def _kl_racing(rows, c, ctx):
    kl, length, reward = (series(rows, k) for k in ("objective/kl", "tokens/response_len", "env/reward_mean"))
    if len(kl) < max(c.warmup, 2 * c.window) or len(length) < c.window or len(reward) < 2 * c.window:
        return None
    rising = _mean(reward[-c.window:]) > _mean(reward[:c.window])
    per_token = _mean(kl[-c.window:]) / max(_mean(length[-c.window:]), 1.0)
    return per_token if rising else None


def _length_hacking(rows, c, ctx):
    lengths = dict(indexed(rows, "tokens/response_len"))
    pairs = [(x, lengths[i]) for i, x in indexed(rows, "env/reward_mean") if i in lengths]
    if len(pairs) < max(c.warmup, 2 * c.window):
        return None
    lengths = [p[1] for p in pairs]
    if _mean(lengths[-c.window:]) < c.length_growth * _mean(lengths[:c.window]):
        return None
    return _pearson([p[0] for p in pairs], lengths)


def _reward_off_normalisation(rows, c, ctx):
    """Largest of |first mean| / reward_start_mean, the first std's factor off 1 / 2, later |mean| / reward_drift_max,
    in units of their thresholds (fires above 1); only for a normalised reward model."""
    if not ctx.get("reward_normalised"):
        return None
    means, stds = series(rows, "env/reward_mean"), series(rows, "env/reward_std")
    if not means or not stds:
        return None
    off = max(abs(means[0]) / c.reward_start_mean, max(stds[0], 1e-8) ** (1 if stds[0] >= 1 else -1) / 2)
    later = recent(rows, "env/reward_mean", c.window)
    return max(off, abs(later) / c.reward_drift_max) if later is not None else off


def _eval_falls(rows, c, ctx):
    """How far the judge's curve (eval/judge_positive_rate, else eval/gold), smoothed over 3 evaluations (each is a
    small sample: the demo's judges 32 responses), is below its best, while the proxy reward is above where it
    was there."""
    key = next((k for k in ("eval/judge_positive_rate", "eval/gold") if series(rows, k)), None)
    pts = [rows[i] for i, _ in indexed(rows, key) if _num(rows[i].get("env/reward_mean"))] if key else []
    if len(pts) < 5:
        return None
    smooth = [_mean([r[key] for r in pts[i:i + 3]]) for i in range(len(pts) - 2)]
    best = max(range(len(smooth)), key=lambda i: smooth[i])
    rising = pts[-1]["env/reward_mean"] > pts[best]["env/reward_mean"]
    return smooth[best] - smooth[-1] if rising else None


def _overfitting(rows, c, ctx):
    """val/loss now, as a share above its best, when the training loss has fallen since that best."""
    p = prefix_of(rows)
    if p is None or p in ONLINE_PREFIXES:
        return None
    val = indexed(rows, "val/loss")
    if len(val) < 3:
        return None
    i_best, best = min(val, key=lambda x: x[1])
    train = series(rows, f"{p}/loss")
    at_best = _mean(series(rows[max(0, i_best - c.window + 1):i_best + 1], f"{p}/loss"))
    if best <= 0 or at_best is None or _mean(train[-c.window:]) >= at_best:
        return None
    return val[-1][1] / best - 1


def _loss_flat(rows, c, ctx):
    p = prefix_of(rows)
    s = series(rows, f"{p}/loss") if p and p not in ONLINE_PREFIXES else []
    if len(s) < max(c.warmup, 4 * c.window) or _mean(s[:c.window]) == 0:
        return None
    start, last = _mean(s[:c.window]), s[-c.window:]
    return max(abs(_mean(last) - start), max(last) - min(last)) / abs(start)   # noise keeps a learning loss above


RULES = (
    Rule("zero_std_groups", "grpo/zero_std_frac, rloo/zero_std_frac", "zero_std_frac_max", True, _zero_std,
         "share of groups whose rewards are all equal",
         "the reward gives every response of a prompt the same score (a binary or saturated reward; prompts all "
         "too easy or too hard), so those groups have zero advantage and give no gradient",
         "a graded reward, a larger --group_size, a higher --temperature, or prompts of mixed difficulty"),
    Rule("truncated", "tokens/truncated_frac", "truncated_frac_max", True, _truncated,
         "share of responses cut at max_new_tokens without EOS",
         "responses are cut before they end, so the score lands on a cut-off token and the policy never learns "
         "to stop", "a larger --max_new_tokens, or --missing_eos_penalty=-1"),
    Rule("clipfrac_high", "ppo/clipfrac (grpo/, rloo/)", "clipfrac_max", True, _clipfrac,
         "share of tokens whose ratio is clipped",
         "each update moves the policy too far from the one that sampled: most of the gradient is clipped away",
         "a lower --lr, fewer --ppo_epochs, or more --num_minibatches"),
    Rule("approx_kl_high", "ppo/approx_kl (grpo/, rloo/)", "approx_kl_max", True, _approx_kl,
         "approx KL of an update to the sampling policy",
         "the update steps are too large for the trust region PPO assumes",
         "a lower --lr, fewer --ppo_epochs, or a lower --max_grad_norm"),
    Rule("ratio_outliers", "ppo/ratio_max (grpo/, rloo/)", "ratio_max", True, _ratio_max,
         "largest π/π_old on a token of the update",
         "a token's probability exploded within one update (a too-high learning rate, or logprobs computed unlike "
         "the sampler's)", "a lower --lr, a lower --max_grad_norm; on CUDA bf16, --recompute_logprobs=true"),
    Rule("negative_kl", "objective/kl", "kl_min", False, _negative_kl,
         "the mean k1 KL to the reference (nats per response)",
         "k1 averages below zero beyond noise: the responses were not sampled from the distribution whose "
         "logprobs are compared (top-k/top-p or another temperature), or the reference is not the policy's start",
         "sample plainly at the logprobs' temperature; check that --init is the reference"),
    Rule("entropy_collapse", "objective/entropy", "entropy_collapse", False, _entropy_ratio,
         "entropy as a share of the first iteration's",
         "the policy has become nearly deterministic: it found one answer the reward likes (mode collapse)",
         "a larger --kl_coef, a lower --lr, or --cliprange_high (GRPO's clip-higher)"),
    Rule("entropy_explosion", "objective/entropy", "entropy_explosion", True, _entropy_ratio,
         "entropy as a multiple of the first iteration's",
         "the policy is spreading out into noise: updates are destroying what it knew",
         "a lower --lr, a lower --max_grad_norm, or a larger --kl_coef"),
    Rule("value_useless", "ppo/explained_variance", "explained_variance_min", False, _explained_variance,
         "explained variance of the critic after warm-up",
         "the critic predicts the returns worse than their mean, so GAE's advantages are mostly noise",
         "a larger --vf_coef, --value_model=separate (a critic from the reward model), or more --ppo_epochs"),
    Rule("kl_racing", "objective/kl, tokens/response_len, env/reward_mean", "kl_per_token_max", True, _kl_racing,
         "KL to the reference per response token (nats) while the reward rises",
         "the policy buys reward with ever more distance from the reference: the regime where a proxy reward is "
         "over-optimised (Gao et al. 2022)", "a larger --kl_coef, or --adaptive_kl=true with a --kl_target"),
    Rule("length_hacking", "env/reward_mean, tokens/response_len", "length_reward_corr", True, _length_hacking,
         "correlation of reward and response length over the iterations, the responses having grown",
         "the reward pays for length, and the policy learned to write longer rather than better",
         "a reward model trained on length-balanced pairs, a length penalty in --reward_fn, or a lower "
         "--max_new_tokens"),
    Rule("reward_off_normalisation", "env/reward_mean, env/reward_std (a normalised reward model)",
         1.0, True, _reward_off_normalisation,
         "distance of the scores from the reward model's normalisation, in units of its thresholds (1 = at them)",
         "the reward model was normalised on other samples than this policy's (another policy, max_new_tokens or "
         "temperature), or the policy has moved where the model extrapolates",
         "re-normalise the reward model on the reference's samples with this --max_new_tokens; a larger --kl_coef"),
    Rule("eval_falls", "eval/judge_positive_rate (eval/*), env/reward_mean", "eval_drop", True, _eval_falls,
         "fall of the judge's curve below its best while the proxy reward rises",
         "the proxy reward is being over-optimised: it still rises while an independent judge falls",
         "stop earlier (the best checkpoint), a larger --kl_coef, or a better reward model"),
    Rule("overfitting", "val/loss, <trainer>/loss", "val_loss_rise", True, _overfitting,
         "rise of val/loss above its best (a share) while the training loss falls",
         "the model memorises its training examples", "fewer --steps, a lower --lr, or more data"),
    Rule("loss_flat", "<trainer>/loss", "loss_flat", False, _loss_flat,
         "largest move of the loss (its recent mean, or spread) from its start, as a share of it",
         "nothing learns: a learning rate too small (or 0), or a loss with no gradient",
         "a higher --lr; check the data and --warmup_steps"),
)
RULE_NAMES = tuple(r.name for r in RULES)


# ---------------------------------------------------------------------------------------------- the watch

@dataclass
class Finding:
    rule: Rule
    step: int
    value: float
    threshold: float

    @property
    def message(self) -> str:
        return (f"{self.rule.name}: {self.rule.what} is {self.value:.3g} (threshold {self.threshold:g}); likely: "
                f"{self.rule.cause}; try: {self.rule.fix}")

    def record(self) -> dict:
        return {"rule": self.rule.name, "value": round(self.value, 6), "threshold": self.threshold,
                "message": self.message}


class Watch:
    """Every rule over the rows of one run, row by row: `observe(row)` -> the findings that fire for the first time.

    context: what the rows do not say, {"reward_normalised": bool} (train_config.json records it)."""

    def __init__(self, config: DiagnosticsConfig | None = None, context: dict | None = None, stop_on: str = ""):
        self.config, self.context = config or DiagnosticsConfig(), context or {}
        self.stop_on = parse_stop_on(stop_on)
        self.rows = Rows()
        self.fired: dict[str, Finding] = {}
        self.worst: dict[str, float] = {}       # each rule's value nearest its threshold so far (doctor's report)

    def observe(self, row: dict) -> list[Finding]:
        self.rows.append({k: v for k, v in row.items() if k != "diagnostics"})
        step = row.get("iteration", row.get("step", len(self.rows)))
        new = []
        for rule in RULES:
            value = rule.measure(self.rows, self.config, self.context)
            if value is None:
                continue
            old = self.worst.get(rule.name)
            self.worst[rule.name] = value if old is None else (max if rule.above else min)(old, value)
            if rule.name not in self.fired and rule.fires(value, self.config):
                self.fired[rule.name] = f = Finding(rule, step, value, rule.limit(self.config))
                new.append(f)
        return new

    def must_stop(self, findings: list[Finding]) -> Finding | None:
        return next((f for f in findings if "any" in self.stop_on or f.rule.name in self.stop_on), None)


def parse_stop_on(text: str) -> set[str]:
    names = {n.strip() for n in (text or "").split(",") if n.strip()}
    unknown = sorted(names - set(RULE_NAMES) - {"any"})
    if unknown:
        raise InputError(f"--stop_on: unknown rule {unknown[0]!r}; valid: any, {', '.join(RULE_NAMES)}")
    return names


def check_watch_settings(config):
    """A config's __post_init__: --stop_on names rules, --report_to names writers that are installed, and the
    diagnostics thresholds are numbers of the right sign."""
    from .tracking import check_report_to
    parse_stop_on(config.stop_on)
    check_report_to(config.report_to)
    d = config.diagnostics
    if not isinstance(d, DiagnosticsConfig):
        raise InputError(f"--diagnostics must be a group of thresholds, got {d!r}")
    for f in fields(d):
        if not getattr(d, f.name) >= 0 and f.name not in ("explained_variance_min", "kl_min"):
            raise InputError(f"--diagnostics.{f.name} must be >= 0, got {getattr(d, f.name)!r}")
    if d.window < 1:
        raise InputError(f"--diagnostics.window must be >= 1, got {d.window}")
