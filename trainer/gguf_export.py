"""`babeltune export`: an adapter merged into its base model, written as a GGUF for llama.cpp or an HF folder.

The GGUF is written with the `gguf` package (gguf.GGUFWriter, its tensor-name maps and quantizers), mirroring
what babeltune's GGUF -> HF conversion undoes (transformers' GGUF loader, see models/convert.py):

* Llama (incl. SmolLM2): llama.cpp stores the Q and K projections with the rows of each head permuted for its
  rotary embedding; transformers' loader un-permutes them (LlamaTensorProcessor), we apply the inverse.
* Gemma-3: norms are stored as 1 + weight (Gemma multiplies by 1 + w; llama.cpp by w); the loader subtracts 1.

Vectors (norms, biases) stay f32, as llama.cpp's converter keeps them; with q8_0, a matrix whose rows are not a
multiple of 32 values falls back to f16 (its converter does the same). The file is written beside the target
and renamed into place, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.atomic import write_failure

GGUF_DTYPES = ("f16", "bf16", "q8_0", "f32")
HF_DTYPES = ("f16", "bf16", "f32")
FORMATS = ("gguf", "hf")
# HF model_type -> gguf architecture name (gguf.MODEL_ARCH_NAMES value)
ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3"}
GEMMA3_SLIDING_PATTERN = 6       # llama.cpp: every 6th Gemma-3 layer attends globally
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's default for Gemma-3's sliding-window layers


@dataclass
class ExportResult:
    path: Path
    architecture: str
    dtype: str
    tensors: int
    bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)   # ggml type name -> tensor count

    def summary(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.tensor_types.items()))
        return f"wrote {self.path}: {self.architecture}, {self.tensors} tensors ({kinds}), {self.bytes / 2**20:,.1f} MiB"


def check_request(config: dict, fmt: str, dtype: str, source: str) -> str:
    """The gguf architecture name, or a one-line error for an unsupported format, dtype or architecture."""
    if fmt not in FORMATS:
        raise BabeltuneError(f"--format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    allowed = GGUF_DTYPES if fmt == "gguf" else HF_DTYPES
    if dtype not in allowed:
        raise BabeltuneError(f"--dtype {dtype!r} is not supported for --format {fmt}: use one of {', '.join(allowed)}")
    model_type = str(config.get("model_type"))
    if fmt == "hf":   # any causal LM transformers loads can be merged and saved
        return ARCHITECTURES.get(model_type, model_type)
    if model_type not in ARCHITECTURES:
        raise BabeltuneError(f"{source}: model_type {model_type!r} cannot be exported to GGUF (supported: "
                             f"{', '.join(ARCHITECTURES)}); use --format hf for a merged Hugging Face folder")
    return ARCHITECTURES[model_type]


# ------------------------------------------------------------------------------------------ hyperparameters

def _rope(config: Any, layer_type: Optional[str] = None) -> dict:
    parameters = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(parameters.get(layer_type), dict):
        parameters = parameters[layer_type]
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", None))
    return {"theta": float(theta), "type": parameters.get("rope_type", "default"), "factor": parameters.get("factor")}


def _add_rope_scaling(writer: Any, rope: dict, source: str) -> None:
    import gguf

    if rope["type"] == "default":
        return
    if rope["type"] != "linear":
        raise BabeltuneError(f"{source}: rope_type {rope['type']!r} cannot be exported to GGUF here (supported: "
                             "default, linear)")
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(float(rope["factor"]))


def _common_hparams(writer: Any, config: Any, head_dim: int) -> None:
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def llama_hparams(writer: Any, config: Any, source: str) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise BabeltuneError(f"{source}: hidden_act {config.hidden_act!r}: llama.cpp's llama architecture uses silu")
    head_dim = _head_dim(config)
    _common_hparams(writer, config, head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(rope["theta"])
    _add_rope_scaling(writer, rope, source)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _gemma3_problem(config: Any) -> Optional[str]:
    """What llama.cpp's Gemma-3 graph cannot represent in this config, or None."""
    head_dim = _head_dim(config)
    expected_types = ["full_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding_attention"
                      for i in range(config.num_hidden_layers)]
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        return f"hidden_activation {config.hidden_activation!r} (llama.cpp uses gelu_pytorch_tanh)"
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
        return "logit soft-capping (llama.cpp's Gemma-3 has none)"
    if int(getattr(config, "query_pre_attn_scalar", head_dim)) != head_dim:
        return f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {head_dim} (llama.cpp scales by head_dim)"
    if list(getattr(config, "layer_types", expected_types)) != expected_types:
        return f"layer_types other than every {GEMMA3_SLIDING_PATTERN}th layer global (llama.cpp's Gemma-3 pattern)"
    if getattr(config, "use_bidirectional_attention", False):
        return "use_bidirectional_attention (llama.cpp's Gemma-3 is causal)"
    return None


