"""'Before the adapter' is the base model, also for adapters that train base parameters in place.

With (IA)^3 + BitFit the biases train in place: PEFT's disable_adapter() alone left them trained, so `babeltune
eval --adapter` and the train run's final report scored "before" with the adapter's biases (issue 15)."""

from __future__ import annotations

import math

import pytest
import torch

from babeltune.trainer.backend import Runtime
from babeltune.trainer.base_view import base_model_view, in_place_parameters
from babeltune.trainer.evaluate import evaluate_corpora, evaluate_loaded

from conftest import TEXT, make_config


def trained(backend_name: str, model_dir, lines: list[str], **adapter):
    """A backend's model after three AdamW steps at a high learning rate (every trainable tensor moves)."""
    from babeltune.trainer.plugins import available_backends

    config = make_config(adapter=adapter) if adapter else make_config()
    loaded = available_backends()[backend_name].load(config, Runtime(device="cpu", precision="fp32", model_dir=str(model_dir)))
    batch = loaded.tokenizer(lines[:4], return_tensors="pt", padding=True, truncation=True, max_length=48)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=3e-2)
    loaded.model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loaded.model(**batch, labels=labels).loss.backward()
        optimizer.step()
    return loaded.model.eval(), loaded.tokenizer


def bits(report, language: str = "mr", which: str = "before") -> float:
    return getattr(report.languages[language], which).bits_per_char


@pytest.fixture(scope="module")
def bitfit_adapter(tiny_qwen2_dir, marathi_lines, tmp_path_factory):
    model, tokenizer = trained("ia3", tiny_qwen2_dir, marathi_lines)
    folder = tmp_path_factory.mktemp("bitfit") / "adapter"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def test_bitfit_biases_are_found_and_mapped_to_base_checkpoint_keys(bitfit_adapter):
    model, _, _ = bitfit_adapter
    keys = sorted(in_place_parameters(model))
    assert len(keys) == 6 and all(k.startswith("model.layers.") and k.endswith("_proj.bias") for k in keys)
    assert not any("base_layer" in k for k in keys)


def test_eval_with_a_bitfit_adapter_scores_before_on_the_real_base(tiny_qwen2_dir, bitfit_adapter):
    _, _, folder = bitfit_adapter
    corpora = {"mr": TEXT / "mr.txt"}
    base = evaluate_corpora(str(tiny_qwen2_dir), corpora, max_documents=12, echo=None)
    with_adapter = evaluate_corpora(str(tiny_qwen2_dir), corpora, adapter=str(folder), max_documents=12, echo=None)
    assert bits(with_adapter) == pytest.approx(bits(base), rel=1e-6)     # failed before: biases stayed trained
    assert not math.isclose(bits(with_adapter, which="after"), bits(base), rel_tol=1e-3)


def test_the_trained_model_in_memory_scores_before_on_the_base_and_keeps_its_biases(tiny_qwen2_dir, bitfit_adapter, marathi_lines):
    # The train run's final report scores the model it just trained (evaluate_corpora with model=...).
    model, tokenizer, _ = bitfit_adapter
    corpora = {"mr": TEXT / "mr.txt"}
    trained_biases = {k: p.detach().clone() for k, p in in_place_parameters(model).items()}
    base = evaluate_corpora(str(tiny_qwen2_dir), corpora, max_documents=12, echo=None)
    report = evaluate_corpora(str(tiny_qwen2_dir), corpora, model=model, tokenizer=tokenizer, max_documents=12, echo=None)
    assert bits(report) == pytest.approx(bits(base), rel=1e-6)
    for key, param in in_place_parameters(model).items():       # put back after the block
        assert torch.equal(param, trained_biases[key])


def test_without_the_base_checkpoint_before_says_it_is_not_exact(bitfit_adapter, marathi_lines):
    model, tokenizer, _ = bitfit_adapter
    warnings = []
    with base_model_view(model, None, warn=warnings.append) as exact:
        assert exact is False
    assert warnings and "6 bias tensors" in warnings[0]
    report = evaluate_loaded(model, tokenizer, {"mr": marathi_lines[:4]}, echo=warnings.append)
    assert any("keeps the 6 bias tensors" in w for w in warnings) and report.languages["mr"].after is not None


def test_lora_without_bias_training_needs_nothing_from_the_checkpoint(tiny_model_dir, marathi_lines):
    model, _ = trained("hf-peft", tiny_model_dir, marathi_lines)
    assert in_place_parameters(model) == {}
    with base_model_view(model, None) as exact:
        assert exact is True
