#!/usr/bin/env bash
# Every benchmark of RESULTS.md on this machine, in one run, side by side: minirlhf against a naive loop and
# transformers (sampler, eager and compiled), against TRL (PPOTrainer of trl 1.12, RLOOTrainer of trl 1.16),
# plus the matmul peak, pretraining and PPO splits (with and without the rollout's second policy forward).
# From the repository root:
#     bash benchmarks/run_all.sh cpu  [LOG_DIR]     # the 2-core CPU box (run it on a quiet machine)
#     bash benchmarks/run_all.sh cuda [LOG_DIR]     # a GPU box: adds GPT-2 124M pretraining and PPO
# Needs transformers (pip install -e .[bench]). TRL's RLOO runs with $TRL_PYTHON (trl 1.16), its PPO with
# $TRL_PPO_PYTHON (trl 1.12, which still has trl.experimental.ppo), each default this python, if it can
# import trl; on a GPU box without it, wheels in .whl/ (trl, datasets, dill, multiprocess) are installed
# into /tmp/site. Each benchmark's output goes to LOG_DIR/NAME.txt; the side-by-side lines are repeated at
# the end.
set -u
DEVICE=${1:-cpu}
LOG=${2:-/tmp/bench_logs/$DEVICE-$(date -u +%F)}
PY=${PYTHON:-python3}
TRL_PY=${TRL_PYTHON:-$PY}
TRL_PPO_PY=${TRL_PPO_PYTHON:-$TRL_PY}
mkdir -p "$LOG"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "$DEVICE" = cuda ] && ! $TRL_PY -c "import trl" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{
    date -u; nproc; grep -m1 'model name' /proc/cpuinfo; uptime
    [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$LOG/machine.txt"

run() {  # run NAME PYTHON SCRIPT ARGS...: one benchmark, its output kept in $LOG/NAME.txt
    local name=$1 py=$2; shift 2
    echo "=== $name: $py benchmarks/$*"
    (cd benchmarks && $py "$@" --device "$DEVICE") 2>&1 | grep -vE "Warning|warn|^\s*$|Loading weights|it/s" \
        | tee "$LOG/$name.txt"
}
run peak "$PY" bench_peak.py
run sampler "$PY" bench_sampler.py --compile
run pretrain "$PY" bench_pretrain.py
run ppo "$PY" bench_ppo.py --against-recompute
if $TRL_PY -c "import trl" 2>/dev/null; then
    run trl_rloo "$TRL_PY" bench_trl_rloo.py
else
    echo "=== trl_rloo skipped: $TRL_PY cannot import trl (see bench_trl_rloo.py's docstring for the venv)"
fi
if $TRL_PPO_PY -c "import trl.experimental.ppo" 2>/dev/null; then
    run trl_ppo "$TRL_PPO_PY" bench_trl_ppo.py
else
    echo "=== trl_ppo skipped: $TRL_PPO_PY cannot import trl.experimental.ppo (see bench_trl_ppo.py's docstring)"
fi
if [ "$DEVICE" = cuda ]; then
    run pretrain_124m "$PY" bench_pretrain.py --preset gpt2-124m --batch-size 32
    run pretrain_124m_compile "$PY" bench_pretrain.py --preset gpt2-124m --batch-size 32 --compile
    run ppo_124m "$PY" bench_ppo.py --preset gpt2-124m
    run ppo_124m_compile "$PY" bench_ppo.py --preset gpt2-124m --compile
    run ppo_124m_t512_compile "$PY" bench_ppo.py --preset gpt2-124m --prompt-len 448 --new-tokens 64 \
        --minibatches 2 --compile
fi
echo "=== side by side ($LOG)"
grep -E "speedup|_iteration:|mfu|fraction_of_peak|over_floor|cpu share" "$LOG"/*.txt
