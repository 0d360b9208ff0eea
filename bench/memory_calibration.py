"""Calibrate the advisor's memory model (babeltune.advisor.memory.estimate_memory) against measured peaks.

For two model shapes x bf16/4-bit x gradient checkpointing on/off, and for each kernel set (plain
transformers+PEFT, liger-kernel, Unsloth), one `train` run through babeltune (3 optimizer steps, each in a
fresh process) records the process's peak GPU memory: peak reserved by PyTorch's allocator + the CUDA
context (what must fit on the card) and, for reference, peak allocated. `report` recomputes the predictions
with the current model from a results file, so a change to the model is checked against the committed
measurements without a GPU (tests/test_memory.py does exactly that).

    python bench/memory_calibration.py measure --kernels plain,liger --out bench/results/memory_calibration.json
    python bench/memory_calibration.py measure --kernels unsloth --out bench/results/memory_calibration.json  # appends
    python bench/memory_calibration.py report bench/results/memory_calibration.json

Criterion (GPU issue): every prediction within 15% of the measured peak and never below it by more than 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402  (the shared helpers: model shapes, token corpus, child processes)

LORA_R = 16
# (shape, batch, seq): the 135m shape is logits-heavy (49k vocabulary, hidden 576), the 1b shape weight/activation-heavy.
SHAPE_RUNS = (("135m", 8, 1024), ("1b", 4, 1024))
KERNELS = {"plain": ["backend.options.liger=false"], "liger": ["backend.options.liger=true"], "unsloth": []}
TOLERANCE_ABOVE, TOLERANCE_BELOW = 0.15, 0.05


def configurations(kernels: list[str]) -> list[dict]:
    return [{"shape": shape, "batch": batch, "seq": seq, "load_in_4bit": four_bit, "checkpointing": ckpt, "kernels": k}
            for k in kernels for shape, batch, seq in SHAPE_RUNS for four_bit in (False, True) for ckpt in (True, False)]


def case_key(case: dict) -> tuple:
    return tuple(case[k] for k in ("kernels", "shape", "batch", "seq", "load_in_4bit", "checkpointing"))


def measure_one(model_dir: str, case: dict) -> dict:
    """One babeltune run in this process; peak memory read when training ends."""
    import types

    import torch

    from babeltune.config import apply_overrides, validate_config
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager, select_backend
    from babeltune.trainer.run import run_training

    backend = "unsloth" if case["kernels"] == "unsloth" else "hf-peft"
    select_backend(backend)                       # unsloth must be imported before transformers
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    context = total - free                        # CUDA context + this process's libraries, before any tensor
    work = Path(tempfile.mkdtemp(prefix="bt-mem-"))
    corpus = work / "corpus.txt"
    gpu_bench.write_token_corpus(corpus, case["seq"])
    raw = {"schema_version": 1, "language": "mr",
           "model": {"name": model_dir, "max_seq_length": case["seq"], "dtype": "bfloat16", "load_in_4bit": case["load_in_4bit"]},
           "data": {"train": str(corpus), "eval_fraction": 0.01, "packing": "blocks"},
           "adapter": {"r": LORA_R, "lora_alpha": LORA_R, "lora_dropout": 0.0, "target_modules": gpu_bench.LORA_TARGETS},
           "training": {"output_dir": str(work / "run"), "per_device_train_batch_size": case["batch"],
                        "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "max_steps": 3, "optimizer": "adamw_torch",
                        "gradient_checkpointing": case["checkpointing"], "logging_steps": 1, "save_steps": 1000,
                        "precision": "bf16"},
           "eval": {"evaluation_strategy": "no", "save_strategy": "no"}, "backend": {"name": backend}}
    config = validate_config(apply_overrides(raw, KERNELS[case["kernels"]]))
    peaks = {}

    def extra_callbacks(config):
        from transformers import TrainerCallback

        class Probe(TrainerCallback):
            def on_train_end(self, args, state, control, **kwargs):
                peaks["allocated"] = torch.cuda.max_memory_allocated()
                peaks["reserved"] = torch.cuda.max_memory_reserved()
        return [Probe()]
    get_plugin_manager().register(types.SimpleNamespace(extra_callbacks=hookimpl(extra_callbacks)), name="memory-probe")
    result = run_training(config, evaluate=False, echo=lambda line: print(line, file=sys.stderr))
    gib = 2 ** 30
    return {**case, "context_gib": round(context / gib, 3), "peak_allocated_gib": round(peaks["allocated"] / gib, 3),
            "peak_reserved_gib": round(peaks["reserved"] / gib, 3),
            "measured_gib": round((peaks["reserved"] + context) / gib, 3), "final_loss": result.final_loss}


def facts_for(shape: str):
    """ModelFacts of a bench shape from its config alone (no weights): what the advisor sees."""
    from transformers import LlamaConfig

    from babeltune.models.facts import facts_from_folder

    folder = Path(tempfile.mkdtemp(prefix="bt-facts-"))
    LlamaConfig(vocab_size=49152, max_position_embeddings=8192, **gpu_bench.SHAPES[shape]).save_pretrained(folder)
    return facts_from_folder(folder, f"{shape}-shape")


def predict(case: dict, facts) -> float:
    from babeltune.advisor.memory import estimate_memory

    return estimate_memory(facts, batch_size=case["batch"], seq_len=case["seq"], lora_r=LORA_R,
                           target_modules=gpu_bench.LORA_TARGETS, load_in_4bit=case["load_in_4bit"],
                           gradient_checkpointing=case["checkpointing"], optimizer="adamw_torch", precision="bf16",
                           kernels=case["kernels"]).total_gib


def report(results: list[dict]) -> list[dict]:
    """Each measured case with the current model's prediction, its error and whether it passes."""
    facts = {shape: facts_for(shape) for shape in {r["shape"] for r in results}}
    rows = []
    for r in results:
        if "measured_gib" not in r:
            continue
        predicted = predict(r, facts[r["shape"]])
        error = predicted / r["measured_gib"] - 1
        rows.append({**r, "predicted_gib": round(predicted, 3), "error": round(error, 4),
                     "ok": -TOLERANCE_BELOW <= error <= TOLERANCE_ABOVE})
    return rows


