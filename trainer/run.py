"""`train`'s core: config -> seeded backend load -> data -> HF Trainer with the core callbacks -> final adapter,
reload check, optional merge, held-out evaluation (bits per character, before/after) and the run manifest.

The backend owns loading and the adapter; this module owns data, the loop, checkpoints, callbacks, metrics,
saving and evaluation.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from babeltune.errors import BabeltuneError
from babeltune.atomic import check_writable
from babeltune.trainer import callbacks as cb
from babeltune.trainer import distributed, fsdp, resume_config
from babeltune.trainer.backend import Backend, LoadedModel, Runtime
from babeltune.trainer.lean import lean_trainer_class
from babeltune.trainer.checkpoints import (check_trainable_names, trainable_share, completion_marker_callback, list_checkpoints,
                                           resolve_resume, trainer_class_stopping_at_max_steps)

if TYPE_CHECKING:
    from babeltune.config import TrainConfig
    from babeltune.trainer.data import PreparedData

HELDOUT_FILE = "heldout.jsonl"
ADAPTER_DIR = "adapter"      # output_dir/adapter: PEFT weights + tokenizer + resolved config
MERGED_DIR = "merged"
EVAL_REPORT = "eval.json"


@dataclass
class RunResult:
    output_dir: Path
    final_loss: Optional[float]          # last logged training loss
    steps: int                           # optimizer steps reached (global step)
    eval_report: Optional[Path]          # eval.json (bits per character before/after), None when skipped
    adapter_dir: Path
    manifest: Path
    merged_dir: Optional[Path] = None
    resumed_from: Optional[Path] = None
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Runtime and seeding


def resolve_precision(requested: str, device: str) -> str:
    import torch

    if device == "cpu":
        if requested == "fp16":
            raise BabeltuneError("training.precision: fp16 needs a GPU; use auto, bf16 or fp32 on CPU")
        return "fp32" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise BabeltuneError("training.precision: this GPU does not support bf16; use fp16 or auto")
    return requested


def make_runtime(config: "TrainConfig", echo: Callable[[str], Any] = print) -> Runtime:
    import torch

    from babeltune.models.resolve import resolve_model_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Runtime(device=device, precision=resolve_precision(config.training.precision, device),
                   model_dir=str(resolve_model_dir(config.model.name)),
                   world_size=distributed.world_size(), local_rank=distributed.local_rank(),
                   gradient_accumulation_steps=distributed.accumulation_per_process(config, distributed.world_size(), echo))


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (all devices) RNGs: must run before the backend creates the adapter."""
    from transformers import set_seed

    set_seed(seed)


def pick_backend(choice: Optional[Backend], config: "TrainConfig", echo: Callable) -> Backend:
    """``choice`` when given, else the backend config.backend.name selects (or its fallback)."""
    if choice is not None:
        return choice
    from babeltune.trainer.plugins import select_backend

    return select_backend(config.backend.name, echo=echo)


# ---------------------------------------------------------------------------------------------
# Trainer arguments, optimizer, callbacks


def known_arguments(cls: type, kwargs: dict) -> dict:
    """``kwargs`` when ``cls`` (TrainingArguments) takes every one of them; an argument this transformers version
    lacks is an error, not dropped: the run would silently train with the library's default instead. Renamed
    arguments are translated before this (warmup_ratio, activation_checkpointing)."""
    known = inspect.signature(cls.__init__).parameters
    unknown = sorted(key for key in kwargs if key not in known)
    if unknown:
        import transformers

        raise BabeltuneError(f"transformers {transformers.__version__}: {cls.__name__} takes no {', '.join(unknown)}, "
                             "which this run sets; install the transformers version babeltune requires "
                             "(pip install -U babeltune, or see its pyproject.toml)")
    return kwargs


def warmup_kwargs(config: "TrainConfig", known: set) -> dict:
    tr = config.training
    if tr.warmup_steps > 0:
        return {"warmup_steps": tr.warmup_steps}
    if tr.warmup_ratio > 0:
        # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio)
        return {"warmup_ratio": tr.warmup_ratio} if "warmup_ratio" in known else {"warmup_steps": tr.warmup_ratio}
    return {}


