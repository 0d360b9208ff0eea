"""Trainer callbacks owned by the core: progress, metrics JSONL, loss curve, NaN guard, gradient check.

Each factory imports transformers lazily and returns a ``transformers.TrainerCallback``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_text

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def _base():
    from transformers import TrainerCallback

    return TrainerCallback


# ---------------------------------------------------------------------------------------------
# Progress


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


ESTIMATE_AFTER_STEPS = 4    # time this many steps after the warm-up step, then print one estimate line


class StepTimer:
    """Seconds inside each optimizer step (on_step_begin -> on_step_end: evaluation, saving and logging run
    after on_step_end, so they are not counted). After the first (warm-up) step and ESTIMATE_AFTER_STEPS more,
    ``estimate_line`` gives the remaining training time once."""

    def __init__(self):
        self.began: Optional[float] = None
        self.durations: list[float] = []
        self.reported = False

    def begin(self) -> None:
        self.began = time.monotonic()

    def end(self) -> None:
        if self.began is not None:
            self.durations.append(time.monotonic() - self.began)
            self.began = None

    def estimate_line(self, state, args) -> Optional[str]:
        if self.reported or len(self.durations) < 1 + ESTIMATE_AFTER_STEPS:
            return None
        self.reported = True
        timed = self.durations[1:1 + ESTIMATE_AFTER_STEPS]
        per_step = sum(timed) / len(timed)
        left = max(0, state.max_steps - state.global_step)
        evals = remaining_evaluations(args, state.global_step, state.max_steps)
        plus = f", plus {evals} evaluation{'s' if evals != 1 else ''} and the final scoring" if evals else \
            ", plus the final scoring"
        return (f"estimate: training ~{format_eta(left * per_step)} to go: {left} more steps x {per_step:.2f} s "
                f"(measured over steps {2}-{1 + len(timed)} of this run; step 1, the warm-up, took "
                f"{self.durations[0]:.2f} s){plus}")


def remaining_evaluations(args, step: int, max_steps: int) -> int:
    strategy = str(getattr(args, "eval_strategy", "no")).split(".")[-1].lower()
    every = getattr(args, "eval_steps", None)
    if strategy != "steps" or not every:
        return 0
    every = int(every) if every >= 1 else max(1, int(every * max_steps))
    return max_steps // every - step // every


def progress_callback(echo: Callable[[str], Any] = print):
    """A rich progress bar (step, loss, tokens/s, ETA) on terminals, plus one line per log on every output."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class RichProgress(_base()):
        def __init__(self):
            self.console = Console(stderr=True)
            self.progress: Optional[Progress] = None
            self.task = None
            self.start_time = self.start_step = self.start_tokens = 0
            self.last_loss: Optional[float] = None       # None until a loss is logged: shown as "-"
            self.timer = StepTimer()

        def shown_loss(self) -> str:
            return "-" if self.last_loss is None else f"{self.last_loss:.4f}"

        def tokens_per_second(self, state) -> float:
            elapsed = time.monotonic() - self.start_time
            return (state.num_input_tokens_seen - self.start_tokens) / elapsed if elapsed > 0 else 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_time, self.start_step = time.monotonic(), state.global_step
            self.start_tokens = state.num_input_tokens_seen or 0
            # On resume the checkpoint's log history is already loaded: show its last real loss, not nan.
            logged = [entry["loss"] for entry in state.log_history or [] if "loss" in entry]
            self.last_loss = logged[-1] if logged else None
            self.timer = StepTimer()
            planned = (f"training.max_steps {args.max_steps}" if args.max_steps and args.max_steps > 0 else
                       f"{args.num_train_epochs:g} epochs of {args.per_device_train_batch_size} x "
                       f"{args.gradient_accumulation_steps} rows per step")
            echo(f"optimizer steps: {state.max_steps} ({planned})"
                 + (f", resuming at step {state.global_step}" if state.global_step else ""))
            if self.console.is_terminal:
                self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                                         TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
                self.progress.start()
                self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                                   loss=self.shown_loss(), tps="-")

        def on_step_begin(self, args, state, control, **kwargs):
            self.timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            self.timer.end()
            line = self.timer.estimate_line(state, args)
            if line:
                (self.progress.console.print if self.progress else echo)(line)
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step, loss=self.shown_loss(),
                                     tps=f"{self.tokens_per_second(state):,.0f}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.last_loss = logs["loss"]
                # The Trainer logs after on_step_end: refresh now, else the bar lags one log behind.
                if self.progress is not None:
                    self.progress.update(self.task, loss=self.shown_loss())
            done = state.global_step - self.start_step
            elapsed = time.monotonic() - self.start_time
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0
            shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                              if k in ("loss", "eval_loss", "learning_rate", "grad_norm"))
            if shown:
                line = (f"step {state.global_step}/{state.max_steps}  {shown}  "
                        f"{self.tokens_per_second(state):,.0f} tok/s  ETA {format_eta(eta)}")
                (self.progress.console.print if self.progress else echo)(line)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()


