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
import time
from pathlib import Path
from typing import Any, Optional, Union

from babeltune.errors import BabeltuneError, atomic_write_text

MARKER = "babeltune_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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


def write_marker(checkpoint: Path, step: int, model: Any) -> Path:
    record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "trainable_parameters": trainable_names(model)}
    return atomic_write_text(checkpoint / MARKER, json.dumps(record, indent=1))


def resolve_resume(resume: Union[str, bool, None], output_dir: Union[str, Path], echo=print) -> Optional[Path]:
    """``--resume`` (True: the last complete checkpoint in output_dir; a path: that checkpoint, or the last
    complete one inside it when it is a run folder) -> checkpoint folder, or None when not resuming."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "":
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise BabeltuneError(f"--resume: no complete checkpoint in {output_dir}; start without --resume "
                                 "or pass --resume PATH")
        skipped = [p.name for step, p, ok in list_checkpoints(output_dir) if not ok and step > checkpoint_step(found)]
        if skipped:
            echo(f"resume: skipping incomplete {', '.join(skipped)} (no {MARKER}: the save was interrupted)")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise BabeltuneError(f"--resume {resume}: no such checkpoint folder; pass a checkpoint-N folder or the run's output_dir")
    if checkpoint_step(path) is None and not is_complete(path):
        inner = last_complete_checkpoint(path)
        if inner is None:
            raise BabeltuneError(f"--resume {resume}: no complete checkpoint-N folder inside it")
        return inner
    if not is_complete(path):
        raise BabeltuneError(f"--resume {resume}: incomplete checkpoint (no {MARKER}; the save was interrupted); "
                             f"resume from an earlier one, e.g. --resume {last_complete_checkpoint(path.parent) or 'with no value'}")
    return path


def check_trainable_names(checkpoint: Path, model: Any) -> None:
    """The checkpoint must have been made for the same trainable parameters as the configured adapter."""
    record = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))
    saved, now = set(record.get("trainable_parameters", [])), set(trainable_names(model))
    if saved == now:
        return
    missing, extra = sorted(saved - now), sorted(now - saved)
    detail = "; ".join(part for part in (
        f"{len(missing)} in the checkpoint but not in this adapter (e.g. {missing[0]})" if missing else "",
        f"{len(extra)} in this adapter but not in the checkpoint (e.g. {extra[0]})" if extra else "") if part)
    raise BabeltuneError(f"--resume {checkpoint}: trainable parameters differ from the config's adapter: {detail}; "
                         "resume with the config the checkpoint was trained with")


def completion_marker_callback():
    """A TrainerCallback writing the marker once the Trainer has finished saving checkpoint-N."""
    from transformers import TrainerCallback

    class CompletionMarker(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # A save into an existing checkpoint-N (after resuming from an earlier one) must not look complete
            # while it is being overwritten: drop the old marker first.
            if control.should_save and state.is_world_process_zero:
                (Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARKER).unlink(missing_ok=True)
            return control

        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir() and model is not None and state.is_world_process_zero:
                write_marker(folder, state.global_step, model)
            return control

    return CompletionMarker()
