"""The final output: the adapter (PEFT, safetensors) + tokenizer + resolved config, a reload check, a merged model.

The reload check compares the saved tensors and maths config with the in-memory adapter exactly, loads the saved
folder as a user would (``PeftModel.from_pretrained`` on a freshly loaded base model), compares its logits with the
in-memory model (kernel noise alone passes with a note), and fails when the adapter changes nothing (logits equal to
the base model's): a run that trained nothing must not look like a success.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import yaml

from babeltune.errors import BabeltuneError
from babeltune.trainer.base_view import base_model_view
from babeltune.atomic import atomic_write_text, is_disk_full, write_failure
from babeltune.models.identity import check_adapter_base, write_identity
from babeltune.models.safety import ADAPTER_WEIGHTS, adapter_folder_problem, load_kwargs
from babeltune.trainer.vocab import extension_of, resize_for_adapter, write_extension

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

RESOLVED_CONFIG = "babeltune_config.yaml"
# Logit agreement between the saved and the in-memory adapter (max |diff| / max |logit|).
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2, "4bit": 5e-2}  # 4bit: reloaded on the same NF4 base (trained with fp32 norms)
# Below this relative difference the adapter is indistinguishable from the base model.
NO_EFFECT = 1e-7
# Above this share of the adapter's effect left unreproduced, a reload that also misses the tolerance fails.
MAX_UNEXPLAINED_SHARE = 0.25


@dataclass
class ReloadCheck:
    max_abs_diff: float            # saved vs in-memory logits
    relative_diff: float
    adapter_effect: float          # adapted vs base logits (relative); ~0 means the adapter does nothing
    tolerance: float
    notes: list[str] = field(default_factory=list)
    unexplained_share: float = 0.0  # saved-vs-trained difference / the adapter's own effect on the logits
    tensors_match: bool = False    # saved tensors + maths config equal the trained ones, and the reload holds them

    @property
    def passed(self) -> bool:
        """The saved tensors and config equal the trained ones (what decides), or, without that proof, the logits
        match within the precision's tolerance or miss only a small share of what the adapter does (fused kernels
        such as liger change bf16 logits by a few percent of their maximum; an adapter saved wrongly misses a large
        share of its effect)."""
        return (self.tensors_match or self.relative_diff <= self.tolerance
                or self.unexplained_share <= MAX_UNEXPLAINED_SHARE)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def resolved_config_yaml(config: "TrainConfig") -> str:
    header = "# The resolved config of this run (defaults filled in); `train --config` accepts it as is.\n"
    return header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_final(model: Any, tokenizer: Any, config: "TrainConfig", output_dir: str | Path, *,
               model_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> Path:
    """Adapter weights (safetensors) + adapter_config.json + tokenizer + the resolved config (+ the base model's
    identity when ``model_dir`` is given) in ``output_dir``, all or nothing: written into a staging folder beside
    it and renamed into place, so an interrupted save leaves the previous adapter (or none), never half of one.
    ``state_dict``: the trainable tensors gathered from a sharded (FSDP) model, saved instead of the model's own."""
    folder = Path(output_dir)
    if not is_peft_model(model):
        raise BabeltuneError(f"backend {config.backend.name}: the trained model is not a PEFT model, so no adapter can "
                             "be saved; the backend must return a peft.PeftModel")

    def write(staging: Path) -> None:
        # vocab.extend: the adapter holds the trained new rows; the rest of the resized matrix is rebuilt from the
        # base on reload (babeltune.trainer.vocab.resize_for_adapter), so PEFT need not copy whole embedding matrices
        extended = {"save_embedding_layers": False} if extension_of(model) is not None else {}
        model.save_pretrained(str(staging), safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}),
                              **extended)
        tokenizer.save_pretrained(str(staging))
        write_extension(model, staging)
        atomic_write_text(staging / RESOLVED_CONFIG, resolved_config_yaml(config))
        if model_dir is not None:
            write_identity(staging, model_dir)
        problem = adapter_folder_problem(staging)
        if problem:
            raise BabeltuneError(f"{folder}: the adapter was not saved completely ({problem}); check disk space and "
                                 "permissions, then train again with --resume")

    return write_folder_atomically(folder, write)


