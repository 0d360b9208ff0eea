"""How long the advised run takes: on a GPU from the measured throughput table (babeltune.advisor.throughput),
on this machine's CPU from a short probe of the actual model at the advised shape (babeltune.advisor.probe).

A run's wall time (what `train` spends inside run_training: loading through the manifest) =
  training     optimizer steps x tokens per step / tokens per second (the table, or the CPU probe);
  evaluations  each evaluation scores the held-out split forward only, one document per row in batches of
               eval.per_device_eval_batch_size: on a GPU every batch costs FORWARD_COST of a training micro-step
               of the same tokens (the table's curve: below ~1k tokens a fixed cost per step dominates), plus
               EVAL_FIXED_S; on a CPU held-out tokens / the probe's forward tokens/s;
  saves        SAVE_S per checkpoint (save_steps, plus the one the Trainer writes at the last step);
  final scoring  the held-out split before and after the adapter (FINAL_EVAL_PASSES passes of the batches above);
  start-up     on a GPU: RUN_FIXED_S (model load, data, adapter save, the reload check's second load, the first
               step's warm-up) + FIRST_RUN_IN_PROCESS_S (a fresh process: CUDA context, lazy imports, kernel
               compilation) + UNSLOTH_COMPILE_S with Unsloth; on a CPU measured by the probe.
Python's own imports before `train` starts (a few seconds) are not counted on a GPU.

Where the GPU constants come from: bench/results/estimate_check.json (H100, real SmolLM2-135M, hf-peft with
liger, the configs `advise` wrote for the shipped sample (mr, the first run in its process) and UD hi and de
(the second and third runs in the same process), each with 10 evaluations and 10 checkpoint saves: every
eval_steps plus the evaluation and save transformers >= 5 adds at the last step when max_steps is not a multiple
of eval_steps). With b = FORWARD_COST x the table's step time at 1,024 tokens (8 x 128: 1,024 / 6,607 tok/s)
= 0.052 s per eval batch and ceil(held-out documents / 4) batches (mr 150 documents -> 38, hi and de 50 -> 13):
  - per evaluation with its checkpoint, (loop_s - train_steps_s - 10 x batches x b) / 10 = 0.314 s (hi),
    0.269 s (de): mean 0.29 s, split evenly between EVAL_FIXED_S and SAVE_S (the rows time them together; the
    bench now records them apart: eval_s / save_s per event);
  - RUN_FIXED_S: run_s - loop_s - 2 x batches x b (final scoring) + first step - steady step = 2.08 s (hi),
    2.31 s (de): mean 2.2 s;
  - FIRST_RUN_IN_PROCESS_S: what the mr row, the first run in its process, spends beyond the warm terms:
    (7.31 - 2.2) s outside the loop + 10 x (0.655 - 0.29) s at its evaluations = 8.8 s;
  - UNSLOTH_COMPILE_S: Unsloth's first step minus a steady step on the same mr config: 23.20 - 20.25 / 67
    = 22.9 s (its 8 x 2048 reference, a second shape in a warm process, compiled again: 16.98 s).
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
# measured on an H100 (bench/results/estimate_check.json; derivations in the module docstring)
EVAL_FIXED_S = 0.145      # per evaluation beyond its forward batches (half of the 0.29 s per evaluation + save)
SAVE_S = 0.145            # per checkpoint save (the other half)
RUN_FIXED_S = 2.2         # model load, data, adapter save, reload check's second load, first-step warm-up
FIRST_RUN_IN_PROCESS_S = 8.8  # a fresh process's first run: CUDA context, lazy imports, kernel compilation
UNSLOTH_COMPILE_S = 22.9  # Unsloth compiles its kernels during the first step


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunEstimate:
    """Estimated wall time of one `train` run on one device, with its parts (seconds): training, evaluations,
    saves, final scoring, start-up."""

    device: str                         # "an H100", "this CPU", ...
    seconds: float
    parts: dict[str, float]
    steps: int
    step_tokens: int
    tokens_per_s: float
    evaluations: int
    basis: str                          # where tokens_per_s comes from
    notes: list[str] = field(default_factory=list)
    saves: int = 0
    heldout_documents: int = 0
    heldout_tokens: float = 0.0
    eval_batches: int = 0               # forward batches per evaluation (GPU); 0 when scored per token (CPU)

    def line(self) -> str:
        plural = lambda n, word: f"{n} {word}{'s' if n != 1 else ''}"   # noqa: E731
        parts = [f"training {self.steps} steps x {self.step_tokens:,} tokens at {self.tokens_per_s:,.0f} tok/s "
                 f"{format_duration(self.parts['training'])}",
                 f"{plural(self.evaluations, 'evaluation')} {format_duration(self.parts['evaluations'])}",
                 f"{plural(self.saves, 'checkpoint save')} {format_duration(self.parts['saves'])}",
                 f"final scoring {format_duration(self.parts['final scoring'])}",
                 f"start-up and reload {format_duration(self.parts['start-up'])}"]
        return (f"estimated run time on {self.device}: ~{format_duration(self.seconds)} ({'; '.join(parts)}); "
                f"{self.basis}")

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 1),
                "parts": {k: round(v, 1) for k, v in self.parts.items()}}


def _count_at(steps: int, every: Optional[float]) -> int:
    """Events every ``every`` steps over ``steps``, plus the one transformers (>= 5, DefaultFlowCallback) adds at
    the last step when ``steps`` is not a multiple of ``every``."""
    every = int(every) if every and every >= 1 else max(1, int((every or 1) * steps))
    return steps // every + (1 if steps % every else 0)


def planned_evaluations(config: "TrainConfig") -> int:
    steps, ev = config.training.max_steps or 0, config.eval
    if ev.evaluation_strategy == "steps" and ev.eval_steps:
        return _count_at(steps, ev.eval_steps)
    if ev.evaluation_strategy == "epoch":
        return max(1, math.ceil(config.training.num_train_epochs or 1))
    return 0


def planned_saves(config: "TrainConfig") -> int:
    """Checkpoints `train` writes: every training.save_steps (= eval_steps as `advise` writes it, since early
    stopping needs a checkpoint at every evaluation) and one at the last step."""
    steps, ev = config.training.max_steps or 0, config.eval
    if ev.save_strategy == "steps":
        return _count_at(steps, config.training.save_steps)
    if ev.save_strategy == "epoch":
        return max(1, math.ceil(config.training.num_train_epochs or 1))
    return 0


def eval_batches(heldout_documents: int, config: "TrainConfig") -> int:
    """Forward batches per evaluation: one document per row, eval.per_device_eval_batch_size rows."""
    documents = min(heldout_documents, config.eval.max_eval_documents)
    return math.ceil(documents / config.eval.per_device_eval_batch_size)


def estimate_run(config: "TrainConfig", *, step_tokens: float, heldout_tokens: float, tokens_per_s: float,
                 device: str, basis: str, forward_tokens_per_s: Optional[float] = None,
                 startup_s: float = 0.0, heldout_documents: int = 0,
                 eval_batch_s: Optional[float] = None) -> RunEstimate:
    """Wall time of ``config`` (which must give max_steps, as `advise` writes it) at the given speeds. With
    ``eval_batch_s`` (GPU) an evaluation costs its forward batches; otherwise (CPU) its tokens at
    ``forward_tokens_per_s`` (default tokens_per_s / FORWARD_COST)."""
    steps = config.training.max_steps or 0
    evaluations, saves = planned_evaluations(config), planned_saves(config)
    batches = eval_batches(heldout_documents, config) if eval_batch_s is not None else 0
    if eval_batch_s is not None:
        scoring = batches * eval_batch_s
    else:
        scoring = heldout_tokens / (forward_tokens_per_s or tokens_per_s / FORWARD_COST)
    parts = {"training": steps * step_tokens / tokens_per_s,
             "evaluations": evaluations * (scoring + EVAL_FIXED_S),
             "saves": saves * SAVE_S,
             "final scoring": FINAL_EVAL_PASSES * scoring,
             "start-up": startup_s}
    return RunEstimate(device=device, seconds=sum(parts.values()), parts=parts, steps=steps,
                       step_tokens=round(step_tokens), tokens_per_s=tokens_per_s, evaluations=evaluations,
                       basis=basis, saves=saves, heldout_documents=heldout_documents,
                       heldout_tokens=round(heldout_tokens, 1), eval_batches=batches)


def gpu_startup_s(backend: str) -> float:
    """Start-up of a `train` run in a fresh process on a GPU (module docstring: where the figures come from)."""
    return RUN_FIXED_S + FIRST_RUN_IN_PROCESS_S + (UNSLOTH_COMPILE_S if backend == "unsloth" else 0.0)


def gpu_eval_batch_s(curve, batch_tokens: float) -> float:
    """Seconds of one forward-only eval batch: FORWARD_COST of a training micro-step of the same tokens."""
    return FORWARD_COST * batch_tokens / curve.tokens_per_s(batch_tokens)


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


def heldout_documents(ctx: "RuleContext") -> int:
    """Held-out documents every evaluation scores (the split train makes, capped), as schedule.heldout_tokens."""
    from babeltune.advisor.rules.schedule import eval_fraction
    from babeltune.config import EvalConfig

    documents = ctx.measurements.documents
    return min(EvalConfig.model_fields["max_eval_documents"].default, max(1, round(documents * eval_fraction())))


def gpu_estimate(ctx: "RuleContext", config: "TrainConfig") -> RunEstimate:
    """The run on the target GPU, from the measured throughput table at the advised micro-step."""
    from babeltune.advisor.rules.schedule import heldout_tokens, step_tokens
    from babeltune.advisor.rules.shapes import device_label, gpu_name, planned_rows
    from babeltune.advisor.throughput import load_table, shape_curve

    tr, backend = config.training, config.backend.name
    curve = shape_curve(load_table(), gpu_name(ctx), ctx.facts.parameters, backend=backend,
                        packing=config.data.packing, gradient_checkpointing=tr.gradient_checkpointing)
    micro_tokens = tr.per_device_train_batch_size * planned_rows(ctx).tokens_per_row
    documents, held = heldout_documents(ctx), heldout_tokens(ctx)
    batch_tokens = config.eval.per_device_eval_batch_size * min(held / documents, config.model.max_seq_length)
    basis = f"tokens/s at {micro_tokens:,.0f} tokens per micro-step interpolated from {curve.basis()}"
    if backend == "unsloth":
        basis += f"; start-up includes Unsloth's first-step compilation ({UNSLOTH_COMPILE_S:g} s measured)"
    return estimate_run(config, step_tokens=step_tokens(ctx), heldout_tokens=held,
                        tokens_per_s=curve.tokens_per_s(micro_tokens), device=device_label(ctx), basis=basis,
                        startup_s=gpu_startup_s(backend), heldout_documents=documents,
                        eval_batch_s=gpu_eval_batch_s(curve, batch_tokens))


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
                        startup_s=probe_startup_s(probe), device="this CPU", basis=probe.describe(),
                        heldout_documents=heldout_documents(ctx))


def cpu_variant_note(estimate: RunEstimate, command: str, minutes: int = 15) -> str:
    """For a GPU-sized config on a machine without a GPU: what it costs here, and the CPU-sized command."""
    return (f"this machine has no GPU: the advised run would take ~{format_duration(estimate.seconds)} on its CPU "
            f"({estimate.tokens_per_s:,.0f} tok/s measured); for a run sized to finish in ~{minutes} minutes here: "
            f"{command} --gpu cpu --minutes {minutes}")
