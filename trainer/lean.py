"""Per-step host work of the HF Trainer that a bare training loop does not do, done once instead of every step.

On the small models babeltune advises (135M-270M parameters, 1k-16k tokens per step) a GPU step takes tens of
milliseconds, and the host walks the model's module tree several times per step: a PEFT model of SmolLM2-135M has
2,499 modules and 692 parameters. Measured on an H100 (bench/small_shapes.py, 8 x 128 tokens per step): the bare
loop took 120 ms per step and babeltune 134 ms; the difference was these walks:

- ``model.train()`` at the start of every ``training_step`` (sets the flag on all 2,499 modules);
- ``model.zero_grad()`` after every optimizer step (visits all 692 parameters, 4 % of them trainable);
- ``floating_point_ops`` -> ``model.num_parameters(exclude_embeddings=True)`` every micro-step (only feeds the
  ``total_flos`` statistic);
- gradient clipping over ``model.parameters()`` instead of the trainable ones;
- transformers' token count, which reads a GPU number back every micro-step (a device sync).

Each is replaced by the same result computed from a list made once. Distributed runs (DDP/FSDP/DeepSpeed) keep
transformers' own code: there the wrapped model and its hooks are the Trainer's business.
"""

from __future__ import annotations

from typing import Any


class TrainModeCache:
    """``model.train`` that returns at once when the model is already in training mode. ``model.eval()`` (the
    Trainer's evaluation) calls ``self.train(False)``, which goes through here and invalidates the cache."""

    def __init__(self, model):
        self.model, self.original, self.training = model, model.train, False

    def __call__(self, mode: bool = True):
        if mode and self.training and self.model.training:
            return self.model
        result = self.original(mode)
        self.training = bool(mode)
        return result


class TrainableZeroGrad:
    """``model.zero_grad`` over the parameters that can have a gradient (requires_grad), listed once."""

    def __init__(self, params: list):
        self.params = params

    def __call__(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.detach_()
                    param.grad.zero_()


class LeanSteps:
    """HF Trainer mixin (see the module docstring). Put it first in the bases."""

    def _lean(self) -> bool:
        args = self.args
        return args.world_size == 1 and not getattr(self, "is_fsdp_enabled", False) and \
            not getattr(self, "is_deepspeed_enabled", False)

    def _trainable_params(self) -> list:
        cached = getattr(self, "_babeltune_trainable", None)
        if cached is None:
            cached = self._babeltune_trainable = [p for p in self.model.parameters() if p.requires_grad]
        return cached

    def train(self, *args, **kwargs):
        if not self._lean():
            return super().train(*args, **kwargs)
        model = self.model
        overrides = {"train": TrainModeCache(model), "zero_grad": TrainableZeroGrad(self._trainable_params())}
        for name, value in overrides.items():
            setattr(model, name, value)   # instance attributes shadow the class methods for this run only
        try:
            return super().train(*args, **kwargs)
        finally:
            for name in overrides:
                model.__dict__.pop(name, None)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Same figure as transformers (6 x tokens x non-embedding parameters), the parameter count taken once."""
        count = getattr(self, "_babeltune_flop_params", None)
        if count is None:
            model = self.model
            count = model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
            self._babeltune_flop_params = count
        name = getattr(self.model, "main_input_name", "input_ids")
        return 6 * inputs[name].numel() * count if name in inputs else 0

    def _clip_grad_norm(self, model):
        mixed = getattr(self, "_has_mixed_mesh_grads", None)
        if not self._lean() or (mixed is not None and mixed(model)):
            return super()._clip_grad_norm(model)
        # frozen parameters have no gradient, so the norm over the trainable ones is the same number
        return self.accelerator.clip_grad_norm_(self._trainable_params(), self.args.max_grad_norm)

    def _track_num_input_tokens(self, inputs):
        """Count input tokens from the batch's shape on the host. transformers moves the number to the GPU and reads
        it back (``.item()``) every micro-step, a device sync that stalls the launch queue. Distributed runs and
        non-padding counts keep transformers' way."""
        name = getattr(self.model, "main_input_name", "input_ids")
        mode = self.args.include_num_input_tokens_seen
        if self.args.world_size == 1 and mode in (True, "all") and name in inputs:
            self.state.num_input_tokens_seen += inputs[name].numel()
            return
        return super()._track_num_input_tokens(inputs)


def lean_trainer_class(base: type) -> type:
    """``base`` with LeanSteps in front. A transformers version without one of the overridden methods never calls
    it, so the override is inert there."""
    return type(f"Lean{base.__name__}", (LeanSteps, base), {})
