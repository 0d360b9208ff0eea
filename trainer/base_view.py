"""The base model inside a PEFT model, for scores "before the adapter".

PEFT's ``disable_adapter()`` switches adapter layers off and routes ``modules_to_save`` and trainable token
rows back to their originals, but parameters an adapter trains *in place* stay trained: BitFit's biases
(PEFT ``bias="all"`` / ``"lora_only"``, which the ia3 backend sets) overwrite the base model's own bias
tensors, during training and again when an adapter folder is loaded. Scored inside ``disable_adapter()``
alone, "before" would then include the trained biases. ``base_model_view`` also puts those tensors back
from the base checkpoint for the duration of the block.

torch, peft and safetensors are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from babeltune.errors import BabeltuneError

# Parameter names that belong to a tuner, not to the base model.
TUNER_MARKERS = ("lora_", "ia3_", "modules_to_save", "original_module", "trainable_tokens", "vera_", "boft_")
PEFT_PREFIX = "base_model.model."


def in_place_parameters(model, adapter_dir: Optional[Path] = None) -> dict[str, "object"]:
    """{base checkpoint key: parameter} for every base parameter the adapter trains in place (BitFit biases).

    A model being trained says so in its config (``bias`` other than "none"); an adapter loaded from
    ``adapter_dir`` says so by the base parameters its weights file holds (PEFT does not save ``bias`` for
    (IA)^3). Empty for a model that is not a PEFT model or whose adapters change no base parameter."""
    configs = getattr(model, "peft_config", None) or {}
    modes = {getattr(cfg, "bias", "none") or "none" for cfg in configs.values()} - {"none"}
    saved = saved_base_keys(adapter_dir) if adapter_dir is not None else set()
    if not modes and not saved:
        return {}
    found = {}
    for name, param in model.named_parameters():
        if any(marker in name for marker in TUNER_MARKERS):
            continue
        by_config = name.endswith(".bias") and (modes != {"lora_only"} or ".base_layer." in name)
        if by_config and modes or name in saved:     # saved keys are named as named_parameters names them
            found[name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")] = param
    return found


def saved_base_keys(adapter_dir: Path) -> set[str]:
    """Names (as the PEFT model names its parameters) of the base parameters an adapter folder's weights replace."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return set()
    with safe_open(str(path), framework="pt") as handle:
        return {key for key in handle.keys() if not any(marker in key for marker in TUNER_MARKERS)}


def read_base_tensors(model_dir: Path, keys: list[str]) -> dict:
    """``keys`` read from the base checkpoint's safetensors (sharded or not); raises BabeltuneError when absent."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    else:
        weight_map = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                weight_map.update({key: path.name for key in handle.keys()})
    missing = [key for key in keys if key not in weight_map]
    if missing:
        raise BabeltuneError(f"{model_dir}: the base checkpoint has no {missing[0]} (and {len(missing) - 1} more)")
    tensors = {}
    for file in sorted({weight_map[key] for key in keys}):
        with safe_open(str(model_dir / file), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in keys if weight_map[key] == file})
    return tensors


@dataclass
class BaseView:
    """What a PEFT model needs to compute what its base model does: the parameters its adapter trained in place
    and their original values, read from the base checkpoint once (``prepare``) for any number of ``active`` blocks."""

    model: Any
    replaced: dict[str, Any]
    originals: dict[str, Any]

    @classmethod
    def prepare(cls, model, model_dir: Optional[Path], *, adapter_dir: Optional[Path] = None,
                warn: Callable[[str], None] = lambda _m: None) -> "BaseView":
        """Finds the in-place parameters and reads their originals; one warning when the checkpoint cannot give them."""
        replaced, originals = in_place_parameters(model, adapter_dir), {}
        if replaced:
            try:
                if model_dir is None:
                    raise BabeltuneError("no base model folder is known")
                originals = read_base_tensors(Path(model_dir), list(replaced))
            except (BabeltuneError, OSError) as exc:
                warn(f"eval: 'before' keeps the {len(replaced)} bias tensors the adapter trained in place ({exc})")
        return cls(model, replaced, originals)

    @property
    def exact(self) -> bool:
        return not self.replaced or bool(self.originals)

    @contextmanager
    def active(self) -> Iterator[bool]:
        """Inside the block the model computes what its base model does; yields ``exact``. Trained values come back after."""
        import torch

        saved = {}
        try:
            with torch.no_grad():
                for key, tensor in self.originals.items():
                    param = self.replaced[key]
                    saved[key] = param.detach().clone()
                    param.copy_(tensor.to(device=param.device, dtype=param.dtype))
            with self.model.disable_adapter():
                yield self.exact
        finally:
            with torch.no_grad():
                for key, tensor in saved.items():
                    self.replaced[key].copy_(tensor)


def base_model_view(model, model_dir: Optional[Path], *, adapter_dir: Optional[Path] = None,
                    warn: Callable[[str], None] = lambda _m: None):
    """One block in which ``model`` computes what its base model does (BaseView.prepare(...).active()); yields
    whether that is exact: False, with one warning, only when the adapter trained base parameters in place and
    the base checkpoint (``model_dir``) cannot give their original values back."""
    return BaseView.prepare(model, model_dir, adapter_dir=adapter_dir, warn=warn).active()
