"""GPU memory model for LoRA / QLoRA training: every formula in one place.

The advisor picks batch size, sequence length, gradient checkpointing, 4-bit loading and the
optimizer so that ``estimate_memory(...).total_gib`` stays under 90% of the GPU. The estimate is of what
must fit on the card: PyTorch's peak *reserved* memory plus the CUDA context. The constants below are
calibrated against ``bench/memory_calibration.py`` (table at the end; tests/test_memory.py re-checks it).

Parts (all in bytes, reported in GiB):

weights
    bf16/fp16: every parameter x 2 bytes (fp32: x 4).
    4-bit (QLoRA NF4, Dettmers et al. 2023): the linear layers of the decoder blocks at 4 bits plus the
    quantisation constants (double quantisation: 0.127 bits per parameter); embeddings, lm_head and
    norms are not quantised: bf16 under Unsloth, fp32 after PEFT's ``prepare_model_for_kbit_training``.
trainable
    LoRA matrices (r x (in + out) per targeted module per layer) and ``modules_to_save`` copies
    (vocab x hidden each), kept in fp32 by PEFT: 4 bytes weight + 4 bytes gradient + optimizer state
    (AdamW 8 bytes, 8-bit AdamW 2 bytes, Adafactor ~4 bytes, SGD 0).
activations
    per token per layer (flash/SDPA attention, so no seq_len^2 term), in the compute dtype (elem bytes):
    plain (transformers + PEFT): attention norm in/out (2h), q (H*d), k and v (2*kv*d), attention output
    and its contiguous copy (2*H*d), MLP norm in/out (2h), gate, up, activation and product (4i), plus
    the two RMSNorm fp32 upcasts (2h x 4 bytes);
    fused kernels (liger-kernel, Unsloth): the same attention and norm tensors, but the fused RMSNorm keeps
    no fp32 upcast and the fused SwiGLU keeps gate and up as its inputs plus the product that down_proj
    saves (3i instead of 4i);
    both: ``RESIDUAL_STREAM_TENSORS`` = 3 further hidden-size tensors (3h x elem; the residual stream
    around the attention and MLP blocks). The measured ckpt-off minus ckpt-on difference needs them: it
    is 4-6h bytes per token per layer above the plain formula without them and ~6.5h above the fused one
    (attributed by the fit, not traced tensor by tensor);
    LoRA dropout (when > 0) stores a mask and a dropped copy of every targeted module's input.
    With gradient checkpointing only each layer's input (h) is kept, plus one layer's full
    activations while it is recomputed (Korthikanti et al. 2022 count the same tensors); Unsloth's
    checkpointing offloads the layer inputs to CPU memory.
logits
    plain: tokens x vocab x (2 bytes bf16 logits + 4 bytes fp32 upcast for the loss + 4 bytes fp32
    gradient + 2 bytes bf16 gradient). For small models with large vocabularies this is the biggest part
    (the measured allocated peaks leave 9.7-11.6 bytes per entry once the other parts are subtracted, so
    12 is on the safe side).
    Fused linear cross-entropy (liger, Unsloth): one chunk of fp32 logits and their gradient plus the
    fp32 gradient of the hidden states (``logit_bytes``).
overhead
    CUDA context (``CUDA_CONTEXT_GIB`` 0.55: measured 0.514 GiB with ``torch.cuda.mem_get_info`` before
    the first tensor, rounded up for other drivers and GPUs) + the caching allocator's reserve above the
    tensors it hands out: a base (``ALLOCATOR_BASE_GIB`` 0.25: cuBLAS workspaces and the small-block pool)
    plus fragmentation, ``ALLOCATOR_FRAGMENTATION`` = 10% of activations + logits (the tensors allocated
    and freed every step). Measured reserved minus allocated: 0.06-0.48 GiB with liger, 0.67-1.06 GiB
    in the logits-heavy plain runs.

Sharded (FSDP, ``shards`` = N GPUs; PyTorch FSDP2 through accelerate, Zhao et al. 2023; ZeRO-3, Rajbhandari et al.
2020): weights and trainable (with their gradients and optimizer state) are divided by N; a further part
``gathered`` holds what is all-gathered in full at the peak: ``FSDP_GATHERED_LAYERS`` decoder layers (the one
running and the one prefetched) and the embedding/lm_head unit (vocab x hidden), which accelerate keeps gathered
from the forward to the backward pass, in the compute dtype; a trained embedding copy (modules_to_save) adds its
gathered weight and its unsharded fp32 gradient. Activations and logits are per GPU as without sharding. Not yet
checked against a measurement (bench/fsdp.py measures each rank's peak on a machine with >= 2 GPUs).

Calibration (``python bench/memory_calibration.py report bench/results/memory_calibration.json``): peak
reserved + CUDA context after 3 AdamW steps of a babeltune ``train`` run (each in a fresh process), random
weights in the SmolLM2-135M and Llama-3.2-1B shapes (``bench/gpu_bench.py``, vocabulary 49152), LoRA r16 on
q, k, v, o, gate, up, down, bf16, SDPA, packed blocks; one H200, torch 2.11, transformers 5.17, peft 0.21,
liger-kernel 0.8.5, Unsloth 2026.10.9, bitsandbytes 0.50.2. Measured / predicted GiB, error = predicted / measured - 1 (criterion: -5% .. +15%):

    shape  batch x seq  kernels  weights  ckpt  measured  predicted  error
    135m   8 x 1024    plain    bf16     on        6.66       6.61  -0.7%
    135m   8 x 1024    plain    bf16     off      12.67      13.42  +5.9%
    1b     4 x 1024    plain    bf16     on        6.05       6.24  +3.1%
    1b     4 x 1024    plain    bf16     off      12.79      13.83  +8.1%
    135m   8 x 1024    liger    bf16     on        1.55       1.67  +7.4%
    135m   8 x 1024    liger    bf16     off       6.46       6.61  +2.3%
    1b     4 x 1024    liger    bf16     on        3.79       3.77  -0.5%
    1b     4 x 1024    liger    bf16     off       8.68       9.29  +7.1%
    135m   8 x 1024    plain    nf4      on        7.01       6.87  -2.1%
    135m   8 x 1024    plain    nf4      off      14.38      15.26  +6.1%
    1b     4 x 1024    plain    nf4      on        5.51       5.53  +0.3%
    1b     4 x 1024    plain    nf4      off      14.67      15.42  +5.1%
    135m   8 x 1024    liger    nf4      on        1.78       1.92  +7.9%
    135m   8 x 1024    liger    nf4      off       7.89       8.26  +4.7%
    1b     4 x 1024    liger    nf4      on        3.04       3.04  -0.1%
    1b     4 x 1024    liger    nf4      off      10.04      10.61  +5.6%
    135m   8 x 1024    unsloth  bf16     on        1.46       1.53  +5.1%
    135m   8 x 1024    unsloth  bf16     off       4.94       5.62  +13.8%
    135m   8 x 1024    unsloth  nf4      on        1.30       1.39  +6.4%
    135m   8 x 1024    unsloth  nf4      off       4.80       5.47  +13.9%
    1b     4 x 1024    unsloth  bf16     on        3.60       3.61  +0.3%
    1b     4 x 1024    unsloth  bf16     off       7.21       8.13  +12.8%
    1b     4 x 1024    unsloth  nf4      on        2.32       2.26  -2.5%

(23 of the 24 planned cases; Unsloth 1b nf4 without checkpointing did not finish inside the call's time).
QLoRA through PEFT: ``prepare_model_for_kbit_training`` casts the unquantised parameters (embeddings, norms)
to fp32, so the residual stream and the MLP that the fp32 norms feed run in fp32 (``KBIT_MLP_EXTRA_BYTES``,
fp32 layer inputs under checkpointing); Unsloth does not, and keeps ``UNSLOTH_ACTIVATION_SHARE`` of the
fused-kernel activations (its fused LoRA MLP/attention kernels save less), with a larger CUDA context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

from babeltune.models.types import ModelFacts

GIB = 1024 ** 3

# Calibrated against bench/results/memory_calibration.json (H200; see the module docstring).
CUDA_CONTEXT_GIB = 0.55             # measured 0.514 GiB (torch 2.11, H200), rounded up for other drivers / GPUs
ALLOCATOR_BASE_GIB = 0.25           # cuBLAS workspaces + the caching allocator's small-block pool
ALLOCATOR_FRAGMENTATION = 0.10      # reserved above allocated, as a share of the per-step tensors (activations + logits)
RESIDUAL_STREAM_TENSORS = 3         # further hidden-size tensors kept per layer (measured, both kernel sets)
KBIT_MLP_EXTRA_BYTES = {"plain": 5, "liger": 4.5}   # x intermediate size, per token per layer: PEFT's k-bit
                                    # preparation makes the MLP run in fp32 (measured 3.9-4.8 / 3.4-4.2)
UNSLOTH_ACTIVATION_SHARE = 0.78     # Unsloth keeps this share of the fused-kernel activations (measured 0.71-0.74)
UNSLOTH_CONTEXT_GIB = 0.75          # its kernels load more into the CUDA context (measured 0.71 GiB)
NF4_BITS_PER_PARAM = 4.127          # 4 bits + double-quantised absmax constants (QLoRA, section 3)
TRAINABLE_WEIGHT_BYTES = 4          # PEFT keeps adapter weights in fp32
TRAINABLE_GRAD_BYTES = 4
LOGIT_BYTES_PER_ENTRY = 2 + 4 + 4 + 2   # bf16 logits, fp32 upcast in the loss, fp32 gradient, bf16 gradient
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8, "adamw_torch_fused": 8,       # two fp32 moments
    "adamw_8bit": 2, "paged_adamw_8bit": 2,         # two 8-bit moments (bitsandbytes)
    "adafactor": 4,                                 # factored second moment, approx.
    "sgd": 0,
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
KERNEL_SETS = ("plain", "liger", "unsloth")
BUDGET_SHARE = 0.90                 # advise keeps the estimate under this share of GPU memory
FSDP_GATHERED_LAYERS = 2            # decoder layers gathered in full at once under FSDP (running + prefetched)


@dataclass
class MemoryEstimate:
    """Estimated peak training memory, with its parts (GiB) and the inputs it was computed for."""

    total_gib: float
    parts: dict[str, float]
    inputs: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"total_gib": round(self.total_gib, 3), "parts": {k: round(v, 3) for k, v in self.parts.items()},
                "inputs": dict(self.inputs)}

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib:.2f}" for name, gib in self.parts.items())
        return f"{self.total_gib:.2f} GiB ({parts})"


def module_shapes(facts: ModelFacts) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear module of one decoder layer (Llama-style names)."""
    h, i = facts.hidden_size, facts.intermediate_size
    q_out, kv_out = facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim
    return {
        "q_proj": (h, q_out), "k_proj": (h, kv_out), "v_proj": (h, kv_out), "o_proj": (q_out, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }


def resolve_targets(facts: ModelFacts, target_modules: Union[Sequence[str], str]) -> list[str]:
    if target_modules == "all-linear":
        return list(facts.linear_modules)
    return list(target_modules)


def lora_parameters(facts: ModelFacts, lora_r: int, target_modules: Union[Sequence[str], str]) -> int:
    """Trainable LoRA parameters: r x (in + out) for every targeted module in every layer.
    Unknown module names count as hidden x hidden."""
    shapes = module_shapes(facts)
    square = (facts.hidden_size, facts.hidden_size)
    per_layer = sum(sum(shapes.get(name, square)) for name in resolve_targets(facts, target_modules))
    return lora_r * per_layer * facts.layers


def linear_parameters(facts: ModelFacts) -> int:
    """Parameters in the decoder blocks' linear layers (what 4-bit loading quantises)."""
    return facts.layers * sum(a * b for a, b in module_shapes(facts).values())


def embedding_parameters(facts: ModelFacts, modules_to_save: Sequence[str]) -> int:
    """Parameters trained in full through modules_to_save (embed_tokens / lm_head: vocab x hidden each)."""
    return sum(facts.vocab_size * facts.hidden_size for name in modules_to_save if name in ("embed_tokens", "lm_head"))


def weight_bytes(facts: ModelFacts, load_in_4bit: bool, precision: str, kernels: str = "plain") -> float:
    if not load_in_4bit:
        return facts.parameters * DTYPE_BYTES.get(precision, 2)
    linear = min(linear_parameters(facts), facts.parameters)
    # PEFT's prepare_model_for_kbit_training casts what stays unquantised (embeddings, norms) to fp32; Unsloth does not
    rest = 4 if kernels in KBIT_MLP_EXTRA_BYTES else 2
    return linear * NF4_BITS_PER_PARAM / 8 + (facts.parameters - linear) * rest


def activation_bytes_per_token_layer(facts: ModelFacts, precision: str, targets: Sequence[str],
                                     lora_dropout: float, kernels: str = "plain", load_in_4bit: bool = False) -> float:
    """Saved activations of one decoder layer for one token, without checkpointing (module docstring).
    Fused kernels (liger, Unsloth) keep the SwiGLU inputs and product (gate, up, product: 3i instead of 4i) and
    no fp32 RMSNorm upcasts; both kernel sets keep ``RESIDUAL_STREAM_TENSORS`` further hidden-size tensors."""
    h, i = facts.hidden_size, facts.intermediate_size
    q, kv = facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim
    elem = DTYPE_BYTES.get(precision, 2)
    if kernels == "plain":
        saved = elem * (4 * h + 3 * q + 2 * kv + 4 * i) + 4 * 2 * h
    else:
        saved = elem * (4 * h + 3 * q + 2 * kv + 3 * i)
    saved += elem * RESIDUAL_STREAM_TENSORS * h
    if lora_dropout > 0:
        shapes = module_shapes(facts)
        saved += sum((elem + 1) * shapes.get(name, (h, h))[0] for name in targets)
    if kernels == "unsloth":
        return saved * UNSLOTH_ACTIVATION_SHARE
    if load_in_4bit:   # fp32 norm weights turn the norm outputs, and the MLP fed by them, into fp32
        saved += KBIT_MLP_EXTRA_BYTES[kernels] * i
    return saved


def logit_bytes(facts: ModelFacts, tokens: int, kernels: str, fused_head: bool) -> float:
    """The loss's memory. Plain: the whole tokens x vocab logits (bf16, fp32 upcast, fp32 and bf16 gradients).
    Fused linear cross-entropy (liger, Unsloth) computes the logits chunk by chunk and keeps only the gradient
    of the hidden states: about ceil(vocab / hidden) chunks (liger's rule), so one chunk of fp32 logits and
    their gradient at a time."""
    if kernels == "plain" or not fused_head:
        return tokens * facts.vocab_size * LOGIT_BYTES_PER_ENTRY
    chunks = max(1, math.ceil(facts.vocab_size / facts.hidden_size))
    chunk_tokens = min(tokens, 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))
    return chunk_tokens * facts.vocab_size * (4 + 4) + tokens * facts.hidden_size * 4


