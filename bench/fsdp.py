"""FSDP (`train --gpus N --fsdp`) on a machine with >= 2 GPUs, through the real command line (issue 16).

  1. gemma:   the gemma-3-270m built-in (real weights, converted from its GGUF by babeltune) on MahaSent, the same
              global batch under DDP (`train --gpus N`) and FSDP (`train --gpus N --fsdp`): both loss curves and their
              largest difference, the checkpoint set (one folder per save, one shard file per rank), the final adapter
              loaded with PeftModel.from_pretrained on one GPU in a fresh process, held-out bits per character.
  2. sharded: a random-init Llama (SHARDED_SHAPE, ~3B parameters) under a per-GPU memory cap of G GiB (every worker
              calls torch.cuda.set_per_process_memory_fraction through a generated sitecustomize.py), G chosen with
              the memory model so that one GPU cannot hold the run and N shards can. `advise --gpu-memory G --gpus N`
              must decide fsdp; FSDP under the cap must finish; DDP under the cap is run and recorded as it ends
              (out of memory expected); DDP without the cap gives the loss curve to compare with.
  3. resume:  the capped FSDP run again, its `train` process group killed with SIGKILL once checkpoint-RESUME_FROM
              is complete; the workers must be gone within 5 s; `--resume` must end within 1e-3 of the uninterrupted run.
  4. memory:  every rank's peak (PyTorch's peak reserved during training, from the run manifest, + the CUDA context
              measured in a fresh process, as bench/memory_calibration.py) against estimate_memory(..., shards=N):
              criterion -5% .. +15%.

    python bench/fsdp.py --gpus 2 --out bench/results/fsdp.json
    python bench/fsdp.py --plan          # no GPU: the runs, the cap, the advisor's decision and the estimates

Exit 2 with one line when fewer than 2 CUDA GPUs are visible (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MAHASENT = REPO / "examples" / "data" / "marathi" / "train.txt"   # 3,000 MahaSent tweets (see its ATTRIBUTION.md)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GEMMA = dict(model="gemma-3-270m", seq=512, batch=8, accumulation=2, steps=30, save=10)
SHARDED = dict(seq=1024, batch=4, accumulation=2, steps=12, save=4)
SHARDED_SHAPE = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_theta=500000.0)
RESUME_FROM = 4
TOLERANCE_ABOVE, TOLERANCE_BELOW = 0.15, 0.05
SITE = '''"""bench/fsdp.py: in torchrun workers only, cap this process's GPU memory at BT_FSDP_CAP_GIB (with the context)."""
import os
if os.environ.get("BT_FSDP_CAP_GIB") and "LOCAL_RANK" in os.environ:
    import torch
    _device = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(_device)
    _free, _total = torch.cuda.mem_get_info(_device)
    _cap = float(os.environ["BT_FSDP_CAP_GIB"]) * 2**30 - (_total - _free)
    torch.cuda.set_per_process_memory_fraction(max(0.01, min(1.0, _cap / _total)), _device)
