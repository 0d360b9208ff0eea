"""GPU benchmarks: babeltune's backends against bare loops on the same model shape, batch and sequence.

Every measurement runs in its own subprocess (clean CUDA state, honest peak memory). Run on the GPU
machine from the repository root; the random-initialised models are built there from a config, so no
weights travel (speed and memory do not depend on weight values). Text tokens come from
`.gpu/tokens.npy` (real UD + MahaSent text under SmolLM2's 49k tokenizer, built by
`python bench/gpu_bench.py prepare`), so the vocabulary matches the anchors in ../shared/gpu/README.md.

    python bench/gpu_bench.py suite --out bench/results/gpu_<name>.json [--only unsloth,hf-peft,...]

Subcommands (each prints one JSON object as its last line):
    make-model SHAPE DIR     random-init Llama of SHAPE (1b | 135m) with SmolLM2's tokenizer
    bare-peft DIR            plain torch loop: transformers + peft LoRA r16 all-linear, sdpa, checkpointing
    bare-unsloth DIR         plain torch loop: Unsloth FastLanguageModel, its own checkpointing
    babeltune DIR BACKEND    `train` through babeltune (run_training) with a timing plugin
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENS = REPO / ".gpu" / "tokens.npy"
TOKENIZER_DIR = REPO / ".gpu" / "tok"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SHAPES = {
    # Llama-3.2-1B shape with a 49k vocabulary (as the anchors); SmolLM2-135M shape.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_theta=500000.0),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0),
}


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "accelerate", "unsloth", "unsloth_zoo", "bitsandbytes",
                 "liger-kernel", "flash-attn", "babeltune"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def make_model(shape: str, out_dir: str) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, torch_dtype="bfloat16",
                         bos_token_id=tokenizer.bos_token_id or 1, eos_token_id=tokenizer.eos_token_id,
                         **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"shape": shape, "dir": out_dir, "parameters": sum(p.numel() for p in model.parameters())}


def token_batches(batch: int, seq: int, steps: int):
    import numpy as np
    import torch
    ids = np.load(TOKENS)
    need = batch * seq
    for step in range(steps):
        start = (step * need) % (len(ids) - need)
        yield torch.from_numpy(ids[start:start + need].astype("int64")).view(batch, seq).cuda()


def timed_loop(model, batch: int, seq: int, steps: int, warmup: int, optimizer) -> dict:
    """Plain loop: forward, backward, AdamW step. Tokens/s over the steps after warmup."""
    import torch
    losses, start = [], None
    for step, ids in enumerate(token_batches(batch, seq, steps + warmup)):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": round(batch * seq * steps / elapsed, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "first_loss": losses[0], "last_loss": losses[-1], "timed_steps": steps, "warmup_steps": warmup}


def bare_peft(model_dir: str, batch: int, seq: int, steps: int, warmup: int, load_in_4bit: bool = False,
              checkpointing: bool = True) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    kwargs = {"attn_implementation": "sdpa", "dtype": torch.bfloat16}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map={"": 0}, **kwargs)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    out = timed_loop(model, batch, seq, steps, warmup, optimizer)
    return {"stack": "transformers+peft", "load_in_4bit": load_in_4bit, "checkpointing": checkpointing, **out}


def bare_unsloth(model_dir: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    from unsloth import FastLanguageModel  # noqa: first, so it can patch transformers
    import torch
    model, _ = FastLanguageModel.from_pretrained(model_dir, max_seq_length=seq, dtype=torch.bfloat16,
                                                 load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=LORA_TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=3407)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    out = timed_loop(model, batch, seq, steps, warmup, optimizer)
    return {"stack": "unsloth (bare loop)", **out}


def write_token_corpus(path: Path, seq: int) -> None:
    """Text the babeltune run packs into the same seq-length blocks: decoded from the token file."""
    import numpy as np
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = np.load(TOKENS)[: 400 * seq]
    docs = tokenizer.batch_decode([ids[i:i + 2000].tolist() for i in range(0, len(ids), 2000)],
                                  skip_special_tokens=True)
    path.write_text("\n".join(d.replace("\n", " ") for d in docs) + "\n", encoding="utf-8")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in {"make-model", "bare-peft", "bare-unsloth"}:
    parser = argparse.ArgumentParser()
    parser.add_argument("cmd")
    parser.add_argument("arg")
    parser.add_argument("extra", nargs="?")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--no-checkpointing", action="store_true")
    a = parser.parse_args()
    if a.cmd == "make-model":
        result = make_model(a.arg, a.extra)
    elif a.cmd == "bare-peft":
        result = bare_peft(a.arg, a.batch, a.seq, a.steps, a.warmup, a.load_in_4bit, not a.no_checkpointing)
    else:
        result = bare_unsloth(a.arg, a.batch, a.seq, a.steps, a.warmup)
    print(json.dumps(result))
