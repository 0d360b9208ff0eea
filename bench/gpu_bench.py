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
    out["babeltune_commit"] = babeltune_commit()
    return out


def babeltune_commit() -> str | None:
    """The checkout's HEAD (or $BABELTUNE_COMMIT where the code travelled without its .git, as to a GPU machine)."""
    import os
    import subprocess

    found = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                           capture_output=True, text=True)
    return found.stdout.strip() or os.environ.get("BABELTUNE_COMMIT") or None


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
    model.train()  # from_pretrained returns eval mode, where gradient checkpointing is inactive
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



class TimingPlugin:
    """A babeltune plugin (extra_callbacks hook) that times the optimizer steps after warmup."""

    def __init__(self, tokens_per_step: int, warmup: int):
        self.tokens_per_step, self.warmup, self.result = tokens_per_step, warmup, {}

    def extra_callbacks(self, config):
        import torch
        from transformers import TrainerCallback
        plugin = self

        class StepTimer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == plugin.warmup:
                    torch.cuda.synchronize()
                    plugin.start = time.perf_counter()
                    torch.cuda.reset_peak_memory_stats()
                elif state.global_step == state.max_steps:   # one sync at each end: per-step syncs would slow the run
                    torch.cuda.synchronize()
                    timed = state.global_step - plugin.warmup
                    plugin.result = {"tokens_per_s": round(plugin.tokens_per_step * timed / (time.perf_counter() - plugin.start), 1),
                                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3), "timed_steps": timed}
        return [StepTimer()]


