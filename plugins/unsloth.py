"""The unsloth backend: Unsloth's FastLanguageModel (its own kernels and gradient checkpointing) with
the config's LoRA values, and UnslothTrainer for the separate embedding learning rate.

Unsloth is imported only inside ``load``/``trainer_class``: it patches torch and transformers on
import and fails without an NVIDIA GPU, so ``availability`` decides without importing it."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Optional

from babeltune.errors import BabeltuneError
from babeltune.models.safety import check_model_folder, load_kwargs
from babeltune.plugins import toolkit
from babeltune.trainer.backend import Backend, LoadedModel, Runtime
from babeltune.trainer.hookspecs import hookimpl

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

INSTALL_HINT = "pip install 'babeltune[unsloth]'"
CONFIG_DTYPES = {"auto": None, "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def translate_config(config: "TrainConfig") -> dict[str, Any]:
    """The config as Unsloth arguments: FastLanguageModel.from_pretrained, FastLanguageModel.get_peft_model
    and UnslothTrainingArguments (only the keys Unsloth adds; the core builds the rest)."""
    adapter, model = config.adapter, config.model
    from_pretrained = {
        "max_seq_length": model.max_seq_length,
        "dtype": CONFIG_DTYPES[model.dtype],    # None = Unsloth picks bf16 where supported, else fp16
        "load_in_4bit": model.load_in_4bit,
    }
    get_peft_model = {
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        "target_modules": adapter.target_modules,
        "bias": adapter.bias,
        "use_rslora": adapter.use_rslora,
        "use_gradient_checkpointing": "unsloth" if config.training.gradient_checkpointing else False,
        "random_state": config.training.seed,
        "modules_to_save": list(adapter.modules_to_save) or None,
    }
    training_args = {"embedding_learning_rate": adapter.embedding_learning_rate if adapter.modules_to_save else None}
    return {"from_pretrained": from_pretrained, "get_peft_model": get_peft_model, "training_args": training_args}


def vocab_peft_args(get_peft_model, model, extension) -> dict[str, Any]:
    """get_peft_model arguments that train only the new rows (PEFT trainable_token_indices). Training embed_tokens in
    full instead would move every existing row and change other languages, so an Unsloth that cannot pass the
    argument on is refused here, or by the trainable-parameter check right after loading. Not run here (no GPU)."""
    import inspect

    from babeltune.plugins import common
    from babeltune.trainer.vocab import peft_token_indices

    parameters = inspect.signature(get_peft_model).parameters
    if "trainable_token_indices" not in parameters and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        raise BabeltuneError("vocab.extend: this Unsloth's get_peft_model takes no trainable_token_indices, so the new "
                             "rows cannot train alone; use --backend hf-peft or set vocab.extend: 0")
    return {"trainable_token_indices": peft_token_indices(model, extension, common.tied_embeddings(model))}


def unsupported(config: "TrainConfig") -> list[str]:
    """Config values Unsloth's fast path cannot honour; ``load`` refuses them rather than drop them."""
    problems = []
    if config.adapter.use_dora:
        problems.append("adapter.use_dora: Unsloth's fast LoRA kernels do not implement DoRA; use --backend hf-peft")
    if config.model.attn_implementation == "eager":
        problems.append("model.attn_implementation: eager is not used by Unsloth (it picks its own kernels); set auto")
    return problems


