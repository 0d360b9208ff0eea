"""Sharded training: `train --gpus N --fsdp` (or ``training.distributed: fsdp``, which `advise --gpus N` writes when
the model does not fit one GPU).

The same torchrun launcher as data parallel starts one process per GPU; each process then asks the HF Trainer for
PyTorch FSDP2 (``fully_shard``) through accelerate's FSDP plugin instead of DDP:

- one FSDP unit per decoder layer (the model's ``_no_split_modules`` class, e.g. ``LlamaDecoderLayer``), so only a
  layer or two are gathered in full at a time; the embeddings, final norm and lm_head form one unit that accelerate
  keeps gathered from the forward to the backward pass;
- the frozen base weights stay in the run's dtype and are sharded N ways; the trainable adapter weights are fp32
  (FSDP2 needs one original dtype among the trainable parameters of a unit) and sharded too, with their gradients
  and optimizer state;
- the loaders leave the model on the CPU; ``fully_shard`` moves each unit's shard onto its GPU;
- checkpoints are written in shards (``SHARDED_STATE_DICT`` with the adapter only: every rank writes its part of
  ``pytorch_model_fsdp_0/`` and ``optimizer_0/`` into the one ``checkpoint-N`` folder) and resume on the same number
  of GPUs;
- the final adapter: every rank takes part in gathering the trainable tensors, rank 0 alone writes them with
  ``PeftModel.save_pretrained``, frees the sharded model and checks the folder by loading it with
  ``PeftModel.from_pretrained`` on one device (``finish_on_main_process``).

accelerate runs FSDP only on accelerators (on CPU its state stays MULTI_CPU, i.e. DDP), so ``check_trainer`` refuses
a run whose Trainer did not really shard instead of letting it train unsharded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.trainer import distributed
from babeltune.trainer.base_view import base_model_view

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

STATE_DICT_TYPE = "SHARDED_STATE_DICT"
# The note the reload check carries under FSDP (the sharded model cannot run a forward pass on rank 0 alone).
SHARDED_CHECK_NOTE = ("FSDP: the saved adapter's tensors compared with the trained ones gathered from all ranks; "
                      "the adapter's effect measured on the reloaded model")


def requested(config: "TrainConfig") -> bool:
    return config.training.distributed == "fsdp"


def active(config: "TrainConfig") -> bool:
    """FSDP is asked for and there is more than one process to shard over."""
    return requested(config) and distributed.world_size() > 1


def check_config(config: "TrainConfig", echo: Callable[[str], Any]) -> None:
    """What FSDP cannot shard in these releases, as one error line naming the key; a note when there is one
    process (nothing to shard: the run trains as on one GPU)."""

    if not requested(config):
        if distributed.fsdp_enabled() and distributed.world_size() > 1:   # `accelerate launch` with an FSDP config file
            raise BabeltuneError("training.distributed: ddp, but accelerate launch asked for FSDP (ACCELERATE_USE_FSDP); "
                                 "add --set training.distributed=fsdp, or run train --gpus N --fsdp")
        return
    if config.model.load_in_4bit:
        raise BabeltuneError("training.distributed: fsdp shards bf16 weights, but model.load_in_4bit is true (bitsandbytes "
                             "4-bit weights are not shardable here); set model.load_in_4bit: false, or "
                             "training.distributed: ddp for QLoRA on every GPU")
    if distributed.world_size() == 1:
        echo("training.distributed: fsdp, but one process: nothing to shard, training on one device "
             "(train --gpus N shards over N GPUs)")


def check_backend(config: "TrainConfig", backend: Any) -> None:
    if active(config) and not backend.supports_fsdp:
        raise BabeltuneError(f"training.distributed: fsdp, but backend {backend.name} cannot shard its model with FSDP; "
                             "use --backend hf-peft, or training.distributed: ddp")


def decoder_layer_classes(model: Any) -> list[str]:
    """Class names of the decoder layers to wrap one FSDP unit each: the model's ``_no_split_modules`` that it
    really contains (a PEFT model is searched through to its base model)."""
    present = {type(module).__name__ for module in model.modules()}
    declared: list[str] = []
    for module in model.modules():
        for name in getattr(module, "_no_split_modules", None) or []:
            if name in present and name not in declared:
                declared.append(name)
    if not declared:
        declared = sorted(name for name in present if name.endswith("DecoderLayer"))
    if not declared:
        raise BabeltuneError(f"training.distributed: fsdp needs the decoder layer class to shard by, and "
                             f"{type(model).__name__} names none (_no_split_modules); use training.distributed: ddp")
    return declared


def fsdp_config(layer_classes: list[str]) -> dict[str, Any]:
    """The HF Trainer's ``fsdp_config`` (accelerate's FSDP plugin): FSDP2, one unit per decoder layer, sharded
    adapter-only checkpoints, parameters gathered per layer (ZeRO-3-like). Gradient checkpointing stays the
    Trainer's (training.gradient_checkpointing), applied by the backend before sharding."""
    return {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": layer_classes,
            "state_dict_type": STATE_DICT_TYPE, "reshard_after_forward": True, "cpu_ram_efficient_loading": False}


