"""`train` does the same arithmetic per optimizer step as a bare transformers + PEFT loop (forward with labels,
backward, clip to 1.0 over the trainable parameters, AdamW, zero_grad) given the same batches and the same initial
adapter: loss scaling, label shifting, clipping order, LeanSteps and every core callback leave the numbers alone.
This is the evidence behind issue 12's NaN note (random-init SmolLM2 at lr 2e-4 without warmup reached a NaN
gradient norm in babeltune but not in the bare loop, which had other batches and another adapter init)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "marathi" / "train.txt"


@pytest.fixture()
def step_parity():
    sys.path.insert(0, str(BENCH))
    try:
        import step_parity

        yield step_parity
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_steps_match_the_bare_loop_on_the_same_batches(step_parity, tiny_model_dir, precision):
    result = step_parity.compare(str(tiny_model_dir), str(SAMPLE), batch=2, seq=32, steps=4, lr=2e-4,
                                 precision=precision)
    assert result["babeltune_error"] is None
    assert result["batch_keys"] == ["input_ids", "labels"]          # packed blocks: no mask, no position ids
    assert len(result["steps"]) == 4
    assert result["max_loss_rel_diff"] < 1e-6
    assert result["max_grad_norm_rel_diff"] < 1e-6
