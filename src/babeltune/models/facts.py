"""`model_facts(spec)`: what the advisor and trainer need from a model, without loading its weights.

* Hugging Face folder: the config is read with transformers and the model is instantiated on the
  `meta` device (shapes only, no memory), so the parameter count, linear module names and biases are
  exact for any architecture transformers knows.
* GGUF file, or a built-in before conversion: hyperparameters from the GGUF metadata and the parameter
  count from the tensor shapes in its header.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models.safety import check_model_folder, load_kwargs
from babeltune.models.types import ModelFacts

# Model types the Unsloth backend can train (its FastLanguageModel patches these families).
UNSLOTH_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3", "gemma3_text",
    "phi3", "cohere", "granite",
})
# GGUF general.architecture -> (transformers class, model_type)
GGUF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "gemma": ("GemmaForCausalLM", "gemma"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
}
# GGUF tensor name -> transformers linear module name
GGUF_LINEARS = {
    "attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_qkv": "qkv_proj", "attn_output": "o_proj",
    "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj",
}
_BLOCK_TENSOR = re.compile(r"^blk\.\d+\.([a-z_]+)\.(weight|bias)$")


def facts_from_gguf(gguf_path: Path, name: str, source: Path | None = None) -> ModelFacts:
    from babeltune.models.gguf_meta import read_gguf_metadata

    meta = read_gguf_metadata(gguf_path)
    architecture, model_type = GGUF_ARCHITECTURES.get(meta.architecture, (f"{meta.architecture} (GGUF)", meta.architecture))
    hidden, heads = int(meta.arch_value("embedding_length")), int(meta.arch_value("attention.head_count"))
    linears, has_bias = _gguf_linears(meta.tensor_shapes)
    return ModelFacts(
        name=name, architecture=architecture, model_type=model_type,
        parameters=sum(math.prod(shape) for shape in meta.tensor_shapes.values()),
        layers=int(meta.arch_value("block_count")), hidden_size=hidden, heads=heads,
        kv_heads=int(meta.arch_value("attention.head_count_kv", heads)),
        head_dim=int(meta.arch_value("attention.key_length", hidden // heads)),
        intermediate_size=int(meta.arch_value("feed_forward_length")),
        vocab_size=int(meta.arch_value("vocab_size", len(meta.tokens))),
        context_length=int(meta.arch_value("context_length")),
        # A GGUF without a separate output matrix reuses the embedding (tied).
        tied_embeddings="output.weight" not in meta.tensor_shapes,
        unsloth_supported=model_type in UNSLOTH_MODEL_TYPES,
        linear_modules=linears, has_bias=has_bias, source=str(source or gguf_path),
    )


def _gguf_linears(shapes: dict) -> tuple[tuple[str, ...], bool]:
    found: dict[str, None] = {}
    has_bias = False
    for tensor_name in shapes:
        match = _BLOCK_TENSOR.match(tensor_name)
        if match and match.group(1) in GGUF_LINEARS:
            found[GGUF_LINEARS[match.group(1)]] = None
            has_bias = has_bias or match.group(2) == "bias"
    order = list(GGUF_LINEARS.values())
    return tuple(sorted(found, key=order.index)), has_bias


def _text_config(config):
    """Multimodal configs keep the language model's settings in `text_config`."""
    return getattr(config, "text_config", None) or config


def _meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _linear_summary(model) -> tuple[tuple[str, ...], bool, int]:
    import torch

    names: dict[str, None] = {}
    has_bias = False
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not module_name.endswith("lm_head"):
            names[module_name.rsplit(".", 1)[-1]] = None
            has_bias = has_bias or module.bias is not None
    unique = {id(p): p.numel() for p in model.parameters()}  # tied weights count once
    return tuple(names), has_bias, sum(unique.values())


def facts_from_folder(folder: Path, name: str) -> ModelFacts:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    check_model_folder(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), **load_kwargs())
    except (OSError, ValueError, KeyError) as exc:
        raise BabeltuneError(f"{folder / 'config.json'}: cannot read this model config ({exc})") from None
    try:
        linears, has_bias, parameters = _linear_summary(_meta_model(config))
    except (ValueError, KeyError, TypeError) as exc:
        raise BabeltuneError(f"{folder}: transformers has no causal-LM class for model_type {config.model_type!r} ({exc})") from None
    text = _text_config(config)
    heads = int(text.num_attention_heads)
    return ModelFacts(
        name=name, architecture=(config.architectures or [type(config).__name__])[0], model_type=text.model_type,
        parameters=parameters, layers=int(text.num_hidden_layers), hidden_size=int(text.hidden_size), heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        intermediate_size=int(getattr(text, "intermediate_size", 0) or 4 * text.hidden_size),
        vocab_size=int(text.vocab_size), context_length=int(getattr(text, "max_position_embeddings", 0) or 0),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False))),
        unsloth_supported=text.model_type in UNSLOTH_MODEL_TYPES,
        linear_modules=linears, has_bias=has_bias, source=str(folder),
    )


def model_facts(spec: str) -> ModelFacts:
    """Facts for a built-in name, a GGUF file or a Hugging Face folder; never loads weights."""
    spec = str(spec).strip()
    if spec in builtins.BUILTINS:
        for dtype in ("fp32", "bf16"):
            if builtins.is_converted(spec, dtype):
                return facts_from_folder(builtins.converted_dir(spec, dtype), spec)
        return facts_from_gguf(builtins.builtin_gguf_path(spec), spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return facts_from_gguf(path, spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BabeltuneError(f"{path}: no config.json in this folder; pass a Hugging Face model folder, a .gguf file or a built-in name")
        return facts_from_folder(path, spec)
    from babeltune.models.resolve import _unknown_model

    raise _unknown_model(spec)


def context_length(spec: str) -> int | None:
    """The model's max_position_embeddings when it can be read cheaply and without side effects (a
    folder's config.json, a GGUF header, an installed or converted built-in), else None. Reads JSON and
    GGUF metadata only: no transformers, no code from the folder, nothing assembled or converted."""
    import json

    try:
        spec = str(spec).strip()
        if spec in builtins.BUILTINS:
            for dtype in ("fp32", "bf16"):
                if builtins.is_converted(spec, dtype):
                    return context_length(str(builtins.converted_dir(spec, dtype)))
            model = builtins.BUILTINS[spec]
            if not builtins.is_installed(spec):
                return None
            assembled = builtins.cache_dir() / "gguf" / model.gguf_filename   # only if assembled already
            spec = str(assembled if model.assembled else builtins.builtin_gguf_path(spec))
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            from babeltune.models.gguf_meta import read_gguf_metadata

            value = read_gguf_metadata(path).arch_value("context_length")
        elif (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
            value = text.get("max_position_embeddings") or text.get("n_positions")
        else:
            return None
    except (OSError, ValueError, BabeltuneError):
        return None     # an unreadable model is reported where it is loaded, with its own message
    return value if type(value) is int and value > 0 else None