def training_kwargs(config: "TrainConfig", model: Any) -> dict[str, Any]:
    """Extra TrainingArguments for a sharded run ({} when FSDP is off or there is one process)."""
    if not active(config):
        return {}
    return {"fsdp": True, "fsdp_config": fsdp_config(decoder_layer_classes(model))}


def with_backend_optimizer(trainer_cls: type, backend: Any, config: "TrainConfig") -> type:
    """A Trainer class that builds the backend's optimizer parameter groups itself: under FSDP the Trainer refuses
    a ready optimizer (it must be made on the parameters that accelerate then swaps for their shards)."""

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        groups = backend.optimizer_param_groups(opt_model, config) if self.optimizer is None else None
        if not groups:
            return trainer_cls.create_optimizer(self, model)
        optimizer_cls, optimizer_kwargs = trainer_cls.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    return type(f"Sharded{trainer_cls.__name__}", (trainer_cls,), {"create_optimizer": create_optimizer})


def check_trainer(config: "TrainConfig", trainer: Any) -> Optional[str]:
    """Refuse a run that asked for FSDP but whose Trainer would not shard; returns the log line when it does."""
    if not active(config):
        return None
    if not getattr(trainer, "is_fsdp_enabled", False):
        raise BabeltuneError("training.distributed: fsdp, but accelerate did not enable FSDP here (it shards only on "
                             "GPUs/accelerators; on CPU it would run data parallel); run on GPUs or set "
                             "training.distributed: ddp")
    plugin = trainer.accelerator.state.fsdp_plugin
    layers = ", ".join(getattr(plugin, "transformer_cls_names_to_wrap", None) or [])
    return (f"fsdp: FSDP{plugin.fsdp_version} over {distributed.world_size()} processes, one unit per {layers}; "
            f"frozen base weights and the adapter sharded {distributed.world_size()} ways; sharded checkpoints")


def gather_trainable(model: Any) -> dict[str, Any]:
    """The full trainable tensors (CPU, fp32 as trained) on rank 0; every rank must call this, in the same order,
    because gathering a shard is a collective. Other ranks get {}."""
    import torch

    gathered = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if hasattr(param, "full_tensor") else param.detach()
        if distributed.is_main_process():
            gathered[name] = full.detach().to("cpu", copy=True)
        del full
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return gathered