def training_arguments(config: "TrainConfig", runtime: Runtime, output_dir: Path, has_eval: bool,
                       extra: Optional[dict] = None):
    from transformers import TrainingArguments

    tr, ev = config.training, config.eval
    eval_strategy = ev.evaluation_strategy if has_eval else "no"
    early = ev.early_stopping_patience is not None and eval_strategy != "no"
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), per_device_train_batch_size=tr.per_device_train_batch_size,
        per_device_eval_batch_size=ev.per_device_eval_batch_size,
        gradient_accumulation_steps=runtime.gradient_accumulation_steps or tr.gradient_accumulation_steps,
        learning_rate=tr.learning_rate,
        num_train_epochs=tr.num_train_epochs or 1.0, max_steps=tr.max_steps or -1, weight_decay=tr.weight_decay,
        optim=tr.optimizer, lr_scheduler_type=tr.lr_scheduler_type, max_grad_norm=tr.max_grad_norm,
        logging_strategy="steps", logging_steps=tr.logging_steps, logging_first_step=True, logging_nan_inf_filter=False,
        eval_strategy=eval_strategy, eval_steps=ev.eval_steps, save_strategy=ev.save_strategy, save_steps=tr.save_steps,
        save_total_limit=None,  # rotated by the completion marker, after the new checkpoint is complete
        gradient_checkpointing=tr.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if tr.gradient_checkpointing else None,
        seed=tr.seed, data_seed=tr.seed, bf16=runtime.precision == "bf16", fp16=runtime.precision == "fp16",
        use_cpu=runtime.device == "cpu", report_to=tr.report_to, disable_tqdm=True, remove_unused_columns=False,
        label_names=["labels"], include_num_input_tokens_seen=True, dataloader_num_workers=0,
        load_best_model_at_end=early, metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
    )
    known = set(inspect.signature(TrainingArguments.__init__).parameters)
    kwargs.update(warmup_kwargs(config, known))
    kwargs.update(extra or {})   # e.g. fsdp / fsdp_config for a sharded run
    if "activation_checkpointing" in known:  # the newer name; the old one warns
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
        kwargs["activation_checkpointing_kwargs"] = kwargs.pop("gradient_checkpointing_kwargs")
    return TrainingArguments(**known_arguments(TrainingArguments, kwargs))


def keep_to_one_gpu(args, echo: Callable) -> None:
    """A single process on a machine with several GPUs: the HF Trainer would wrap the model in DataParallel
    (slower than DDP, and it scatters batches away from the GPU the backend loaded the model on)."""
    if distributed.world_size() == 1 and getattr(args, "n_gpu", 1) > 1:
        echo(f"{args.n_gpu} GPUs visible: training on one (data-parallel over several: train --gpus {args.n_gpu})")
        args._n_gpu = 1


def build_optimizer(backend: Backend, model: Any, config: "TrainConfig", args: Any):
    """The backend's parameter groups (e.g. a lower lr for embeddings) with the configured optimizer class."""
    groups = backend.optimizer_param_groups(model, config)
    if not groups:
        return None
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **optimizer_kwargs)


def plugin_callbacks(config: "TrainConfig") -> list:
    from babeltune.trainer.plugins import get_plugin_manager

    return [callback for result in get_plugin_manager().hook.extra_callbacks(config=config) for callback in (result or [])]


def core_callbacks(config: "TrainConfig", output_dir: Path, expected: list[str], echo: Callable,
                   record: Optional[dict] = None) -> dict[str, Any]:
    callbacks = {
        "progress": cb.progress_callback(echo), "metrics": cb.metrics_callback(output_dir),
        "plot": cb.loss_plot_callback(output_dir, title=cb.loss_plot_title(output_dir, config.model.name, config.language)),
        "complete": completion_marker_callback(config.training.save_total_limit, record),
        "nan": cb.nan_guard_callback(config.training.max_nonfinite_losses),
        "grad": cb.gradient_check_callback(expected),
    }
    if config.eval.early_stopping_patience is not None:
        from transformers import EarlyStoppingCallback

        callbacks["early"] = EarlyStoppingCallback(early_stopping_patience=config.eval.early_stopping_patience,
                                                   early_stopping_threshold=config.eval.early_stopping_threshold)
    return callbacks


