"""Does `advise`'s run-time estimate hold on the GPU, and do the shapes it advises keep the GPU busy? (issue 12)

For each model x backend x corpus: `advise --gpu <this GPU> --no-probe --out FILE` through the library the CLI
uses (advise -> render_yaml -> the YAML `train` reads), then `train` on that file (run_training, the real library
path) with a timing callback. Per run it records the estimate's training seconds against the measured wall time
of the optimizer steps, the whole estimate against the whole run (run_s: run_training from loading to the
manifest), and the parts apart to calibrate advisor/estimate.py's constants: each evaluation (eval_s, with its
forward batches), each checkpoint save (save_s), the training logs, the loop's tail, loading + data, Trainer
set-up, adapter save + reload check, final scoring, the held-out documents, whether the run was the first in its
process; and the real (non -100 label) tokens per second of the advised shape. In the same process
babeltune's `train` runs the 8 x 2048 packed shape on the same model for a few steps: each advised shape's
tokens/s is reported as a share of it (target >= 50%). Targets: estimates within 25% of the measured
training and of the measured run.

    python bench/estimate_check.py --models-dir DIR --corpora /work/shared/corpora/ud --out RESULT.json
        [--time-budget-s 420] [--models smollm2-135m,gemma-3-270m] [--backends hf-peft,unsloth] [--ud hi,de]
    python bench/estimate_check.py --smoke --out /tmp/estimate_smoke.json     # tiny random model, CPU, < 2 min

DIR holds Hugging Face folders named like the models (smollm2-135m/, gemma-3-270m/), real weights; where no
weights can travel, --random-init builds the models from their real configs on the GPU instead (after
`python bench/small_shapes.py prepare` here; Gemma's config then runs with SmolLM2's tokenizer). The corpora:
the shipped sample (examples/data/marathi/train.txt) and the UD files named by --ud. Each (model, backend) runs in
its own process (Unsloth patches transformers on import), in the order given, while the time budget lasts; the
JSON is rewritten after every run (command, GPU, versions, then one row per run as it finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = ("mr", REPO / "examples/data/marathi/train.txt")
SMOKE_CORPORA = [SAMPLE]
REFERENCE = (8, 2048)              # the lab shape the advised shapes are compared with
REFERENCE_STEPS, REFERENCE_WARMUP = 10, 3
STARTUP_GUESS_S = 10               # imports before train starts: not in the GPU estimate (loading now is)
SAFETY = 1.5                       # a run starts only when estimate x SAFETY + start-up fits the time left


# ---------------------------------------------------------------------------------------------
# results file: rewritten whole after every row (a kill loses at most the run in flight)


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def append_row(path: Path, row: dict) -> None:
    report = json.loads(path.read_text())
    report["rows"].append(row)
    write_report(path, report)
    print(json.dumps({k: row.get(k) for k in ("model", "backend", "corpus", "kind", "estimate_over_measured",
                                               "estimate_over_run",
                                               "share_of_reference", "tokens_per_s", "skipped", "error")}),
          file=sys.stderr, flush=True)


def versions() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_bench import versions as library_versions

    return library_versions()     # with the babeltune commit


# ---------------------------------------------------------------------------------------------
# timing inside `train`


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RunTimer:
    """A TrainerCallback (built by ``callback``) timing each optimizer step and counting its real tokens.

    Step k's time runs from on_step_begin to on_step_end; evaluation, saving and logging happen after
    on_step_end, so they fall outside. The device is synchronised only at step 2, at steps where the Trainer
    logs, evaluates or saves (it reads GPU numbers there anyway) and at the last: queued GPU work of the
    steps in between is charged to the next synchronised step, so the sum over steps is right.

    After on_step_end the Trainer logs (on_log), evaluates (on_evaluate) and saves (on_save), in that order, each
    ending in a host sync (loss.item(), the eval loss, the state dict copied to the CPU): the time from the
    previous of these marks to on_evaluate is one evaluation (its forward batches counted by
    on_prediction_step), to on_save one checkpoint save (with the completion marker, which runs before this
    callback, the last registered); after the last step, to on_train_end, the tail (best-model reload, loss plot).
    These calibrate advisor/estimate.py's EVAL_FIXED_S, SAVE_S and the eval batch time apart."""

    def __init__(self):
        self.began = self.loop_start = self.mark = None
        self.durations: list[float] = []
        self.tokens: list = []            # device scalars, read once at the end
        self.pending = None
        self.loop_s = None
        self.handle = None
        self.eval_s: list[float] = []
        self.save_s: list[float] = []
        self.log_s: list[float] = []
        self.eval_batches = 0
        self.tail_s = None

    def count(self, module, args, kwargs):
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            real = labels.ne(-100).sum()
            self.pending = real if self.pending is None else self.pending + real

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class Timing(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                sync()
                timer.loop_start = time.perf_counter()
                timer.handle = model.register_forward_pre_hook(timer.count, with_kwargs=True)

            def on_step_begin(self, args, state, control, **kwargs):
                timer.began = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if (state.global_step == 2 or control.should_log or control.should_evaluate or control.should_save
                        or control.should_training_stop or state.global_step >= state.max_steps):
                    sync()
                timer.mark = time.perf_counter()
                timer.durations.append(timer.mark - timer.began)
                timer.tokens.append(timer.pending)
                timer.pending = None

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not any(key.startswith("eval_") for key in logs or {}):   # the training log, not the eval's
                    timer.log_s.append(timer.lap())

            def on_prediction_step(self, args, state, control, **kwargs):
                timer.eval_batches += 1

            def on_evaluate(self, args, state, control, **kwargs):
                sync()
                timer.eval_s.append(timer.lap())

            def on_save(self, args, state, control, **kwargs):
                timer.save_s.append(timer.lap())

            def on_train_end(self, args, state, control, **kwargs):
                sync()
                timer.tail_s = timer.lap()
                timer.loop_s = time.perf_counter() - timer.loop_start
                timer.handle.remove()

        return Timing()

    def lap(self) -> float:
        """Seconds since the last mark (step end, training log, evaluation or save); moves the mark."""
        now = time.perf_counter()
        seconds, self.mark = now - (self.mark or now), now
        return seconds

    def summary(self) -> dict:
        tokens = [int(t) if t is not None else 0 for t in self.tokens]
        steady_s, steady_tokens = sum(self.durations[2:]), sum(tokens[2:])
        rounded = lambda values: [round(v, 3) for v in values]   # noqa: E731
        return {"steps": len(self.durations), "train_steps_s": round(sum(self.durations), 3),
                "first_step_s": round(self.durations[0], 3) if self.durations else None,
                "steady_steps_s": round(steady_s, 3), "real_tokens": sum(tokens),
                "tokens_per_s": round(steady_tokens / steady_s, 1) if steady_s > 0 else None,
                "loop_s": round(self.loop_s, 3) if self.loop_s is not None else None,
                "evaluations": len(self.eval_s), "eval_s": rounded(self.eval_s),
                "eval_batches": self.eval_batches, "saves": len(self.save_s), "save_s": rounded(self.save_s),
                "training_logs": len(self.log_s), "training_logs_s": round(sum(self.log_s), 3),
                "loop_tail_s": round(self.tail_s, 3) if self.tail_s is not None else None}


def timed_train(config, backend: str) -> tuple[dict, list[str]]:
    """run_training with the timer registered as a plugin's callback; (measured, echoed lines)."""
    from babeltune.trainer.hookspecs import hookimpl
    from babeltune.trainer.plugins import get_plugin_manager
    from babeltune.trainer.run import run_training

    timer, lines, stamps = RunTimer(), [], []
    impl = types.SimpleNamespace(extra_callbacks=hookimpl(lambda config: [timer.callback()]))
    manager = get_plugin_manager()
    manager.register(impl, name=f"estimate-check-{id(impl)}")

    def echo(line) -> None:
        lines.append(str(line))
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    try:
        result = run_training(config, backend=backend, evaluate=True, echo=echo)
        outcome = {"final_loss": result.final_loss, "global_step": result.steps, "stopped_early": result.stopped_early}
    except Exception as exc:   # a failed run still reports what it timed
        outcome = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        manager.unregister(impl)
    ended = time.perf_counter()
    phases = run_phases(started, timer, lines, stamps, ended)
    return {**timer.summary(), "run_s": round(ended - started, 2), **phases, **outcome}, lines


def run_phases(started: float, timer: RunTimer, lines: list[str], stamps: list[float], ended: float) -> dict:
    """Where run_s goes outside the loop, from the times of train's own lines: loading and data up to its
    "data:" line, then until the loop starts (Trainer set-up); after the loop, adapter save + reload check up to
    the "reload check:" line, then final scoring (+ manifest) up to "done:". Held-out documents as train split."""
    import re

    def first(prefix: str, after: float = 0.0):
        return next((t for line, t in zip(lines, stamps) if line.startswith(prefix) and t >= after), None)

    data_at = first("data: ") and max(t for line, t in zip(lines, stamps) if line.startswith("data: "))
    loop_end = timer.loop_start + timer.loop_s if timer.loop_start and timer.loop_s is not None else None
    reload_at = first("reload check:", loop_end or 0.0)
    done_at = first("done:", loop_end or 0.0)
    held = next((re.search(r"(\d+) held-out documents", line) for line in lines if "held-out documents" in line), None)
    span = lambda a, b: round(b - a, 3) if a is not None and b is not None else None   # noqa: E731
    return {"load_and_data_s": span(started, data_at), "trainer_setup_s": span(data_at, timer.loop_start),
            "save_and_reload_check_s": span(loop_end, reload_at), "final_scoring_s": span(reload_at, done_at or ended),
            "heldout_documents": int(held.group(1)) if held else None}


# ---------------------------------------------------------------------------------------------
# one advised run


def advise_config(lang: str, corpus: Path, model_dir: str, gpu_key: str, backend: str, work: Path,
                  max_steps) -> tuple:
    """`advise --gpu KEY --no-probe --backend B --out FILE` through the CLI's library calls; the config as
    `train --config FILE` reads it."""
    from babeltune.advisor.advise import advise
    from babeltune.corpus.reader import CorpusSpec
    from babeltune.advisor.render import render_yaml
    from babeltune.config import apply_overrides, parse_yaml, validate_config
    from babeltune.trainer.plugins import kernels_for

    kernels, _ = kernels_for(backend)
    command = f"babeltune advise --lang {lang} --corpus {corpus} --model {model_dir} --gpu {gpu_key} --no-probe " \
              f"--backend {backend}" + (f" --max-steps {max_steps}" if max_steps else "")
    advice = advise(lang, CorpusSpec(path=str(corpus)), model=model_dir, gpu=gpu_key, probe=False, backend=backend,
                    kernels=kernels, max_steps=max_steps, command=command)
    path = work / f"{lang}-{backend}.yaml"
    path.write_text(render_yaml(advice, command), encoding="utf-8")
    raw = apply_overrides(parse_yaml(path.read_text(encoding="utf-8"), str(path)),
                          [f"training.output_dir={work / f'run-{lang}-{backend}'}"])
    return advice, validate_config(raw, source=str(path)), command


def shape_of(config) -> dict:
    tr = config.training
    return {"micro_batch": tr.per_device_train_batch_size, "seq_len": config.model.max_seq_length,
            "grad_accum": tr.gradient_accumulation_steps, "packing": config.data.packing,
            "max_steps": tr.max_steps, "gradient_checkpointing": tr.gradient_checkpointing,
            "eval_steps": config.eval.eval_steps, "evaluation_strategy": config.eval.evaluation_strategy,
            "early_stopping_patience": config.eval.early_stopping_patience, "save_steps": tr.save_steps,
            "save_strategy": config.eval.save_strategy,
            "per_device_eval_batch_size": config.eval.per_device_eval_batch_size,
            "max_eval_documents": config.eval.max_eval_documents}


def compare_estimate(estimate: dict, measured: dict, planned_steps: int, first_in_process: bool) -> dict:
    """The estimate's training seconds over the measured step time, for the steps that ran (early stopping
    may end a run before its planned steps), and the whole estimate over run_s (run_training, loading to
    manifest). A run after the first in this process did not pay a fresh process's start-up: its whole estimate
    is compared without FIRST_RUN_IN_PROCESS_S (a user's `train` is always a first run)."""
    from babeltune.advisor.estimate import FIRST_RUN_IN_PROCESS_S

    steps = measured.get("steps") or 0
    if not steps or not planned_steps:
        return {}
    training = estimate["parts"]["training"] * steps / planned_steps
    steady_per_step = measured["steady_steps_s"] / max(1, steps - 2)
    whole = estimate["seconds"] - (0.0 if first_in_process else FIRST_RUN_IN_PROCESS_S)
    return {"estimated_training_s": round(training, 2),
            "estimate_over_measured": round(training / measured["train_steps_s"], 3),
            "estimate_over_steady": round(training / (steady_per_step * steps), 3) if steps > 2 else None,
            "first_in_process": first_in_process, "estimated_run_s": round(whole, 1),
            "estimate_over_run": round(whole / measured["run_s"], 3) if measured.get("run_s") else None}


def advised_row(lang: str, corpus: Path, model: str, model_dir: str, gpu_key: str, backend: str, work: Path,
                deadline: float, max_steps, startup_guess_s: float = STARTUP_GUESS_S,
                first_in_process: bool = True) -> dict:
    row = {"kind": "advised", "model": model, "backend": backend, "corpus": str(corpus), "lang": lang}
    started = time.perf_counter()
    advice, config, command = advise_config(lang, corpus, model_dir, gpu_key, backend, work, max_steps)
    estimate = advice.estimate.to_dict()
    row.update(advise_command=command, advise_s=round(time.perf_counter() - started, 1), shape=shape_of(config),
               estimate=estimate, estimate_line=advice.estimate.line())
    need = estimate["seconds"] * SAFETY + startup_guess_s
    if time.time() + need > deadline:
        return {**row, "skipped": f"needs ~{need:.0f} s, {deadline - time.time():.0f} s left in the time budget"}
    measured, lines = timed_train(config, backend)
    row.update(measured=measured,
               **compare_estimate(estimate, measured, config.training.max_steps or 0, first_in_process),
               tokens_per_s=measured.get("tokens_per_s"),
               train_estimate_line=next((line for line in lines if line.startswith("estimate:")), None),
               train_notes=[line for line in lines if "kernels" in line or "attention" in line][:4])
    if "error" in measured:
        row["error"] = measured["error"]
    return row


# ---------------------------------------------------------------------------------------------
# the 8 x 2048 reference, same model, same process


def reference_row(model: str, model_dir: str, backend: str, corpora: list, work: Path, shape: tuple,
                  steps: int = REFERENCE_STEPS) -> dict:
    from babeltune.config import validate_config

    batch, seq = shape
    text = "\n".join(path.read_text(encoding="utf-8") for _, path in corpora)
    corpus = work / "reference.txt"
    need_chars = batch * seq * (steps + REFERENCE_WARMUP) * 8       # >= 1 char per token, 8x margin
    corpus.write_text((text * max(1, -(-need_chars // max(1, len(text)))))[:need_chars], encoding="utf-8")
    config = validate_config({
        "schema_version": 1, "language": "mr", "model": {"name": model_dir, "max_seq_length": seq},
        "data": {"train": str(corpus), "eval_fraction": 0.01, "packing": "blocks"},
        "adapter": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.0, "use_rslora": True,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "training": {"output_dir": str(work / f"run-reference-{backend}"), "per_device_train_batch_size": batch,
                     "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "warmup_steps": 2,
                     "max_steps": steps + REFERENCE_WARMUP, "lr_scheduler_type": "constant_with_warmup",
                     "gradient_checkpointing": False, "logging_steps": 5, "save_steps": 100000},
        "eval": {"evaluation_strategy": "no", "save_strategy": "no", "max_eval_documents": 8},
        "backend": {"name": backend}})
    measured, lines = timed_train(config, backend)
    return {"kind": "reference", "model": model, "backend": backend, "shape": {"micro_batch": batch, "seq_len": seq},
            "measured": measured, "tokens_per_s": measured.get("tokens_per_s"), "error": measured.get("error"),
            "train_notes": [line for line in lines if "kernels" in line or "attention" in line][:4]}


def child(args: argparse.Namespace) -> None:
    """One (model, backend): the reference shape, then each corpus's advised run while the deadline allows."""
    if args.backend == "unsloth":
        import unsloth  # noqa: F401 - first, so it patches transformers before anything imports it
    corpora = [(lang, Path(path)) for lang, path in json.loads(args.corpora_json)]
    work = Path(tempfile.mkdtemp(prefix=f"bt-estimate-{args.model}-"))
    model_dir = str(args.models_dir / args.model)
    advised = []
    for lang, corpus in corpora:
        if time.time() > args.deadline:
            append_row(args.out, {"kind": "advised", "model": args.model, "backend": args.backend,
                                  "corpus": str(corpus), "skipped": "time budget spent"})
            continue
        try:
            row = advised_row(lang, corpus, args.model, model_dir, args.gpu_key, args.backend, work,
                              args.deadline, args.max_steps, args.startup_guess_s, first_in_process=not any("measured" in r for r in advised))
        except Exception as exc:
            row = {"kind": "advised", "model": args.model, "backend": args.backend, "corpus": str(corpus),
                   "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        append_row(args.out, row)
        advised.append(row)
    # last, so that a short budget goes to the advised runs; the shares are filled in afterwards
    reference = reference_row(args.model, model_dir, args.backend, corpora, work, tuple(args.reference),
                              args.reference_steps)
    append_row(args.out, reference)
    if reference.get("tokens_per_s"):
        report = json.loads(args.out.read_text())
        for row in report["rows"]:
            if (row.get("kind"), row.get("model"), row.get("backend")) == ("advised", args.model, args.backend) \
                    and row.get("tokens_per_s"):
                row["share_of_reference"] = round(row["tokens_per_s"] / reference["tokens_per_s"], 3)
        write_report(args.out, report)


# ---------------------------------------------------------------------------------------------
# parent: the jobs in order, each in its own process, within the time budget


def smoke_models(folder: Path) -> str:
    """A tiny random Llama with a BPE tokenizer trained on the shipped samples (tests/conftest.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_llama, build_tiny_tokenizer

    target = folder / "tiny-llama"
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(target)
    build_tiny_llama(target, vocab_size=len(tokenizer))
    return "tiny-llama"


def random_init_models(models: list[str]) -> Path:
    """The models' real configs (``python bench/small_shapes.py prepare`` put them in .gpu/shapes with SmolLM2's
    tokenizer), random-initialised in bf16 by small_shapes' make-model: no weights travel. Speed does not depend
    on weight values; the loss curve (early stopping, the NaN guard) does, and the report says which ran."""
    folder = Path(tempfile.mkdtemp(prefix="bt-estimate-models-"))
    for model in models:
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "small_shapes.py"), "make-model", model,
                               str(folder / model)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: make-model {model} failed: {proc.stderr.strip().splitlines()[-1:]}; "
                             "run `python bench/small_shapes.py prepare` first")
    return folder


def detect_gpu() -> tuple[str, str]:
    """(driver name, throughput-table key); without a GPU (smoke run) the H100's key, for the harness only."""
    import torch

    from babeltune.advisor.throughput import table_gpu_for_device

    if not torch.cuda.is_available():
        return "cpu (smoke run: estimates are for an H100, timings are this CPU's)", "h100"
    name = torch.cuda.get_device_name(0)
    key = table_gpu_for_device(name)
    if key is None:
        raise SystemExit(f"error: GPU {name!r} is not in advisor/data/throughput.json; add it to gpus there")
    return name, key


def usable(backend: str) -> str:
    """'' when the backend can run here, else why not."""
    import importlib.util

    import torch

    if backend == "unsloth" and (importlib.util.find_spec("unsloth") is None or not torch.cuda.is_available()):
        return "unsloth is not importable here (or no GPU)"
    return ""


def run_job(a: argparse.Namespace, model: str, backend: str, corpora: list, gpu_key: str, deadline: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--backend", backend, "--gpu-key", gpu_key,
           "--models-dir", str(a.models_dir), "--out", str(a.out), "--deadline", str(deadline),
           "--corpora-json", json.dumps([(lang, str(path)) for lang, path in corpora]),
           "--reference", *map(str, a.reference), "--reference-steps", str(a.reference_steps),
           "--startup-guess-s", str(a.startup_guess_s)] + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(5.0, deadline - time.time() + 30))
        status = {"exit": proc.returncode, "stderr_tail": proc.stderr[-1500:] if proc.returncode else None}
    except subprocess.TimeoutExpired:
        status = {"exit": "killed at the time budget"}
    return {"model": model, "backend": backend, "process_s": round(time.time() - started, 1), **status}


def parent(a: argparse.Namespace) -> None:
    started = time.time()
    deadline = started + a.time_budget_s
    if a.smoke:
        a.models_dir = Path(tempfile.mkdtemp(prefix="bt-estimate-smoke-"))
        models, backends, corpora = [smoke_models(a.models_dir)], ["hf-peft"], SMOKE_CORPORA[:1]
        a.max_steps, a.reference, a.reference_steps, a.startup_guess_s = a.max_steps or 3, (2, 64), 3, 10
    else:
        models, backends = a.models.split(","), a.backends.split(",")
        corpora = [SAMPLE] + [(lang, a.corpora / f"{lang}.txt") for lang in a.ud.split(",") if lang]
        if a.random_init:
            a.models_dir = random_init_models(models)
        for _, path in corpora:
            if not path.is_file():
                raise SystemExit(f"error: corpus {path} not found; pass --corpora DIR holding {path.name}")
        for model in models:
            if not (a.models_dir / model / "config.json").is_file():
                raise SystemExit(f"error: --models-dir {a.models_dir}: no {model}/config.json; put the HF folder there")
    gpu_name, gpu_key = detect_gpu()
    weights = "tiny random Llama" if a.smoke else \
        "real configs random-initialised in bf16 (--random-init)" if a.random_init else "as found in --models-dir"
    report = {"command": " ".join(["python", *sys.argv]), "gpu": gpu_name, "gpu_table_key": gpu_key, "weights": weights,
              "versions": versions(), "time_budget_s": a.time_budget_s, "models_dir": str(a.models_dir),
              "corpora": [str(path) for _, path in corpora], "reference_shape": list(a.reference),
              "targets": "estimate_over_run (the whole run) and estimate_over_measured (the optimizer steps) "
                         "within 0.75-1.25; share_of_reference >= 0.5",
              "rows": [], "jobs": []}
    write_report(a.out, report)
    for model in models:
        for backend in backends:
            why = usable(backend)
            if not why and deadline - time.time() < 45:
                why = "time budget spent"
            if why:
                job = {"model": model, "backend": backend, "skipped": why}
            else:
                job = run_job(a, model, backend, corpora, gpu_key, deadline)
            report = json.loads(a.out.read_text())
            report["jobs"].append(job)
            report["elapsed_s"] = round(time.time() - started, 1)
            write_report(a.out, report)
            print(json.dumps(job)[:400], file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora/ud"))
    parser.add_argument("--ud", default="hi,de", help="UD corpora (file stems in --corpora) after the shipped sample")
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--backends", default="hf-peft,unsloth")
    parser.add_argument("--time-budget-s", type=float, default=420)
    parser.add_argument("--max-steps", type=int, default=None, help="advise --max-steps (default: as advised)")
    parser.add_argument("--reference", type=int, nargs=2, default=list(REFERENCE), metavar=("BATCH", "SEQ"))
    parser.add_argument("--reference-steps", type=int, default=REFERENCE_STEPS, help="timed steps of the reference")
    parser.add_argument("--startup-guess-s", type=float, default=STARTUP_GUESS_S,
                        help="seconds a run needs beyond its estimate (loads, reload check) before it may start")
    parser.add_argument("--random-init", action="store_true",
                        help="no weights: the models' real configs from .gpu/shapes, random-initialised on the GPU")
    parser.add_argument("--smoke", action="store_true", help="tiny random model on this CPU: proves the harness")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-key", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--corpora-json", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        return child(a)
    if not a.smoke and not a.random_init and a.models_dir is None:
        parser.error("--models-dir is required (or --random-init, or --smoke)")
    if a.smoke and a.time_budget_s == parser.get_default("time_budget_s"):
        a.time_budget_s = 115
    parent(a)


if __name__ == "__main__":
    main()