def print_report(rows: list[dict]) -> None:
    print(f"{'kernels':8} {'shape':5} {'batch x seq':>11} {'weights':7} {'ckpt':4} {'measured':>9} {'predicted':>9} {'error':>7}")
    for r in rows:
        print(f"{r['kernels']:8} {r['shape']:5} {r['batch']:>4} x {r['seq']:<4} {'nf4' if r['load_in_4bit'] else 'bf16':7} "
              f"{'on' if r['checkpointing'] else 'off':4} {r['measured_gib']:>8.2f}G {r['predicted_gib']:>8.2f}G "
              f"{r['error']:>+7.1%} {'ok' if r['ok'] else 'FAIL'}")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} within +{TOLERANCE_ABOVE:.0%} / -{TOLERANCE_BELOW:.0%}")


def measure(kernels: list[str], out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="bt-models-"))
    previous = json.loads(out.read_text()) if out.is_file() else {}
    document = {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu_bench.gpu_name(),
                "versions": gpu_bench.versions(), "lora": f"r{LORA_R} on {', '.join(gpu_bench.LORA_TARGETS)}, AdamW, bf16",
                "results": [r for r in previous.get("results", []) if "measured_gib" in r]}
    if previous.get("command") and previous.get("command") != document["command"]:
        document["earlier_commands"] = sorted(set(previous.get("earlier_commands", []) + [previous["command"]]))
    measured = {case_key(r) for r in document["results"]}
    models = {}
    for case in configurations(kernels):
        if case_key(case) in measured:   # kept from an earlier call (the file is extended, not replaced)
            continue
        if case["shape"] not in models:
            models[case["shape"]] = str(base / case["shape"])
            gpu_bench.run_child(["make-model", case["shape"], models[case["shape"]]])
        result = gpu_bench.run_child(["memory-case", models[case["shape"]], json.dumps(case)], script=__file__)
        document["results"].append({**case, **result})
        print(json.dumps(document["results"][-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")
    print_report(report(document["results"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--kernels", default="plain,liger,unsloth")
    m.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("results", type=Path)
    c = sub.add_parser("memory-case")
    c.add_argument("model_dir")
    c.add_argument("case")
    a = parser.parse_args()
    if a.cmd == "measure":
        measure(a.kernels.split(","), a.out)
    elif a.cmd == "report":
        print_report(report(json.loads(a.results.read_text())["results"]))
    else:
        print(json.dumps(measure_one(a.model_dir, json.loads(a.case))))


if __name__ == "__main__":
    main()
