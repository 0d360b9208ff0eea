"""The ia3 backend: PEFT's (IA)^3 (Liu et al. 2022) on the keys, values and feed-forward output, plus
BitFit (Ben Zaken et al. 2022): every bias term of the model trains too, as AutoGluon's ``ia3_bias``.

Where an architecture has no biases (Llama, Mistral, Gemma, ...) the notes say so instead of
claiming BitFit. Options (``backend.options``, the ``IA3Options`` model): ``target_modules``,
``feedforward_modules`` (override the per-architecture map), ``bitfit`` (default true) and hf-peft's
``liger``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field

from babeltune.errors import BabeltuneError
from babeltune.plugins import toolkit
from babeltune.plugins.hf_peft import HfPeftOptions, auto_kernels
from babeltune.trainer.backend import Backend, Kernels, LoadedModel, Runtime
from babeltune.trainer.hookspecs import hookimpl

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

# The paper rescales keys, values and the feed-forward activations (the input of the FF output
# projection). Llama-style decoders name these k_proj, v_proj and down_proj.
_LLAMA_STYLE = (["k_proj", "v_proj", "down_proj"], ["down_proj"])
IA3_MODULES: dict[str, tuple[list[str], list[str]]] = {
    **{model_type: _LLAMA_STYLE for model_type in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3",
        "gemma3_text", "smollm3", "olmo", "olmo2", "granite", "cohere", "starcoder2_llama", "helium")},
    "phi3": (["qkv_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "gpt_neox": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "falcon": (["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "bloom": (["query_key_value", "mlp.dense_4h_to_h"], ["mlp.dense_4h_to_h"]),
}


class IA3Options(HfPeftOptions):
    """``backend.options`` of ia3: module overrides and BitFit, plus hf-peft's ``liger`` (same loading)."""

    target_modules: Optional[list[str]] = Field(
        None, min_length=1, description="Modules that get (IA)^3 vectors (keys, values, FF output); null = the "
                                        "per-architecture map.")
    feedforward_modules: Optional[list[str]] = Field(
        None, description="The feed-forward ones among target_modules (scaled on their input); null = the map's.")
    bitfit: bool = Field(True, description="Also train every bias term (BitFit, Ben Zaken et al. 2022); "
                                           "architectures without biases train the (IA)^3 vectors only.")


def ia3_options(config: "TrainConfig") -> IA3Options:
    return IA3Backend().parse_options(config)  # type: ignore[return-value]


def ia3_modules(model_type: str, config: "TrainConfig") -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for an architecture; options override the map."""
    options = ia3_options(config)
    targets, feedforward = options.target_modules, options.feedforward_modules
    if targets is None:
        known = IA3_MODULES.get(model_type) or _peft_default(model_type)
        if known is None:
            raise BabeltuneError(
                f"backend.options.target_modules: no (IA)^3 module map for model_type {model_type!r}; set "
                "backend.options.target_modules (key, value, FF-out projections) and feedforward_modules")
        targets, default_ff = known
        feedforward = default_ff if feedforward is None else feedforward
    feedforward = list(feedforward or [])
    if not set(feedforward) <= set(targets):
        raise BabeltuneError(f"backend.options.feedforward_modules: {feedforward} must be a subset of target_modules {list(targets)}")
    return list(targets), feedforward


def _peft_default(model_type: str) -> Optional[tuple[list[str], list[str]]]:
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
                                      TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS)

    if model_type in TARGETS:
        return list(TARGETS[model_type]), list(FF.get(model_type, []))
    return None


def ia3_config(model_type: str, config: "TrainConfig"):
    from peft import IA3Config

    targets, feedforward = ia3_modules(model_type, config)
    peft_config = IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    if ia3_options(config).bitfit:
        # IA3Config has no bias field; PEFT's state-dict code reads `config.bias` generically, so this
        # makes save_pretrained include every bias (checked after wrapping: see bias_terms_saved).
        peft_config.bias = "all"
    return peft_config


def enable_bitfit(model) -> list[str]:
    """Make every bias parameter trainable; returns their names (empty when the model has none)."""
    names = []
    for name, param in model.named_parameters():
        if name == "bias" or name.endswith(".bias"):
            param.requires_grad_(True)
            names.append(name)
    return names


def bias_terms_saved(model, bias_names: list[str]) -> bool:
    """Whether PEFT's adapter state dict (what save_pretrained writes) holds the trained biases."""
    from peft import get_peft_model_state_dict

    saved = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    return all(name in saved for name in bias_names)


