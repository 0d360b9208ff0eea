"""Advice proven on outcomes (issue 18): does the advised config train a better model than the configs people copy?

For each (corpus, model) cell: a held-out test split that no config sees (a seeded 10% of the documents, at most
--max-test-docs), `advise --gpu-memory 80 --no-probe --out a.yaml` on the rest (the CLI's own functions: advise,
render_yaml, validate_config), then every config trained through babeltune's real `train` path (run_training,
backend hf-peft, the same training file) and scored by `babeltune eval`'s evaluate_corpora in bits/char on the test
split and on English (forgetting):

  advised           the advice as written;
  unsloth-defaults  Unsloth's notebook values: r 16, alpha 16, dropout 0, all 7 projections, lr 2e-4 linear, 5 warmup
                    steps, 2 x 4 batch, 60 steps, weight decay 0.01, max_seq_length 2048, one document per row;
  seed-table        a low-resource table some guides give: r 8, alpha 64, dropout 0.1, q/k/v/o, lr 2e-5, 1 x 4
                    batch, 3 epochs, wd 0.01, seq 2048, one document per row, eval every 100 steps, patience 3;
                    capped at --seed-table-max-steps (the cap and the uncapped step count are recorded);
  grid              (--grid-cells) lr x {1/3, 1, 3} and r x {1/2, 1, 2} around the advice (8 runs; x1/x1 = advised).

Every run happens in ONE python process (models loaded from --models-dir, no per-run process start); the JSON is
rewritten after every run (atomic), so a timeout keeps the finished runs. Before a run starts, the predicted
time (the mean of earlier runs of that config) must fit --time-budget-s, else it is recorded as skipped.

  GPU:   python3 bench/advice_quality.py --models-dir DIR --corpora DIR --out bench/results/advice_quality.json
             [--languages hi,mr,...] [--models smollm2-135m,gemma-3-270m] [--cells hi:smollm2-135m,...]
             [--configs advised,unsloth-defaults,seed-table] [--grid-cells hi:smollm2-135m] [--time-budget-s 500]
  smoke: python3 bench/advice_quality.py --smoke --out /tmp/aq_smoke.json   (tiny random Llama, CPU, < 3 min)

DIR (--models-dir) holds smollm2-135m/ and gemma-3-270m/ HF folders (a "-fp32" suffix is accepted: the converted
built-ins in ~/.cache/babeltune/models); without it the built-ins are resolved by name (their installed GGUF
packages, converted once). DIR (--corpora) holds ud/<lang>.txt (one sentence per line) and
mahasent/train.csv (column tweet, Marathi).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# shared/corpora inside the checkout (what travels to the GPU machine), else beside it (../shared, ../../shared)
DEFAULT_CORPORA = next((p / "shared" / "corpora" for p in (REPO, REPO.parent, REPO.parent.parent)
                        if (p / "shared" / "corpora").is_dir()), REPO / "shared" / "corpora")
LANGUAGES = ("hi", "mr", "ur", "ko", "ja", "fi", "tr", "ar", "mahasent")
MODELS = ("smollm2-135m", "gemma-3-270m")
CONFIGS = ("advised", "unsloth-defaults", "seed-table")
BASELINES = CONFIGS
TEST_SHARE, SPLIT_SEED = 0.10, 18
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Seconds a run takes on an H100 before any was measured (train ~0.15 s per micro-step at these shapes, from
# bench/results/small_shapes.json, plus loading, evaluations and scoring); then the mean of the measured runs.
PRIOR_S = {"advised": 30.0, "unsloth-defaults": 45.0, "seed-table": 75.0, "grid": 30.0}
TARGETS = {"advised_best_share": 0.80, "grid_gap": 0.02, "english_rise": 0.02}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


def corpus_documents(corpora: Path, name: str) -> tuple[str, list[str]]:
    """(language code, documents) of a cell's corpus: UD = one sentence per line; mahasent = Marathi tweets."""
    if name == "mahasent":
        import csv

        with open(corpora / "mahasent" / "train.csv", encoding="utf-8", newline="") as handle:
            return "mr", [row["tweet"].strip() for row in csv.DictReader(handle) if row["tweet"].strip()]
    path = corpora / "ud" / f"{name}.txt"
    return name, [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_test(documents: list[str], max_test: int) -> tuple[list[str], list[str]]:
    """A seeded 10% of the documents (at most max_test) as the test split; the rest, in file order, to train."""
    count = min(max_test, max(1, round(len(documents) * TEST_SHARE)))
    test_ids = set(random.Random(SPLIT_SEED).sample(range(len(documents)), count))
    train = [d for i, d in enumerate(documents) if i not in test_ids]
    test_set = {documents[i] for i in test_ids}
    train = [d for d in train if d not in test_set]          # an exact repeat would leak the test text
    return train, [documents[i] for i in sorted(test_ids)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def model_folder(models_dir: Path | None, name: str) -> Path:
    """models_dir/name (or name-fp32); without --models-dir the built-in's installed package, converted once."""
    if models_dir is None:
        from babeltune.models.resolve import resolve_model_dir

        return Path(resolve_model_dir(name))
    for candidate in (models_dir / name, models_dir / f"{name}-fp32"):
        if (candidate / "config.json").is_file():
            return candidate
    raise SystemExit(f"error: --models-dir {models_dir}: no {name}/ (or {name}-fp32/) folder with config.json; "
                     "pass the folder holding the converted models")


# ------------------------------------------------------------------------------------------------ configs


def advise_config(lang: str, train_path: Path, model_dir: Path, out_yaml: Path, command: str) -> tuple[dict, dict]:
    """What `advise --lang L --corpus F --model M --gpu-memory 80 --no-probe --out a.yaml` writes, via its functions."""
    from babeltune.advisor.advise import advise
    from babeltune.advisor.cli import backend_kernels
    from babeltune.corpus.reader import CorpusSpec
    from babeltune.advisor.render import render_yaml
    from babeltune.config import parse_yaml, validate_config
    from babeltune.atomic import atomic_write_text

    advice = advise(lang, CorpusSpec(path=str(train_path)), model=str(model_dir), gpu_memory=80, probe=False,
                    kernels=backend_kernels("hf-peft", log), command=command)
    text = render_yaml(advice, command)
    validate_config(parse_yaml(text, str(out_yaml)), source=str(out_yaml))
    atomic_write_text(out_yaml, text)
    reasons = {name: {"value": d.value, "reason": d.reason} for name, d in advice.decisions.items()}
    return parse_yaml(text, str(out_yaml)), {"decisions": reasons, "notes": list(advice.notes)}


def context_length(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or 2048)


def copied_seq_len(advised: dict) -> int:
    """2048, as the copied configs give, capped at the model's context (the tiny smoke model has 512)."""
    return min(2048, context_length(advised["model"]["name"]))


def no_eval(config: dict, steps: int) -> None:
    config["eval"].update(evaluation_strategy="no", eval_steps=None, save_strategy="steps", early_stopping_patience=None)
    config["training"]["save_steps"] = steps


def unsloth_defaults(advised: dict) -> dict:
    config = json.loads(json.dumps(advised))
    config["adapter"].update(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=ALL_PROJECTIONS, use_rslora=False,
                             modules_to_save=[], embedding_learning_rate=None, bias="none")
    config["training"].update(per_device_train_batch_size=2, gradient_accumulation_steps=4, learning_rate=2e-4,
                              lr_scheduler_type="linear", warmup_steps=5, warmup_ratio=0.0, max_steps=60,
                              num_train_epochs=None, weight_decay=0.01, gradient_checkpointing=False, logging_steps=10)
    config["model"]["max_seq_length"] = copied_seq_len(advised)
    config["data"].update(packing="off", dedup="off")
    no_eval(config, 60)
    return config


def seed_table(advised: dict, train_documents: int, cap: int) -> tuple[dict, dict]:
    config = json.loads(json.dumps(advised))
    config["adapter"].update(r=8, lora_alpha=64, lora_dropout=0.1, target_modules=ALL_PROJECTIONS[:4], use_rslora=False,
                             modules_to_save=[], embedding_learning_rate=None, bias="none")
    rows = max(1, round(train_documents * (1 - config["data"].get("eval_fraction", 0.05))))
    full = 3 * math.ceil(rows / 4)                      # 3 epochs x ceil(rows / 4), one document per row
    config["training"].update(per_device_train_batch_size=1, gradient_accumulation_steps=4, learning_rate=2e-5,
                              lr_scheduler_type="linear", warmup_steps=0, warmup_ratio=0.0, weight_decay=0.01,
                              gradient_checkpointing=False, logging_steps=10, save_steps=100,
                              max_steps=min(full, cap), num_train_epochs=None)
    config["model"]["max_seq_length"] = copied_seq_len(advised)
    config["data"].update(packing="off", dedup="off")
    config["eval"].update(evaluation_strategy="steps", eval_steps=100, save_strategy="steps", early_stopping_patience=3)
    return config, {"uncapped_steps": full, "capped": full > cap}


def grid_variants(advised: dict, lr_factors=(1 / 3, 1, 3), r_factors=(0.5, 1, 2)) -> dict[str, dict]:
    out = {}
    r, lr = advised["adapter"]["r"], advised["training"]["learning_rate"]
    for lr_factor in lr_factors:
        for r_factor in r_factors:
            if lr_factor == 1 and r_factor == 1:
                continue                                # the advised run itself
            config = json.loads(json.dumps(advised))
            config["adapter"]["r"] = max(1, round(r * r_factor))
            config["training"]["learning_rate"] = float(f"{lr * lr_factor:.3g}")
            out[f"grid lr x{lr_factor:.2g} r x{r_factor:g}"] = config
    return out


def cap_steps(config: dict, cap: int | None) -> bool:
    """--max-steps-cap (smoke): at most cap optimizer steps; evaluations and saves fit inside them."""
    training = config["training"]
    if not cap or (training.get("max_steps") or cap + 1) <= cap:
        return False
    training.update(max_steps=cap, num_train_epochs=None, save_steps=min(training["save_steps"], cap))
    if config["eval"].get("eval_steps"):
        config["eval"]["eval_steps"] = min(config["eval"]["eval_steps"], cap)
    return True


# ------------------------------------------------------------------------------------------------ runs


def train_and_score(config: dict, output_dir: Path, model_dir: Path, scored: dict[str, Path]) -> dict:
    """Train through run_training (hf-peft), then score the test split and English with evaluate_corpora."""
    from babeltune.config import validate_config
    from babeltune.trainer.evaluate import evaluate_corpora
    from babeltune.trainer.run import run_training

    config["training"]["output_dir"] = str(output_dir)
    config["model"]["name"] = str(model_dir)
    parsed = validate_config(config)
    lines: list[str] = []
    sync()
    started = time.time()
    result = run_training(parsed, evaluate=False, overwrite=True, echo=lines.append)
    sync()
    train_s = time.time() - started
    manifest = json.loads(Path(result.manifest).read_text(encoding="utf-8"))
    report = evaluate_corpora(str(model_dir), {k: str(v) for k, v in scored.items()}, adapter=str(result.adapter_dir),
                              batch_size=16, echo=None)
    eval_s = time.time() - started - train_s
    (output_dir / "train.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summarise(parsed, result, manifest, report, train_s, eval_s)


def summarise(parsed, result, manifest: dict, report, train_s: float, eval_s: float) -> dict:
    data, tr = manifest.get("data") or {}, parsed.training
    batch = tr.per_device_train_batch_size * tr.gradient_accumulation_steps
    rows = data.get("train_rows") or 0
    per_row = (data.get("train_tokens") or 0) / max(1, rows)
    scores = {code: {"before": res.before.bits_per_char, "after": res.after.bits_per_char if res.after else None}
              for code, res in report.languages.items()}
    return {
        "scores": scores, "gpu_s": round(train_s, 1), "eval_s": round(eval_s, 1),
        "trainer_s": (manifest.get("result") or {}).get("seconds"),
        "steps": result.steps, "max_steps": tr.max_steps, "stopped_early": result.stopped_early,
        "tokens": round(result.steps * batch * per_row), "tokens_per_step": round(batch * per_row),
        "train_rows": rows, "final_loss": result.final_loss,
        "shape": {"r": parsed.adapter.r, "lora_alpha": parsed.adapter.lora_alpha, "use_rslora": parsed.adapter.use_rslora,
                  "lr": tr.learning_rate, "batch": f"{tr.per_device_train_batch_size} x {tr.gradient_accumulation_steps}",
                  "max_seq_length": parsed.model.max_seq_length, "packing": parsed.data.packing},
    }


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ summary


def change(scores: dict, code: str) -> float | None:
    s = scores.get(code) or {}
    return (s["after"] - s["before"]) / s["before"] if s.get("after") and s.get("before") else None


def cell_summary(cell: dict, language: str) -> dict | None:
    runs = {name: r for name, r in cell["runs"].items() if "scores" in r}
    baselines = {n: runs[n]["scores"][language]["after"] for n in BASELINES if n in runs}
    if "advised" not in baselines or len(baselines) < 2:
        return None
    winner = min(baselines, key=baselines.get)
    others = [v for n, v in baselines.items() if n != "advised"]
    out = {"winner": winner, "advised_bpc": baselines["advised"], "margin": (min(others) - baselines["advised"]) / min(others),
           "english_change": change(runs["advised"]["scores"], "en"),
           "advised_gpu_s": runs["advised"]["gpu_s"], "slowest_gpu_s": max(runs[n]["gpu_s"] for n in baselines)}
    grid = {n: r["scores"][language]["after"] for n, r in runs.items() if n.startswith("grid") or n == "advised"}
    if len(grid) > 1:
        best = min(grid, key=grid.get)
        out.update(grid_best=best, grid_gap=(baselines["advised"] - grid[best]) / grid[best])
    return out


def summary(results: dict) -> dict:
    cells = {key: s for key, cell in results["cells"].items() if (s := cell_summary(cell, cell["language"]))}
    won = [k for k, s in cells.items() if s["winner"] == "advised"]
    gaps = [s["grid_gap"] for s in cells.values() if "grid_gap" in s]
    rises = [s["english_change"] for s in cells.values() if s["english_change"] is not None]
    return {"cells": cells, "advised_best": f"{len(won)}/{len(cells)}",
            "advised_best_share": len(won) / len(cells) if cells else None,
            "max_grid_gap": max(gaps) if gaps else None, "max_english_rise": max(rises) if rises else None,
            "targets": {"advised best in >= 80% of cells": bool(cells) and len(won) / len(cells) >= TARGETS["advised_best_share"],
                        "within 2% of grid-best": (max(gaps) <= TARGETS["grid_gap"]) if gaps else None,
                        "English rise <= 2%": (max(rises) <= TARGETS["english_rise"]) if rises else None}}


def print_table(results: dict) -> None:
    s = results["summary"]
    print(f"{'cell':26} {'advised':>8} {'unsloth':>8} {'seed':>8} {'winner':17} {'margin':>7} {'EN adv':>7} {'s adv/slowest':>14}")
    for key, cell in results["cells"].items():
        runs, lang = cell["runs"], cell["language"]
        bpc = [f"{runs[n]['scores'][lang]['after']:.3f}" if "scores" in runs.get(n, {}) else "-" for n in BASELINES]
        c = s["cells"].get(key)
        tail = (f"{c['winner']:17} {c['margin']:+7.1%} {c['english_change']:+7.1%} "
                f"{c['advised_gpu_s']:6.0f}/{c['slowest_gpu_s']:<6.0f}" if c else "(incomplete)")
        if c and "grid_gap" in c:
            tail += f" grid-best {c['grid_best']} gap {c['grid_gap']:+.1%}"
        print(f"{key:26} {bpc[0]:>8} {bpc[1]:>8} {bpc[2]:>8} {tail}")
    print(f"advised best: {s['advised_best']} cells (target >= 80%); max gap to grid-best: {s['max_grid_gap']}; "
          f"max English rise (advised): {s['max_english_rise']}; targets met: {s['targets']}")


def save(results: dict, out: Path) -> None:
    from babeltune.atomic import atomic_write_text

    results["summary"] = summary(results)
    atomic_write_text(out, json.dumps(results, indent=1, ensure_ascii=False, default=str))


# ------------------------------------------------------------------------------------------------ main


def environment(args) -> dict:
    import subprocess

    import peft
    import torch
    import transformers

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                         "python": sys.version.split()[0],
                         "babeltune_commit": commit or os.environ.get("BABELTUNE_COMMIT") or None},
            # >1 when bench/parallel.sh ran cells side by side on one GPU: wall times include the others' share
            "concurrent_processes": int(os.environ.get("BENCH_CONCURRENT_PROCESSES", "1")),
            "test_split": f"seeded {TEST_SHARE:.0%} of the documents (seed {SPLIT_SEED}), at most {args.max_test_docs}",
            "english": f"{args.english} (first {args.english_docs} documents)", "cells": {}}


def cell_list(args) -> list[tuple[str, str, str]]:
    """(corpus, model, configs) in run order; --cells corpus:model[:config+config] picks configs per cell."""
    if args.cells:
        cells = [c.split(":") for c in args.cells.split(",")]
        return [(c[0], c[1], c[2].replace("+", ",") if len(c) > 2 else args.configs) for c in cells]
    return [(lang, model, args.configs) for model in args.models.split(",") for lang in args.languages.split(",")]


def plan_runs(cell: tuple[str, str, str], args, advised: dict, train_docs: int) -> dict[str, tuple[dict, dict]]:
    """name -> (config, extra facts) for the configs asked for this cell, advised first."""
    runs: dict[str, tuple[dict, dict]] = {}
    for name in filter(None, cell[2].split(",")):     # "corpus:model:" = no baseline configs (grid only)
        if name == "advised":
            runs[name] = (json.loads(json.dumps(advised)), {})
        elif name == "unsloth-defaults":
            runs[name] = (unsloth_defaults(advised), {})
        elif name == "seed-table":
            runs[name] = seed_table(advised, train_docs, args.seed_table_max_steps)
        else:
            raise SystemExit(f"error: --configs: unknown config {name!r}; use advised, unsloth-defaults, seed-table")
    if f"{cell[0]}:{cell[1]}" in (args.grid_cells or "").split(","):
        factors = [factor(f) for f in args.grid_lr.split(",")], [float(f) for f in args.grid_r.split(",")]
        runs.update({n: (c, {}) for n, c in grid_variants(advised, *factors).items()})
    for config, extra in runs.values():
        if cap_steps(config, args.max_steps_cap):
            extra.update(capped=True, cap=args.max_steps_cap)
    return runs


def factor(text: str) -> float:
    """'1/3' or '0.5' -> a float (the grid's factors)."""
    top, _, bottom = text.partition("/")
    return float(top) / float(bottom) if bottom else float(top)


def fits_budget(name: str, durations: dict, started: float, budget: float | None) -> bool:
    if not budget:
        return True
    past = durations.get(name.split(" ")[0], [])
    predicted = sum(past) / len(past) if past else PRIOR_S.get(name.split(" ")[0], 30.0)
    return time.time() - started + predicted <= budget


def run_cell(cell: tuple[str, str, str], args, results: dict, durations: dict, started: float) -> None:
    from babeltune.trainer.interrupt import TrainingInterrupted

    corpus, model, _ = cell
    key = f"{corpus}:{model}"
    work = args.work / corpus / model
    lang, documents = corpus_documents(args.corpora, corpus)
    train, test = split_test(documents, args.max_test_docs)
    train_path, test_path = write_lines(work / "train.txt", train), write_lines(work / "test.txt", test)
    model_dir = model_folder(args.models_dir, model)
    command = (f"advise --lang {lang} --corpus {train_path} --model {model_dir} --gpu-memory 80 --no-probe "
               f"--out {work / 'a.yaml'}")
    t0 = time.time()
    advised, advice = advise_config(lang, train_path, model_dir, work / "a.yaml", command)
    record = results["cells"][key] = {"corpus": corpus, "language": lang, "model": model, "train_documents": len(train),
                                      "test_documents": len(test), "advise_command": command,
                                      "advise_s": round(time.time() - t0, 1), "advice": advice, "runs": {}}
    for name, (config, extra) in plan_runs(cell, args, advised, len(train)).items():
        if not fits_budget(name, durations, started, args.time_budget_s):
            record["runs"][name] = {"skipped": f"time budget {args.time_budget_s:g} s"}
            log(f"{key} {name}: skipped (time budget)")
            continue
        t1 = time.time()
        try:
            run = train_and_score(config, work / name.replace(" ", "_"), model_dir, {lang: test_path, "en": args.english_test})
        except Exception as error:     # one failed run must not lose the others: record it and go on
            run = {"error": f"{type(error).__name__}: {error}"[:500]}
            if isinstance(error, TrainingInterrupted):   # SIGTERM/SIGINT: the bench stops too
                record["runs"][name] = run
                save(results, args.out)
                raise SystemExit(f"{key} {name}: interrupted; finished runs are in {args.out}")
        durations.setdefault(name.split(" ")[0], []).append(time.time() - t1)
        record["runs"][name] = {**run, **extra}
        free_memory()
        save(results, args.out)
        scores = run.get("scores", {})
        log(f"{key} {name}: " + (f"{scores[lang]['before']:.3f} -> {scores[lang]['after']:.3f} bits/char, en "
                                 f"{scores['en']['before']:.3f} -> {scores['en']['after']:.3f}, {run['steps']} steps, "
                                 f"{run['gpu_s']:.0f}+{run['eval_s']:.0f} s" if scores else run.get("error", "?")))


def smoke_setup(args) -> None:
    """A tiny random Llama (tests/conftest.py builders) and small slices of the shipped samples, on CPU."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_llama, build_tiny_tokenizer

    root = args.work / "smoke"
    models = root / "models" / "tiny"
    if not (models / "config.json").is_file():
        tokenizer = build_tiny_tokenizer(models)
        build_tiny_llama(models, vocab_size=len(tokenizer))
    corpora = root / "corpora" / "ud"
    for lang in ("hi", "mr"):
        lines = (REPO / "tests" / "data" / "text" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        write_lines(corpora / f"{lang}.txt", [l for l in lines if l.strip()][:120])
    args.models_dir, args.corpora, args.models = root / "models", root / "corpora", "tiny"
    args.cells = args.cells or "hi:tiny,mr:tiny"
    args.grid_cells = args.grid_cells or "hi:tiny"
    args.grid_lr, args.grid_r = "3", "1"           # one grid point: the grid path runs, the smoke stays short
    args.english_docs = min(args.english_docs, 40)
    args.english = REPO / "tests" / "data" / "text" / "en.txt"
    args.max_steps_cap = args.max_steps_cap or 4
    args.max_test_docs = min(args.max_test_docs, 20)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, help="folder holding smollm2-135m/ and gemma-3-270m/ HF folders (default: "
                   "the installed built-ins, converted once into ~/.cache/babeltune/models)")
    p.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA, help="folder holding ud/*.txt and mahasent/train.csv")
    p.add_argument("--english", type=Path, default=None, help="English text for forgetting (default CORPORA/ud/en.txt)")
    p.add_argument("--out", type=Path, required=True, help="results JSON, rewritten after every run")
    p.add_argument("--work", type=Path, default=Path("/tmp/advice_quality"), help="splits, configs and run folders")
    p.add_argument("--languages", default=",".join(LANGUAGES), help="corpora: UD language codes and/or mahasent")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cells", default=None, help="corpus:model[:config+config],... (overrides --languages/--models/"
                   "--configs for those cells), run in this order")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--grid-cells", default=None, help="corpus:model,... that also get the lr x r grid (8 runs each)")
    p.add_argument("--grid-lr", default="1/3,1,3", help="learning-rate factors of the grid")
    p.add_argument("--grid-r", default="0.5,1,2", help="rank factors of the grid")
    p.add_argument("--english-docs", type=int, default=300, help="English documents scored for forgetting")
    p.add_argument("--time-budget-s", type=float, default=None, help="skip a run whose predicted end is past this")
    p.add_argument("--seed-table-max-steps", type=int, default=100, help="cap on the seed-table run (recorded)")
    p.add_argument("--max-steps-cap", type=int, default=None, help="cap every run at N optimizer steps (smoke)")
    p.add_argument("--max-test-docs", type=int, default=300)
    p.add_argument("--smoke", action="store_true", help="tiny random model on CPU, two cells, 4 steps per run")
    args = p.parse_args(argv)
    if args.smoke:
        smoke_setup(args)
    args.english = args.english or args.corpora / "ud" / "en.txt"
    return args


def main(argv=None) -> int:
    started = time.time()
    args = parse_args(argv)
    english = [l.strip() for l in args.english.read_text(encoding="utf-8").splitlines() if l.strip()][:args.english_docs]
    args.english_test = write_lines(args.work / "english_test.txt", english)
    results = environment(args)
    durations: dict[str, list[float]] = {}
    for cell in cell_list(args):
        log(f"cell {cell[0]}:{cell[1]} ({cell[2]})")
        run_cell(cell, args, results, durations, started)
    results["wall_s"] = round(time.time() - started, 1)
    save(results, args.out)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
