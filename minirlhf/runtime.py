"""Where and how a run executes: seeds, device, bf16 autocast, and (under torchrun) the process group.

CPU by default; defaults never query CUDA. `--device cuda` runs in bf16 autocast (weights stay fp32).

Data parallelism, the plain way (`torchrun --nproc_per_node N -m minirlhf <stage> ...`):
  * every process (rank) holds a full copy of the model; `sync_params` copies rank 0's weights to the
    others once, so randomly initialised heads start equal;
  * each rank draws its own data / rollouts from its own seed, `seed + rank·100003` (N+ implementation
    details of RLHF with PPO, Huang et al. 2024), so ranks never sample identical batches; `batch_size` is per rank;
  * after backward, `average_gradients` all-reduces the gradients (one flat buffer, divided by the
    number of ranks), so every rank takes the same optimizer step and the weights stay identical. This
    is what DistributedDataParallel does, minus overlapping the all-reduce with backward: it works
    whatever method the trainer calls (RewardModel.raw_scores, not forward) and costs one call per
    optimizer step, gradient accumulation included;
  * logged metrics are the mean over ranks of each rank's value (`mean_across_ranks`); only rank 0
    writes files and shows progress.
gloo on CPU, nccl on CUDA (one GPU per rank: `--device cuda` means cuda:LOCAL_RANK).
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
import time

import torch
import torch.distributed as dist

from .errors import InputError

RANK_SEED_STRIDE = 100003  # a prime, so rank seeds never collide with seed + small offsets


def seed_everything(seed: int) -> torch.Generator:
    """Seed python and torch; return a torch.Generator for the run's own sampling (data order, rollouts)."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rank_seed(seed: int) -> int:
    """This process's seed: `seed` on rank 0 (so a 1-process run is unchanged), seed + rank·100003 elsewhere."""
    return seed + dist_info()[0] * RANK_SEED_STRIDE


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda" and dist_info()[1] > 1:  # one GPU per rank under torchrun
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(name)
    raise InputError(f"--device must be cpu or cuda, got {name!r}")


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (fp32 there keeps runs bit-reproducible)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PhaseTimer:
    """Wall seconds of named phases: `with timer("time/generate_s"): ...`, read from `timer.times`.

    On CUDA each phase waits for its own kernels before the clock stops (one synchronize per phase), so a
    phase is not charged the GPU work of the one before it. A function that is given no timer makes its own, whose times nobody reads.
    """

    def __init__(self, device: torch.device | None = None):
        self.device, self.times = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[name] = time.perf_counter() - t0


def dist_info() -> tuple[int, int]:
    """(rank, world_size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return dist_info()[0] == 0


# ---------------------------------------------------------------- the process group (torchrun)

def init_distributed(device: torch.device) -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1) join the default process group, once; returns (rank, world_size).

    torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; gloo serves CPU tensors, nccl CUDA ones.
    """
    rank, world = dist_info()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def sync_params(module: torch.nn.Module):
    """Copy rank 0's parameters and buffers to every rank (no-op in a single process)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_gradients(module: torch.nn.Module):
    """grad ← mean over ranks of grad, for every parameter, in one all-reduce (no-op in a single process).

    Each rank's loss is a mean over its own batch, so with equal batches this is exactly the gradient of
    the mean loss over the concatenated batch. A parameter without a gradient counts as zero, so all
    ranks reduce buffers of the same size.
    """
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def mean_across_ranks(values: dict) -> dict:
    """The float entries of `values` averaged over ranks (others kept); every rank must pass the same keys.

    A NaN on any rank makes the mean NaN on all of them, so every rank's NaN guard stops together.
    """
    if not is_distributed():
        return values
    keys = [k for k, v in values.items() if isinstance(v, float)]
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {**values, **dict(zip(keys, t.tolist()))}


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """[rank 0's t, rank 1's t, ...] (CPU tensors of equal shape on every rank); [t] in a single process."""
    if not is_distributed():
        return [t]
    t = t.to(_comm_device())
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def machine(device: torch.device | str = "cpu") -> dict:
    """What a figure was measured on: CPU model, cores, torch threads, torch version, device (and GPU name).
    Reports carry it, since the same seed gives other numbers on another CPU, thread count or torch."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: dict) -> str:
    """One line for a report's console summary."""
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['cpu']} ({info['cores']} cores, {info['threads']} torch threads), torch {info['torch']}, "
            f"{info['device']}{gpu}")