def gemma3_hparams(writer: Any, config: Any, source: str) -> None:
    problem = _gemma3_problem(config)
    if problem:
        raise BabeltuneError(f"{source}: {problem}; this Gemma-3 variant cannot be exported to GGUF, use --format hf")
    head_dim = _head_dim(config)
    _common_hparams(writer, config, head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    full, local = _rope(config, "full_attention"), _rope(config, "sliding_attention")
    writer.add_rope_freq_base(full["theta"])
    _add_rope_scaling(writer, full, source)
    if local["theta"] != GEMMA3_LOCAL_ROPE_BASE:
        writer.add_rope_freq_base_swa(local["theta"])
    writer.add_sliding_window(int(config.sliding_window))


HPARAMS: dict[str, Callable[[Any, Any, str], None]] = {"llama": llama_hparams, "gemma3": gemma3_hparams}


# ------------------------------------------------------------------------------------------------ tensors

def llama_permute(weights, n_head: int, n_head_kv: Optional[int] = None):
    """llama.cpp's converter permutation of Q/K rows: the exact inverse of transformers'
    LlamaTensorProcessor._reverse_permute_weights (reshape (heads, dim, 2) -> swap; here (heads, 2, dim))."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama_tensor(name: str, weights, config: Any):
    if name.endswith("attn_q.weight"):
        return llama_permute(weights, config.num_attention_heads, config.num_attention_heads)
    if name.endswith("attn_k.weight"):
        return llama_permute(weights, config.num_attention_heads, config.num_key_value_heads)
    return weights


def gemma3_tensor(name: str, weights, config: Any):
    return weights + 1 if name.endswith("norm.weight") else weights


TENSORS: dict[str, Callable[[str, Any, Any], Any]] = {"llama": llama_tensor, "gemma3": gemma3_tensor}


def gguf_tensors(model: Any, arch: str):
    """(gguf name, float32 numpy array) for every tensor of ``model``, renamed with gguf's map; the tied output
    matrix is left out (llama.cpp reuses token_embd, as the GGUF loader does when output.weight is absent)."""
    import gguf

    config = model.config
    arch_id = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    name_map = gguf.get_tensor_name_map(arch_id, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_stem = name_map.get_name(stem)
        if gguf_stem is None:
            raise BabeltuneError(f"tensor {hf_name}: the gguf package has no {arch} GGUF name for it (a layer "
                                 "llama.cpp's architecture lacks); use --format hf")
        name = f"{gguf_stem}.{suffix}"
        yield name, TENSORS[arch](name, tensor.detach().float().cpu().numpy(), config)


def encode(name: str, weights, dtype: str):
    """(data, raw ggml type or None) as llama.cpp's converter stores it for ``dtype``."""
    import gguf
    import numpy as np

    if dtype == "f32" or weights.ndim <= 1 or name.endswith("_norm.weight"):
        return weights.astype(np.float32), None
    if dtype == "f16":
        return weights.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    try:
        return gguf.quants.quantize(weights.astype(np.float32), qtype), qtype
    except gguf.quants.QuantError:   # rows not a multiple of the block size
        return weights.astype(np.float16), None


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _fill_writer(writer: Any, model: Any, tokenizer: Any, arch: str, dtype: str, name: str, source: str) -> dict[str, int]:
    import gguf

    from babeltune.trainer.gguf_vocab import vocab_from_tokenizer, write_vocab

    config = model.config
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
    HPARAMS[arch](writer, config, source)
    rows = int(model.get_input_embeddings().weight.shape[0])
    write_vocab(writer, vocab_from_tokenizer(tokenizer, rows, source=f"{source} tokenizer"))
    counts: dict[str, int] = {}
    for tensor_name, weights in gguf_tensors(model, arch):
        data, raw_type = encode(tensor_name, weights, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
        kind = raw_type.name if raw_type is not None else {"float32": "F32", "float16": "F16"}[str(data.dtype)]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def write_gguf(model: Any, tokenizer: Any, out: str | Path, *, arch: str, dtype: str, name: str,
               source: str = "model") -> ExportResult:
    """Write ``model`` (a merged transformers causal LM) + ``tokenizer`` as a GGUF at ``out``, atomically."""
    import gguf

    target = Path(out).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(handle)
    except OSError as exc:
        raise BabeltuneError(write_failure(target, exc)) from None
    try:
        writer = gguf.GGUFWriter(temporary, arch)
        counts = _fill_writer(writer, model, tokenizer, arch, dtype, name, source)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)   # mkstemp makes it private; an exported model is not
        os.replace(temporary, target)
    except OSError as exc:
        raise BabeltuneError(write_failure(target, exc)) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return ExportResult(target, arch, dtype, sum(counts.values()), target.stat().st_size, counts)
