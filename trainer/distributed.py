"""Data-parallel training on several GPUs of one machine: `train --gpus N`.

`--gpus N` re-runs the same `train` command under torchrun (``python -m torch.distributed.run --standalone
--nproc_per_node N``), one process per GPU; the HF Trainer (through accelerate) then wraps the model in
DistributedDataParallel and shards the batches. Equivalent by hand:

    torchrun --standalone --nproc_per_node 2 -m babeltune.trainer.cli --config advised.yaml

Rank 0 alone writes checkpoints, metrics, the final adapter, the evaluation and the manifest; the other
ranks print nothing but errors. To keep the advisor's effective batch (per-device batch x accumulation x
GPUs), each process accumulates the config's gradient accumulation steps divided by N where they divide evenly
(a runtime setting: the saved config keeps the user's value).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

from babeltune.errors import BabeltuneError

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

LAUNCHED_ENV = "BABELTUNE_LAUNCHED"   # set in the workers so they never launch again


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's GPU index on its machine (torchrun sets LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def fsdp_enabled() -> bool:
    """`accelerate launch` with an FSDP config sets this; the model must then stay on the CPU until sharded."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


def main_process_echo(echo: Callable[[str], Any]) -> Callable[[str], Any]:
    """``echo`` on rank 0, silence elsewhere (errors are raised, not echoed, so every rank still reports them)."""
    return echo if is_main_process() else (lambda _line: None)


def visible_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(requested: int, available: Optional[int] = None) -> None:
    available = visible_cuda_devices() if available is None else available
    if requested > available:
        raise BabeltuneError(f"--gpus: {requested} GPUs requested, but {available} CUDA device(s) are visible; "
                             f"pass --gpus {max(available, 1)} or fewer" + ("" if available else " (or drop --gpus on CPU)"))


def torchrun_command(gpus: int, train_args: list[str]) -> list[str]:
    """The worker command line: this Python, torchrun's module, then `train` with its own arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "babeltune.trainer.cli", *train_args]


def die_with_launcher() -> bool:
    """In a torchrun worker on Linux: ask the kernel to SIGKILL this process when its launcher dies. torchrun starts
    each worker in a session of its own, so a `kill -9` of `train --gpus N` (or of torchrun) would otherwise leave
    the workers training on, holding the GPUs and writing into output_dir while a `--resume` starts beside them.
    Returns whether it was set."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != launcher:   # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def worker_environment() -> dict[str, str]:
    """What the launcher adds to the workers' environment."""
    return {LAUNCHED_ENV: "1", "PYTHONUNBUFFERED": "1"}


def launch(gpus: int, train_args: list[str], echo: Callable[[str], Any], mode: str = "data-parallel") -> int:
    """Run ``train_args`` on ``gpus`` processes and wait; returns the launcher's exit code."""
    command = torchrun_command(gpus, train_args)
    echo(f"--gpus {gpus}: {mode} over {gpus} processes: {' '.join(command[1:])}")
    return subprocess.call(command, env={**os.environ, **worker_environment()})


def accumulation_per_process(config: "TrainConfig", processes: int, echo: Callable[[str], Any]) -> int:
    """The gradient accumulation each process runs: the config's divided by the number of processes when it divides
    evenly, so the effective batch stays what the advisor chose; otherwise the config's, saying that the effective
    batch grows. A runtime decision (``Runtime.gradient_accumulation_steps``): the config saved with the run keeps
    the user's value, so running it again on one GPU trains with the same effective batch."""
    training = config.training
    steps, per_device = training.gradient_accumulation_steps, training.per_device_train_batch_size
    if processes <= 1:
        return steps
    if steps % processes == 0:
        scaled = steps // processes
        echo(f"distributed: {processes} processes; gradient_accumulation_steps {steps} -> {scaled} keeps the effective "
             f"batch at {per_device * steps} sequences")
        return scaled
    echo(f"distributed: {processes} processes; gradient_accumulation_steps {steps} does not divide by {processes}, "
         f"so the effective batch grows from {per_device * steps} to {per_device * steps * processes} sequences "
         "(consider a lower learning rate or an accumulation that divides evenly)")
    return steps


def peak_memory_per_rank() -> Optional[list[float]]:
    """Each rank's peak GPU memory reserved by PyTorch during training (GiB, without the CUDA context), gathered to
    every rank; None on CPU. A collective under torchrun: every rank calls it."""
    import torch

    if not torch.cuda.is_available():
        return None
    peak = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        peaks: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(peaks, peak)
        return peaks
    return [peak]
