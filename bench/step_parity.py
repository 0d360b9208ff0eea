"""Does babeltune's `train` do the same arithmetic per step as a bare transformers + PEFT loop?

babeltune's run (run_training: backend load, data, HF Trainer with LeanSteps and every core callback) is recorded
step by step: the batches its forward passes receive and the adapter's weights at the start. A bare loop (the one
in bench/small_shapes.py: forward with labels, backward, clip to max_grad_norm over the trainable parameters,
AdamW, zero_grad) then replays the same batches from the same adapter. Per step, both losses and gradient norms
are compared; a difference in loss scaling, clipping, label shifting, masking, optimizer groups or the order of
clipping and stepping shows as a step whose numbers part.

    python bench/step_parity.py --model DIR --corpus FILE [--shape 4x64] [--steps 8] [--precision fp32|bf16]
        [--lr 2e-4] [--out parity.json]

bf16: weights in bf16 and bf16 autocast, as the HF Trainer's bf16=True and the GPU benchmark run (on a CPU too).
On a GPU machine both sides run on the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import types
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.0, use_rslora=True)


def parity_config(model_dir: str, corpus: str, batch: int, seq: int, steps: int, lr: float, precision: str,
                  work: Path) -> dict:
    """The benchmark's babeltune config (bench/small_shapes.py), logging every step."""
    return {"schema_version": 1, "language": "mr",
            "model": {"name": model_dir, "max_seq_length": seq},
            "data": {"train": corpus, "eval_fraction": 0.01, "packing": "blocks"},
            "adapter": {**LORA, "target_modules": LORA_TARGETS},
            "training": {"output_dir": str(work / "run"), "per_device_train_batch_size": batch,
                         "gradient_accumulation_steps": 1, "learning_rate": lr, "max_steps": steps,
                         "optimizer": "adamw_torch", "lr_scheduler_type": "constant", "weight_decay": 0.0,
                         "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 100000,
                         "precision": precision, "max_nonfinite_losses": 1000},
            "eval": {"evaluation_strategy": "no", "save_strategy": "no", "max_eval_documents": 4},
            "backend": {"name": "hf-peft", "options": {"liger": False}}}


def record_babeltune(model_dir: str, corpus: str, batch: int, seq: int, steps: int, lr: float, precision: str) -> dict:
    """Run `train` and keep its batches, its initial adapter and its logged loss / grad norm per step."""
    import torch
    from transformers import TrainerCallback

    from babeltune.config import validate_config
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager
    from babeltune.trainer.run import run_training

    work = Path(tempfile.mkdtemp(prefix="bt-parity-"))
    config = validate_config(parity_config(model_dir, corpus, batch, seq, steps, lr, precision, work))
    seen: dict = {"batches": [], "initial": None}

    def keep_batch(module, args, kwargs):
        if module.training:
            seen["batches"].append({k: v.detach().cpu().clone() for k, v in kwargs.items()
                                    if torch.is_tensor(v) and k != "num_items_in_batch"})

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["initial"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
            seen["handle"] = model.register_forward_pre_hook(keep_batch, with_kwargs=True)

        def on_train_end(self, args, state, control, **kwargs):
            seen.pop("handle").remove()

    impl = types.SimpleNamespace(extra_callbacks=hookimpl(lambda config: [Recorder()]))
    manager = get_plugin_manager()
    manager.register(impl, name=f"bench-parity-{id(impl)}")
    try:
        run_training(config, evaluate=False, echo=lambda line: None)
        error = None
    except Exception as exc:   # a reload check that fails on NaN weights still leaves the logged curve
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        manager.unregister(impl)
    logged = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: (r["loss"], r["grad_norm"]) for r in logged if "loss" in r and "grad_norm" in r}
    return {**seen, "curve": [curve[s] for s in sorted(curve)], "error": error}


def replay_bare(model_dir: str, recorded: dict, lr: float, precision: str, max_grad_norm: float = 1.0) -> list:
    """The bare loop of bench/small_shapes.py on the recorded batches from the recorded initial adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS, task_type="CAUSAL_LM", **LORA))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(recorded["initial"][name].to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    curve = []
    for batch in recorded["batches"]:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append((float(loss), float(norm)))
    return curve


def relative(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else math.inf
    return abs(a - b) / max(abs(b), 1e-12)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def compare(model_dir: str, corpus: str, batch: int, seq: int, steps: int, lr: float, precision: str) -> dict:
    recorded = record_babeltune(model_dir, corpus, batch, seq, steps, lr, precision)
    bare = replay_bare(model_dir, recorded, lr, precision)
    rows = [{"step": i + 1, "babeltune_loss": ours[0], "bare_loss": theirs[0], "babeltune_grad_norm": ours[1],
             "bare_grad_norm": theirs[1], "loss_rel_diff": relative(ours[0], theirs[0]),
             "grad_norm_rel_diff": relative(ours[1], theirs[1])}
            for i, (ours, theirs) in enumerate(zip(recorded["curve"], bare))]
    def first_nonfinite(side: str):
        return next((r["step"] for r in rows if not (math.isfinite(r[f"{side}_loss"]) and
                                                     math.isfinite(r[f"{side}_grad_norm"]))), None)
    return {"model": model_dir, "shape": f"{batch}x{seq}", "precision": precision, "lr": lr,
            "device": "cuda" if _cuda() else "cpu",
            "first_nonfinite_step": {"babeltune": first_nonfinite("babeltune"), "bare": first_nonfinite("bare")},
            "batch_keys": sorted(recorded["batches"][0]) if recorded["batches"] else [],
            "babeltune_error": recorded["error"], "steps": rows,
            "max_loss_rel_diff": max((r["loss_rel_diff"] for r in rows), default=None),
            "max_grad_norm_rel_diff": max((r["grad_norm_rel_diff"] for r in rows), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", default=str(Path(__file__).resolve().parents[1] / "examples/data/marathi/train.txt"))
    parser.add_argument("--shape", default="4x64")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    batch, seq = (int(x) for x in a.shape.split("x"))
    result = compare(a.model, a.corpus, batch, seq, a.steps, a.lr, a.precision)
    text = json.dumps(result, indent=1)
    print(text)
    print(json.dumps({k: result[k] for k in ("shape", "precision", "device", "first_nonfinite_step",
                                              "max_loss_rel_diff", "max_grad_norm_rel_diff")}), file=sys.stderr)
    if a.out:
        a.out.write_text(text + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
