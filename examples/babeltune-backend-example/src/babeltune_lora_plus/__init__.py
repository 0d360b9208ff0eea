"""LoRA+ for babeltune (an example third-party backend plugin)."""

__version__ = "0.1.0"
