"""What the reload check decides on: the saved adapter holds exactly the trained tensors and the config fields that
change the maths. Logits are a second line of evidence only: in bf16 two correct models differ by kernel and
rounding noise (fused liger kernels, fp32 vs bf16 LoRA arithmetic) that can reach a large share of a small adapter's
effect, so a logit difference alone never fails a run whose saved tensors and config equal the trained ones."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

# adapter_config.json fields that change what the adapter computes (LoRA, DoRA, IA3, trainable tokens)
MATHS_FIELDS = ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "modules_to_save",
                "trainable_token_indices", "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern",
                "bias", "lora_bias", "fan_in_fan_out", "feedforward_modules", "exclude_modules")
ADAPTER_CONFIG = "adapter_config.json"
from babeltune.models.safety import ADAPTER_WEIGHTS  # noqa: E402 - defined once, in the core


def active_adapter(model: Any) -> str:
    name = getattr(model, "active_adapter", "default")
    return name[0] if isinstance(name, (list, tuple)) else name


def trained_state(model: Any) -> dict:
    """The tensors ``save_final`` writes: PEFT's own adapter state dict (LoRA A/B, DoRA magnitudes, modules_to_save
    copies, trainable token rows), with embedding layers left out for a vocab.extend run as the save does."""
    from peft import get_peft_model_state_dict

    from babeltune.trainer.vocab import extension_of

    extra = {"save_embedding_layers": False} if extension_of(model) is not None else {}
    return get_peft_model_state_dict(model, adapter_name=active_adapter(model), **extra)


def reloaded_state(model: Any, saved: dict) -> dict:
    """The reloaded model's adapter tensors under the saved names. PEFT loads every saved key that names a parameter,
    but its state-dict filter follows the saved config alone: (IA)^3 + BitFit biases (``bias`` set on the in-memory
    config, absent from IA3Config's saved fields) are loaded yet left out, so they are looked up by name."""
    state = dict(trained_state(model))
    missing = set(saved) - set(state)
    if missing:
        full = model.state_dict()
        state.update({key: full[key] for key in missing if key in full})
    return state


def _normalised(value: Any) -> Any:
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted((_normalised(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _normalised(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)) else value


def config_problem(model: Any, folder: Path) -> Optional[str]:
    """The first maths field whose saved value differs from the in-memory PEFT config, as 'field: saved X, trained Y'."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{ADAPTER_CONFIG} unreadable ({exc})"
    trained = model.peft_config[active_adapter(model)].to_dict()
    for name in MATHS_FIELDS:
        if name not in saved and name not in trained:
            continue
        if name not in saved:
            return f"{ADAPTER_CONFIG} lacks {name} (trained: {_normalised(trained[name])!r})"
        if _normalised(saved[name]) != _normalised(trained.get(name)):
            return f"{ADAPTER_CONFIG} {name}: saved {_normalised(saved[name])!r}, trained {_normalised(trained.get(name))!r}"
    return None


def tensor_problem(expected: dict, actual: dict, *, what: str, at_expected_dtype: bool = True) -> Optional[str]:
    """The first tensor missing from, extra in, or different in ``actual`` (exact comparison, after casting to the
    dtype the save wrote: ``expected`` when ``at_expected_dtype``, else ``actual``'s own dtype)."""
    import torch

    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"tensor {missing[0]} is missing from {what}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    extra = sorted(set(actual) - set(expected))
    if extra:
        return f"tensor {extra[0]} in {what} is not in the trained model" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for name in sorted(expected):
        want, got = expected[name].detach().cpu(), actual[name].detach().cpu()
        if want.shape != got.shape:
            return f"tensor {name} in {what} has shape {tuple(got.shape)}, trained {tuple(want.shape)}"
        dtype = want.dtype if at_expected_dtype else got.dtype
        want, got = want.to(dtype), got.to(dtype)
        if not torch.equal(want, got):
            diff = float((want.float() - got.float()).abs().max())
            return f"tensor {name} in {what} differs from the trained one (max |diff| {diff:.2e})"
    return None


def saved_tensors(folder: Path) -> dict:
    """The adapter file's tensors (an unreadable or missing file reads as empty: every trained tensor is missing)."""
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError):
        return {}


def dtype_notes(saved: dict, reloaded: dict) -> list[str]:
    """Tensors the reload holds in another dtype than the file (PEFT's autocast_adapter_dtype upcasts LoRA layers to
    fp32, but a modules_to_save copy keeps the base model's dtype)."""
    moved = Counter(f"{saved[k].dtype}->{reloaded[k].dtype}".replace("torch.", "")
                    for k in saved if k in reloaded and saved[k].dtype != reloaded[k].dtype)
    return [f"reload: {n} tensors held as {change} (PEFT upcasts only LoRA layers; modules_to_save copies keep the "
            "base dtype)" for change, n in sorted(moved.items())]


def kernel_signature(model: Any) -> Counter:
    """Module classes and the functions their forwards run (liger patches classes module-wide and binds forwards on
    the trained instance), for the base model under the adapter."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names: Counter = Counter()
    for module in base.modules():
        forward = getattr(module, "forward", None)
        names[f"{type(module).__name__}:{getattr(forward, '__qualname__', '?')}"] += 1
    return names


def kernel_notes(in_memory: Any, reloaded: Any) -> list[str]:
    trained, fresh = kernel_signature(in_memory), kernel_signature(reloaded)
    notes = []
    if hasattr(in_memory, "_original_forward"):
        notes.append("trained model's forward runs under the trainer's mixed-precision autocast; both compared under "
                     "the same autocast")
    only_trained, only_fresh = sorted(set(trained) - set(fresh)), sorted(set(fresh) - set(trained))
    if only_trained or only_fresh:
        notes.append(f"kernels differ: trained model only {', '.join(only_trained[:4]) or '-'}; "
                     f"reloaded only {', '.join(only_fresh[:4]) or '-'}")
    else:
        notes.append("kernels: the reloaded model runs the same module classes and forwards as the trained one")
    return notes


def autocast_for(model: Any, precision: str):
    """The autocast the trainer ran the model under (bf16/fp16 mixed precision; a 4-bit base computes in its
    bnb compute dtype), so that both models are compared under the same one; none for fp32."""
    import torch

    device = next(model.parameters()).device
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    elif precision == "4bit":
        config = getattr(model.get_base_model(), "config", None)
        quantization = getattr(config, "quantization_config", None)
        dtype = getattr(quantization, "bnb_4bit_compute_dtype", None) or torch.bfloat16
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.replace("torch.", ""))
    else:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