def sharding_plan(model: Any) -> dict[str, Any]:
    """How the model is really sharded (after accelerate's ``fully_shard``): FSDP modules by class, and the
    parameters each rank holds locally. A collective (the per-rank counts are gathered): every rank calls it."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    units: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            name = type(module).__name__.removeprefix("FSDP")
            units[name] = units.get(name, 0) + 1
    seen, total, local = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        local += param.to_local().numel() if hasattr(param, "to_local") else param.numel()
    per_rank = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        per_rank = [0] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, local)
    return {"units": units, "parameters": total, "local_parameters_per_rank": per_rank}


def describe_plan(plan: dict[str, Any]) -> str:
    units = ", ".join(f"{count} {name}" for name, count in plan["units"].items())
    shares = ", ".join(f"{n:,}" for n in plan["local_parameters_per_rank"])
    return (f"fsdp: sharding plan: {sum(plan['units'].values())} FSDP modules ({units}); parameters held per rank: "
            f"{shares} of {plan['parameters']:,}")


def sharding_plan_callback(echo: Callable[[str], Any]):
    """Reports the sharding plan once the Trainer has sharded the model (on_train_begin comes after prepare)."""
    from transformers import TrainerCallback

    class ShardingPlan(TrainerCallback):
        plan: Optional[dict] = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                self.plan = sharding_plan(model)
                echo(describe_plan(self.plan))
            return control

    return ShardingPlan()


def checkpoint_adapter_callback():
    """A TrainerCallback that also writes the adapter in PEFT's format into each sharded checkpoint-N (gathered by
    every rank, written by rank 0), so `babeltune eval --adapter checkpoint-N` works as after unsharded runs. It must
    run before the completion marker: the gather's closing barrier also waits for every rank's shard files."""
    from transformers import TrainerCallback

    class ShardedCheckpointAdapter(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if model is None:
                return control
            gathered = gather_trainable(model)
            if state.is_world_process_zero and folder.is_dir():
                model.save_pretrained(str(folder), safe_serialization=True, state_dict=gathered)
            return control

    return ShardedCheckpointAdapter()


def save_adapter(model: Any, state_dict: dict[str, Any], tokenizer: Any, config: "TrainConfig", folder: Path,
                 model_dir: Optional[str] = None) -> Path:
    """Rank 0: the gathered adapter through PEFT's own ``save_pretrained`` (it keeps the adapter keys and strips
    the adapter name), the tokenizer and the resolved config, as ``export.save_final`` writes them unsharded."""
    from babeltune.trainer import export

    return export.save_final(model, tokenizer, config, folder, model_dir=model_dir, state_dict=state_dict)


def release_trained_model(trained: Any, loaded: Any) -> bool:
    """Rank 0, after the adapter is saved: drop every reference babeltune and the Trainer hold to the sharded model
    and its optimizer, so its GPU memory is free for the reload check (a model sharded because it does not fit one
    GPU leaves little room beside its shard). Returns whether the model object was really collected."""
    import gc
    import weakref

    import torch

    trainer = trained.trainer
    alive = weakref.ref(trainer.model)
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    for name in ("model", "optimizer", "lr_scheduler"):
        setattr(trainer.callback_handler, name, None)
    for name in ("_models", "_optimizers", "_schedulers"):
        getattr(trainer.accelerator, name, []).clear()
    loaded.model.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return alive() is None


def reload_device(runtime: Any, weights_bytes: int) -> tuple[Any, Optional[str]]:
    """Where rank 0 reloads the saved adapter on a fresh base model: its GPU when the weights fit in the memory
    free there (with a fifth spare for the probe and the evaluation), else the CPU, with the note that says why."""
    import torch

    if runtime.device != "cuda":
        return torch.device("cpu"), None
    device = torch.device(f"cuda:{runtime.local_rank}")
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(device)
    free = min(free, fraction * total - torch.cuda.memory_reserved(device))   # a memory cap counts too
    if free >= weights_bytes * 1.2:
        return device, None
    return torch.device("cpu"), (f"reload check on the CPU: the base weights ({weights_bytes / 2**30:.1f} GiB) do not fit "
                                 f"the {free / 2**30:.1f} GiB free on {device}")


def finish_on_main_process(run: Any, loaded: Any, trained: Any, precision: str) -> tuple[Path, Any, Any]:
    """Rank 0 of a sharded run: save the gathered adapter, free the sharded model, reload the saved folder with
    PeftModel.from_pretrained on one device and check it. Returns (adapter folder, ReloadCheck, reloaded model)."""
    from babeltune.trainer.run import ADAPTER_DIR

    config, model, runtime = run.config, loaded.model, loaded.runtime
    adapter_dir = save_adapter(trained.trainer.model, trained.gathered, model.tokenizer, config,
                               run.output_dir / ADAPTER_DIR, model_dir=runtime.model_dir)
    base = trained.trainer.model.get_base_model()
    dtype = next(p.dtype for p in base.parameters() if not p.requires_grad and p.is_floating_point())
    weights_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    attn = getattr(base.config, "_attn_implementation", None)
    del base
    freed = release_trained_model(trained, loaded)
    device, note = reload_device(runtime, weights_bytes)
    check, reloaded = check_saved_adapter(trained.gathered, adapter_dir, runtime.model_dir, model.tokenizer,
                                          loaded.data.eval_texts, precision=precision,
                                          max_length=config.model.max_seq_length, device=device, dtype=dtype, attn=attn)
    check.notes.append("rank 0 freed the sharded model before the reload" if freed else
                       "rank 0 could not free the sharded model before the reload (still referenced)")
    if note:
        check.notes.append(note)
    return adapter_dir, check, reloaded


def check_saved_adapter(gathered: dict[str, Any], folder: Path, model_dir: str, tokenizer: Any, texts: list[str], *,
                        precision: str, max_length: int, device: Any, dtype: Any, attn: Optional[str]):
    """Rank 0: load the saved folder as a user would (``PeftModel.from_pretrained`` on a fresh base model on one
    device), compare every trainable tensor with the gathered trained one, and measure the adapter's effect on the
    logits (adapter on vs off). Returns (ReloadCheck, reloaded model)."""
    from babeltune.trainer import export

    reloaded = export.load_base_and_adapter(folder, model_dir, dtype=dtype, device=device, attn=attn)
    saved = dict(reloaded.named_parameters())
    missing = sorted(set(gathered) - set(saved))
    if missing:
        raise BabeltuneError(f"{folder}: the reloaded adapter lacks {len(missing)} trained tensors (e.g. {missing[0]}); "
                             "the saved adapter is not the trained one: check adapter_config.json target_modules")
    max_abs = max_rel = 0.0
    for name, trained in gathered.items():
        diff = float((saved[name].detach().float().cpu() - trained.float()).abs().max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(trained.float().abs().max()), 1e-12))
    batch = export.probe_batch(tokenizer, texts, max_length, device)
    adapted = export.logits(reloaded, batch)
    with base_model_view(reloaded, Path(model_dir), adapter_dir=folder):   # BitFit biases back too
        base = export.logits(reloaded, batch)
    _, effect = export.relative(adapted, base)
    tolerance = export.TOLERANCE.get(precision, 3e-2)
    check = export.ReloadCheck(max_abs, max_rel, effect, tolerance, notes=[SHARDED_CHECK_NOTE], unexplained_share=max_rel)
    if effect <= export.NO_EFFECT:
        raise BabeltuneError(f"{folder}: the saved adapter does not change the model (logits equal the base model's, "
                             f"relative difference {effect:.1e}); training did not update it: check learning_rate, "
                             "max_steps and the gradient check in the log")
    if max_rel > tolerance:
        raise BabeltuneError(f"{folder}: the reloaded adapter's tensors differ from the trained ones by {max_rel:.2e} "
                             f"(relative; tolerance {tolerance:g} in {precision}); the saved adapter is not the trained one")
    return check, reloaded


def layer_classes_from_folder(model_dir: str) -> Optional[list[str]]:
    """Decoder layer classes read from a local folder's config.json (no weights loaded), for `--dry-run`;
    None when the model is not a local folder yet (built-in names and GGUF files are converted at launch)."""
    if not (Path(model_dir).expanduser() / "config.json").is_file():
        return None
    from babeltune.models.safety import model_class_for

    return list(getattr(model_class_for(str(Path(model_dir).expanduser())), "_no_split_modules", None) or []) or None


def dry_run_plan(config: "TrainConfig", gpus: int, train_args: list[str]) -> dict[str, Any]:
    """What `train --gpus N [--fsdp]` would start: the worker command, the environment it adds, and (sharded)
    the fsdp arguments the Trainer gets. Loads no weights."""
    plan: dict[str, Any] = {"processes": gpus, "distributed": config.training.distributed if gpus > 1 else "none"}
    if gpus > 1:
        plan["command"] = distributed.torchrun_command(gpus, train_args)
        plan["environment"] = distributed.worker_environment()
    if gpus > 1 and requested(config):
        layers = layer_classes_from_folder(config.model.name)
        plan["fsdp"] = True
        plan["fsdp_config"] = fsdp_config(layers or ["<the model's _no_split_modules, read when it loads>"])
    return plan
