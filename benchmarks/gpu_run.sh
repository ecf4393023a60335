#!/usr/bin/env bash
# The GPU figures of RESULTS.md, in one go, from the repository root on a CUDA machine:
#     bash benchmarks/gpu_run.sh [LOG_DIR]
# Needs torch with CUDA and transformers; trl (for bench_trl_rloo.py) is optional: wheels in .whl/
# (trl, datasets, dill, multiprocess) are installed into /tmp/site if present, else that part is skipped.
set -u
LOG=${1:-/tmp/bench_logs}
mkdir -p "$LOG"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
nproc; grep -m1 'model name' /proc/cpuinfo

run() {  # run NAME ARGS...: one benchmark, its output kept in $LOG/NAME.txt
    local name=$1; shift
    echo "=== $name: python3 $*"
    python3 "$@" 2>&1 | grep -vE "Warning|warn|^\s*$|Loading weights" | tee "$LOG/$name.txt"
}
cd benchmarks
run peak bench_peak.py --device cuda
run sampler bench_sampler.py --device cuda
run pretrain_tiny bench_pretrain.py --device cuda
run pretrain_124m bench_pretrain.py --device cuda --preset gpt2-124m
run pretrain_124m_b32 bench_pretrain.py --device cuda --preset gpt2-124m --batch-size 32
run pretrain_124m_compile bench_pretrain.py --device cuda --preset gpt2-124m --batch-size 32 --compile
run ppo bench_ppo.py --device cuda
python3 -c "import trl" 2>/dev/null && run trl_rloo bench_trl_rloo.py --device cuda
