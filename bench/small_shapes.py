"""Speed on the runs babeltune actually advises: 135M-270M models, short sequences, few thousand tokens per step.

For each model architecture (SmolLM2-135M, Gemma-3-270M: their real configs, random-initialised on the GPU:
speed does not depend on weight values, and no weights need to travel) and each shape (micro-batch x sequence),
babeltune's `train` pipeline (run_training: config -> plugins -> backend -> HF Trainer with every core callback)
is timed against a bare loop with the same model, LoRA, optimizer, precision, clipping and batch, each in a fresh
process, side by side in one call:

    hf-peft:  bare transformers + PEFT loop            vs  babeltune --backend hf-peft (liger off, then on)
    unsloth:  bare Unsloth FastLanguageModel loop      vs  babeltune --backend unsloth

Run on the GPU machine from the repository root after `python bench/small_shapes.py prepare` here
(it writes .gpu/shapes/: the two configs, SmolLM2's tokenizer and real text):

    python bench/small_shapes.py suite --out bench/results/small_shapes.json [--models smollm2-135m,gemma-3-270m]
        [--shapes 8x128,32x256,8x2048] [--stacks peft,liger,unsloth]
        [--time-budget-s S]     # no (model, stack) starts after S seconds; a running one is killed there
        [--with-1b --steps-1b 8] # first: bench/gpu_bench.py's 1B / 8 x 2048 pairs (targets: unsloth >= 0.97x
                                 # bare Unsloth, hf-peft with liger >= 1.6x bare transformers+peft)
    python bench/small_shapes.py profile --model smollm2-135m --shape 8x128 [--stacks unsloth]   # where a step's time goes

Stacks: peft, liger (babeltune hf-peft with liger on), unsloth, and unsloth-plain: an experiment, the unsloth
backend's model with the core's HF Trainer instead of UnslothTrainer (TRL's SFTTrainer), to see whether the
gap to bare Unsloth at small shapes is TRL's.

Each result row: tokens/s over the timed steps (after warmup; one device sync at each end), seconds per optimizer
step, peak GPU memory, and the babeltune/bare ratio. Targets (issue 12): babeltune >= 0.9x the bare loop on
hf-peft, >= 0.97x bare Unsloth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES_DIR = REPO / ".gpu" / "shapes"
CORPUS = SHAPES_DIR / "corpus.txt"
TOKENS = SHAPES_DIR / "tokens.npy"
ARCHS = ("smollm2-135m", "gemma-3-270m")
GPU_BENCH = Path(__file__).resolve().with_name("gpu_bench.py")
GPU_BENCH_TOKENS, GPU_BENCH_TOKENIZER = REPO / ".gpu" / "tokens.npy", REPO / ".gpu" / "tok"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# What `advise` writes for these corpora (r 8, rsLoRA alpha 32, all 7 projections); dropout 0 so that
# Unsloth takes its fast path and every pair trains the same adapter.
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.0, use_rslora=True)
LR = 2e-4


# ---------------------------------------------------------------------------------------------
# prepare (CPU machine): configs + tokenizer + real text, small enough to carry


def prepare() -> dict:
    """Copy the converted built-ins' config.json (and SmolLM2's tokenizer, used for both: the Gemma vocabulary
    of 262,144 rows stays in its config, so the embedding and logits cost is the real one) into .gpu/shapes."""
    import numpy as np
    from transformers import AutoTokenizer

    from babeltune.models.resolve import resolve_model_dir
    SHAPES_DIR.mkdir(parents=True, exist_ok=True)
    smol = resolve_model_dir("smollm2-135m")
    for arch in ARCHS:
        target = SHAPES_DIR / arch
        target.mkdir(exist_ok=True)
        shutil.copy(Path(resolve_model_dir(arch)) / "config.json", target / "config.json")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(smol) / name, target / name)
    texts = (REPO / "examples/data/marathi/train.txt").read_text(encoding="utf-8")
    CORPUS.write_text(texts * 4, encoding="utf-8")   # ~750k SmolLM2 tokens: 8 x 2048 x 40 steps fit in one epoch
    tokenizer = AutoTokenizer.from_pretrained(smol)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    np.save(TOKENS, np.asarray(ids * 4, dtype=np.int32))
    return {"dir": str(SHAPES_DIR), "tokens": len(ids) * 4}


# ---------------------------------------------------------------------------------------------
# children (GPU machine): one measurement per process


def device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"   # cpu: a smoke run of the harness only


def sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else 0.0


def empty_cache() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def versions() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_bench import versions as library_versions   # one list of the libraries every GPU result records

    return library_versions()


def make_model(arch: str, out_dir: str) -> dict:
    """Random-init model of the architecture's real config, saved in bf16 with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    source = SHAPES_DIR / arch
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, Path(out_dir) / name)
    return {"arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": config.vocab_size, "layers": config.num_hidden_layers}


