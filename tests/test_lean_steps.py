"""The HF Trainer's per-step walks over the model tree are done once (trainer/lean.py), with the same results:
same losses, same gradient norm, same FLOP count, dropout back on after evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from babeltune.trainer.lean import LeanSteps, TrainableZeroGrad, TrainModeCache

from test_train_e2e import quiet, tiny_config


def lora_model(tiny_model_dir, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def test_train_mode_cache_turns_dropout_back_on_after_eval(tiny_model_dir):
    model = lora_model(tiny_model_dir, dropout=0.5)
    cache = model.train = TrainModeCache(model)
    model.train()
    model.eval()                     # goes through the cache: every submodule leaves training mode
    assert not any(m.training for m in model.modules())
    model.train()                    # and comes back, dropout included
    assert all(m.training for m in model.modules())
    calls = []
    cache.original = lambda mode=True: calls.append(mode)
    model.train()                    # already training: no walk
    assert calls == []


def test_trainable_zero_grad_clears_every_trainable_gradient(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None for p in trainable)
    TrainableZeroGrad(trainable)()
    assert all(p.grad is None for p in model.parameters())


def test_flops_and_clipping_match_transformers(tiny_model_dir, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = lora_model(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_grad_norm=0.01)
    plain = Trainer(model=model, args=args)
    lean = type("LeanTrainer", (LeanSteps, Trainer), {})(model=model, args=args)
    inputs = {"input_ids": torch.randint(0, 100, (3, 16))}
    assert lean.floating_point_ops(inputs) == plain.floating_point_ops(inputs) > 0

    def grads():
        model.zero_grad()
        torch.manual_seed(0)
        ids = torch.randint(0, 100, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()

    grads()
    expected = plain._clip_grad_norm(model)
    clipped = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads()
    assert torch.allclose(lean._clip_grad_norm(model), expected)
    assert all(torch.allclose(a, p.grad) for a, p in zip(clipped, [p for p in model.parameters() if p.grad is not None]))


@pytest.mark.slow   # ~45 s in the fast lane (over ~10 s: slow)
def test_lean_steps_reproduce_transformers_losses_without_per_step_walks(tiny_model_dir, tmp_path, monkeypatch):
    """The same 12-step run with and without the lean mixin: identical loss, grad-norm and eval-loss records, while
    transformers alone walks the whole module tree (model.train(), model.zero_grad()) on every step."""
    from babeltune.trainer import lean, run

    original_train, original_zero = torch.nn.Module.train, torch.nn.Module.zero_grad
    walks = {}

    def counted(name, original):
        def method(self, *args, **kwargs):
            if type(self).__name__ == "PeftModelForCausalLM":
                walks[name] = walks.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return method

    monkeypatch.setattr(torch.nn.Module, "train", counted("train", original_train))
    monkeypatch.setattr(torch.nn.Module, "zero_grad", counted("zero_grad", original_zero))

    def run_once(folder, mixin):
        walks.clear()
        monkeypatch.setattr(run, "lean_trainer_class", lean.lean_trainer_class if mixin else (lambda base: base))
        config = tiny_config("tiny-cpt.yaml", tiny_model_dir, tmp_path / folder, "eval.early_stopping_patience=null")
        result = run.run_training(config, echo=quiet, evaluate=False)
        assert result.steps == 12 and math.isfinite(result.final_loss)
        records = map(json.loads, (tmp_path / folder / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("eval_loss")) for r in records], dict(walks)

    lean_records, lean_walks = run_once("lean", True)
    plain_records, plain_walks = run_once("plain", False)
    assert lean_records == plain_records
    # 12 steps, less the two returns to training mode after the evaluations at steps 6 and 12
    assert plain_walks["train"] - lean_walks.get("train", 0) >= 10, (plain_walks, lean_walks)
    assert plain_walks["zero_grad"] - lean_walks.get("zero_grad", 0) >= 12, (plain_walks, lean_walks)
