"""How long the advised run takes: on a GPU from the measured throughput table (babeltune.advisor.throughput),
on this machine's CPU from a short probe of the actual model at the advised shape (babeltune.advisor.probe).

A run's wall time = training (optimizer steps x tokens per step / tokens per second) + evaluation (every
evaluation and the final before/after bits-per-character scoring read the held-out split forward only) +
start-up (loading the model for training and again for the reload check; measured by the CPU probe, not
known for GPUs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from babeltune.advisor.probe import ProbeResult
    from babeltune.advisor.rules.context import RuleContext
    from babeltune.config import TrainConfig

FORWARD_COST = 1 / 3      # a forward pass is ~2N of the ~6N FLOPs per token of forward + backward (Kaplan et al. 2020)
FINAL_EVAL_PASSES = 2     # train scores the held-out split before and after the adapter at the end
MODEL_LOADS = 2           # train loads the model, and again for the reload check of the saved adapter
MAX_EVAL_SHARE = 0.2      # evaluations during training may cost at most this share of the training compute


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunEstimate:
    """Estimated wall time of one `train` run on one device, with its parts (seconds)."""

    device: str                         # "an H100", "this CPU", ...
    seconds: float
    parts: dict[str, float]
    steps: int
    step_tokens: int
    tokens_per_s: float
    evaluations: int
    basis: str                          # where tokens_per_s comes from
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"training {self.steps} steps x {self.step_tokens:,} tokens at {self.tokens_per_s:,.0f} tok/s "
                 f"{format_duration(self.parts['training'])}",
                 f"{self.evaluations} evaluation{'s' if self.evaluations != 1 else ''} + final scoring "
                 f"{format_duration(self.parts['evaluation'])}"]
        parts.append(f"start-up {format_duration(self.parts['startup'])}" if self.parts.get("startup")
                     else "plus model loading")
        return (f"estimated run time on {self.device}: ~{format_duration(self.seconds)} ({'; '.join(parts)}); "
                f"{self.basis}")

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 1),
                "parts": {k: round(v, 1) for k, v in self.parts.items()}}


def planned_evaluations(config: "TrainConfig") -> int:
    steps, ev = config.training.max_steps or 0, config.eval
    if ev.evaluation_strategy == "steps" and ev.eval_steps:
        return steps // ev.eval_steps
    if ev.evaluation_strategy == "epoch":
        return max(1, math.ceil(config.training.num_train_epochs or 1))
    return 0


def estimate_run(config: "TrainConfig", *, step_tokens: float, heldout_tokens: float, tokens_per_s: float,
                 device: str, basis: str, forward_tokens_per_s: Optional[float] = None,
                 startup_s: float = 0.0) -> RunEstimate:
    """Wall time of ``config`` (which must give max_steps, as `advise` writes it) at the given speeds."""
    steps = config.training.max_steps or 0
    evaluations = planned_evaluations(config)
    forward = forward_tokens_per_s or tokens_per_s / FORWARD_COST
    parts = {"training": steps * step_tokens / tokens_per_s,
             "evaluation": (evaluations + FINAL_EVAL_PASSES) * heldout_tokens / forward,
             "startup": startup_s}
    return RunEstimate(device=device, seconds=sum(parts.values()), parts=parts, steps=steps,
                       step_tokens=round(step_tokens), tokens_per_s=tokens_per_s, evaluations=evaluations, basis=basis)


def affordable_evaluations(train_tokens: float, heldout_tokens: float) -> int:
    """Evaluations whose cost stays within MAX_EVAL_SHARE of the training compute."""
    return int(MAX_EVAL_SHARE * train_tokens / max(1.0, heldout_tokens * FORWARD_COST))


def steps_within(budget_s: float, tokens_per_s: float, step_tokens: float, heldout_tokens: float,
                 startup_s: float = 0.0) -> int:
    """Optimizer steps that fit ``budget_s`` with the start-up, the final scoring and evaluations costing up to
    MAX_EVAL_SHARE of the training (at least 1)."""
    final = FINAL_EVAL_PASSES * heldout_tokens * FORWARD_COST / tokens_per_s
    per_step = step_tokens / tokens_per_s * (1 + MAX_EVAL_SHARE)
    return max(1, int((budget_s - startup_s - final) / per_step))


def gpu_estimate(ctx: "RuleContext", config: "TrainConfig") -> RunEstimate:
    """The run on the target GPU, from the measured throughput table at the advised micro-step."""
    from babeltune.advisor.rules.schedule import heldout_tokens, step_tokens
    from babeltune.advisor.rules.shapes import device_label, gpu_name, planned_rows
    from babeltune.advisor.throughput import load_table, shape_curve

    tr = config.training
    curve = shape_curve(load_table(), gpu_name(ctx), ctx.facts.parameters, packing=config.data.packing,
                        gradient_checkpointing=tr.gradient_checkpointing)
    micro_tokens = tr.per_device_train_batch_size * planned_rows(ctx).tokens_per_row
    return estimate_run(config, step_tokens=step_tokens(ctx), heldout_tokens=heldout_tokens(ctx),
                        tokens_per_s=curve.tokens_per_s(micro_tokens), device=device_label(ctx),
                        basis=f"tokens/s at {micro_tokens:,.0f} tokens per micro-step interpolated from {curve.basis()}")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_probe(config: "TrainConfig", facts, echo) -> tuple[Optional["ProbeResult"], str]:
    """The CPU probe, or None and why not (a probe failure never stops `advise`)."""
    from babeltune.advisor.probe import probe_cpu, too_big_for_ram

    why = too_big_for_ram(facts.parameters)
    if why:
        return None, f"CPU run time not measured: {why}"
    echo(f"timing {facts.name} on this CPU (a warm-up and a few training steps; --no-probe skips) ...")
    try:
        return probe_cpu(config), ""
    except Exception as exc:   # a model that cannot load here still gets its advice
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"CPU run time not measured: the probe failed ({first})"


def probe_startup_s(probe: "ProbeResult") -> float:
    """Start-up of a `train` run on this CPU: imports, the model loads twice, the first step is slower than the
    rest."""
    step = probe.micro_batch * probe.seq_len / probe.tokens_per_s
    return probe.import_s + MODEL_LOADS * probe.load_s + max(0.0, probe.first_step_s - step)


def cpu_estimate(ctx: "RuleContext", config: "TrainConfig", probe: "ProbeResult") -> RunEstimate:
    from babeltune.advisor.rules.schedule import heldout_tokens, step_tokens

    return estimate_run(config, step_tokens=step_tokens(ctx), heldout_tokens=heldout_tokens(ctx),
                        tokens_per_s=probe.tokens_per_s, forward_tokens_per_s=probe.forward_tokens_per_s,
                        startup_s=probe_startup_s(probe), device="this CPU", basis=probe.describe())


def cpu_variant_note(estimate: RunEstimate, command: str, minutes: int = 15) -> str:
    """For a GPU-sized config on a machine without a GPU: what it costs here, and the CPU-sized command."""
    return (f"this machine has no GPU: the advised run would take ~{format_duration(estimate.seconds)} on its CPU "
            f"({estimate.tokens_per_s:,.0f} tok/s measured); for a run sized to finish in ~{minutes} minutes here: "
            f"{command} --gpu cpu --minutes {minutes}")
