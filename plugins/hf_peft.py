"""The hf-peft backend: transformers + PEFT LoRA (rsLoRA, DoRA, modules_to_save with their own lr),
QLoRA through bitsandbytes on GPU, and liger-kernel fused ops when installed on the GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from babeltune.errors import BabeltuneError
from babeltune.plugins import toolkit
from babeltune.trainer.backend import Backend, Kernels, LoadedModel, Runtime
from babeltune.trainer.hookspecs import hookimpl

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

LigerSetting = Literal["auto", True, False]


class HfPeftOptions(BaseModel):
    """``backend.options`` of hf-peft (and of the backends built on its loading: ia3, lora-plus)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    liger: LigerSetting = Field(
        "auto", description="liger-kernel fused RMSNorm, SwiGLU, RoPE and (linear) cross-entropy: auto = on when "
                            "installed and on a GPU, true = required (an error where it cannot run), false = off.")


def liger_usable_here() -> bool:
    """liger-kernel is installed and a CUDA GPU is visible (what `liger: auto` needs to switch it on)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def auto_kernels() -> Kernels:
    """The kernels hf-peft's loading runs with `liger: auto` on this machine."""
    return "liger" if liger_usable_here() else "plain"


def lora_kwargs(config: "TrainConfig", tied: Optional[bool] = None) -> dict[str, Any]:
    """peft.LoraConfig arguments for the config's adapter section (``tied``: the model ties embed_tokens
    and lm_head; None = not known yet)."""
    adapter = config.adapter
    kwargs: dict[str, Any] = dict(
        r=adapter.r, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout,
        target_modules=adapter.target_modules, bias=adapter.bias, use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora, modules_to_save=list(adapter.modules_to_save) or None, task_type="CAUSAL_LM",
    )
    if tied is not False and {"embed_tokens", "lm_head"} & set(adapter.modules_to_save):
        # Keeps one shared trainable copy when embed_tokens and lm_head are tied (PEFT >= 0.18).
        kwargs["ensure_weight_tying"] = True
    return kwargs


def make_lora_config(config: "TrainConfig", tied: Optional[bool] = None, model=None):
    from peft import LoraConfig

    kwargs = lora_kwargs(config, tied)
    if model is not None:   # vocab.extend: the new embedding rows train beside LoRA (babeltune.trainer.vocab)
        from babeltune.trainer.vocab import extension_of, peft_token_indices

        kwargs["trainable_token_indices"] = peft_token_indices(model, extension_of(model), bool(tied))
    known = {field.name for field in dataclasses.fields(LoraConfig)}
    if "ensure_weight_tying" in kwargs and "ensure_weight_tying" not in known:
        kwargs.pop("ensure_weight_tying")  # older PEFT: tied modules_to_save are untied (noted at load)
    return LoraConfig(**kwargs)


def lora_expected_trainable(config: "TrainConfig", model=None) -> list[str]:
    """Name fragments that must receive a non-zero gradient after step 1."""
    fragments = ["lora_A", "lora_B"]
    if config.vocab.extend > 0:
        fragments.append("trainable_tokens_delta")
    if config.adapter.use_dora:
        fragments.append("lora_magnitude_vector")
    return fragments + saved_module_fragments(config, model)


def saved_module_fragments(config: "TrainConfig", model=None) -> list[str]:
    """``<module>.modules_to_save`` fragments of the trainable full copies. With tied embeddings PEFT
    keeps one shared copy of embed_tokens/lm_head, named under embed_tokens whichever was listed."""
    names = list(config.adapter.modules_to_save)
    head = {"embed_tokens", "lm_head"}
    if model is not None and head & set(names) and toolkit.tied_embeddings(model):
        owned = toolkit.trainable_names(model)
        present = [n for n in ("embed_tokens", "lm_head") if any(f"{n}.modules_to_save" in o for o in owned)]
        names = present + [n for n in names if n not in head]
    return [f"{name}.modules_to_save" for name in names]


LIGER_INSTALL = "pip install 'babeltune[gpu]'"


def apply_liger(model, config: "TrainConfig", runtime: Runtime, setting: LigerSetting) -> str:
    """Fused RMSNorm/SwiGLU/RoPE/linear-cross-entropy kernels from liger-kernel, patched into the
    instance before the adapter is attached (``setting``: backend.options.liger). Returns the
    "kernels: ..." line that every run logs."""
    if setting is False:
        return "kernels: plain (backend.options.liger: false)"
    installed = importlib.util.find_spec("liger_kernel") is not None
    if runtime.device != "cuda" or not installed or toolkit.sharded_run(config):
        why = ("liger-kernel needs a GPU" if runtime.device != "cuda" else
               "training.distributed is fsdp: its fused loss reads the lm_head weight directly, outside FSDP's "
               "gathering (not verified sharded)" if toolkit.sharded_run(config) else
               f"liger not installed: {LIGER_INSTALL}")
        if setting is True:
            raise BabeltuneError(f"backend.options.liger: true, but {why}; set liger: auto or false")
        return f"kernels: plain ({why})"
    # The fused linear cross-entropy reads lm_head.weight directly, which would bypass a trainable
    # modules_to_save copy of lm_head: keep the plain (still Liger) cross-entropy then.
    fused_head = "lm_head" not in config.adapter.modules_to_save
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=fused_head, cross_entropy=not fused_head)
    except Exception as exc:  # an unsupported architecture or version: train unfused, and say so
        if setting is True:
            raise BabeltuneError(f"backend.options.liger: could not patch this model ({exc}); set liger: auto or false") from None
        return f"kernels: plain (liger patching failed: {str(exc).splitlines()[0]})"
    loss = "linear-CE" if fused_head else "CE; lm_head is in modules_to_save, so no fused linear-CE"
    return f"kernels: liger (fused rmsnorm, swiglu, rope, {loss})"