def make_trainer(backend: Backend, loaded, data: "PreparedData", args, callbacks: list, config: "TrainConfig"):
    from transformers import PrinterCallback, Trainer

    trainer_cls = trainer_class_stopping_at_max_steps(lean_trainer_class(backend.trainer_class() or Trainer))
    if fsdp.active(config):   # the Trainer must build the optimizer itself, before sharding swaps the parameters
        trainer_cls, optimizer = fsdp.with_backend_optimizer(trainer_cls, backend, config), None
    else:
        optimizer = build_optimizer(backend, loaded.model, config, args)
    trainer = trainer_cls(model=loaded.model, args=args, data_collator=data.collator, train_dataset=data.train,
                          eval_dataset=data.eval, processing_class=loaded.tokenizer, callbacks=callbacks,
                          optimizers=(optimizer, None))
    trainer.remove_callback(PrinterCallback)  # our progress callback prints the logs
    return trainer


# ---------------------------------------------------------------------------------------------
# Steps after training


def last_logged_loss(log_history: list[dict]) -> Optional[float]:
    for record in reversed(log_history):
        if "loss" in record:
            return float(record["loss"])
    return None


def nonfinite_error(guard, config: "TrainConfig", output_dir: Path) -> BabeltuneError:
    good = [p for step, p, ok in list_checkpoints(output_dir) if ok and step < (guard.first_step or 0)]
    keep = f"last good checkpoint: {good[-1]} (resume from it with a lower learning rate)" if good else "no checkpoint was saved before it"
    causes = [f"training: likely cause {i}: {cause}" for i, cause in enumerate(cb.nonfinite_causes(config), 1)]
    return BabeltuneError(f"training: {guard.count} optimizer steps with a non-finite loss (first at step {guard.first_step}); "
                          f"stopped; {keep}", *causes)


def write_heldout(texts: list[str], output_dir: Path) -> Path:
    from babeltune.atomic import atomic_write_text

    return atomic_write_text(output_dir / HELDOUT_FILE, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))


FORGETTING_SENTENCES = 200   # per eval.forgetting language: ~20k characters, seconds on a GPU, ~1 min on a CPU


def forgetting_texts(config: "TrainConfig") -> dict[str, list[str]]:
    """eval.forgetting: the first FORGETTING_SENTENCES shipped reference sentences of each language but the run's own."""
    from babeltune.languages.profiles import get_profile, reference_lines

    own = config.language.strip().lower()
    texts = {}
    for code in config.eval.forgetting:
        profile = get_profile(code)
        if own not in (profile.code, profile.iso639_1, profile.iso639_3):
            texts[profile.code] = [line for line in reference_lines(profile) or [] if line.strip()][:FORGETTING_SENTENCES]
    return texts


def evaluate_heldout(config: "TrainConfig", model, tokenizer, heldout: Path, output_dir: Path, echo: Callable) -> Path:
    """Bits per character on the held-out split (+ eval.extra_corpora and eval.forgetting's reference sentences),
    before and after the adapter."""
    from babeltune.corpus.reader import CorpusSpec
    from babeltune.trainer.evaluate import evaluate_corpora

    corpora: dict[str, Any] = {config.language: CorpusSpec(path=str(heldout), text_field="text")}
    corpora.update(config.eval.extra_corpora)
    corpora.update({code: lines for code, lines in forgetting_texts(config).items() if code not in corpora})
    report = evaluate_corpora(config.model.name, corpora, model=model, tokenizer=tokenizer,
                              max_documents=config.eval.max_eval_documents, max_length=config.model.max_seq_length,
                              batch_size=config.eval.per_device_eval_batch_size, echo=echo)
    path = report.write_json(output_dir / EVAL_REPORT)
    from babeltune.console import table_console

    table_console(stderr=True).print(report.render_table())   # off a terminal: wide, numbers never cut
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunContext:
    """What one run is given: the config as the user gave it and where and how it runs (fixed from the start)."""

    config: "TrainConfig"
    output_dir: Path
    echo: Callable[[str], Any]
    started: float
    record: dict                                        # the config and corpus hashes every checkpoint records
    checkpoint: Optional[Path] = None                   # the checkpoint this run resumes from
    trainable: dict = field(default_factory=dict)       # trainable / total parameters at load (manifest)
    allow_config_change: bool = False
    resume_command: Optional[str] = None                # said when a signal stops the run