class IA3Backend(Backend):
    name = "ia3"
    description = "PEFT (IA)^3 on keys, values and FF output + BitFit (all biases); CPU and GPU"
    Options = IA3Options

    @property
    def kernels(self) -> Kernels:   # type: ignore[override]
        return auto_kernels()       # hf-peft's loading, liger included

    def load(self, config: "TrainConfig", runtime: Runtime) -> LoadedModel:
        from babeltune.plugins.hf_peft import load_prepared_base

        options = ia3_options(config)
        if config.vocab.extend > 0:   # the new rows would stay at their starting values: (IA)^3 cannot train them
            raise BabeltuneError(f"vocab.extend: {config.vocab.extend} needs rows trained beside the adapter (PEFT "
                                 "trainable_token_indices), which (IA)^3 has not; use --backend hf-peft or set vocab.extend: 0")
        tokenizer, base, attn, notes = load_prepared_base(config, runtime, options.liger)
        peft_config = ia3_config(base.config.model_type, config)
        model = toolkit.attach_adapter(base, peft_config, "backend.options.target_modules (ia3)")
        notes.append(f"(IA)^3 on {sorted(peft_config.target_modules)} (feed-forward: {sorted(peft_config.feedforward_modules)})")
        expected = ["ia3_l"]
        bias_names = enable_bitfit(model) if options.bitfit else []
        notes.append(self._bitfit_note(model, config, bias_names))
        if bias_names:
            expected.append(".bias")
        toolkit.upcast_trainable(model, runtime.precision)
        toolkit.check_fragments_trainable(model, expected, "backend ia3")
        trainable, total, share = toolkit.trainable_share(model)
        notes.append(f"trainable share: {share:.3f}% ({trainable:,} of {total:,} parameters; AutoGluon reports ~0.5%)")
        return LoadedModel(model=model, tokenizer=tokenizer, attn_implementation=attn, notes=notes,
                           expected_trainable=expected, padding_free=attn == "flash_attention_2",
                           packed_rows=toolkit.packed_rows_supported(attn))

    @staticmethod
    def _bitfit_note(model, config: "TrainConfig", bias_names: list[str]) -> str:
        if not ia3_options(config).bitfit:
            return "BitFit: off (backend.options.bitfit: false)"
        if not bias_names:
            return (f"BitFit: not applied - {model.config.model_type} has no bias terms, so only the (IA)^3 "
                    "vectors train")
        if not bias_names_saved_or_reset(model, bias_names):
            return ("BitFit: not applied - this PEFT version would not save bias terms in the adapter, so they "
                    "stay frozen (upgrade peft to train them)")
        count = sum(param.numel() for name, param in model.named_parameters() if name in set(bias_names))
        return f"BitFit: {len(bias_names)} bias tensors ({count:,} parameters) train and are saved with the adapter"

    def optimizer_param_groups(self, model: Any, config: "TrainConfig") -> Optional[list[dict]]:
        # (IA)^3 vectors and biases both go without weight decay: decay would pull the scales towards 0
        # (switching the rescaled activations off) and the biases away from their pretrained values.
        params = [param for param in model.parameters() if param.requires_grad]
        return [{"params": params, "lr": config.training.learning_rate, "weight_decay": 0.0, "name": "ia3_bitfit"}]

    def translate(self, config: "TrainConfig") -> dict[str, Any]:
        options = ia3_options(config)
        by_type = "per model_type"
        return {"ia3_config": {"target_modules": by_type if options.target_modules is None else options.target_modules,
                               "feedforward_modules": by_type if options.feedforward_modules is None else options.feedforward_modules,
                               "task_type": "CAUSAL_LM"},
                "bitfit": options.bitfit, "liger": options.liger,
                "learning_rate": config.training.learning_rate}


def bias_names_saved_or_reset(model, bias_names: list[str]) -> bool:
    """True when the biases will be saved; otherwise freezes them again (never train what is lost)."""
    if bias_terms_saved(model, bias_names):
        return True
    for name, param in model.named_parameters():
        if name in set(bias_names):
            param.requires_grad_(False)
    bias_names.clear()
    return False


@hookimpl
def register_backends(register) -> None:
    register(IA3Backend())