def token_batches(batch: int, seq: int, steps: int):
    import numpy as np
    import torch
    ids = np.load(TOKENS)
    need = batch * seq
    for step in range(steps):
        start = (step * need) % (len(ids) - need)
        yield torch.from_numpy(ids[start:start + need].astype("int64")).view(batch, seq).to(device())


def timed_loop(model, batch: int, seq: int, steps: int, warmup: int, optimizer, autocast: bool) -> dict:
    """forward, backward, clip to 1.0, AdamW step, zero_grad: what the HF Trainer does per optimizer step."""
    import torch
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    start, curve = None, []
    for step, ids in enumerate(token_batches(batch, seq, steps + warmup)):
        if step == warmup:
            sync()
            reset_peak()
            start = time.perf_counter()
        with torch.autocast(device(), dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 5 == 0:
            curve.append((step + 1, loss.detach(), norm))
    sync()
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": round(batch * seq * steps / elapsed, 1), "s_per_step": round(elapsed / steps, 4),
            "peak_gib": peak_gib(), "last_loss": round(float(loss), 4),
            "timed_steps": steps, "curve": [(s, round(float(v), 4), round(float(n), 4)) for s, v, n in curve],
            "param_dtypes": sorted({f"{'trainable' if p.requires_grad else 'frozen'} {p.dtype}" for p in model.parameters()})}