@dataclass
class Loaded:
    """The load phase's result: where it runs, the backend, its model and tokenizer, and the prepared data."""

    runtime: Runtime
    backend: Backend
    model: LoadedModel
    data: "PreparedData"


@dataclass
class Trained:
    """The train phase's result."""

    trainer: Any                                        # the transformers Trainer after .train()
    sharding: Any = None                                # FSDP: the callback that recorded the sharding plan
    peak_memory: Optional[list] = None                  # GPU: each rank's peak reserved memory during training (GiB)
    gathered: Optional[dict] = None                     # FSDP: the full trainable tensors, on rank 0


@dataclass
class Outputs:
    """The output phase's result (rank 0 only)."""

    adapter_dir: Path
    reload_check: Any                                   # export.ReloadCheck
    eval_report: Optional[Path]
    merged_dir: Optional[Path]


def load_phase(run: RunContext, backend: Optional[Backend]) -> Loaded:
    """Runtime, seed, backend load (the seed comes first: the adapter's initial weights depend on it), data."""
    from babeltune.trainer.data import prepare_data

    config, echo = run.config, run.echo
    runtime = make_runtime(config, echo)
    echo(f"device {runtime.device}, precision {runtime.precision}, model {runtime.model_dir}")
    seed_everything(config.training.seed)
    chosen = pick_backend(backend, config, echo)
    fsdp.check_backend(config, chosen)
    loaded = chosen.load(config, runtime)
    for note in loaded.notes:
        echo(f"{chosen.name}: {note}")
    trainable, total, share = trainable_share(loaded.model)
    run.trainable = {"trainable": trainable, "total": total, "percent": round(share, 4)}
    if run.checkpoint is not None:
        check_trainable_names(run.checkpoint, loaded.model)   # cannot be overridden: checked first
        run.record["config_changes"] = resume_config.resume_history(
            run.checkpoint, run.record, allow=run.allow_config_change, echo=echo)
        echo(f"resume: from {run.checkpoint}")
    data = prepare_data(config, loaded.tokenizer, padding_free=loaded.padding_free, packed_rows=loaded.packed_rows)
    for note in data.notes:
        echo(f"data: {note}")
    echo(f"data: {data.stats['train_rows']} train rows ({data.stats['train_tokens']:,} tokens), "
         f"{data.stats['eval_documents']} held-out documents from {data.heldout_source}")
    return Loaded(runtime, chosen, loaded, data)


def newest_complete_up_to(output_dir: Path, step: int) -> Optional[Path]:
    complete = [path for found, path, ok in list_checkpoints(output_dir) if ok and found <= step]
    return complete[-1] if complete else None


def train_phase(run: RunContext, loaded: Loaded) -> Trained:
    """The Trainer's loop. One process: Ctrl-C/SIGTERM saves a checkpoint at the step boundary, then stops."""
    import contextlib

    from babeltune.trainer import interrupt

    config, output_dir, model = run.config, run.output_dir, loaded.model
    output_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(config, loaded.runtime, output_dir, has_eval=loaded.data.eval is not None,
                              extra=fsdp.training_kwargs(config, model.model))
    keep_to_one_gpu(args, run.echo)
    stop = interrupt.GracefulStop()
    graceful = distributed.world_size() == 1
    callbacks = {**({"stop": interrupt.stop_callback(stop)} if graceful else {}),   # before the marker and NaN guard
                 **core_callbacks(config, output_dir, model.expected_trainable, run.echo, run.record)}
    if fsdp.active(config):   # first: the completion marker must come after the checkpoint's adapter
        callbacks = {"fsdp_adapter": fsdp.checkpoint_adapter_callback(),
                     "fsdp_plan": fsdp.sharding_plan_callback(run.echo), **callbacks}
    trainer = make_trainer(loaded.backend, model, loaded.data, args, list(callbacks.values()) + plugin_callbacks(config),
                           config)
    sharded = fsdp.check_trainer(config, trainer)
    if sharded:
        run.echo(sharded)
    with stop if graceful else contextlib.nullcontext():
        try:
            trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
        except KeyboardInterrupt:
            if not stop.requested:
                raise
            step = trainer.state.global_step
            raise interrupt.aborted_error(stop, newest_complete_up_to(output_dir, step), run.resume_command) from None
    if callbacks["nan"].tripped:
        raise nonfinite_error(callbacks["nan"], config, output_dir)
    if stop.requested:
        state = trainer.state
        raise interrupt.interrupted_error(stop, state.global_step, state.max_steps,
                                          newest_complete_up_to(output_dir, state.global_step), run.resume_command)
    trained = Trained(trainer, sharding=callbacks.get("fsdp_plan"),
                      peak_memory=distributed.peak_memory_per_rank())   # before the reload check adds its own
    if getattr(trainer, "is_fsdp_enabled", False):   # a collective: every rank gathers, rank 0 keeps the tensors
        trained.gathered = fsdp.gather_trainable(trainer.model)
    return trained


