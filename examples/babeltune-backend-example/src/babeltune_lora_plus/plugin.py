"""LoRA+ (Hayou, Ghosh and Yu, 2024, arXiv:2402.12354): the same LoRA adapter as babeltune's hf-peft
backend, but the B matrices train with a learning rate ``loraplus_lr_ratio`` times higher than the A
matrices, which the paper shows speeds up and improves feature learning at large width.

Everything about loading is inherited from hf-peft (its kernels included); this backend only changes
the optimizer's parameter groups. Option: ``backend.options.loraplus_lr_ratio`` (default 16), declared
in ``LoraPlusOptions`` next to hf-peft's own ``liger``."""

from __future__ import annotations

from pydantic import Field

from babeltune.plugins.hf_peft import HfPeftBackend, HfPeftOptions
from babeltune.trainer.hookspecs import hookimpl

DEFAULT_RATIO = 16.0
NO_DECAY = ("bias", "norm")


class LoraPlusOptions(HfPeftOptions):
    """hf-peft's options (extra="forbid" is inherited: unknown keys are errors) plus the LoRA+ ratio."""

    loraplus_lr_ratio: float = Field(DEFAULT_RATIO, ge=1, le=1000, description=(
        "Learning rate of the lora_B matrices over that of lora_A (Hayou et al. 2024 use 16; 1 = plain LoRA)."))


def lr_ratio(config) -> float:
    return LoraPlusBackend().parse_options(config).loraplus_lr_ratio


class LoraPlusBackend(HfPeftBackend):
    name = "lora-plus"
    description = "LoRA+ : hf-peft LoRA with lora_B at loraplus_lr_ratio x the learning rate (example plugin)"
    Options = LoraPlusOptions

    def load(self, config, runtime):
        loaded = super().load(config, runtime)
        loaded.notes.append(f"LoRA+: lora_B learns at {lr_ratio(config):g}x the learning rate "
                            f"({config.training.learning_rate * lr_ratio(config):g})")
        return loaded

    def optimizer_param_groups(self, model, config):
        lr, decay, ratio = config.training.learning_rate, config.training.weight_decay, lr_ratio(config)
        embedding_lr = config.adapter.embedding_learning_rate or lr
        saved = tuple(f"{name}.modules_to_save" for name in config.adapter.modules_to_save)
        groups = {"lora_A": (lr, decay), "lora_B": (lr * ratio, decay), "no_decay": (lr, 0.0),
                  "embeddings": (embedding_lr, 0.0)}
        members: dict[str, list] = {key: [] for key in groups}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if saved and any(fragment in name for fragment in saved):
                members["embeddings"].append(param)
            elif "lora_B" in name:
                members["lora_B"].append(param)
            elif any(fragment in name.lower() for fragment in NO_DECAY):
                members["no_decay"].append(param)
            else:
                members["lora_A"].append(param)  # lora_A, DoRA magnitudes
        return [{"params": members[key], "lr": lr_, "weight_decay": wd, "name": key}
                for key, (lr_, wd) in groups.items() if members[key]]


@hookimpl
def register_backends(register):
    register(LoraPlusBackend())
