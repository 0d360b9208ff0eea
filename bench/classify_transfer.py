"""Cross-domain sentiment transfer on Marathi: train on generic tweets (MahaSent-GT), evaluate on held-out generic
tweets and on four other labelled domains, before and after LoRA and IA3 (+BitFit where the model has biases),
against the majority-class baseline, with each run's trainable parameter share. Everything runs through the
`train` and `babeltune eval --task classify` command lines, as a user runs them.

    python3 bench/classify_transfer.py --models-dir ~/.cache/babeltune/models --corpora ../shared/corpora \\
        --out bench/results/classify_transfer.json
    python3 bench/classify_transfer.py --corpora ../shared/corpora --smoke --out /tmp/smoke.json   # CPU, tiny model

Train: a balanced sample of MahaSent `train.csv` (the generic-tweets domain, MahaSent-GT). Evaluate (balanced
samples, 100 per label unless --eval-examples): MahaSent `test.csv` (same domain) and the shipped
examples/data/marathi-sentiment/ files: movie reviews, subtitles, political tweets (other domains, same language
and script) and code-mixed Marathi-English tweets in Latin script (another script and a language mix).
The JSON is rewritten after every step, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402  (one list of the library versions and the GPU name every result records)

REPO = Path(__file__).resolve().parent.parent
DOMAINS = REPO / "examples" / "data" / "marathi-sentiment"
LABELS = {"-1": "negative", "0": "neutral", "1": "positive"}
LABELS_OPTION = ",".join(f"{k}={v}" for k, v in LABELS.items())
MODELS = ("gemma-3-270m", "smollm2-135m")
RUNS = (  # (name, backend, adapter section, learning rate)
    ("lora", "hf-peft", {"r": 8, "lora_alpha": 16, "use_rslora": False, "lora_dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}, 5e-4),
    ("ia3_bitfit", "ia3", {}, 3e-3),   # AutoGluon's ia3_bias tutorial: lr 3e-3
)


def balanced_sample(rows: list[dict], text: str, label: str, per_label: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    picked = []
    for value in LABELS:
        pool = [r for r in rows if r[label].strip() == value and r[text].strip()]
        picked += [(r[text].strip(), value) for r in rng.sample(pool, min(per_label, len(pool)))]
    rng.shuffle(picked)
    return picked


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def prepare_data(corpora: Path, work: Path, train_per_label: int, eval_per_label: int) -> tuple[Path, dict[str, Path]]:
    mahasent = corpora / "mahasent"
    train = write_rows(work / "train-gt.csv", balanced_sample(read_csv(mahasent / "train.csv"), "tweet", "label", train_per_label, 0))
    evals = {"tweets-gt (in-domain)": write_rows(work / "test-gt.csv", balanced_sample(
        read_csv(mahasent / "test.csv"), "tweet", "label", eval_per_label, 1))}
    for name, file in (("movie-reviews", "movie-reviews.csv"), ("subtitles", "subtitles.csv"),
                       ("political-tweets", "political-tweets.csv"), ("codemixed-latin", "codemixed-tweets.csv")):
        evals[name] = write_rows(work / file, balanced_sample(read_csv(DOMAINS / file), "text", "label", eval_per_label, 2))
    return train, evals


def run(command: list[str], timeout: int) -> dict:
    start = time.time()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"exit": "timeout", "seconds": round(time.time() - start, 1), "stderr_tail": str(exc.stderr or "")[-800:]}
    sys.stderr.write(proc.stderr[-3000:])
    return {"exit": proc.returncode, "seconds": round(time.time() - start, 1), "stdout": proc.stdout,
            "stderr_tail": proc.stderr.strip()[-800:] if proc.returncode else ""}


def eval_command(model: str, evals: dict[str, Path], adapter: Path | None, batch: int) -> list[str]:
    command = [sys.executable, "-m", "babeltune", "eval", "--task", "classify", "--model", model,
               "--labels", LABELS_OPTION, "--text-column", "text", "--label-column", "label", "--json",
               "--batch-size", str(batch)]
    for name, path in evals.items():
        command += ["--corpus", f"{name}={path}"]
    return command + (["--adapter", str(adapter)] if adapter else [])


def train_config(model: str, train: Path, out: Path, backend: str, adapter: dict, lr: float, steps: int,
                 batch: int, smoke: bool) -> dict:
    return {"schema_version": 1, "language": "mr",
            "model": {"name": model, "max_seq_length": 256},
            "data": {"train": str(train), "mode": "classify", "text_column": "text", "label_column": "label",
                     "label_verbalizers": LABELS, "packing": "off", "eval_fraction": 0.02},
            "adapter": adapter,
            "training": {"output_dir": str(out), "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
                         "learning_rate": lr, "max_steps": steps, "lr_scheduler_type": "linear", "warmup_ratio": 0.05,
                         "weight_decay": 0.0, "gradient_checkpointing": False, "logging_steps": 5, "save_steps": steps,
                         "seed": 7, **({"precision": "fp32"} if smoke else {})},
            "eval": {"evaluation_strategy": "no", "save_strategy": "steps"},
            "backend": {"name": backend}}


def scores_only(report: dict, which: str) -> dict:
    return {name: {k: c[which][k] for k in ("accuracy", "macro_f1", "mean_gold_label_logprob")} if c.get(which) else None
            for name, c in report["corpora"].items()}


def bench_model(result: dict, name: str, model: str, train: Path, evals: dict[str, Path], work: Path, args, save) -> dict:
    """Fills ``result`` (already inside the saved report) as each step finishes."""
    result["model"] = model
    base = run(eval_command(model, evals, None, args.eval_batch), timeout=900)
    if base["exit"] == 0:
        report = json.loads(base["stdout"])
        result["majority_class"] = {n: {k: c["majority_class"][k] for k in ("label", "accuracy", "macro_f1")}
                                    for n, c in report["corpora"].items()}
        result["base"] = scores_only(report, "base")
        result["base_seconds"] = base["seconds"]
    else:
        result["base_error"] = base
    save()
    for run_name, backend, adapter, lr in RUNS:
        out = work / name / run_name
        config = train_config(model, train, out, backend, adapter, lr, args.steps, args.batch, args.smoke)
        path = work / f"{name}-{run_name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        trained = run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(path), "--no-eval"], timeout=1200)
        entry = {"backend": backend, "learning_rate": lr, "steps": args.steps, "batch": args.batch,
                 "train_seconds": trained["seconds"], "train_exit": trained["exit"]}
        manifest = out / "manifest.json"
        if manifest.is_file():
            facts = json.loads(manifest.read_text())
            entry.update(trainable_parameters=facts.get("trainable_parameters"), backend_notes=facts.get("backend_notes"),
                         final_loss=facts.get("result", {}).get("final_loss"), tokens_seen=facts.get("result", {}).get("tokens_seen"))
        if trained["exit"] == 0:
            evaluated = run(eval_command(model, evals, out / "adapter", args.eval_batch), timeout=900)
            if evaluated["exit"] == 0:
                entry["after"] = scores_only(json.loads(evaluated["stdout"]), "adapter")
                entry["eval_seconds"] = evaluated["seconds"]
            else:
                entry["eval_error"] = evaluated
        else:
            entry["train_error"] = trained["stderr_tail"]
        result[run_name] = entry
        save()
    return result


def smoke_model(work: Path) -> str:
    """A tiny random Llama with biases (so BitFit applies) and a BPE tokenizer trained on the shipped samples."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_llama, build_tiny_tokenizer

    folder = work / "tiny-llama-bias"
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer), attention_bias=True)
    return str(folder)