def bare_peft(model_dir: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    """The loop a user writes with transformers + PEFT: bf16 weights, fp32 adapter, bf16 autocast (as the HF
    Trainer's bf16=True), sdpa attention, torch AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 device_map={"": device()})
    model = get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS, task_type="CAUSAL_LM", **LORA))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    return {"stack": "bare transformers+peft loop", **timed_loop(model, batch, seq, steps, warmup, optimizer, True)}


def bare_unsloth(model_dir: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    from unsloth import FastLanguageModel  # noqa: first, so it patches transformers
    import torch
    model, _ = FastLanguageModel.from_pretrained(model_dir, max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, target_modules=LORA_TARGETS, bias="none", random_state=3407,
                                             use_gradient_checkpointing=False, **LORA)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    return {"stack": "bare Unsloth loop", **timed_loop(model, batch, seq, steps, warmup, optimizer, True)}


def babeltune_config(model_dir: str, backend: str, batch: int, seq: int, total_steps: int, work: Path, liger) -> dict:
    return {"schema_version": 1, "language": "mr",
            "model": {"name": model_dir, "max_seq_length": seq},
            "data": {"train": str(CORPUS), "eval_fraction": 0.01, "packing": "blocks"},
            "adapter": {**LORA, "target_modules": LORA_TARGETS},
            "training": {"output_dir": str(work / "run"), "per_device_train_batch_size": batch,
                         "gradient_accumulation_steps": 1, "learning_rate": LR, "max_steps": total_steps,
                         "optimizer": "adamw_torch", "lr_scheduler_type": "constant", "weight_decay": 0.0,
                         "gradient_checkpointing": False, "logging_steps": 5, "save_steps": 100000, "precision": "auto",
                         # random weights: a non-finite loss must not end a timing run (it is reported instead)
                         "max_nonfinite_losses": 1000},
            "eval": {"evaluation_strategy": "no", "save_strategy": "no", "max_eval_documents": 8},
            "backend": {"name": backend, "options": {"liger": liger} if backend == "hf-peft" else {}}}


def babeltune_run(model_dir: str, backend: str, batch: int, seq: int, steps: int, warmup: int, liger=False,
                  profile_steps: int = 0, sets: tuple = ()) -> dict:
    """`train` through run_training with every core callback; a timing plugin syncs only at the two ends."""
    import torch
    from babeltune.config import validate_config
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager
    from babeltune.trainer.run import run_training
    from transformers import TrainerCallback
    work = Path(tempfile.mkdtemp(prefix="bt-shapes-"))
    if backend == "unsloth-plain":   # experiment: Unsloth's model and patches, the core's HF Trainer (no TRL)
        from babeltune.plugins import unsloth as unsloth_plugin
        unsloth_plugin.UnslothBackend.trainer_class = lambda self: None
        backend = "unsloth"
        plain = True
    else:
        plain = False
    from babeltune.config import apply_overrides
    raw = babeltune_config(model_dir, backend, batch, seq, steps + warmup + profile_steps, work, liger)
    config = validate_config(apply_overrides(raw, list(sets)) if sets else raw)
    result, notes = {}, []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                sync()
                reset_peak()
                result["start"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                sync()
                elapsed = time.perf_counter() - result.pop("start")
                result.update(tokens_per_s=round(batch * seq * steps / elapsed, 1), s_per_step=round(elapsed / steps, 4),
                              peak_gib=peak_gib(), timed_steps=steps)
                if profile_steps:
                    result["profiler"] = profiler_start()
            elif profile_steps and state.global_step == warmup + steps + profile_steps:
                result["profile"] = profiler_stop(result.pop("profiler"), profile_steps)

    impl = types.SimpleNamespace(extra_callbacks=hookimpl(lambda config: [StepTimer()]))
    manager = get_plugin_manager()
    manager.register(impl, name=f"bench-timing-{id(impl)}")
    try:
        run = run_training(config, evaluate=False, echo=lambda line: notes.append(str(line)))
    except Exception as exc:   # a NaN stop still reports its timing and the curve
        run = types.SimpleNamespace(final_loss=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        manager.unregister(impl)
        empty_cache()
    metrics = work / "run" / "metrics.jsonl"
    curve = [(r.get("step"), r.get("loss"), r.get("grad_norm")) for r in map(json.loads, metrics.read_text().splitlines())
             if "loss" in r] if metrics.is_file() else []
    result["curve"] = curve[:12] + curve[-3:]
    return {"stack": f"babeltune train --backend {backend}" + (f" (liger {liger})" if backend == "hf-peft" else "")
            + (" with the core's HF Trainer instead of UnslothTrainer" if plain else ""),
            **result, "last_loss": run.final_loss, "notes": notes[:25]}


def profiler_start():
    import torch
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
    prof.__enter__()
    prof.t0 = time.perf_counter()
    return prof


def profiler_stop(prof, steps: int) -> dict:
    """Wall time vs GPU busy time per step, and the ops with the most host time (what keeps the GPU waiting)."""
    import torch
    sync()
    wall = time.perf_counter() - prof.t0
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    return {"wall_s_per_step": round(wall / steps, 4), "gpu_busy_s_per_step": round(gpu_us / 1e6 / steps, 4),
            "ops_per_step": round(sum(e.count for e in events if not e.key.startswith("ProfilerStep")) / steps),
            "top_host_ops": [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                              "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2)} for e in top]}


def bare_profile(model_dir: str, batch: int, seq: int, steps: int, stack: str = "peft") -> dict:
    import torch
    if stack == "unsloth":
        from unsloth import FastLanguageModel  # noqa: first, so it patches transformers
        model, _ = FastLanguageModel.from_pretrained(model_dir, max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=False)
        model = FastLanguageModel.get_peft_model(model, target_modules=LORA_TARGETS, bias="none", random_state=3407,
                                                 use_gradient_checkpointing=False, **LORA)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": device()})
        model = get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS, task_type="CAUSAL_LM", **LORA))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    timed_loop(model, batch, seq, 3, 2, optimizer, True)
    prof = profiler_start()
    timed_loop(model, batch, seq, steps, 0, optimizer, True)
    return profiler_stop(prof, steps)


def pairs(stack: str, model_dir: str, shapes: list[str], steps: int, warmup: int) -> dict:
    """One process per (model, stack): for each shape the bare loop, then babeltune, alternating, so both meet the
    same GPU state (Unsloth patches transformers on import: its pairs get their own process)."""
    import torch
    rows = {}
    for shape in shapes:
        batch, seq = (int(x) for x in shape.split("x"))
        bare = (bare_unsloth if stack.startswith("unsloth") else bare_peft)(model_dir, batch, seq, steps, warmup)
        empty_cache()
        backend, liger = (stack, False) if stack.startswith("unsloth") else ("hf-peft", stack == "liger")
        ours = babeltune_run(model_dir, backend, batch, seq, steps, warmup, liger)
        rows[shape] = {"bare": bare, "babeltune": ours, "ratio": ratio(ours, bare)}
        print(json.dumps({"shape": shape, "stack": stack, "ratio": rows[shape]["ratio"]}), file=sys.stderr, flush=True)
    return rows


CHILDREN = {"pairs", "make-model", "bare-peft", "bare-unsloth", "babeltune", "profile-babeltune", "profile-bare"}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cmd")
    parser.add_argument("arg")
    parser.add_argument("extra", nargs="?")
    parser.add_argument("--shape", default="8x128")
    parser.add_argument("--shapes", default="8x128")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--liger", default="false")
    parser.add_argument("--set", action="append", default=[])
    a = parser.parse_args(argv)
    if "unsloth" in {a.cmd == "pairs" and a.arg.split("-")[0], str(a.extra).split("-")[0]}:
        import unsloth  # noqa: F401 - first, so it patches transformers before anything imports it
    batch, seq = (int(x) for x in a.shape.split("x"))
    liger = {"true": True, "false": False}.get(a.liger, a.liger)
    if a.cmd == "pairs":
        result = pairs(a.arg, a.extra, a.shapes.split(","), a.steps, a.warmup)
    elif a.cmd == "make-model":
        result = make_model(a.arg, a.extra)
    elif a.cmd == "bare-peft":
        result = bare_peft(a.arg, batch, seq, a.steps, a.warmup)
    elif a.cmd == "bare-unsloth":
        result = bare_unsloth(a.arg, batch, seq, a.steps, a.warmup)
    elif a.cmd == "babeltune":
        result = babeltune_run(a.arg, a.extra, batch, seq, a.steps, a.warmup, liger, sets=tuple(a.set))
    elif a.cmd == "profile-babeltune":
        result = babeltune_run(a.arg, a.extra, batch, seq, a.steps, a.warmup, liger, profile_steps=5)
    else:
        result = bare_profile(a.arg, batch, seq, 5, a.extra or "peft")
    print(json.dumps(result))


def run_child(args: list[str], timeout: int = 420) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"killed after {timeout} s (time budget)", "args": args}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "args": args, "stderr_tail": proc.stderr[-1500:]}
    return {**json.loads(lines[-1]), "process_s": round(time.time() - started, 1)}


# ---------------------------------------------------------------------------------------------
# suite


def ratio(a: dict, b: dict):
    return round(a["tokens_per_s"] / b["tokens_per_s"], 3) if "tokens_per_s" in a and "tokens_per_s" in b else None


def gpu_label() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke run)"


STACK_ORDER = ("peft", "unsloth", "liger", "unsloth-plain")


def suite(out_path: Path, archs: list[str], shapes: list[str], stacks: dict, steps: int, warmup: int,
          budget_s: float = 1e9, with_1b: bool = False, steps_1b: int = 8) -> dict:
    """``stacks``: model -> the stacks to compare on it ("*" for every model). Each (model, stack) starts only
    while ``budget_s`` lasts (skipped ones are listed); ``with_1b`` first re-checks the 1B / 8 x 2048 rows."""
    deadline = time.time() + budget_s
    work = Path(tempfile.mkdtemp(prefix="bt-shape-models-"))
    report = {"command": " ".join(["python", *sys.argv]), "gpu": gpu_label(), "versions": versions(),
              "weights": "real configs of the built-ins, random-initialised in bf16 (speed does not depend on weight values)",
              "adapter": {**LORA, "target_modules": LORA_TARGETS}, "optimizer": "torch AdamW, clip 1.0, bf16 autocast",
              "steps": steps, "warmup": warmup, "time_budget_s": budget_s, "models": {}, "results": [], "skipped": []}

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out_path)

    def left() -> float:
        return deadline - time.time()
    if with_1b:
        report["rows_1b"] = rows_1b(work, steps_1b, warmup, left, save_to=report, save=save)
    for arch in archs:
        model_dir = str(work / arch)
        wanted = [x for x in STACK_ORDER if x in stacks.get(arch, stacks.get("*", set()))]
        if left() < 60:
            report["skipped"] += [{"model": arch, "stack": x, "why": "time budget spent"} for x in wanted]
            save()
            continue
        report["models"][arch] = run_child(["make-model", arch, model_dir], timeout=int(max(30, left())))
        save()
        for stack in wanted:
            if left() < 60:
                report["skipped"].append({"model": arch, "stack": stack, "why": "time budget spent"})
                save()
                continue
            rows = run_child(["pairs", stack, model_dir, "--shapes", ",".join(shapes), "--steps", str(steps),
                              "--warmup", str(warmup)], timeout=int(max(30, left())))
            if "error" in rows:
                report["results"].append({"model": arch, "stack": stack, "error": rows})
            for shape in shapes:
                if shape in rows:
                    report["results"].append({"model": arch, "shape": shape, "stack": stack, **rows[shape]})
            save()
    return report


def rows_1b(work: Path, steps: int, warmup: int, left, save_to: dict, save) -> dict:
    """bench/gpu_bench.py's own 1B / 8 x 2048 pairs (its bare loops, checkpointing, LoRA r16), the rows the
    README's targets name: unsloth >= 0.97x bare Unsloth, hf-peft (liger) >= 1.6x bare transformers+peft."""
    sys.path.insert(0, str(GPU_BENCH.parent))
    import gpu_bench

    if not TOKENS.is_file():
        return {"error": f"{TOKENS} missing: run `python bench/small_shapes.py prepare` and carry .gpu"}
    # gpu_bench.py reads .gpu/tokens.npy and .gpu/tok: the same SmolLM2 tokens and tokenizer as the shapes (copied
    # here on the GPU machine rather than carried twice)
    if not GPU_BENCH_TOKENS.is_file():
        shutil.copy(TOKENS, GPU_BENCH_TOKENS)
    if not GPU_BENCH_TOKENIZER.is_dir():
        GPU_BENCH_TOKENIZER.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(SHAPES_DIR / "smollm2-135m" / name, GPU_BENCH_TOKENIZER / name)
    model = str(work / "llama-1b")
    warmup = 3   # as the committed 1B rows (bench/results/gpu_throughput.json)
    common = ["--batch", "8", "--seq", "2048", "--steps", str(steps), "--warmup", str(warmup)]
    res: dict = {"steps": steps, "warmup": warmup}
    save_to["rows_1b"] = res
    plan = [("model", ["make-model", "1b", model]),
            ("unsloth_bare", ["bare-unsloth", model, *common]), ("unsloth_babeltune", ["babeltune", model, "unsloth", *common]),
            ("peft_bare", ["bare-peft", model, *common]), ("peft_babeltune_fast", ["babeltune", model, "hf-peft", *common])]
    for key, args in plan:
        if left() < 45:
            res[key] = {"skipped": "time budget spent"}
        else:
            started = time.time()
            try:
                res[key] = {**gpu_bench.run_child(args, timeout=int(max(30, left())), script=str(GPU_BENCH)),
                            "process_s": round(time.time() - started, 1)}
            except subprocess.TimeoutExpired:
                res[key] = {"error": "killed at the time budget"}
        res["unsloth_speed_ratio"] = gpu_bench.ratio(res.get("unsloth_babeltune", {}), res.get("unsloth_bare", {}))
        res["fast_path_speedup_vs_bare"] = gpu_bench.ratio(res.get("peft_babeltune_fast", {}), res.get("peft_bare", {}))
        save()
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        return child_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cmd", choices=["prepare", "suite", "profile"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", default=",".join(ARCHS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shapes", default="8x128,32x256,8x2048")
    parser.add_argument("--shape", default="8x128")
    parser.add_argument("--stacks", default="peft,unsloth,liger")
    parser.add_argument("--stacks-for", action="append", default=[], help="MODEL=stack,stack for one model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--time-budget-s", type=float, default=1e9, help="start no (model, stack) after this long")
    parser.add_argument("--with-1b", action="store_true", help="first re-check the 1B / 8x2048 rows (gpu_bench.py pairs)")
    parser.add_argument("--steps-1b", type=int, default=8)
    a = parser.parse_args()
    if a.cmd == "prepare":
        print(json.dumps(prepare()))
    elif a.cmd == "suite":
        stacks = {"*": set(a.stacks.split(","))}
        for item in a.stacks_for:   # e.g. gemma-3-270m=peft,unsloth
            arch, _, names = item.partition("=")
            stacks[arch] = set(names.split(","))
        suite(a.out, a.models.split(",") if a.models else [], a.shapes.split(","), stacks, a.steps, a.warmup,
              a.time_budget_s, a.with_1b, a.steps_1b)
    else:
        model_dir = str(Path(tempfile.mkdtemp(prefix="bt-prof-")) / a.model)
        run_child(["make-model", a.model, model_dir])
        stack = "unsloth" if a.stacks == "unsloth" else "peft"
        result = {"stack": stack, "shape": a.shape, "gpu": gpu_label(),
                  "bare": run_child(["profile-bare", model_dir, stack, "--shape", a.shape]),
                  "babeltune": run_child(["profile-babeltune", model_dir, "unsloth" if stack == "unsloth" else "hf-peft",
                                          "--shape", a.shape, "--steps", "5"])}
        text = json.dumps(result, indent=1)
        print(text)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
