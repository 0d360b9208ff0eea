"""A short measured probe on this machine's CPU: load the actual model with the advised adapter (through the
hf-peft backend, as `train` does), run a warm-up step and a few timed AdamW steps of forward + backward at the
advised sequence length, and one forward pass for the evaluation speed. torch and transformers load here
only, so `advise --help` stays instant.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

PROBE_STEPS = 2                  # timed steps after the warm-up step
PROBE_MAX_TOKENS = 512           # CPU tokens/s is flat in the batch: probe at most this many tokens per step
RAM_SHARE = 0.5                  # probe only when fp32 weights + AdamW for the adapter fit in this share of RAM


def import_seconds() -> float:
    """Seconds a fresh Python process takes to import what `train` imports before its first step (torch,
    transformers, peft, matplotlib): measured in a subprocess, since this one may have imported them already."""
    import subprocess
    import sys

    code = "import torch, transformers, peft, matplotlib.pyplot"
    tick = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=600)
    return time.monotonic() - tick if done.returncode == 0 else 0.0


@dataclass
class ProbeResult:
    tokens_per_s: float          # forward + backward + optimizer step
    forward_tokens_per_s: float  # forward only (evaluation)
    load_s: float                # model + adapter load
    first_step_s: float          # the warm-up step
    micro_batch: int
    seq_len: int
    threads: int
    import_s: float = 0.0        # a fresh process importing what `train` imports

    def describe(self) -> str:
        return (f"measured on this CPU ({self.threads} threads): {self.tokens_per_s:,.0f} tok/s training and "
                f"{self.forward_tokens_per_s:,.0f} forward at {self.micro_batch} x {self.seq_len} over "
                f"{PROBE_STEPS} steps after a warm-up step of {self.first_step_s:.1f} s; model load {self.load_s:.1f} s, "
                f"imports {self.import_s:.1f} s")

    def to_dict(self) -> dict:
        return asdict(self)


def physical_memory_gib() -> float:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    except (ValueError, OSError, AttributeError):
        return 0.0


def too_big_for_ram(parameters: int) -> str:
    """Why the model cannot be probed here ('' when it can)."""
    need = parameters * 4 * 2 / 1024 ** 3       # fp32 weights + activations/gradients of the same order
    ram = physical_memory_gib()
    if ram and need > RAM_SHARE * ram:
        return f"{parameters / 1e9:.1f}B parameters need ~{need:.0f} GiB in fp32, this machine has {ram:.0f} GiB"
    return ""


def probe_cpu(config: "TrainConfig", steps: int = PROBE_STEPS) -> ProbeResult:
    """Time the advised model and adapter on this CPU at config's sequence length and micro-batch
    (capped at PROBE_MAX_TOKENS tokens per step)."""
    imports = import_seconds()
    import torch

    from babeltune.plugins.hf_peft import HfPeftBackend
    from babeltune.trainer.backend import Runtime
    from babeltune.models.resolve import resolve_model_dir

    length = config.model.max_seq_length
    micro = max(1, min(config.training.per_device_train_batch_size, PROBE_MAX_TOKENS // length))
    started = time.monotonic()
    runtime = Runtime(device="cpu", precision="fp32", model_dir=str(resolve_model_dir(config.model.name)))
    loaded = HfPeftBackend().load(config, runtime)
    load_s = time.monotonic() - started
    model = loaded.model
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(loaded.tokenizer), (micro, length), generator=generator)
    timings = []
    for _ in range(1 + steps):
        tick = time.monotonic()
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.monotonic() - tick)
    model.eval()
    forward = []
    with torch.no_grad():
        for _ in range(2):             # the first pass in eval mode allocates; keep the faster
            tick = time.monotonic()
            model(input_ids=ids)
            forward.append(time.monotonic() - tick)
    forward_s = min(forward)
    tokens = micro * length
    return ProbeResult(tokens_per_s=tokens * steps / sum(timings[1:]), forward_tokens_per_s=tokens / forward_s,
                       load_s=load_s, first_step_s=timings[0], micro_batch=micro, seq_len=length,
                       threads=torch.get_num_threads(), import_s=imports)
