"""Checkpoints that are complete or clearly not.

The HF Trainer writes ``checkpoint-N`` folders file by file, so a kill during a save leaves a folder that
looks like a checkpoint. ``CompletionMarker`` (a TrainerCallback) writes ``babeltune_complete.json`` into the
folder after the Trainer has finished saving it; folders without it are treated as incomplete and never
resumed from. The marker also records the trainable parameter names, so `--resume` can refuse a
checkpoint made for a different adapter.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_text

MARKER = "babeltune_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def trainable_share(model) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, trainable %). Shared tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        numel = param.numel() * (2 if param.__class__.__name__ == "Params4bit" else 1)
        total += numel
        trainable += numel if param.requires_grad else 0
    return trainable, total, (100.0 * trainable / total) if total else 0.0


def trainable_names(model: Any) -> list[str]:
    return sorted(name for name, param in model.named_parameters() if param.requires_grad)


def checkpoint_step(path: Path) -> Optional[int]:
    match = CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Union[str, Path]) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(output_dir: Union[str, Path]) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for every checkpoint-N folder, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p, is_complete(p)) for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found)


def last_complete_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    complete = [path for _, path, ok in list_checkpoints(output_dir) if ok]
    return complete[-1] if complete else None


def saved_files(checkpoint: Path) -> dict[str, int]:
    """Relative path -> size of every file the Trainer wrote into the checkpoint (the marker aside)."""
    return {p.relative_to(checkpoint).as_posix(): p.stat().st_size for p in sorted(checkpoint.rglob("*"))
            if p.is_file() and p.name != MARKER}


def write_marker(checkpoint: Path, step: int, model: Any, extra: Optional[dict] = None) -> Path:
    """The completion marker: step, trainable parameter names, the size of every saved file (a file cut short or
    replaced later is detected before resuming) and ``extra`` (the run's resolved config)."""
    record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "trainable_parameters": trainable_names(model), "files": saved_files(checkpoint), **(extra or {})}
    return atomic_write_text(checkpoint / MARKER, json.dumps(record, indent=1))


def read_marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Validation before resuming: cheap checks that every file the resume reads is whole

TORCH_STATE_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")


def torch_file_problem(path: Path) -> Optional[str]:
    """Load with weights_only (no code runs) and mmap (tensor data is not read), as the Trainer loads it."""
    import contextlib

    import torch

    try:
        from transformers.trainer_pt_utils import safe_globals   # numpy arrays in the RNG state
    except ImportError:
        safe_globals = contextlib.nullcontext
    try:
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any failure to read means the file cannot be resumed from
        return f"cannot be read ({one_line_reason(exc)})"
    return None


def one_line_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def file_problem(path: Path) -> Optional[str]:
    if path.stat().st_size == 0:
        return "is empty"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"is not valid JSON ({one_line_reason(exc)})"
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        except Exception as exc:
            return f"is not a whole safetensors file ({one_line_reason(exc)})"
    elif TORCH_STATE_FILES.match(path.name):
        return torch_file_problem(path)
    return None