def write_folder_atomically(folder: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging)`` on a new folder beside ``folder``, then rename it to ``folder`` (replacing an older
    one only once the new one is complete). A failed write (full disk, no permission) is a one-line error."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=parent))
    except OSError as exc:
        raise BabeltuneError(write_failure(folder, exc)) from None
    try:
        write(staging)
        staging.chmod(0o777 & ~_umask())     # mkdtemp makes it private (0700); a saved folder is not
        _replace_folder(staging, folder)
    except Exception as exc:
        if not (isinstance(exc, OSError) or is_disk_full(exc)):
            raise
        raise BabeltuneError(write_failure(folder, exc)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for leftover in parent.glob(f".{folder.name}.staging-*"):   # from runs killed mid-save
        shutil.rmtree(leftover, ignore_errors=True)
    return folder


def _replace_folder(staging: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(staging, folder)
        return
    # rename(2) cannot swap two folders: move the old one aside (on the same filesystem), then drop it
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-old-", dir=folder.parent))
    os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def probe_batch(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> dict:
    """A small real batch (held-out text) for the logit comparisons."""
    import torch

    sample = [t for t in texts[:4] if t.strip()] or ["babeltune"]
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"][:min(max_length, 64)] for t in sample]
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mask = [[1] * len(row) + [0] * (width - len(row)) for row in ids]
    ids = [row + [pad] * (width - len(row)) for row in ids]
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


def logits(model: Any, batch: dict):
    import torch

    with torch.no_grad():
        out = model(**batch).logits.float()
    return out[batch["attention_mask"].bool()]


def relative(a, b) -> tuple[float, float]:
    diff = float((a - b).abs().max())
    return diff, diff / max(float(b.abs().max()), 1e-12)


def load_saved(folder: Path, model_dir: str, in_memory: Any) -> Any:
    """Base model from ``model_dir`` in the in-memory model's dtype/device + the saved adapter (refused when the
    adapter records another base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    check_adapter_base(folder, model_dir, what="reload check: adapter")
    reference = next(in_memory.parameters())
    attn = getattr(getattr(in_memory, "config", None), "_attn_implementation", None)
    kwargs: dict[str, Any] = {"dtype": in_memory.get_base_model().dtype, "use_safetensors": True, **load_kwargs()}
    if attn:
        kwargs["attn_implementation"] = attn
    quantization = quantization_of(in_memory)
    if quantization is not None:
        # a QLoRA run is checked against the same 4-bit base: a bf16 reload differs by the quantisation error
        kwargs.update(quantization_config=quantization, device_map={"": reference.device.index or 0})
        base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(reference.device)
    resize_for_adapter(base, folder)
    return PeftModel.from_pretrained(base, str(folder)).eval()


def load_base_and_adapter(folder: Path, model_dir: str, *, dtype: Any, device: Any, attn: Optional[str] = None) -> Any:
    """A fresh base model from ``model_dir`` on one device + the saved adapter, as a user loads it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, **({"attn_implementation": attn} if attn else {})}
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(device)
    resize_for_adapter(base, folder)
    return PeftModel.from_pretrained(base, str(folder)).eval()


def quantization_of(model: Any) -> Any:
    """The bitsandbytes config the in-memory base model was loaded with, or None."""
    config = getattr(model.get_base_model(), "config", None)
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    if isinstance(quantization, dict):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig.from_dict(quantization)
    return quantization


def reload_check(model: Any, folder: Path, model_dir: str, tokenizer: Any, texts: list[str], *,
                 precision: str, max_length: int) -> tuple[ReloadCheck, Any]:
    """Prove the saved folder is the trained adapter: its tensors equal the in-memory trainable tensors exactly, its
    maths config fields equal the in-memory PEFT config, and the reloaded model holds those tensors; then compare
    logits (both models in eval mode, under the same autocast). Returns the check and the reloaded model (for
    merging and evaluation). Raises BabeltuneError on a mismatch or a no-op adapter; a logit difference beyond the
    tolerance with equal tensors and config is kernel/rounding noise and passes with a note."""
    from babeltune.trainer import reload_compare as rc

    problem = rc.config_problem(model, folder)
    saved = rc.saved_tensors(folder)
    problem = problem or rc.tensor_problem(rc.trained_state(model), saved, what=ADAPTER_WEIGHTS)
    if problem:
        raise not_trained_error(folder, problem)
    was_training = model.training
    model.eval()
    batch = probe_batch(tokenizer, texts, max_length, next(model.parameters()).device)
    try:
        reloaded_model = load_saved(folder, model_dir, model)
        with rc.autocast_for(model, precision):
            current = logits(model, batch)
            with base_model_view(model, Path(model_dir) if model_dir else None):   # BitFit biases back too
                base = logits(model, batch)
            reloaded = logits(reloaded_model, batch)
    finally:
        model.train(was_training)
    reloaded_state = rc.reloaded_state(reloaded_model, saved)
    problem = rc.tensor_problem(saved, reloaded_state, what="the reloaded model", at_expected_dtype=False)
    if problem:
        raise not_trained_error(folder, problem)
    return judge_logits(model, reloaded_model, folder, precision, (current, base, reloaded),
                        rc.dtype_notes(saved, reloaded_state)), reloaded_model


def judge_logits(model: Any, reloaded_model: Any, folder: Path, precision: str, outputs: tuple, notes: list[str]) -> ReloadCheck:
    from babeltune.trainer import reload_compare as rc

    current, base, reloaded = outputs
    abs_diff, rel_diff = relative(reloaded, current)
    effect_abs, effect = relative(current, base)
    check = ReloadCheck(abs_diff, rel_diff, effect, TOLERANCE.get(precision, 3e-2), notes=list(notes),
                        unexplained_share=abs_diff / max(effect_abs, 1e-12))
    if effect <= NO_EFFECT:
        raise BabeltuneError(f"{folder}: the saved adapter does not change the model (logits equal the base model's, "
                             f"relative difference {effect:.1e}); training did not update it: check learning_rate, "
                             "max_steps and the gradient check in the log")
    check.tensors_match = True
    if not (check.relative_diff <= check.tolerance or check.unexplained_share <= MAX_UNEXPLAINED_SHARE):
        check.notes.append(f"numerics: logits differ by {rel_diff:.2e} (relative; tolerance {check.tolerance:g} in "
                           f"{precision}), {check.unexplained_share:.0%} of the adapter's effect, although the saved "
                           "tensors and config equal the trained ones: kernel/dtype differences, not the adapter")
    check.notes += rc.kernel_notes(model, reloaded_model)
    return check


def not_trained_error(folder: Path, problem: str) -> BabeltuneError:
    return BabeltuneError(f"{folder}: the saved adapter is not the trained one: {problem}; check adapter_config.json "
                          "target_modules and modules_to_save, and that nothing changed the folder after the save")


def merge(reloaded_model: Any, tokenizer: Any, folder: Path, *, adapter_dir: Optional[Path] = None,
          model_dir: Optional[str] = None) -> Path:
    """Fold the adapter into the base weights and save a plain transformers model (safetensors). A 4-bit
    (QLoRA) model is merged into the base reloaded in bf16: merging into NF4 weights would round the adapter away."""
    if adapter_dir is not None and model_dir is not None:
        check_adapter_base(adapter_dir, model_dir, what="--merge: adapter")
    if quantization_of(reloaded_model) is not None and adapter_dir is not None and model_dir is not None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, use_safetensors=True, **load_kwargs())
        resize_for_adapter(base, adapter_dir)
        reloaded_model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = reloaded_model.merge_and_unload()

    def write(staging: Path) -> None:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))

    return write_folder_atomically(Path(folder), write)