'''


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "accelerate", "babeltune"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------
# Runs through the command line


def train_config(model: str, out: Path, spec: dict, eval_on: bool = False) -> dict:
    return {"schema_version": 1, "language": "mr",
            "model": {"name": model, "max_seq_length": spec["seq"]},
            "data": {"train": str(MAHASENT), "eval_fraction": 0.05, "packing": "blocks"},
            "adapter": {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": LORA_TARGETS},
            "training": {"output_dir": str(out), "per_device_train_batch_size": spec["batch"],
                         "gradient_accumulation_steps": spec["accumulation"], "learning_rate": 5e-4,
                         "max_steps": spec["steps"], "optimizer": "adamw_torch", "lr_scheduler_type": "linear",
                         "warmup_steps": 2, "gradient_checkpointing": True, "logging_steps": 1,
                         "save_steps": spec["save"], "save_total_limit": 10, "precision": "bf16", "seed": 7},
            "eval": {"evaluation_strategy": "no", "save_strategy": "steps", "max_eval_documents": 100},
            "backend": {"name": "hf-peft", "options": {"liger": False}}}   # the same kernels under DDP and FSDP


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "babeltune.trainer.cli", "--config", str(config), *extra]


def run_env(cap_gib: float | None = None, site: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cap_gib is not None and site is not None:
        env["BT_FSDP_CAP_GIB"] = str(cap_gib)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(REPO), env.get("PYTHONPATH")]))
    return env


def train(config: Path, *extra: str, env: dict | None = None, timeout: int = 1500) -> dict:
    start = time.time()
    command = train_command(config, *extra)
    shown = "train --config " + " ".join([config.name, *extra])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env or run_env(), cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        return {"command": shown, "exit": "timeout", "seconds": round(time.time() - start, 1),
                "stderr_tail": str(exc.stderr or "")[-800:]}
    sys.stderr.write(proc.stderr[-2000:])
    return {"command": shown, "exit": proc.returncode, "seconds": round(time.time() - start, 1),
            "stdout": proc.stdout.strip()[-300:], "stderr_tail": proc.stderr.strip()[-800:] if proc.returncode else "",
            "out_of_memory": "out of memory" in proc.stderr.lower()}


def run_facts(run_dir: Path) -> dict:
    """Loss curve, checkpoints and manifest facts of a finished (or interrupted) run."""
    out: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        out["losses"] = [round(r["loss"], 5) for r in records if "loss" in r]
    out["checkpoints"] = {p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())
                          for p in sorted(run_dir.glob("checkpoint-*"))}
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        facts = json.loads(manifest.read_text())
        out.update({"world_size": facts.get("device", {}).get("world_size"), "reload_check": facts.get("reload_check"),
                    "fsdp_plan": facts.get("fsdp"), "peak_reserved_gib_per_rank": facts.get("gpu_peak_reserved_gib_per_rank"),
                    "resumed_from": facts.get("resumed_from"), "model_dir": facts.get("model_dir")})
    evaluation = run_dir / "eval.json"
    if evaluation.is_file():
        out["eval"] = json.loads(evaluation.read_text())
    return out


def max_difference(a: list, b: list) -> float | None:
    pairs = list(zip(a or [], b or []))
    return round(max(abs(x - y) for x, y in pairs), 5) if pairs else None


def child(*args: str, timeout: int = 900) -> dict:
    """A measurement in a fresh process (this script's subcommands); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-1200:]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Subcommands run in fresh processes


def make_model(out_dir: str) -> dict:
    """Random-init Llama of SHARDED_SHAPE with SmolLM2's tokenizer (the smollm2-135m built-in), bf16."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from babeltune.models.resolve import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id or 1,
                         eos_token_id=tokenizer.eos_token_id, **SHARDED_SHAPE)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    if model.device.type == "meta":   # --plan: the config alone is enough for the memory model
        config.save_pretrained(out_dir)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"dir": out_dir, "parameters": sum(p.numel() for p in model.parameters())}


def cuda_context() -> dict:
    import torch

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    return {"context_gib": round((total - free) / 2**30, 3), "gpu_memory_gib": round(total / 2**30, 1)}


def reload_adapter(model_dir: str, adapter_dir: str) -> dict:
    """PeftModel.from_pretrained on one GPU, as a user loads the adapter; the loaded tensors equal the saved ones."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda:0" if torch.cuda.is_available() else "cpu"   # the CPU only to check this helper without a GPU
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    saved = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    loaded = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    worst = max(float((loaded[k].float().cpu() - v.float()).abs().max()) for k, v in saved.items() if k in loaded)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    ids = tokenizer("मराठी भाषा", return_tensors="pt").to(device)
    with torch.no_grad():
        adapted = model(**ids).logits.float()
        with model.disable_adapter():
            plain = model(**ids).logits.float()
    return {"device": str(next(model.parameters()).device), "saved_tensors": len(saved),
            "matched_tensors": sum(k in loaded for k in saved), "max_abs_difference": worst,
            "adapter_effect": float((adapted - plain).abs().max() / plain.abs().max())}


# ---------------------------------------------------------------------------------------------
# The memory model and the cap


def estimate(facts, spec: dict, shards: int):
    from babeltune.advisor.memory import estimate_memory

    return estimate_memory(facts, batch_size=spec["batch"], seq_len=spec["seq"], lora_r=16, target_modules=LORA_TARGETS,
                           load_in_4bit=False, gradient_checkpointing=True, optimizer="adamw_torch", precision="bf16",
                           kernels="plain", shards=shards)


def advise_for(model_dir: str, gpus: int, gpu_gib: float):
    from babeltune.advisor.advise import advise
    from babeltune.corpus.reader import CorpusSpec

    return advise("mr", CorpusSpec(path=str(MAHASENT)), model=model_dir, gpu_memory=gpu_gib, gpus=gpus)


def choose_cap(model_dir: str, gpus: int) -> tuple[float, object]:
    """The smallest whole GiB per GPU for which `advise --gpu-memory G --gpus N` decides fsdp (a full copy does not
    fit one GPU's budget, N shards do), and that advice."""
    from babeltune.errors import BabeltuneError

    for cap in range(2, 200):
        try:
            advice = advise_for(model_dir, gpus, cap)
        except BabeltuneError:   # too small for any configuration
            continue
        if advice.decisions["distributed"].value == "fsdp":
            return cap, advice
        if not advice.decisions["load_in_4bit"].value:   # bf16 fits one GPU from here on: no cap forces sharding
            break
    raise SystemExit(f"error: bench/fsdp.py: no --gpu-memory makes advise choose fsdp for {model_dir} on {gpus} GPUs")


def advised_config(advice, gpus: int, path: Path) -> Path:
    """The config exactly as `advise --out` writes it (every key with its reason)."""
    from babeltune.advisor.render import render_yaml

    command = (f"advise --lang mr --corpus {MAHASENT} --model {advice.model} --gpu-memory {advice.gpu_memory_gib:g}GB "
               f"--gpus {gpus} --out {path}")
    path.write_text(render_yaml(advice, command))
    return path


def advice_facts(advice) -> dict:
    decisions = advice.decisions
    return {"gpu_memory_gib": advice.gpu_memory_gib, "distributed": decisions["distributed"].value,
            "reason": decisions["distributed"].reason, "load_in_4bit": decisions["load_in_4bit"].value,
            "per_device_train_batch_size": decisions["per_device_train_batch_size"].value,
            "max_seq_length": decisions["max_seq_length"].value, "estimate": advice.memory.to_dict()}


def run_overrides(out: Path) -> list[str]:
    """A short run of the advised config: fixed steps, a checkpoint every SHARDED['save'], the same kernels."""
    sets = [f"training.output_dir={out}", f"training.save_steps={SHARDED['save']}", "training.save_total_limit=10",
            "training.logging_steps=1", "eval.evaluation_strategy=no", "eval.save_strategy=steps",
            "eval.early_stopping_patience=null", "backend.options={liger: false}"]
    return ["--max-steps", str(SHARDED["steps"]), "--no-eval"] + [x for item in sets for x in ("--set", item)]


def memory_check(predicted_gib: float, peaks: list | None, context_gib: float | None) -> dict:
    rows = []
    for rank, peak in enumerate(peaks or []):
        measured = peak + (context_gib or 0)
        error = predicted_gib / measured - 1
        rows.append({"rank": rank, "peak_reserved_gib": peak, "measured_gib": round(measured, 3),
                     "predicted_gib": round(predicted_gib, 3), "error": round(error, 4),
                     "ok": -TOLERANCE_BELOW <= error <= TOLERANCE_ABOVE})
    return {"context_gib": context_gib, "ranks": rows}


# ---------------------------------------------------------------------------------------------
# The suite


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            out.append(pid)
    return out


def kill_and_resume(config: Path, run_dir: Path, gpus: int, env: dict, uninterrupted: list) -> dict:
    """SIGKILL to the `train --gpus N` process group (FSDP, as advised) after checkpoint-RESUME_FROM, then `--resume`."""
    extra = ["--gpus", str(gpus), *run_overrides(run_dir)]
    process = subprocess.Popen(train_command(config, *extra), env=env, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run_dir / f"checkpoint-{RESUME_FROM}" / "babeltune_complete.json"
    deadline = time.time() + 1500
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if process.poll() is not None or not marker.exists():
        process.kill()
        return {"error": f"the run ended (exit {process.poll()}) or timed out before checkpoint-{RESUME_FROM}"}
    family = descendants(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 5
    while alive(family) and time.time() < deadline:
        time.sleep(0.1)
    survivors = alive(family)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    interrupted = {"killed_processes": len(family) + 1, "survivors_after_5s": len(survivors),
                   "checkpoints_left": sorted(p.name for p in run_dir.glob("checkpoint-*")),
                   "manifest_after_kill": (run_dir / "manifest.json").is_file()}
    resumed = train(config, *extra, "--resume", env=env)
    facts = run_facts(run_dir)
    losses = facts.get("losses", [])
    return {**interrupted, **resumed, "resumed_from": facts.get("resumed_from"), "losses": losses,
            "final_loss_difference": round(abs(losses[-1] - uninterrupted[-1]), 5) if losses and uninterrupted else None,
            "max_loss_difference_after_resume": max_difference(losses[RESUME_FROM:], uninterrupted[RESUME_FROM:])}


def gemma_part(work: Path, gpus: int, context: float | None) -> dict:
    from babeltune.models.facts import model_facts

    part: dict = {"model": GEMMA["model"], "corpus": "examples/data/marathi/train.txt (MahaSent), 5% held out",
                  "global_batch": f"{GEMMA['batch'] * GEMMA['accumulation']} x {GEMMA['seq']} tokens per optimizer step"}
    for mode, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        config = write_config(train_config(GEMMA["model"], work / f"gemma-{mode}", GEMMA), work / f"gemma-{mode}.yaml")
        part[mode] = {**train(config, "--gpus", str(gpus), *extra), **run_facts(work / f"gemma-{mode}")}
    part["max_loss_difference_ddp_vs_fsdp"] = max_difference(part["ddp"].get("losses"), part["fsdp"].get("losses"))
    model_dir = part["fsdp"].get("model_dir")
    if model_dir:
        part["reload_one_gpu"] = child("reload", model_dir, str(work / "gemma-fsdp" / "adapter"))
    facts = model_facts(GEMMA["model"])
    part["memory"] = {mode: memory_check(estimate(facts, GEMMA, gpus if mode == "fsdp" else 1).total_gib,
                                         part[mode].get("peak_reserved_gib_per_rank"), context) for mode in ("ddp", "fsdp")}
    return part


def sharded_part(work: Path, gpus: int, context: float | None, site: Path) -> dict:
    """The user's path: `advise --gpu-memory G --gpus N` writes the config, `train --config ... --gpus N` runs it."""
    model = work / "sharded-model"
    part: dict = {"shape": SHARDED_SHAPE, "model": child("make-model", str(model))}
    cap, advice = choose_cap(str(model), gpus)
    part["advise"] = advice_facts(advice)
    config = advised_config(advice, gpus, work / "advised.yaml")
    capped = run_env(cap, site)
    runs = {"fsdp_capped": (capped, []), "ddp_capped": (capped, ["--set", "training.distributed=ddp"]),
            "ddp_uncapped": (run_env(), ["--set", "training.distributed=ddp"])}
    for name, (env, extra) in runs.items():
        part[name] = {**train(config, "--gpus", str(gpus), *run_overrides(work / name), *extra, env=env),
                      **run_facts(work / name)}
    part["max_loss_difference_fsdp_capped_vs_ddp_uncapped"] = max_difference(part["fsdp_capped"].get("losses"),
                                                                             part["ddp_uncapped"].get("losses"))
    part["memory"] = memory_check(advice.memory.total_gib, part["fsdp_capped"].get("peak_reserved_gib_per_rank"), context)
    part["reload_one_gpu"] = child("reload", str(model), str(work / "fsdp_capped" / "adapter"))
    part["resume"] = kill_and_resume(config, work / "resume", gpus, capped, part["fsdp_capped"].get("losses", []))
    return part


def run_suite(gpus: int, out: Path) -> dict:
    import torch

    work = Path(tempfile.mkdtemp(prefix="bt-fsdp-"))
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    report = {"command": " ".join([sys.executable, *sys.argv]), "gpus": gpus, "gpu": torch.cuda.get_device_name(0),
              "versions": versions(), "context": child("context")}
    save = lambda: out.write_text(json.dumps(report, indent=2) + "\n")   # noqa: E731
    context = report["context"].get("context_gib")
    report["gemma"] = gemma_part(work, gpus, context)
    save()
    report["sharded"] = sharded_part(work, gpus, context, site)
    save()
    return report


def plan(gpus: int) -> dict:
    """What the suite would run, with the cap and the advisor's decision computed here (no GPU, no weights)."""
    from babeltune.models.facts import model_facts

    work = Path(tempfile.mkdtemp(prefix="bt-fsdp-plan-"))
    model = work / "sharded-model"
    made = make_model(str(model)) if visible_gpus() == 0 else child("make-model", str(model))
    cap, advice = choose_cap(str(model), gpus)
    config = advised_config(advice, gpus, work / "advised.yaml")
    gemma = model_facts(GEMMA["model"])
    shown = lambda name, *extra: " ".join(["train --config", name, "--gpus", str(gpus), *extra])   # noqa: E731
    return {"gpus": gpus, "gemma": {**GEMMA, "estimate_ddp": estimate(gemma, GEMMA, 1).to_dict(),
                                    "estimate_fsdp": estimate(gemma, GEMMA, gpus).to_dict(),
                                    "commands": [shown("gemma-ddp.yaml"), shown("gemma-fsdp.yaml", "--fsdp")]},
            "sharded": {"shape": SHARDED_SHAPE, "parameters": made["parameters"], "cap_gib": cap,
                        "advise": advice_facts(advice), "config": str(config),
                        "commands": [shown("advised.yaml", *run_overrides(Path("RUN"))),
                                     shown("advised.yaml", *run_overrides(Path("RUN")), "--set", "training.distributed=ddp")]}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("make-model", "context", "reload"):
        command, args = sys.argv[1], sys.argv[2:]
        result = make_model(*args) if command == "make-model" else cuda_context() if command == "context" else reload_adapter(*args)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fsdp.json")
    parser.add_argument("--plan", action="store_true", help="print what would run (no GPU needed) and stop")
    a = parser.parse_args()
    if a.plan:
        print(json.dumps(plan(max(2, a.gpus)), indent=1))
        return
    found = visible_gpus()
    if a.gpus < 2 or found < a.gpus:
        print(f"error: bench/fsdp.py: needs --gpus N >= 2 CUDA GPUs, {found} visible (--gpus {a.gpus}); run it on a "
              "multi-GPU machine (python bench/fsdp.py --plan shows what it would run)", file=sys.stderr)
        sys.exit(2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    run_suite(a.gpus, a.out)


if __name__ == "__main__":
    main()
