"""The backend toolkit: what the built-in backends share and third-party backends may use: dtype, attention
choice, loading the base model and tokenizer, gradient checkpointing, trainable-parameter bookkeeping and
optimizer parameter groups.

torch/transformers are imported inside the functions so importing a backend module stays cheap."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING, Any, Iterable, Optional

from babeltune.errors import BabeltuneError
from babeltune.models.safety import check_model_folder, load_kwargs, model_class_for  # noqa: F401 - toolkit API
from babeltune.trainer.distributed import fsdp_enabled
from babeltune.trainer.checkpoints import trainable_names, trainable_share  # noqa: F401 - part of the toolkit

if TYPE_CHECKING:
    from babeltune.config import TrainConfig
    from babeltune.trainer.backend import Runtime

PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Parameters that never get weight decay (decaying a norm gain or a bias towards 0 only hurts).
NO_DECAY_FRAGMENTS = ("bias", "norm", "ln_", "layernorm")


def torch_dtype(precision: str):
    """``runtime.precision`` ("bf16" | "fp16" | "fp32") -> the torch dtype the weights load in."""
    import torch

    if precision not in PRECISION_DTYPES:
        raise BabeltuneError(f"training.precision: {precision!r} is not one of bf16, fp16, fp32")
    return getattr(torch, PRECISION_DTYPES[precision])


def flash_attention_status(runtime: "Runtime", model_class: Any = None) -> tuple[bool, str]:
    """Whether flash_attention_2 can run here, and the one-line reason."""
    if runtime.device != "cuda":
        return False, f"flash_attention_2 needs an NVIDIA GPU (device is {runtime.device})"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash-attn is not installed (pip install flash-attn)"
    import torch

    major, minor = torch.cuda.get_device_capability(runtime.local_rank)
    if major < 8:
        return False, f"GPU compute capability {major}.{minor} is below 8.0 (flash-attn needs Ampere or newer)"
    if runtime.precision not in ("bf16", "fp16"):
        return False, f"flash_attention_2 needs bf16 or fp16, precision is {runtime.precision}"
    if model_class is not None and not (getattr(model_class, "_supports_flash_attn", False)
                                        or getattr(model_class, "_supports_flash_attn_2", False)):
        return False, f"{model_class.__name__} does not support flash_attention_2"
    version = importlib.metadata.version("flash-attn") if _has_dist("flash-attn") else "?"
    return True, f"flash-attn {version} on an sm{major}{minor} GPU"


def packed_rows_supported(attn: str) -> bool:
    """sdpa/eager isolate the documents of a packed row when transformers builds its causal mask from the
    position ids (``masking_utils.find_packed_sequence_indices``; needs use_cache off, which training sets)."""
    if attn not in ("sdpa", "eager"):
        return False
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


def sdpa_status(model_class: Any = None) -> tuple[bool, str]:
    import torch

    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return False, f"torch {torch.__version__} has no scaled_dot_product_attention"
    if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
        return False, f"{model_class.__name__} does not support sdpa"
    return True, "torch scaled_dot_product_attention"


def choose_attention(runtime: "Runtime", requested: str = "auto", model_class: Any = None) -> tuple[str, str]:
    """(implementation, why): flash_attention_2 when installed and usable on the GPU, else sdpa, else
    eager. An explicit request that cannot run here is an error rather than a silent downgrade."""
    flash_ok, flash_why = flash_attention_status(runtime, model_class)
    sdpa_ok, sdpa_why = sdpa_status(model_class)
    if requested == "flash_attention_2":
        if not flash_ok:
            raise BabeltuneError(f"model.attn_implementation: flash_attention_2 cannot run here ({flash_why}); "
                                 "set it to auto or sdpa")
        return "flash_attention_2", f"requested; {flash_why}"
    if requested == "sdpa":
        if not sdpa_ok:
            raise BabeltuneError(f"model.attn_implementation: sdpa cannot run here ({sdpa_why}); set it to auto or eager")
        return "sdpa", f"requested; {sdpa_why}"
    if requested == "eager":
        return "eager", "requested"
    if flash_ok:
        return "flash_attention_2", flash_why
    if sdpa_ok:
        return "sdpa", f"{sdpa_why}; not flash_attention_2: {flash_why}"
    return "eager", f"no faster kernel: {flash_why}; {sdpa_why}"


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def load_tokenizer(config: "TrainConfig", runtime: "Runtime"):
    """The model's own tokenizer (or the config's override) with a pad token set."""
    from babeltune.models.tokenizers import hf_tokenizer

    return hf_tokenizer(config.model.tokenizer or runtime.model_dir)


def quantization_config(config: "TrainConfig", runtime: "Runtime"):
    """BitsAndBytesConfig for QLoRA (NF4, double quantisation, compute in the run's dtype), or None."""
    if not config.model.load_in_4bit:
        return None
    if runtime.device != "cuda":
        raise BabeltuneError("model.load_in_4bit: 4-bit QLoRA needs an NVIDIA GPU and bitsandbytes (device is "
                             f"{runtime.device}); set model.load_in_4bit: false to train in {runtime.precision}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BabeltuneError("model.load_in_4bit: bitsandbytes is not installed; pip install 'babeltune[unsloth]' "
                             "(or pip install bitsandbytes), or set model.load_in_4bit: false")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(runtime.precision))


