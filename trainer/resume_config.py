"""`--resume` continues the run a checkpoint was made by, with the values that run used.

Every checkpoint's completion marker records the run's resolved config (as the user gave it, before
`--gpus` divides the accumulation steps) and the sha256 of its corpora. On resume the current config is
compared with it. A change to a value that shapes the trained weights (model, data, adapter, optimisation,
seed, step budget, backend) would make the result neither the old run nor a new one: it is refused with the
list of changes, or allowed with --allow-config-change, and then recorded in the manifest.

Keys in FREE_KEYS may change: they decide where outputs go, what is logged or measured, how often
checkpoints are written and when early stopping stops, not the weights at a given step. They are applied,
said and recorded as well. A corpus moved to another path with the same sha256 counts as unchanged.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from babeltune.errors import BabeltuneError

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

ALLOW_FLAG = "--allow-config-change"
# Exact keys, or section prefixes ending in ".", whose changes leave the trained weights as they were.
FREE_KEYS = (
    "training.output_dir", "training.logging_steps", "training.save_steps", "training.save_total_limit",
    "training.max_nonfinite_losses",
    "training.report_to",                # where metrics are also logged
    "training.gradient_checkpointing",   # memory only: activations are recomputed with the same arithmetic
    "eval.",                             # what is evaluated, how often, early stopping, extra corpora
)
CORPUS_KEYS = {"train": "data.train", "eval": "data.eval"}


def is_free(key: str) -> bool:
    return any(key == free or (free.endswith(".") and key.startswith(free)) for free in FREE_KEYS)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "extra_corpora" and key != "options":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_record(config: "TrainConfig") -> dict[str, Any]:
    """What a checkpoint records about the run that made it: the resolved config and the corpora's sha256."""
    from babeltune.trainer.manifest import corpus_hash

    return {"config": config.model_dump(mode="json"),
            "corpus_sha256": {"train": corpus_hash(config, config.data.train),
                              "eval": corpus_hash(config, config.data.eval) if config.data.eval else None}}


def compare_runs(saved: dict, now: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(changes that alter training, changes that do not), each ``key -> (old, new)``."""
    old, new = flatten(saved.get("config", {})), flatten(now["config"])
    changed = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}
    old_hashes, new_hashes = saved.get("corpus_sha256") or {}, now.get("corpus_sha256") or {}
    contract, free = {}, {}
    for key, values in changed.items():
        (free if is_free(key) else contract)[key] = values
    for name, key in CORPUS_KEYS.items():
        before, after = old_hashes.get(name), new_hashes.get(name)
        if key in contract and before and before == after:
            free[key] = contract.pop(key)              # moved, same contents
        elif before and after and before != after:
            contract[f"{key} (contents)"] = (f"sha256 {before[:12]}", f"sha256 {after[:12]}")
    return contract, free


def shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) or value is None else str(value)


def listed(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in changes.items())


def check_resume_config(checkpoint_record: dict, now: dict, step: int, *, allow: bool,
                        echo: Callable[[str], Any]) -> list[dict]:
    """Compare the checkpoint's run with this one. Returns the run's config-change history (the checkpoint's,
    plus this resume's changes when there are any), for the manifest and the next checkpoints."""
    history = list(checkpoint_record.get("config_changes") or [])
    if "config" not in checkpoint_record:
        echo("resume: this checkpoint records no config (made by an older babeltune); the config is not compared")
        return history
    contract, free = compare_runs(checkpoint_record, now)
    if contract and not allow:
        raise BabeltuneError(f"--resume: the config differs from the run that made checkpoint-{step}: {listed(contract)}; "
                             f"resuming would mix two runs: resume with that run's values, start a new run in another "
                             f"--output-dir, or pass {ALLOW_FLAG} to continue with the new values (recorded in the manifest)")
    if free:
        echo(f"resume: changes that do not change training: {listed(free)}")
    if contract:
        echo(f"resume: continuing with changed values from step {step} ({ALLOW_FLAG}; recorded in the manifest): {listed(contract)}")
    if contract or free:
        changes = {key: list(values) for key, values in {**contract, **free}.items()}
        history.append({"at_step": step, "changes": changes, "allowed_by": ALLOW_FLAG if contract else None})
    return history


def resume_history(checkpoint, record: dict, *, allow: bool, echo: Callable[[str], Any]) -> list[dict]:
    """check_resume_config against `--resume CHECKPOINT`'s marker ([] when not resuming)."""
    if checkpoint is None:
        return []
    from babeltune.trainer.checkpoints import read_marker

    saved = read_marker(checkpoint)
    return check_resume_config(saved, record, int(saved.get("step") or 0), allow=allow, echo=echo)