class UnslothBackend(Backend):
    name = "unsloth"
    description = "Unsloth FastLanguageModel LoRA/QLoRA with its own kernels and checkpointing (NVIDIA GPU only)"
    kernels = "unsloth"     # Options: none (NoOptions): every value comes from the config's sections

    def availability(self) -> tuple[bool, str]:
        if not cuda_available():
            return False, "no NVIDIA GPU (torch.cuda.is_available() is False)"
        if not unsloth_installed():
            return False, f"unsloth not installed ({INSTALL_HINT})"
        return True, ""

    def translate(self, config: "TrainConfig") -> dict[str, Any]:
        return translate_config(config)

    def prepare_process(self) -> None:
        """Import unsloth now: it patches transformers on import and warns that optimisations may be
        missed when transformers was imported first. ``select_backend`` calls this once the backend is
        chosen and usable, so the core should select the backend before it imports transformers."""
        import_unsloth()

    def load(self, config: "TrainConfig", runtime: Runtime) -> LoadedModel:
        usable, why = self.availability()
        if not usable:
            raise BabeltuneError(f"backend unsloth: {why}; use --backend hf-peft")
        self.parse_options(config)   # it takes none: a stray key is an error, not silently ignored
        problems = unsupported(config)
        if problems:
            raise BabeltuneError(*problems)
        FastLanguageModel = import_unsloth().FastLanguageModel  # imported here only: it patches torch/transformers

        args = translate_config(config)
        check_model_folder(runtime.model_dir)
        from_pretrained = dict(args["from_pretrained"], dtype=toolkit.torch_dtype(runtime.precision), **load_kwargs())
        if runtime.world_size > 1:   # torchrun: each process loads onto its own GPU (Unsloth's default is GPU 0)
            from_pretrained["device_map"] = {"": runtime.local_rank}
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=runtime.model_dir, **from_pretrained)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        from babeltune.trainer.vocab import extend_for_training

        # vocab.extend: the same extended tokenizer, resized rows and mean-of-pieces start as hf-peft (shared code)
        tokenizer, extension, vocab_notes = extend_for_training(config, model, tokenizer)
        peft_args = dict(args["get_peft_model"])
        if extension is not None:
            peft_args.update(vocab_peft_args(FastLanguageModel.get_peft_model, model, extension))
        model = FastLanguageModel.get_peft_model(model, **peft_args)
        loaded = self._loaded(model, tokenizer, config)
        loaded.notes.extend(vocab_notes)
        return loaded

    def _loaded(self, model, tokenizer, config: "TrainConfig") -> LoadedModel:
        from babeltune.plugins.hf_peft import lora_expected_trainable

        expected = lora_expected_trainable(config, model)
        # Unsloth has silently dropped embed_tokens/lm_head from modules_to_save before: check now, and the
        # core checks their gradients after step 1.
        toolkit.check_fragments_trainable(model, expected, "adapter.modules_to_save (unsloth)")
        trainable, total, share = toolkit.trainable_share(model)
        attn = getattr(model.config, "_attn_implementation", None) or "unsloth"
        notes = [f"unsloth {_version('unsloth')}: attention {attn}, gradient checkpointing "
                 f"{'unsloth' if config.training.gradient_checkpointing else 'off'}",
                 f"trainable: {trainable:,} of {total:,} parameters ({share:.3f}%)",
                 "kernels: unsloth (fused rmsnorm, swiglu, rope, cross-entropy and LoRA kernels)"]
        if config.adapter.modules_to_save:
            notes.append(f"modules_to_save {config.adapter.modules_to_save} at embedding lr "
                         f"{config.adapter.embedding_learning_rate or config.training.learning_rate:g} (UnslothTrainer)")
        return LoadedModel(model=model, tokenizer=tokenizer, attn_implementation=attn, notes=notes,
                           expected_trainable=expected, padding_free=False)

    def optimizer_param_groups(self, model: Any, config: "TrainConfig") -> Optional[list[dict]]:
        # The same groups as hf-peft (UnslothTrainer keeps an optimizer it is given); when the core lets
        # UnslothTrainer build its own, training_args.embedding_learning_rate gives the same split.
        from babeltune.plugins.hf_peft import saved_module_fragments

        return toolkit.optimizer_param_groups(model, config, special=saved_module_fragments(config, model),
                                             special_lr=config.adapter.embedding_learning_rate)

    def trainer_class(self) -> Optional[type]:
        return babeltune_unsloth_trainer(import_unsloth().UnslothTrainer)

    def training_arguments_class(self) -> Optional[type]:
        """UnslothTrainingArguments (adds ``embedding_learning_rate``); for cores that build their own args."""
        return import_unsloth().UnslothTrainingArguments


def import_unsloth():
    """Import unsloth with its compiled-kernel cache in babeltune's cache folder (by default it writes
    ``unsloth_compiled_cache/`` into the working directory)."""
    import os

    from platformdirs import user_cache_dir

    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", os.path.join(user_cache_dir("babeltune"), "unsloth_compiled_cache"))
    import unsloth

    return unsloth


# babeltune's core hands the trainer rows that are already tokenised and packed, plus its own collator;
# TRL's SFT preparation (tokenising a text field, truncating to max_length, packing, padding-free) must
# not touch them. Set on the core's TrainingArguments, Unsloth copies them into its SFTConfig.
SFT_PASSTHROUGH = {"dataset_kwargs": {"skip_prepare_dataset": True}, "packing": False, "padding_free": False,
                   "max_length": None, "completion_only_loss": False, "assistant_only_loss": False}


def as_hf_dataset(rows):
    """The core's map-style rows (dicts of token lists) as a datasets.Dataset, which TRL requires."""
    if rows is None:
        return None
    from datasets import Dataset, IterableDataset

    if isinstance(rows, (Dataset, IterableDataset)):
        return rows
    return Dataset.from_list([dict(rows[index]) for index in range(len(rows))])


def babeltune_unsloth_trainer(base: type) -> type:
    """UnslothTrainer (TRL's SFTTrainer + Unsloth's embedding-lr optimizer) accepting the core's
    arguments: map-style token rows, the core's collator and optimizer, plain TrainingArguments."""

    class BabeltuneUnslothTrainer(base):
        def __init__(self, *args, train_dataset=None, eval_dataset=None, **kwargs):
            training_args = kwargs.get("args")
            if training_args is not None:
                for key, value in SFT_PASSTHROUGH.items():
                    setattr(training_args, key, value)
            super().__init__(*args, train_dataset=as_hf_dataset(train_dataset),
                             eval_dataset=as_hf_dataset(eval_dataset), **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """transformers' compute_loss: the model's own (Unsloth's fused) loss, as a bare Unsloth loop gets it.
            TRL's SFTTrainer.compute_loss adds entropy and token-accuracy metrics that read three GPU numbers back
            (``.item()``) every micro-step; on the short steps of small models those stalls cost more than the
            step's own work (bench/small_shapes.py), and babeltune logs neither metric."""
            from transformers import Trainer

            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    BabeltuneUnslothTrainer.__name__ = BabeltuneUnslothTrainer.__qualname__ = f"Babeltune{base.__name__}"
    return BabeltuneUnslothTrainer


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@hookimpl
def register_backends(register) -> None:
    register(UnslothBackend())