def sharded_run(config: "TrainConfig") -> bool:
    """`train --gpus N --fsdp` / training.distributed: fsdp with several processes."""
    from babeltune.trainer import fsdp

    return fsdp.active(config)


def load_base_model(config: "TrainConfig", runtime: "Runtime", attn_implementation: str):
    """The frozen base model from ``runtime.model_dir`` in the run's dtype, on the run's device."""
    from transformers import AutoModelForCausalLM

    check_model_folder(runtime.model_dir)
    # safetensors only, and the trust decision stated: transformers never unpickles weights or asks on stdin
    kwargs: dict[str, Any] = dict(dtype=torch_dtype(runtime.precision), attn_implementation=attn_implementation,
                                  use_safetensors=True, **load_kwargs())
    quant = quantization_config(config, runtime)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": runtime.local_rank}
    model = AutoModelForCausalLM.from_pretrained(runtime.model_dir, **kwargs)
    if quant is None and runtime.device == "cuda" and not (fsdp_enabled() or sharded_run(config)):
        model.to(f"cuda:{runtime.local_rank}")   # under FSDP accelerate shards the CPU copy onto the GPUs
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    return model


def prepare_for_training(model, config: "TrainConfig"):
    """4-bit preparation and non-reentrant gradient checkpointing, before the adapter is attached."""
    checkpointing = config.training.gradient_checkpointing
    kwargs = {"use_reentrant": False}
    if config.model.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs=kwargs)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if checkpointing:
        # With frozen embeddings the checkpointed blocks would see inputs without grad and skip backward.
        model.enable_input_require_grads()
    return model


def upcast_trainable(model, precision: str) -> list[str]:
    """Trainable half-precision tensors to float32 master weights (AdamW updates at lr 1e-5 vanish in
    bf16 rounding; the fp16 GradScaler refuses fp16 gradients). A module whose weights all become fp32
    (a modules_to_save copy of embed_tokens/lm_head) gets hooks that cast its inputs to fp32 and its
    output back, so it still runs without autocast. A trainable bias beside a frozen half weight stays
    half in bf16 (F.linear needs one dtype); in fp16 it is upcast too and relies on autocast.
    Returns the upcast parameter names."""
    import torch

    half = (torch.float16, torch.bfloat16)
    upcast: dict[int, torch.dtype] = {}
    names = []
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        frozen_half = any(p.dtype in half and not p.requires_grad for _, p in own)
        for name, param in own:
            if param.requires_grad and param.dtype in half and id(param) not in upcast:
                if frozen_half and precision != "fp16":
                    continue
                upcast[id(param)] = param.dtype
                param.data = param.data.float()
                names.append(f"{module_name}.{name}" if module_name else name)
        if own and all(id(p) in upcast for _, p in own):
            _cast_around(module, upcast[id(own[0][1])])
    return names


def _cast_around(module, original_dtype) -> None:
    import torch

    def to_fp32(_module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def to_original(_module, _args, output):
        return output.to(original_dtype) if torch.is_tensor(output) and output.is_floating_point() else output

    module.register_forward_pre_hook(to_fp32)
    module.register_forward_hook(to_original)


def attach_adapter(model, peft_config, key: str):
    """peft.get_peft_model with PEFT's module-name errors turned into one line naming the config key and
    the module names this model does have."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if name and not list(module.children())})
        raise BabeltuneError(f"{key}: {str(exc).splitlines()[0]} This model's modules: {', '.join(leaves)}") from None


def check_fragments_trainable(model, fragments: Iterable[str], where: str) -> None:
    """Every fragment must name at least one trainable parameter right after the adapter is attached,
    otherwise a module meant to train was silently dropped (wrong module name, tied weights, ...)."""
    names = trainable_names(model)
    missing = [fragment for fragment in fragments if not any(fragment in name for name in names)]
    if missing:
        raise BabeltuneError(f"{where}: {', '.join(missing)} matched no trainable parameter of this model; "
                             "check the module names (`babeltune plugins` and the model's named_modules())")


def optimizer_param_groups(model, config: "TrainConfig", *, special: Iterable[str] = (),
                           special_lr: Optional[float] = None) -> list[dict]:
    """Groups for AdamW: parameters whose name contains a ``special`` fragment (modules_to_save copies of
    embed_tokens/lm_head) get ``special_lr`` and no decay; biases and norms no decay; the rest decay."""
    special = tuple(special)
    lr, decay = config.training.learning_rate, config.training.weight_decay
    groups = {"decay": [], "no_decay": [], "special": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if special and any(fragment in name for fragment in special):
            groups["special"].append(param)
        elif any(fragment in name.lower() for fragment in NO_DECAY_FRAGMENTS):
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    result = [
        {"params": groups["decay"], "lr": lr, "weight_decay": decay, "name": "adapter"},
        {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0, "name": "adapter_no_decay"},
        {"params": groups["special"], "lr": special_lr or lr, "weight_decay": 0.0, "name": "embeddings"},
    ]
    return [group for group in result if group["params"]]


def tied_embeddings(model) -> bool:
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text_config, "tie_word_embeddings", False))