def resolve_model(name: str, models_dir: Path | None) -> str:
    if models_dir is not None:
        for candidate in (name, f"{name}-bf16", f"{name}-fp32"):
            if (models_dir / candidate / "config.json").is_file():
                return str(models_dir / candidate)
    return name      # a built-in name: babeltune converts it from the installed package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=None, help="folder with converted model folders (NAME, NAME-fp32)")
    parser.add_argument("--corpora", type=Path, required=True, help="the shared corpora folder (holds mahasent/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--train-per-label", type=int, default=1000)
    parser.add_argument("--eval-per-label", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=32, help="examples per forward pass (x 3 labels)")
    parser.add_argument("--smoke", action="store_true", help="CPU check: a tiny random model, 20 examples per label, 3 steps")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bt-classify-"))
    if args.smoke:
        args.train_per_label, args.eval_per_label, args.steps, args.batch, args.eval_batch = 20, 10, 3, 4, 8
    train, evals = prepare_data(args.corpora, work, args.train_per_label, args.eval_per_label)
    report = {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu_bench.gpu_name(), "versions": gpu_bench.versions(),
              "smoke": args.smoke, "labels": LABELS,
              "train": f"MahaSent-GT train.csv, {args.train_per_label} per label (seed 0); "
                       f"{args.steps} steps x {args.batch} examples",
              "eval": {name: f"{args.eval_per_label} per label (balanced)" for name in evals},
              "prediction": "argmax of the summed log-probability of the label word after '{text}\\nLabel:'",
              "models": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    names = ["tiny-llama-bias"] if args.smoke else [m for m in args.models.split(",") if m]
    started = time.time()
    for name in names:
        model = smoke_model(work) if args.smoke else resolve_model(name, args.models_dir)
        print(f"classify_transfer: {name} ({model})", file=sys.stderr)
        bench_model(report["models"].setdefault(name, {}), name, model, train, evals, work, args, save)
        report["seconds"] = round(time.time() - started, 1)
        save()
    print(f"classify_transfer: written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