def load_prepared_base(config: "TrainConfig", runtime: Runtime, liger: LigerSetting = "auto") -> tuple[Any, Any, str, list[str]]:
    """Tokenizer, base model (dtype, attention, 4-bit, checkpointing, fused kernels) and notes, ready for
    an adapter. Shared by the LoRA and IA3 backends (``liger``: their backend.options.liger)."""
    model_class = toolkit.model_class_for(runtime.model_dir)
    attn, why = toolkit.choose_attention(runtime, config.model.attn_implementation, model_class)
    notes = [f"attention: {attn} ({why})", f"weights: {runtime.precision} on {runtime.device}"]
    tokenizer = toolkit.load_tokenizer(config, runtime)
    model = toolkit.load_base_model(config, runtime, attn)
    from babeltune.trainer.vocab import extend_for_training

    tokenizer, _, vocab_notes = extend_for_training(config, model, tokenizer)   # before checkpointing hooks the embeddings
    notes += vocab_notes
    if config.model.load_in_4bit:
        notes.append("QLoRA: base weights in 4-bit NF4 (bitsandbytes, double quantisation)")
    notes.append(apply_liger(model, config, runtime, liger))
    model = toolkit.prepare_for_training(model, config)
    if config.training.gradient_checkpointing:
        notes.append("gradient checkpointing: non-reentrant, input embeddings require grad")
    return tokenizer, model, attn, notes


class HfPeftBackend(Backend):
    name = "hf-peft"
    description = "transformers + PEFT LoRA (rsLoRA, DoRA, QLoRA, modules_to_save with their own lr); CPU and GPU"
    Options = HfPeftOptions

    @property
    def kernels(self) -> Kernels:   # type: ignore[override]
        return auto_kernels()
    supports_fsdp = True   # train --gpus N --fsdp (bf16 weights; not with QLoRA)

    def load(self, config: "TrainConfig", runtime: Runtime) -> LoadedModel:
        tokenizer, base, attn, notes = load_prepared_base(config, runtime, self.parse_options(config).liger)
        tied = toolkit.tied_embeddings(base)
        model = toolkit.attach_adapter(base, make_lora_config(config, tied, base), "adapter.target_modules")
        upcast = toolkit.upcast_trainable(model, runtime.precision)
        expected = lora_expected_trainable(config, model)
        toolkit.check_fragments_trainable(model, expected, "adapter.target_modules/modules_to_save")
        notes += self._adapter_notes(config, model, tied, upcast)
        return LoadedModel(model=model, tokenizer=tokenizer, attn_implementation=attn, notes=notes,
                           expected_trainable=expected, padding_free=attn == "flash_attention_2",
                           packed_rows=toolkit.packed_rows_supported(attn))

    def _adapter_notes(self, config: "TrainConfig", model, tied: bool, upcast: list) -> list[str]:
        adapter = config.adapter
        kind = "DoRA" if adapter.use_dora else "LoRA"
        scale = f"alpha/sqrt(r) = {adapter.lora_alpha / adapter.r ** 0.5:.3g} (rsLoRA)" if adapter.use_rslora \
            else f"alpha/r = {adapter.lora_alpha / adapter.r:.3g}"
        trainable, total, share = toolkit.trainable_share(model)
        notes = [f"{kind} r={adapter.r}, scale {scale}, on {adapter.target_modules}",
                 f"trainable: {trainable:,} of {total:,} parameters ({share:.3f}%)"]
        if adapter.modules_to_save:
            lr = adapter.embedding_learning_rate or config.training.learning_rate
            notes.append(f"modules_to_save {adapter.modules_to_save} train in full at lr {lr:g}")
            if tied and {"embed_tokens", "lm_head"} & set(adapter.modules_to_save):
                notes.append("tied embeddings: embed_tokens and lm_head share one weight, so they share one "
                             "trainable copy (listed under embed_tokens)")
        if upcast:
            notes.append(f"{len(upcast)} trainable tensors upcast to float32 master weights for the optimizer")
        return notes

    def optimizer_param_groups(self, model: Any, config: "TrainConfig") -> Optional[list[dict]]:
        return toolkit.optimizer_param_groups(model, config, special=saved_module_fragments(config, model),
                                             special_lr=config.adapter.embedding_learning_rate)

    def translate(self, config: "TrainConfig") -> dict[str, Any]:
        return {
            "from_pretrained": {"attn_implementation": config.model.attn_implementation,
                                "load_in_4bit": config.model.load_in_4bit, "dtype": config.model.dtype},
            "lora_config": lora_kwargs(config),
            "gradient_checkpointing_kwargs": {"use_reentrant": False} if config.training.gradient_checkpointing else None,
            "embedding_learning_rate": config.adapter.embedding_learning_rate,
            "liger": self.parse_options(config).liger,
        }


@hookimpl
def register_backends(register) -> None:
    register(HfPeftBackend())