def gathered_bytes(facts: ModelFacts, precision: str, modules_to_save: Sequence[str]) -> float:
    """FSDP: what is all-gathered in full on each GPU at the peak (module docstring)."""
    elem = DTYPE_BYTES.get(precision, 2)
    layer = linear_parameters(facts) / max(facts.layers, 1)
    trained_embeddings = embedding_parameters(facts, modules_to_save)
    return elem * (FSDP_GATHERED_LAYERS * layer + facts.vocab_size * facts.hidden_size) + trained_embeddings * (elem + 4)


def estimate_memory(facts: ModelFacts, *, batch_size: int, seq_len: int, lora_r: int,
                    target_modules: Union[Sequence[str], str], load_in_4bit: bool, gradient_checkpointing: bool,
                    modules_to_save: Sequence[str] = (), optimizer: str = "adamw_torch", precision: str = "bf16",
                    lora_dropout: float = 0.0, kernels: str = "plain", shards: int = 1) -> MemoryEstimate:
    """Estimated peak GPU memory of one training micro-step on each GPU (see the module docstring for the formulas).
    ``kernels``: "plain" (transformers + PEFT), "liger" (liger-kernel fused ops) or "unsloth".
    ``shards``: GPUs the model is sharded over with FSDP (1 = a full copy on each GPU, as with DDP)."""
    if kernels not in KERNEL_SETS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_SETS)}, not {kernels!r}")
    targets = resolve_targets(facts, target_modules)
    tokens = batch_size * seq_len
    trainable = lora_parameters(facts, lora_r, targets) + embedding_parameters(facts, modules_to_save)
    per_trainable = TRAINABLE_WEIGHT_BYTES + TRAINABLE_GRAD_BYTES + OPTIMIZER_STATE_BYTES.get(optimizer, 8)
    per_layer = activation_bytes_per_token_layer(facts, precision, targets, lora_dropout, kernels, load_in_4bit)
    if gradient_checkpointing:
        # Unsloth's checkpointing offloads each layer's input to CPU memory; the others keep it on the GPU
        # (in fp32 after PEFT's k-bit preparation: the fp32 embedding makes the residual stream fp32)
        stream = 4 if load_in_4bit else DTYPE_BYTES.get(precision, 2)
        kept = 0 if kernels == "unsloth" else facts.layers * facts.hidden_size * stream
        activations = tokens * (kept + per_layer)
    else:
        activations = tokens * facts.layers * per_layer
    fused_head = "lm_head" not in modules_to_save   # a trained lm_head needs the plain loss
    shards = max(1, int(shards))
    parts_bytes = {
        "weights": weight_bytes(facts, load_in_4bit, precision, kernels) / shards,
        "trainable": trainable * per_trainable / shards,
        "activations": activations,
        "logits": logit_bytes(facts, tokens, kernels, fused_head),
    }
    if shards > 1:
        parts_bytes["gathered"] = gathered_bytes(facts, precision, modules_to_save)
    # the caching allocator reserves more than the tensors it hands out: a base pool plus fragmentation that
    # grows with the memory allocated and freed every step (activations, logits)
    reserve = ALLOCATOR_BASE_GIB * GIB + ALLOCATOR_FRAGMENTATION * (parts_bytes["activations"] + parts_bytes["logits"])
    context = UNSLOTH_CONTEXT_GIB if kernels == "unsloth" else CUDA_CONTEXT_GIB
    parts_bytes["overhead"] = context * GIB + reserve
    parts = {name: value / GIB for name, value in parts_bytes.items()}
    inputs = dict(batch_size=batch_size, seq_len=seq_len, lora_r=lora_r, load_in_4bit=load_in_4bit,
                  gradient_checkpointing=gradient_checkpointing, modules_to_save=list(modules_to_save),
                  optimizer=optimizer, precision=precision, kernels=kernels, trainable_parameters=trainable,
                  shards=shards)
    return MemoryEstimate(total_gib=sum(parts.values()), parts=parts, inputs=inputs)


def budget_gib(gpu_memory_gib: float) -> float:
    return gpu_memory_gib * BUDGET_SHARE


def minimum_gpu_gib(estimate: MemoryEstimate) -> int:
    """Smallest whole GiB of GPU memory for which ``estimate`` stays under the budget share."""
    return math.ceil(estimate.total_gib / BUDGET_SHARE)