# ---------------------------------------------------------------------------------------------
# Metrics JSONL and the loss curve


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return records


def metrics_callback(output_dir: str | Path):
    """Append every log (train loss, eval loss, lr, grad norm, tokens seen) to metrics.jsonl.
    On resume, records past the checkpoint's step are dropped: those steps are trained again."""
    path = Path(output_dir) / METRICS_FILE

    class MetricsJsonl(_base()):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                kept = [r for r in read_metrics(path) if r.get("step", 0) <= state.global_step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": state.epoch, "tokens_seen": state.num_input_tokens_seen,
                      "time": round(time.time(), 3), **logs}
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=float) + "\n")

    return MetricsJsonl()


def loss_plot_title(run: str | Path, model: str, language: str) -> str:
    """`run NAME: MODEL on LANGUAGE`, with a model path shortened to its folder or file name."""
    return f"run {Path(run).name}: {Path(str(model).rstrip('/')).name or model} on {language}"


def plot_losses(metrics_path: Path, png_path: Path, title: Optional[str] = None) -> Optional[Path]:
    """Train and eval loss against step, as a PNG (written via a temp file). None when nothing was logged."""
    figure = loss_figure(read_metrics(metrics_path), title)
    if figure is None:
        return None
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    figure.savefig(tmp)
    os.replace(tmp, png_path)
    return png_path


