"""What pretraining and fine-tuning share: processes, optimiser, schedules, checkpoints and logs.

Distributed training is switched on by the environment, as `torchrun` sets it (WORLD_SIZE, RANK,
LOCAL_RANK): gloo on CPUs, nccl on GPUs. Every random choice of a step (crops, masks, distractors,
Gumbel noise) is drawn from a generator seeded by (seed, step, utterance), so a resumed run
repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CheckpointError, Wav2Vec2Error
from ..precision import BF16_FLAGS, cpu_flags


@dataclass
class Runtime:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_runtime(device: str = "auto") -> Runtime:
    """Join the process group when launched by torchrun; pick the device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Wav2Vec2Error("--device cuda: no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Runtime(rank, world, target)


def stop_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_training(train, settings):
    """Call train(settings, runtime) inside the process group (if any), and leave it afterwards."""
    runtime = start_runtime(settings.device)
    try:
        return train(settings, runtime)
    finally:
        stop_runtime()


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_norm: float, step: int) -> float:
    """Clip the gradient norm, step (unless the gradient is not finite), clear; returns the norm."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
    else:
        warnings.warn(f"step {step + 1}: gradient is not finite, update skipped", stacklevel=2)
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def seed_for(seed: int, step: int, index: int) -> int:
    """A well-mixed 63-bit seed for one utterance of one step."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def make_optimizer(parts: list[tuple[list[torch.nn.Parameter], float]], weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW over parts of a model, each (its parameters, its peak learning rate), the fused kernel:
    one pass over each tensor instead of a dozen. No weight decay on biases, norms and embeddings
    (tensors of fewer than 2 dimensions). The schedules scale each group's peak (`peak_lrs`)."""
    groups = []
    for params, lr in parts:
        params = [p for p in params if p.requires_grad]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=betas, eps=eps, fused=True)


def peak_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The learning rate of each group as made (read before a resumed state overwrites them)."""
    return [group["lr"] for group in optimizer.param_groups]


def set_lr(optimizer: torch.optim.Optimizer, peaks: list[float], factor: float) -> None:
    for group, peak in zip(optimizer.param_groups, peaks):
        group["lr"] = peak * factor


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then linear decay to 0 at `total` (pretraining)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def tri_stage(step: int, total: int, warmup: float = 0.1, hold: float = 0.4, final_scale: float = 0.05,
              initial_scale: float = 0.01) -> float:
    """Learning-rate factor of the fine-tuning recipe: a linear warm-up (from initial_scale) over the
    first `warmup` of the steps, a hold at 1 for `hold`, then an exponential decay to final_scale."""
    warmup_steps, hold_steps = int(warmup * total), int(hold * total)
    decay_steps = max(1, total - warmup_steps - hold_steps)
    if step < warmup_steps:
        return initial_scale + (1 - initial_scale) * step / warmup_steps
    if step < warmup_steps + hold_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps - hold_steps) / decay_steps)
    return math.exp(math.log(final_scale) * progress)


def training_precision(device: torch.device, precision: str, flags: frozenset[str] | None = None) -> str:
    """What `precision` means for a training run: `auto` is bf16 on GPUs that support it and on CPUs
    with bf16 products (precision.BF16_FLAGS), fp32 elsewhere. `flags`: the CPU's (cpu_flags()).
    Measured on the demo model's fine-tuning step (16 s of audio) on an AMD EPYC with AVX-512 BF16
    and no AMX: 1.5x as fast as float32 on two threads, 1.7x on one (the 11.5 M grown model 1.9x);
    a Xeon with neither trained the tiny model 0.61x as fast in bf16."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise Wav2Vec2Error(f"training precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & BF16_FLAGS else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast (float32 master weights and optimizer) where the precision asks for it."""
    precision = training_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


class RunLog:
    """log.jsonl of a run: one JSON object per logged step, appended and flushed as it comes."""

    def __init__(self, folder: Path, enabled: bool, resume_from: int | None = None):
        self.path = folder / "log.jsonl"
        self.enabled = enabled
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
        if enabled and resume_from is not None and self.path.exists():
            # drop records of steps after the checkpoint: they are about to be run again
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_from]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            self.path.write_text("")

    def records(self) -> list[dict]:
        """The logged steps so far (those a resumed run keeps)."""
        if not (self.enabled and self.path.exists()):
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in records if "step" in r]

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as file:
                file.write(json.dumps(record) + "\n")


def average_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


CHECKPOINT = re.compile(r"step-(\d+)\.pt$")


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write folder/step-NNNNNNN.pt atomically, then delete all but the newest `keep`.

    A failed write (a full disk) raises CheckpointError and leaves earlier checkpoints intact.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:07d}.pt"
    temporary = folder / f".{target.name}.tmp"
    try:
        torch.save(state, temporary)
        os.replace(temporary, target)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"{target}: could not be saved ({error}); "
                              f"the previous checkpoint is intact, resume from it with --resume") from None
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return target


def checkpoint_on_main(runtime: Runtime, folder: Path, step: int, state: dict, keep: int) -> None:
    """The main process saves; every process waits for it, so none runs ahead of a checkpoint."""
    if runtime.main:
        save_checkpoint(folder, step, state, keep)
    if runtime.world > 1:
        dist.barrier()


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("step-*.pt") if CHECKPOINT.search(p.name))
    return found[-1] if found else None


def resume_point(out: Path, resume: bool) -> dict | None:
    """The latest checkpoint of the run in `out` when resuming (an error if there is none); None
    for a new run (an error if `out` already holds one, so that nothing is overwritten)."""
    latest = latest_checkpoint(out / "checkpoints")
    if resume:
        if latest is None:
            raise Wav2Vec2Error(f"--resume: no checkpoint in {out / 'checkpoints'}")
        return load_checkpoint(latest)
    if latest is not None:
        raise Wav2Vec2Error(f"{out} holds checkpoints of an earlier run: "
                            "continue it with --resume, or choose another output folder")
    return None


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable training checkpoint ({error})") from None


class Progress:
    """A progress bar on the main process (stderr, only on a terminal) plus a per-step timer."""

    def __init__(self, enabled: bool, start: int, total: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(initial=start, total=total, desc=desc, disable=None if enabled else True,
                        file=sys.stderr, dynamic_ncols=True)
        self.last = time.perf_counter()

    def update(self, postfix: dict) -> float:
        """Advance one step; returns the seconds the step took."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(1)
        return seconds

    def close(self) -> None:
        self.bar.close()