def output_phase(run: RunContext, loaded: Loaded, trained: Trained, *, merge: bool, evaluate: bool) -> Outputs:
    """Save the adapter, prove it reloads, score the held-out split, merge on request."""
    from babeltune.trainer import export

    config, model, output_dir, echo, runtime = run.config, loaded.model, run.output_dir, run.echo, loaded.runtime
    trained.trainer.optimizer = None  # free optimizer state before the reload check loads a second copy
    precision = "4bit" if config.model.load_in_4bit else runtime.precision
    if trained.gathered is not None:   # FSDP: the trained tensors were gathered from every rank
        adapter_dir, check, reloaded = fsdp.finish_on_main_process(run, loaded, trained, precision)
    else:
        adapter_dir = export.save_final(trained.trainer.model, model.tokenizer, config, output_dir / ADAPTER_DIR,
                                        model_dir=runtime.model_dir)
        check, reloaded = export.reload_check(trained.trainer.model, adapter_dir, runtime.model_dir, model.tokenizer,
                                              loaded.data.eval_texts, precision=precision,
                                              max_length=config.model.max_seq_length)
    compared = "tensor" if trained.gathered is not None else "logit"
    echo(f"reload check: saved adapter matches the trained model (relative {compared} difference {check.relative_diff:.1e}; "
         f"adapter effect {check.adapter_effect:.1e})")
    heldout = write_heldout(loaded.data.eval_texts, output_dir)
    # scored with the adapter as reloaded from disk: what a user of the output folder gets
    report = evaluate_heldout(config, reloaded, model.tokenizer, heldout, output_dir, echo) if evaluate else None
    merged_dir = export.merge(reloaded, model.tokenizer, output_dir / MERGED_DIR, adapter_dir=adapter_dir,
                              model_dir=runtime.model_dir) if merge else None
    return Outputs(adapter_dir, check, report, merged_dir)


def manifest_extra(run: RunContext, loaded: Loaded, trained: Trained, outputs: Outputs) -> dict[str, Any]:
    state, model, data = trained.trainer.state, loaded.model, loaded.data
    return {
        "backend_notes": model.notes, "trainable_parameters": run.trainable, "attn_implementation": model.attn_implementation, "data": data.stats,
        "data_notes": data.notes, "heldout_source": data.heldout_source,
        "resumed_from": str(run.checkpoint) if run.checkpoint else None,
        "resume": {"from": str(run.checkpoint), "config_changes": run.record.get("config_changes", [])}
                  if run.checkpoint else None,
        "result": {"steps": state.global_step, "max_steps": state.max_steps, "final_loss": last_logged_loss(state.log_history),
                   "stopped_early": state.global_step < state.max_steps, "tokens_seen": state.num_input_tokens_seen,
                   "seconds": round(time.time() - run.started, 1)},
        "reload_check": outputs.reload_check.to_dict(),
        "eval_report": str(outputs.eval_report) if outputs.eval_report else None,
        "merged_dir": str(outputs.merged_dir) if outputs.merged_dir else None,
        "fsdp": trained.sharding.plan if trained.sharding is not None else None,
        "gpu_peak_reserved_gib_per_rank": trained.peak_memory,
    }


