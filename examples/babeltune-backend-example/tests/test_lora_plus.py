"""The LoRA+ plugin as a user of the installed package sees it: found through the `babeltune` entry
point, loads a tiny random Llama, gives lora_B a higher learning rate, and trains (the loss falls)."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

TEXT = ["LoRA+ trains the B matrices faster than the A matrices.",
        "A small model built from a config needs no downloaded weights.",
        "The quick brown fox jumps over the lazy dog, again and again."] * 4


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>", "<pad>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, eos_token_id=0,
                                 pad_token_id=1)).save_pretrained(folder)
    return folder


def config_for(folder, **options):
    from babeltune.config import validate_config

    return validate_config({
        "language": "en", "model": {"name": str(folder), "max_seq_length": 32},
        "data": {"train": "unused.txt"}, "eval": {"evaluation_strategy": "no"},
        "adapter": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "training": {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_steps": 12,
                     "gradient_checkpointing": False},
        "backend": {"name": "lora-plus", "options": options},
    })


def test_entry_point_is_declared():
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="babeltune")}
    assert names.get("lora-plus") == "babeltune_lora_plus.plugin"


def train_losses(tiny_model_dir, ratio: float, steps: int = 12) -> list[float]:
    from babeltune.trainer.backend import Runtime
    from babeltune.trainer.plugins import reset_plugin_manager, select_backend

    reset_plugin_manager()
    backend = select_backend("lora-plus")
    config = config_for(tiny_model_dir, loraplus_lr_ratio=ratio)
    torch.manual_seed(0)
    loaded = backend.load(config, Runtime(device="cpu", precision="fp32", model_dir=str(tiny_model_dir)))
    assert any(note.startswith(f"LoRA+: lora_B learns at {ratio:g}x") for note in loaded.notes)
    groups = {group["name"]: group for group in backend.optimizer_param_groups(loaded.model, config)}
    assert groups["lora_B"]["lr"] == pytest.approx(1e-3 * ratio) and groups["lora_A"]["lr"] == pytest.approx(1e-3)
    optimizer = torch.optim.AdamW(list(groups.values()))
    batch = loaded.tokenizer(TEXT[:4], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loaded.model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_lora_plus_trains_faster_than_plain_lora(tiny_model_dir):
    plain = train_losses(tiny_model_dir, ratio=1)     # ratio 1 is ordinary LoRA
    plus = train_losses(tiny_model_dir, ratio=16)
    assert plain[0] == pytest.approx(plus[0])         # same seed, same start
    assert plus[-1] < plain[-1] - 0.05, (plain, plus)


def test_bad_ratio_is_a_clear_error(tiny_model_dir):
    from babeltune.errors import BabeltuneError
    from babeltune_lora_plus.plugin import lr_ratio

    with pytest.raises(BabeltuneError, match="loraplus_lr_ratio"):
        lr_ratio(config_for(tiny_model_dir, loraplus_lr_ratio=0.5))