def loss_figure(records: list[dict], title: Optional[str] = None):
    """The loss curve as a matplotlib Figure (Agg, nothing global kept); None when no loss was logged."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not train and not evals:
        return None
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    for points, label, style in ((train, "train loss", "-"), (evals, "eval loss", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def loss_plot_callback(output_dir: str | Path, title: Optional[str] = None):
    folder = Path(output_dir)

    class LossPlot(_base()):
        def __init__(self):
            self.title = title

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                plot_losses(folder / METRICS_FILE, folder / LOSS_PLOT, title=self.title)

    return LossPlot()


# ---------------------------------------------------------------------------------------------
# NaN guard


def nonfinite_causes(config) -> list[str]:
    """Likely causes of non-finite losses, most likely first, with the values from this config."""
    tr, ad = config.training, config.adapter
    causes = [f"learning rate too high (training.learning_rate {tr.learning_rate:g}): try 2-5x lower"]
    if tr.precision == "fp16":
        causes.append("fp16 overflow (training.precision fp16): use bf16 on GPUs that support it, or fp32")
    if tr.warmup_steps == 0 and tr.warmup_ratio == 0:
        causes.append("no warmup (training.warmup_steps 0, warmup_ratio 0): warm up over ~3-5% of steps")
    if ad.modules_to_save:
        rate = ad.embedding_learning_rate or tr.learning_rate
        causes.append(f"full-rank {', '.join(ad.modules_to_save)} at learning rate {rate:g}: set adapter.embedding_learning_rate lower")
    causes.append(f"gradient clipping too loose (training.max_grad_norm {tr.max_grad_norm:g}): try 0.3-1.0")
    causes.append("bad data: rows whose labels are all -100 or corrupt text; check data.train")
    return causes


def nan_guard_callback(limit: int):
    """Stops training after ``limit`` optimizer steps with a non-finite loss and blocks every checkpoint save from
    the first one on (the weights after a NaN step are damaged), so the last checkpoint stays a good one.
    ``tripped``/``first_step``/``count`` tell the caller what happened.

    The per-step flags stay on the device and are read back only at steps that log, evaluate, save or stop
    (where the Trainer synchronises anyway): reading a GPU value every step would stall the launch queue."""

    class NanGuard(_base()):
        def __init__(self):
            self.step_flag = None      # device bool: a micro-step of the current optimizer step was non-finite
            self.bad_steps = None      # device int: optimizer steps with a non-finite loss so far
            self.first_bad = None      # device int: global step of the first one (-1: none yet)
            self.count = 0
            self.first_step: Optional[int] = None
            self.tripped = False
            self.handle = None

        def _watch(self, module, inputs, output):
            loss = getattr(output, "loss", None)
            if loss is None and isinstance(output, dict):
                loss = output.get("loss")
            if loss is not None:
                bad = ~loss.detach().isfinite().all()
                self.step_flag = bad if self.step_flag is None else self.step_flag | bad

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and self.handle is None:
                self.handle = model.register_forward_hook(self._watch)

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_flag = None

        def _accumulate(self, step: int) -> None:
            import torch

            flag = self.step_flag
            if flag is None:
                return
            if self.bad_steps is None:
                self.bad_steps = torch.zeros((), dtype=torch.long, device=flag.device)
                self.first_bad = torch.full((), -1, dtype=torch.long, device=flag.device)
            self.bad_steps = self.bad_steps + flag.long()
            self.first_bad = torch.where(flag & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad)

        def _read_back(self) -> None:
            if self.bad_steps is not None:
                self.count = int(self.bad_steps)
                first = int(self.first_bad)
                self.first_step = first if first >= 0 else None

        def on_step_end(self, args, state, control, **kwargs):
            self._accumulate(state.global_step)
            at_decision = (control.should_save or control.should_log or control.should_evaluate
                           or control.should_training_stop or state.global_step >= state.max_steps)
            if at_decision:
                self._read_back()
            if self.first_step is not None:
                control.should_save = False
            if self.count >= limit:
                self.tripped = True
                control.should_training_stop = True
            return control

        def on_train_end(self, args, state, control, **kwargs):
            self._read_back()   # a stop decided by a later callback in the same step is still counted
            if self.handle is not None:
                self.handle.remove()   # the reload check and the evaluation run the model after training
                self.handle = None

    return NanGuard()


# ---------------------------------------------------------------------------------------------
# Gradient check after the first optimizer step


def ungraded_fragments(model: Any, fragments: list[str]) -> dict[str, str]:
    """fragment -> problem ("none" | "zero" | "no match") for every expected-trainable name fragment whose
    parameters have no non-zero gradient."""
    problems = {}
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for fragment in fragments:
        matched = [p for name, p in params if fragment in name]
        if not matched:
            problems[fragment] = "no match"
        elif all(p.grad is None for p in matched):
            problems[fragment] = "none"
        elif not any(p.grad is not None and bool(p.grad.detach().abs().max() > 0) for p in matched):
            problems[fragment] = "zero"
    return problems


PROBLEM_TEXT = {"no match": "matches no trainable parameter", "none": "no gradient reached it (disconnected from the loss)",
                "zero": "its gradient stayed exactly zero after an update"}


def gradient_check_callback(fragments: list[str]):
    """Every fragment in ``LoadedModel.expected_trainable`` must match a trainable parameter with a non-zero
    gradient (frameworks drop such modules silently). Checked before the first optimizer step: no match or no
    gradient at all fails at once. An exactly-zero gradient is re-checked until one update with a learning rate
    > 0 has happened, because a LoRA A matrix has a zero gradient by construction until B (initialised to zero)
    has moved, and warmup may start at learning rate 0."""

    class GradientCheck(_base()):
        def __init__(self):
            self.pending = list(fragments)
            self.updated = False   # an optimizer step with lr > 0 has happened

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not self.pending or model is None:
                return
            problems = ungraded_fragments(model, self.pending)
            self.pending = list(problems)
            fatal = {k: v for k, v in problems.items() if v != "zero" or self.updated}
            if fatal:
                listed = "; ".join(f"{k}: {PROBLEM_TEXT[v]}" for k, v in fatal.items())
                raise BabeltuneError(f"gradient check at step {state.global_step + 1}: modules meant to train get no "
                                     f"gradient ({listed}); check adapter.target_modules / modules_to_save against "
                                     "the model's module names")

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            if optimizer is not None and any(group.get("lr", 0) > 0 for group in optimizer.param_groups):
                self.updated = True

    return GradientCheck()