def checkpoint_problem(checkpoint: Path) -> Optional[str]:
    """What makes this complete checkpoint unusable for resuming ('FILE: problem'), or None."""
    try:
        record = read_marker(checkpoint)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{MARKER}: is not valid JSON ({one_line_reason(exc)})"
    for name, size in (record.get("files") or {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name}: missing (written at save time)"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, {size} when saved (cut short or replaced)"
    if not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json: missing"
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        problem = file_problem(path)
        if problem:
            return f"{path.relative_to(checkpoint).as_posix()}: {problem}"
    saved_step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    if checkpoint_step(checkpoint) is not None and saved_step != checkpoint_step(checkpoint):
        return f"trainer_state.json: global_step {saved_step} in a folder named {checkpoint.name}"
    return None


# ---------------------------------------------------------------------------------------------
# --resume


def newest_usable(output_dir: Union[str, Path], echo=print, before: Optional[int] = None) -> tuple[Optional[Path], list[str]]:
    """The newest complete checkpoint that passes the checks (below step ``before`` when given); every damaged
    one passed over is said, with its problem."""
    damaged = []
    for step, path, ok in reversed(list_checkpoints(output_dir)):
        if not ok or (before is not None and step >= before):
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        damaged.append(f"{path.name} ({problem})")
        echo(f"resume: {path.name} is damaged ({problem}); falling back to an earlier checkpoint")
    return None, damaged


def resolve_last(output_dir: Path, echo) -> Path:
    found, damaged = newest_usable(output_dir, echo)
    if found is None:
        detail = f"; damaged: {', '.join(damaged)}" if damaged else ""
        raise BabeltuneError(f"--resume: no complete checkpoint in {output_dir}{detail}; start without --resume "
                             "or pass --resume PATH")
    skipped = [p.name for step, p, ok in list_checkpoints(output_dir) if not ok and step > checkpoint_step(found)]
    if skipped:
        echo(f"resume: skipping incomplete {', '.join(skipped)} (no {MARKER}: the save was interrupted)")
    return found


def resolve_resume(resume: Union[str, bool, None], output_dir: Union[str, Path], echo=print) -> Optional[Path]:
    """``--resume`` (True: the last complete checkpoint in output_dir; a path: that checkpoint, or the last
    complete one inside it when it is a run folder) -> checkpoint folder, or None when not resuming.
    Damaged checkpoints are never returned: the automatic choice falls back to the previous one and says why."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "":
        return resolve_last(Path(output_dir), echo)
    path = Path(resume)
    if not path.is_dir():
        raise BabeltuneError(f"--resume {resume}: no such checkpoint folder; pass a checkpoint-N folder or the run's output_dir")
    if checkpoint_step(path) is None and not is_complete(path):
        if last_complete_checkpoint(path) is None:
            raise BabeltuneError(f"--resume {resume}: no complete checkpoint-N folder inside it")
        return resolve_last(path, echo)
    if not is_complete(path):
        raise BabeltuneError(f"--resume {resume}: incomplete checkpoint (no {MARKER}; the save was interrupted); "
                             f"resume from an earlier one, e.g. --resume {last_complete_checkpoint(path.parent) or 'with no value'}")
    problem = checkpoint_problem(path)
    if problem is not None:
        earlier, _ = newest_usable(path.parent, lambda _line: None, before=checkpoint_step(path))
        instead = f"resume from an earlier one: --resume {earlier}" if earlier else "no earlier usable checkpoint; start again"
        raise BabeltuneError(f"--resume {resume}: damaged checkpoint ({problem}); {instead}")
    return path


def check_trainable_names(checkpoint: Path, model: Any) -> None:
    """The checkpoint must have been made for the same trainable parameters as the configured adapter."""
    record = read_marker(checkpoint)
    saved, now = set(record.get("trainable_parameters", [])), set(trainable_names(model))
    if saved == now:
        return
    missing, extra = sorted(saved - now), sorted(now - saved)
    detail = "; ".join(part for part in (
        f"{len(missing)} in the checkpoint but not in this adapter (e.g. {missing[0]})" if missing else "",
        f"{len(extra)} in this adapter but not in the checkpoint (e.g. {extra[0]})" if extra else "") if part)
    raise BabeltuneError(f"--resume {checkpoint}: trainable parameters differ from the config's adapter: {detail}; "
                         "resume with the config the checkpoint was trained with")


def remove_checkpoint(path: Path) -> None:
    """Marker first: a kill during the deletion leaves an incomplete folder, never a damaged 'complete' one."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(output_dir: Union[str, Path], keep: int, current_step: int,
                       protect: Optional[Union[str, Path]] = None) -> list[Path]:
    """Called once checkpoint-<current_step> is marked complete. Keeps the ``keep`` newest complete checkpoints
    up to ``current_step`` (and ``protect``, the best one under early stopping); removes older ones, incomplete
    leftovers of interrupted saves, and checkpoints past ``current_step`` (left from before the point this run
    resumed from: not part of this run's history, and `--resume` must not jump to them)."""
    found = list_checkpoints(output_dir)
    complete = [path for step, path, ok in found if ok and step <= current_step]
    kept = set(complete[-keep:])
    if protect is not None:
        kept.add(Path(protect))
    removed = [path for _, path, _ in found if path not in kept]
    for path in removed:
        remove_checkpoint(path)
    return removed


class StopAtMaxSteps:
    """Trainer mixin: resumed from the final checkpoint (global_step == max_steps, e.g. after a kill while the
    adapter was being written), transformers would still run the rest of the resumed epoch's first step,
    training past max_steps and saving over the checkpoint. Nothing is left to train: skip the epoch."""

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps > 0:
            return None
        return super()._run_epoch(*args, **kwargs)


def trainer_class_stopping_at_max_steps(base: type) -> type:
    if not hasattr(base, "_run_epoch"):   # older transformers train inside one loop
        return base
    return type(f"Bounded{base.__name__}", (StopAtMaxSteps, base), {})


def completion_marker_callback(keep: Optional[int] = None, record: Optional[dict] = None):
    """A TrainerCallback writing the marker (with ``record``: the run's config) once the Trainer has finished
    saving checkpoint-N, then rotating (``keep`` checkpoints; None keeps all). The Trainer's own rotation must be
    off (save_total_limit=None)."""
    from transformers import TrainerCallback

    class CompletionMarker(TrainerCallback):
        def __init__(self):
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step
            if hasattr(state, "compute_steps"):
                # a resumed state carries the checkpoint's logging/eval/save steps: use this run's values
                state.compute_steps(args, state.max_steps)

        def _before_save(self, args, state, control):
            # A save into an existing checkpoint-N must not look complete while it is being overwritten.
            if not (control.should_save and state.is_world_process_zero):
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.global_step <= self.start_step and is_complete(folder):
                control.should_save = False      # the checkpoint this run resumed from already holds this state
            elif folder.exists():
                remove_checkpoint(folder)        # left from before the resume point

        def on_step_end(self, args, state, control, **kwargs):
            self._before_save(args, state, control)
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            self._before_save(args, state, control)
            return control

        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir() and model is not None and state.is_world_process_zero:
                write_marker(folder, state.global_step, model, record)
                if keep is not None:
                    rotate_checkpoints(args.output_dir, keep, state.global_step, state.best_model_checkpoint)
            return control

    return CompletionMarker()