def babeltune_run(model_dir: str, backend: str, batch: int, seq: int, steps: int, warmup: int,
                  sets: list[str]) -> dict:
    """`train` through babeltune's own entry (config -> plugins -> backend -> HF Trainer) on the same shape."""
    import tempfile
    import torch
    from babeltune.config import apply_overrides, validate_config
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager
    from babeltune.trainer.run import run_training
    work = Path(tempfile.mkdtemp(prefix="bt-bench-"))
    corpus = work / "corpus.txt"
    write_token_corpus(corpus, seq)
    raw = {"schema_version": 1, "language": "mr",
           "model": {"name": model_dir, "max_seq_length": seq, "dtype": "bfloat16"},
           "data": {"train": str(corpus), "eval_fraction": 0.01, "packing": "blocks"},
           "adapter": {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": LORA_TARGETS},
           "training": {"output_dir": str(work / "run"), "per_device_train_batch_size": batch,
                        "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "max_steps": steps + warmup,
                        "optimizer": "adamw_torch", "lr_scheduler_type": "constant", "gradient_checkpointing": True,
                        "logging_steps": 1, "save_steps": 100000, "precision": "bf16"},
           "eval": {"evaluation_strategy": "no", "save_strategy": "no", "max_eval_documents": 8},
           "backend": {"name": backend}}
    raw = apply_overrides(raw, sets) if sets else raw
    config = validate_config(raw)
    plugin = TimingPlugin(batch * seq, warmup)
    import types

    def extra_callbacks(config):
        return plugin.extra_callbacks(config)
    timing_impl = types.SimpleNamespace(extra_callbacks=hookimpl(extra_callbacks))
    get_plugin_manager().register(timing_impl, name="bench-timing")
    result = run_training(config, evaluate=False)
    return {"stack": f"babeltune train --backend {backend}", "overrides": sets, **plugin.result,
            "final_loss": getattr(result, "final_loss", None)}


MAHASENT = REPO / "examples" / "data" / "marathi" / "train.txt"   # 3,000 MahaSent tweets (variable length)


class RealTokenCount:
    """Wraps a collator and counts the real (non-padding) tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, features):
        self.tokens += sum(len(f["input_ids"]) for f in features)
        return self.collator(features)


def padding_run(model_dir: str, packing: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """Real (non-padding) tokens/s of hf-peft on MahaSent tweets with one packing mode: off = one tweet per row,
    padded to the longest in the batch; blocks = concatenated and cut (no padding, attention crosses tweets);
    padding_free = whole tweets packed per row, attention kept inside each tweet."""
    import tempfile
    import torch
    from babeltune.config import validate_config
    from babeltune.trainer import data as data_module
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager
    from babeltune.trainer.run import run_training
    counters = []
    make = data_module.make_collator
    data_module.make_collator = lambda *a: counters.append(RealTokenCount(make(*a))) or counters[-1]
    work = Path(tempfile.mkdtemp(prefix="bt-pad-"))
    config = validate_config({
        "schema_version": 1, "language": "mr", "model": {"name": model_dir, "max_seq_length": seq, "dtype": "bfloat16"},
        "data": {"train": str(MAHASENT), "eval_fraction": 0.01, "packing": packing},
        "adapter": {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": LORA_TARGETS},
        "training": {"output_dir": str(work / "run"), "per_device_train_batch_size": batch, "learning_rate": 2e-4,
                     "max_steps": steps + warmup, "optimizer": "adamw_torch", "lr_scheduler_type": "constant",
                     "gradient_checkpointing": True, "logging_steps": 1, "save_steps": 100000, "precision": "bf16"},
        "eval": {"evaluation_strategy": "no", "save_strategy": "no"}, "backend": {"name": "hf-peft"}})
    marks = {}

    def extra_callbacks(config):
        from transformers import TrainerCallback

        class Marks(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (warmup, warmup + steps):
                    torch.cuda.synchronize()
                    marks[state.global_step] = (time.perf_counter(), counters[0].tokens, state.num_input_tokens_seen)
        return [Marks()]
    get_plugin_manager().register(types_namespace(extra_callbacks=hookimpl(extra_callbacks)), name="bench-marks")
    run_training(config, evaluate=False)
    (t0, real0, all0), (t1, real1, all1) = marks[warmup], marks[warmup + steps]
    return {"packing": packing, "batch": batch, "seq": seq, "timed_steps": steps,
            "real_tokens_per_s": round((real1 - real0) / (t1 - t0), 1), "padded_tokens_per_s": round((all1 - all0) / (t1 - t0), 1),
            "padding_share": round(1 - (real1 - real0) / max(1, all1 - all0), 4),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def types_namespace(**kwargs):
    import types
    return types.SimpleNamespace(**kwargs)


def run_child(args: list[str], timeout: int = 900, script: str = __file__) -> dict:
    """One measurement in a fresh process (``script`` with ``args``); its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=env)
    sys.stderr.write(proc.stderr[-3000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "args": args, "stderr_tail": proc.stderr[-1500:]}
    return json.loads(lines[-1])


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in {"make-model", "bare-peft", "bare-unsloth", "babeltune", "padding"}:
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
    parser.add_argument("--set", action="append", default=[])
    a = parser.parse_args()
    if a.cmd == "make-model":
        result = make_model(a.arg, a.extra)
    elif a.cmd == "bare-peft":
        result = bare_peft(a.arg, a.batch, a.seq, a.steps, a.warmup, a.load_in_4bit, not a.no_checkpointing)
    elif a.cmd == "padding":
        result = padding_run(a.arg, a.extra, a.batch, a.seq, a.steps, a.warmup)
    elif a.cmd == "babeltune":
        result = babeltune_run(a.arg, a.extra, a.batch, a.seq, a.steps, a.warmup, a.set)
    else:
        result = bare_unsloth(a.arg, a.batch, a.seq, a.steps, a.warmup)
    print(json.dumps(result))


def ratio(a: dict, b: dict, key: str = "tokens_per_s"):
    return round(a[key] / b[key], 3) if key in a and key in b and b[key] else None


def suite(only: set[str], out_path: Path, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """The side-by-side comparisons the GPU issue asks for, each pair measured in this one call."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="bt-models-"))
    common = ["--batch", str(batch), "--seq", str(seq), "--steps", str(steps), "--warmup", str(warmup)]
    report = {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu_name(), "versions": versions(),
              "shape": "Llama-3.2-1B shape, vocab 49152, random init", "batch": batch, "seq": seq, "results": {}}
    model_1b = str(base / "1b")
    report["model"] = run_child(["make-model", "1b", model_1b])
    res = report["results"]
    save = lambda: (out_path.parent.mkdir(parents=True, exist_ok=True), out_path.write_text(json.dumps(report, indent=2) + "\n"))
    if "unsloth" in only and "unsloth_bare" not in res:
        res["unsloth_bare"] = run_child(["bare-unsloth", model_1b, *common])
        res["unsloth_babeltune"] = run_child(["babeltune", model_1b, "unsloth", *common])
        res["unsloth_speed_ratio"] = ratio(res["unsloth_babeltune"], res["unsloth_bare"])
        res["unsloth_memory_ratio"] = ratio(res["unsloth_babeltune"], res["unsloth_bare"], "peak_gib")
        save()
    if "hf-peft" in only:
        res["peft_bare"] = run_child(["bare-peft", model_1b, *common])
        res["peft_babeltune_fast"] = run_child(["babeltune", model_1b, "hf-peft", *common])
        res["fast_path_speedup_vs_bare"] = ratio(res["peft_babeltune_fast"], res["peft_bare"])
        # not part of the like-for-like target: with liger the run fits without checkpointing, which advise picks
        res["peft_babeltune_fast_no_checkpointing"] = run_child(["babeltune", model_1b, "hf-peft", *common,
                                                                  "--set", "training.gradient_checkpointing=false"])
        res["no_checkpointing_speedup_vs_bare"] = ratio(res["peft_babeltune_fast_no_checkpointing"], res["peft_bare"])
    if "padding" in only:
        # same token capacity per step: 8 x 2048 packed rows, or 64 tweets padded to the longest of the batch
        for packing, batch in (("off", 64), ("blocks", 8), ("padding_free", 8)):
            res[f"mahasent_{packing}"] = run_child(["padding", model_1b, packing, "--batch", str(batch), "--seq", str(seq),
                                                    "--steps", str(steps), "--warmup", str(warmup)])
        res["padding_free_vs_padded_real_tokens"] = ratio(res["mahasent_padding_free"], res["mahasent_off"], "real_tokens_per_s")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(res, indent=1))
    return report


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "suite":
    parser = argparse.ArgumentParser()
    parser.add_argument("cmd")
    parser.add_argument("--only", default="unsloth,hf-peft")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    a = parser.parse_args()
    suite(set(a.only.split(",")), a.out, a.batch, a.seq, a.steps, a.warmup)
