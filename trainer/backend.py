"""The backend contract. A backend owns loading the model and tokenizer for a config, attaching its
adapter, and whatever it must change in the trainer (optimizer parameter groups, its own Trainer
class). The core owns data, the loop, checkpoints, callbacks, metrics, saving and evaluation."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

# What the advisor's memory model sizes for (babeltune.advisor.memory.KERNEL_SETS): transformers + PEFT
# as they are, liger-kernel's fused ops, or Unsloth's own kernels.
Kernels = Literal["plain", "liger", "unsloth"]


class NoOptions(BaseModel):
    """``backend.options`` of a backend that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class Runtime:
    """Facts about where the run happens, decided by the core before the backend loads."""

    device: str                 # "cuda" or "cpu"
    precision: str              # "bf16", "fp16" or "fp32" (resolved from training.precision)
    model_dir: str              # resolved local Hugging Face folder (built-ins converted already)
    world_size: int = 1
    local_rank: int = 0
    gradient_accumulation_steps: Optional[int] = None   # per process under torchrun (the config's / world_size);
                                                        # None = training.gradient_accumulation_steps


@dataclass
class LoadedModel:
    """What ``Backend.load`` returns."""

    model: Any                  # a torch.nn.Module (usually a peft.PeftModel) ready to train
    tokenizer: Any              # a transformers tokenizer with a pad token set
    attn_implementation: str    # what was really used, e.g. "sdpa"
    notes: list[str] = field(default_factory=list)   # lines for the run log and the manifest (why sdpa, no biases for BitFit, ...)
    expected_trainable: list[str] = field(default_factory=list)  # name fragments that must get a non-zero gradient after step 1
    padding_free: bool = False  # flash-attention varlen: a batch may be flattened into one row with position_ids
    packed_rows: bool = False   # sdpa/eager with transformers' packed-sequence mask: documents in a row stay apart


class Backend(abc.ABC):
    """Base class for training backends. Subclass, set ``name`` and ``description``, implement ``load``.

    ``Options`` is the pydantic model ``backend.options`` is validated against (``extra="forbid"``, a
    description on every field; `babeltune plugins --options NAME` shows them); read them with
    ``self.parse_options(config)``. ``kernels`` says which kernels run, so `advise` sizes memory for them."""

    name: str = ""
    description: str = ""
    supports_distributed: bool = True   # may run under torchrun/DDP (`train --gpus N`); False falls back
    Options: ClassVar[type[BaseModel]] = NoOptions
    kernels: Kernels = "plain"

    def parse_options(self, config: "TrainConfig") -> BaseModel:
        """``config.backend.options`` as this backend's Options (defaults filled in); a BabeltuneError with
        one ``backend.options.key: message`` line per problem (unknown keys get a did-you-mean)."""
        from babeltune.config import option_problems
        from babeltune.errors import BabeltuneError

        options, problems = option_problems(self.Options, config.backend.options, self.name)
        if problems:
            raise BabeltuneError(*problems)
        return options
    supports_fsdp: bool = False         # may shard its model under `train --gpus N --fsdp` (the model must stay a
                                        # plain transformers + PEFT module that FSDP2 can wrap); False is refused

    def prepare_process(self) -> None:
        """Per-process setup that must happen before transformers is imported (unsloth imports itself here,
        because it patches transformers on import). Called once the backend is chosen and usable."""

    def availability(self) -> tuple[bool, str]:
        """(usable on this machine, why not). Must not import heavy packages when they are missing."""
        return True, ""

    @abc.abstractmethod
    def load(self, config: "TrainConfig", runtime: Runtime) -> LoadedModel:
        """Load model + tokenizer for ``config`` and attach the adapter. Called once per run, after seeding."""

    def optimizer_param_groups(self, model: Any, config: "TrainConfig") -> Optional[list[dict]]:
        """Parameter groups for the optimizer (e.g. a lower lr for embeddings), or None for the default."""
        return None

    def trainer_class(self) -> Optional[type]:
        """A ``transformers.Trainer`` subclass to use instead of the core's, or None."""
        return None

    def translate(self, config: "TrainConfig") -> dict[str, Any]:
        """The backend's own arguments derived from the config (shown by `train --dry-run`, tested on CPU)."""
        return {}