def run_result(run: RunContext, loaded: Loaded, trained: Trained, manifest: Path,
               outputs: Optional[Outputs] = None) -> RunResult:
    """The RunResult of every process: rank 0 with its outputs; another rank (``outputs`` None) with the steps."""
    state = trained.trainer.state
    return RunResult(output_dir=run.output_dir, final_loss=last_logged_loss(state.log_history), steps=state.global_step,
                     eval_report=outputs.eval_report if outputs else None,
                     adapter_dir=outputs.adapter_dir if outputs else run.output_dir, manifest=manifest,
                     merged_dir=outputs.merged_dir if outputs else None, resumed_from=run.checkpoint,
                     stopped_early=state.global_step < state.max_steps if outputs else False,
                     notes=list(loaded.model.notes) + loaded.data.notes if outputs else [])


def run_training(config: "TrainConfig", *, backend: Optional[Backend] = None, resume: Union[str, bool, None] = None,
                 merge: bool = False, echo: Callable[[str], Any] = print, config_file: Optional[str] = None,
                 evaluate: bool = True, allow_config_change: bool = False, overwrite: bool = False,
                 resume_command: Optional[str] = None) -> RunResult:
    """Train ``config`` end to end with the backend config.backend.name selects (``backend``: a Backend instance
    to use instead, e.g. a test double); ``resume`` True = the last complete checkpoint in output_dir, a path =
    that checkpoint; a config that differs from the checkpoint's in values that shape training needs
    ``allow_config_change``; ``overwrite`` removes an earlier run's outputs from output_dir first (a fresh run
    refuses a non-empty one otherwise); ``resume_command`` is the command line shown when Ctrl-C/SIGTERM stops
    the run. ``config`` is saved as given: what only this run's processes change (the accumulation per process
    under torchrun) lives in the Runtime."""
    import contextlib

    from babeltune.trainer.output_dir import RunLock, check_output_dir

    run = RunContext(config, Path(config.training.output_dir), echo, time.time(), record=resume_config.run_record(config),
                     allow_config_change=allow_config_change, resume_command=resume_command)
    main = distributed.is_main_process()           # rank 0 alone locks and checks the folder it writes
    if main:
        check_writable(run.output_dir, "training.output_dir", folder=True)   # before minutes of loading
    with RunLock(run.output_dir, echo) if main else contextlib.nullcontext():
        run.checkpoint = resolve_resume(resume, run.output_dir, echo)
        if main:   # resuming from another folder's checkpoint writes into this one as a new run would
            in_place = run.checkpoint is not None and run.checkpoint.parent.resolve() == run.output_dir.resolve()
            check_output_dir(run.output_dir, resuming=in_place, overwrite=overwrite, echo=echo)
        return run_phases(run, backend, merge=merge, evaluate=evaluate, config_file=config_file)


def run_phases(run: RunContext, backend: Optional[Backend], *, merge: bool, evaluate: bool,
               config_file: Optional[str]) -> RunResult:
    """load -> train -> (rank 0) outputs -> manifest, each phase taking the results of the ones before."""
    from babeltune.trainer import manifest

    fsdp.check_config(run.config, run.echo)
    loaded = load_phase(run, backend)
    trained = train_phase(run, loaded)
    if not trained.trainer.is_world_process_zero():  # distributed: rank 0 saves, checks and evaluates
        return run_result(run, loaded, trained, run.output_dir / manifest.MANIFEST)
    outputs = output_phase(run, loaded, trained, merge=merge, evaluate=evaluate)
    path = manifest.write_manifest(run.output_dir, manifest.build_manifest(
        run.config, loaded.runtime, backend=loaded.backend.name, config_file=config_file,
        tokenizer_dir=outputs.adapter_dir, extra=manifest_extra(run, loaded, trained, outputs)))
    report = outputs.eval_report
    run.echo(f"done: adapter in {outputs.adapter_dir}, manifest {path}" + (f", eval {report}" if report else ""))
    return run_result(run, loaded, trained, path, outputs)
