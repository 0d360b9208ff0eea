"""Data-parallel `train --gpus N` against one GPU, through the real command line, on the same global batch.

Runs on a machine with >= 2 GPUs (random-init Llama-3.2-1B shape, real text tokens as in gpu_bench.py):
  1. one GPU:   per-device batch 8 x 2048, gradient accumulation 2 (16 sequences per optimizer step);
  2. N GPUs:    `train --gpus N` (accumulation 2 -> 2/N, so the same 16 sequences per step);
  3. resume:    the N-GPU run's last checkpoint removed, `train --gpus N --resume` finishes it again;
  4. optional:  --real-model (a GGUF or HF folder) trains on N GPUs on MahaSent with held-out evaluation;
  5. optional:  --unsloth tries `--backend unsloth --gpus N`.
Tokens/s come from metrics.jsonl (tokens seen and wall time at each logged step, after the warmup steps).

    python bench/multi_gpu.py --gpus 2 --out bench/results/multi_gpu.json [--real-model /tmp/w/smollm2.gguf] [--unsloth]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402

STEPS, WARMUP, SAVE_EVERY = 18, 4, 6


def train_config(model_dir: str, corpus: Path, out: Path, seq: int = 2048) -> dict:
    return {"schema_version": 1, "language": "mr",
            "model": {"name": model_dir, "max_seq_length": seq, "dtype": "bfloat16"},
            "data": {"train": str(corpus), "eval_fraction": 0.01, "packing": "blocks"},
            "adapter": {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": gpu_bench.LORA_TARGETS},
            "training": {"output_dir": str(out), "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
                         "learning_rate": 2e-4, "max_steps": STEPS, "optimizer": "adamw_torch", "lr_scheduler_type": "linear",
                         "warmup_steps": 2, "gradient_checkpointing": True, "logging_steps": 1, "save_steps": SAVE_EVERY,
                         "precision": "bf16", "seed": 7},
            "eval": {"evaluation_strategy": "no", "save_strategy": "steps"}, "backend": {"name": "hf-peft"}}


def train(config_path: Path, *extra: str, timeout: int = 420) -> dict:
    """`train --config ... extra` as a user runs it; returns exit code, seconds and the output tail."""
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(config_path), *extra],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"command": "train --config " + " ".join([config_path.name, *extra]), "exit": "timeout",
                "seconds": round(time.time() - start, 1), "stderr_tail": str(exc.stderr or "")[-600:]}
    sys.stderr.write(proc.stderr[-2500:])
    return {"command": "train --config " + " ".join([config_path.name, *extra]), "exit": proc.returncode,
            "seconds": round(time.time() - start, 1), "stdout": proc.stdout.strip()[-300:],
            "stderr_tail": proc.stderr.strip()[-600:] if proc.returncode else ""}


def curve(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    by_step = {r["step"]: r for r in steps}
    out = {"losses": [round(r["loss"], 5) for r in steps]}
    if WARMUP in by_step and max(by_step) > WARMUP:
        a, b = by_step[WARMUP], by_step[max(by_step)]
        out["tokens_per_s"] = round((b["tokens_seen"] - a["tokens_seen"]) / (b["time"] - a["time"]), 1)
    return out


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_suite(gpus: int, out_path: Path, real_model: str | None, unsloth: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bt-ddp-"))
    model = str(work / "1b")
    report = {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu_bench.gpu_name(), "gpus": gpus,
              "versions": gpu_bench.versions(), "shape": "Llama-3.2-1B shape, vocab 49152, random init",
              "global_batch": "16 x 2048 tokens per optimizer step", "model": gpu_bench.run_child(["make-model", "1b", model])}
    corpus = work / "corpus.txt"
    gpu_bench.write_token_corpus(corpus, 2048)
    save = lambda: out_path.write_text(json.dumps(report, indent=2) + "\n")
    single = write_config(train_config(model, corpus, work / "one"), work / "one.yaml")
    report["one_gpu"] = {**train(single, "--no-eval"), **curve(work / "one")}
    multi = write_config(train_config(model, corpus, work / "multi"), work / "multi.yaml")
    report["n_gpus"] = {**train(multi, "--gpus", str(gpus), "--no-eval"), **curve(work / "multi")}
    one, many = report["one_gpu"], report["n_gpus"]
    if "tokens_per_s" in one and "tokens_per_s" in many:
        report["speedup"] = round(many["tokens_per_s"] / one["tokens_per_s"], 3)
        pairs = list(zip(one["losses"], many["losses"]))
        report["max_loss_difference"] = round(max(abs(a - b) for a, b in pairs), 5)
    report["checkpoints"] = sorted(p.name for p in (work / "multi").glob("checkpoint-*"))
    save()
    report["resume"] = resume_check(multi, work / "multi", gpus, many.get("losses", []))
    save()
    if real_model:
        report["real_model"] = real_model_run(real_model, work, gpus)
        save()
    if unsloth:
        config = train_config(model, corpus, work / "unsloth")
        config["training"]["max_steps"] = 6
        report["unsloth"] = train(write_config(config, work / "unsloth.yaml"), "--gpus", str(gpus), "--backend", "unsloth",
                                  "--no-eval", timeout=180)
        save()
    print(json.dumps({k: v for k, v in report.items() if k not in ("versions",)}, indent=1))
    return report


def resume_check(config_path: Path, run_dir: Path, gpus: int, uninterrupted: list) -> dict:
    """Remove the last checkpoint and the final outputs, resume on N GPUs, compare with the uninterrupted losses."""
    shutil.rmtree(run_dir / f"checkpoint-{STEPS}")
    for name in ("adapter", "manifest.json"):
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    result = train(config_path, "--gpus", str(gpus), "--resume", "--no-eval")
    resumed = curve(run_dir)["losses"]
    diff = max((abs(a - b) for a, b in zip(resumed[STEPS - SAVE_EVERY:], uninterrupted[STEPS - SAVE_EVERY:])), default=None)
    return {**result, "resumed_from": f"checkpoint-{STEPS - SAVE_EVERY}", "max_loss_difference_after_resume": diff,
            "manifest_written": (run_dir / "manifest.json").is_file()}


def real_model_run(real_model: str, work: Path, gpus: int) -> dict:
    """Real weights on N GPUs: MahaSent tweets, held-out bits per character before/after."""
    config = train_config(real_model, gpu_bench.MAHASENT, work / "real", seq=512)
    config["model"].pop("dtype")
    config["training"].update({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "max_steps": 30,
                               "save_steps": 30, "learning_rate": 5e-4})
    config["data"]["eval_fraction"] = 0.05
    config["eval"]["max_eval_documents"] = 100
    result = train(write_config(config, work / "real.yaml"), "--gpus", str(gpus))
    eval_path, manifest = work / "real" / "eval.json", work / "real" / "manifest.json"
    facts = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return {**result, **(curve(work / "real") if (work / "real" / "metrics.jsonl").is_file() else {}),
            "world_size": facts.get("device", {}).get("world_size"), "reload_check": facts.get("reload_check"),
            "eval": json.loads(eval_path.read_text()) if eval_path.is_file() else None}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--real-model", default=None)
    parser.add_argument("--unsloth", action="store_true")
    a = parser.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    run_suite(a.gpus, a.out, a.real_model, a.unsloth)
