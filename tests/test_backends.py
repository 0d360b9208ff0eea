"""The built-in backends on CPU with the tiny random Llama (and a tiny Qwen2 with biases for BitFit):
each loads, one forward/backward on real Marathi text gives non-zero gradients on everything it says
must train, parameter groups carry the embedding lr, and unsloth translates the config and explains
why it cannot run here."""

from __future__ import annotations

import math

import pytest
import torch

from babeltune.errors import BabeltuneError
from babeltune.trainer.backend import Runtime

from conftest import config_maker


make_config = config_maker(training={"learning_rate": 2e-4, "weight_decay": 0.01})


def cpu_runtime(model_dir) -> Runtime:
    return Runtime(device="cpu", precision="fp32", model_dir=str(model_dir))


def backward_on(loaded, lines: list[str]) -> dict[str, float]:
    """Step 1 (forward, backward, AdamW step), then the gradients of step 2 on real lines, per trainable
    parameter name. Step 2, as in the core's check: LoRA's B starts at zero, so A's first gradient is 0."""
    batch = loaded.tokenizer(lines[:2], return_tensors="pt", padding=True, truncation=True, max_length=48)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loaded.model.train()
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        loss = loaded.model(**batch, labels=labels).loss
        assert math.isfinite(loss.item())
        loss.backward()
        grads = {name: (0.0 if p.grad is None else p.grad.abs().sum().item())
                 for name, p in loaded.model.named_parameters() if p.requires_grad}
        optimizer.step()
    return grads


def assert_expected_got_gradients(loaded, grads: dict[str, float]) -> None:
    assert loaded.expected_trainable
    for fragment in loaded.expected_trainable:
        matching = {name: g for name, g in grads.items() if fragment in name}
        assert matching, f"{fragment} matches no trainable parameter"
        assert any(g > 0 for g in matching.values()), f"{fragment}: all gradients are zero"


def backend(name):
    from babeltune.trainer.plugins import available_backends

    return available_backends()[name]


# --------------------------------------------------------------------------------------- hf-peft


def test_hf_peft_lora_with_embeddings_trains_and_groups_lr(tiny_model_dir, marathi_lines):
    config = make_config(adapter={"r": 4, "lora_alpha": 8, "use_rslora": True,
                                  "modules_to_save": ["embed_tokens", "lm_head"], "embedding_learning_rate": 2e-5},
                         training={"gradient_checkpointing": True})
    hf = backend("hf-peft")
    loaded = hf.load(config, cpu_runtime(tiny_model_dir))
    assert loaded.attn_implementation == "sdpa"
    assert any(note.startswith("attention: sdpa") and "flash_attention_2" in note for note in loaded.notes)
    assert any("tied embeddings" in note for note in loaded.notes)
    assert loaded.padding_free is False and loaded.packed_rows is True   # sdpa masks packed rows per document
    assert {"lora_A", "lora_B", "embed_tokens.modules_to_save"} <= set(loaded.expected_trainable)
    grads = backward_on(loaded, marathi_lines)
    assert_expected_got_gradients(loaded, grads)
    # rsLoRA scale alpha/sqrt(r) = 8/2 = 4
    lora_layer = loaded.model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_layer.scaling["default"] == pytest.approx(4.0)

    groups = hf.optimizer_param_groups(loaded.model, config)
    by_name = {group["name"]: group for group in groups}
    assert by_name["embeddings"]["lr"] == 2e-5 and by_name["embeddings"]["weight_decay"] == 0.0
    assert by_name["adapter"]["lr"] == 2e-4 and by_name["adapter"]["weight_decay"] == 0.01
    grouped = sum(len(group["params"]) for group in groups)
    assert grouped == sum(1 for p in loaded.model.parameters() if p.requires_grad)
    torch.optim.AdamW(groups)  # torch accepts the groups as given


def test_bf16_run_keeps_fp32_master_weights_and_runs_without_autocast(tiny_model_dir, marathi_lines):
    config = make_config(adapter={"r": 4, "modules_to_save": ["embed_tokens", "lm_head"], "embedding_learning_rate": 1e-5})
    runtime = Runtime(device="cpu", precision="bf16", model_dir=str(tiny_model_dir))
    loaded = backend("hf-peft").load(config, runtime)
    dtypes = {name: p.dtype for name, p in loaded.model.named_parameters()}
    assert all(dtype == torch.float32 for name, dtype in dtypes.items() if "lora_" in name or "modules_to_save" in name)
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert any("upcast to float32" in note for note in loaded.notes)
    # no autocast here: the fp32 embedding copy must still feed the bf16 layers (the core's reload check
    # and evaluation run the in-memory model like this)
    assert_expected_got_gradients(loaded, backward_on(loaded, marathi_lines))


def test_tied_lm_head_alone_trains_the_shared_copy_at_embedding_lr(tiny_model_dir, marathi_lines):
    config = make_config(adapter={"r": 2, "modules_to_save": ["lm_head"], "embedding_learning_rate": 1e-5})
    hf = backend("hf-peft")
    loaded = hf.load(config, cpu_runtime(tiny_model_dir))
    assert loaded.expected_trainable[-1] == "embed_tokens.modules_to_save"
    assert_expected_got_gradients(loaded, backward_on(loaded, marathi_lines))
    groups = {group["name"]: group for group in hf.optimizer_param_groups(loaded.model, config)}
    assert groups["embeddings"]["lr"] == 1e-5 and groups["embeddings"]["params"][0].shape[0] == len(loaded.tokenizer)


def test_hf_peft_dora_and_biasless_all_linear(tiny_model_dir, marathi_lines):
    config = make_config(adapter={"r": 2, "use_dora": True, "target_modules": "all-linear"},
                         training={"gradient_checkpointing": False})
    loaded = backend("hf-peft").load(config, cpu_runtime(tiny_model_dir))
    assert "lora_magnitude_vector" in loaded.expected_trainable
    names = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert any("mlp.down_proj.lora_A" in n for n in names)
    assert not any("lm_head" in n for n in names)          # all-linear leaves the output layer alone
    assert_expected_got_gradients(loaded, backward_on(loaded, marathi_lines))


def test_hf_peft_wrong_module_names_are_clear_errors(tiny_model_dir):
    config = make_config(adapter={"target_modules": ["q_proj"], "modules_to_save": ["embed_token"]})
    with pytest.raises(BabeltuneError, match="embed_token.modules_to_save matched no trainable parameter"):
        backend("hf-peft").load(config, cpu_runtime(tiny_model_dir))
    config = make_config(adapter={"target_modules": ["q_projj"]})
    with pytest.raises(BabeltuneError, match="adapter.target_modules: .*q_projj.*modules: .*q_proj") as info:
        backend("hf-peft").load(config, cpu_runtime(tiny_model_dir))
    assert len(str(info.value).splitlines()) == 1


def test_hf_peft_4bit_on_cpu_is_a_one_line_error(tiny_model_dir):
    config = make_config(model={"load_in_4bit": True})
    with pytest.raises(BabeltuneError, match="load_in_4bit.*NVIDIA GPU") as info:
        backend("hf-peft").load(config, cpu_runtime(tiny_model_dir))
    assert len(str(info.value).splitlines()) == 1


def test_attention_choice_on_cpu():
    from babeltune.plugins.toolkit import choose_attention

    runtime = Runtime(device="cpu", precision="fp32", model_dir=".")
    impl, why = choose_attention(runtime, "auto")
    assert impl == "sdpa" and "NVIDIA GPU" in why
    assert choose_attention(runtime, "eager")[0] == "eager"
    with pytest.raises(BabeltuneError, match="flash_attention_2 cannot run here"):
        choose_attention(runtime, "flash_attention_2")


def test_hf_peft_translate_and_liger_option():
    hf = backend("hf-peft")
    out = hf.translate(make_config(adapter={"r": 8, "lora_alpha": 16, "use_rslora": True,
                                            "modules_to_save": ["embed_tokens"], "embedding_learning_rate": 1e-5}))
    assert out["lora_config"]["r"] == 8 and out["lora_config"]["use_rslora"] is True
    assert out["lora_config"]["modules_to_save"] == ["embed_tokens"]
    assert out["embedding_learning_rate"] == 1e-5
    with pytest.raises(BabeltuneError, match="backend.options.liger"):
        hf.translate(make_config(backend={"options": {"liger": "yes"}}))


def test_hf_peft_always_logs_which_kernels_ran(tiny_model_dir, monkeypatch):
    """One "kernels: ..." line in every run's notes: plain on CPU, plain with the install command when
    liger-kernel is missing on a GPU, plain when switched off."""
    import importlib.util

    from babeltune.plugins import hf_peft

    loaded = backend("hf-peft").load(make_config(), cpu_runtime(tiny_model_dir))
    assert "kernels: plain (liger-kernel needs a GPU)" in loaded.notes
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    gpu = Runtime(device="cuda", precision="bf16", model_dir=str(tiny_model_dir))
    assert hf_peft.apply_liger(None, make_config(), gpu, "auto") == \
        "kernels: plain (liger not installed: pip install 'babeltune[gpu]')"
    off = make_config(backend={"options": {"liger": False}})
    assert hf_peft.apply_liger(None, off, gpu, False) == "kernels: plain (backend.options.liger: false)"


# --------------------------------------------------------------------------------------- ia3


def test_ia3_on_biasless_llama_says_no_bitfit(tiny_model_dir, marathi_lines):
    config = make_config(training={"learning_rate": 3e-3})
    loaded = backend("ia3").load(config, cpu_runtime(tiny_model_dir))
    notes = "\n".join(loaded.notes)
    assert "BitFit: not applied" in notes and "no bias terms" in notes
    assert loaded.expected_trainable == ["ia3_l"]
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_l" in n for n in trainable)
    assert {n.split(".")[-3] for n in trainable} == {"k_proj", "v_proj", "down_proj"}
    share_line = next(note for note in loaded.notes if note.startswith("trainable share"))
    share = float(share_line.split(":")[1].split("%")[0])
    assert 0 < share < 2
    assert_expected_got_gradients(loaded, backward_on(loaded, marathi_lines))


def test_ia3_bitfit_trains_and_saves_biases(tiny_qwen2_dir, marathi_lines, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ia3 = backend("ia3")
    loaded = ia3.load(make_config(training={"learning_rate": 3e-3}), cpu_runtime(tiny_qwen2_dir))
    notes = "\n".join(loaded.notes)
    assert "BitFit: 6 bias tensors" in notes        # q/k/v biases in 2 layers
    assert ".bias" in loaded.expected_trainable
    grads = backward_on(loaded, marathi_lines)
    assert_expected_got_gradients(loaded, grads)
    assert any(n.endswith("q_proj.bias") for n in grads)  # not targeted by (IA)^3, trained by BitFit
    bf16 = ia3.load(make_config(), Runtime(device="cpu", precision="bf16", model_dir=str(tiny_qwen2_dir)))
    assert_expected_got_gradients(bf16, backward_on(bf16, marathi_lines))   # bf16 without autocast

    groups = ia3.optimizer_param_groups(loaded.model, make_config())
    optimizer = torch.optim.AdamW(groups)
    optimizer.step()
    ids = loaded.tokenizer(marathi_lines[:1], return_tensors="pt")["input_ids"]
    loaded.model.eval()
    with torch.no_grad():
        trained_logits = loaded.model(ids).logits
    loaded.model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    with torch.no_grad():
        base_logits = base(ids).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        reloaded_logits = reloaded(ids).logits
    assert not torch.allclose(base_logits, trained_logits, atol=1e-4)
    torch.testing.assert_close(reloaded_logits, trained_logits, atol=1e-5, rtol=1e-5)


def test_ia3_options_and_unknown_architecture():
    from babeltune.plugins.ia3 import ia3_modules

    assert ia3_modules("llama", make_config()) == (["k_proj", "v_proj", "down_proj"], ["down_proj"])
    custom = make_config(backend={"options": {"target_modules": ["k_proj", "v_proj", "fc2"], "feedforward_modules": ["fc2"]}})
    assert ia3_modules("whatever", custom) == (["k_proj", "v_proj", "fc2"], ["fc2"])
    with pytest.raises(BabeltuneError, match="no \\(IA\\)\\^3 module map"):
        ia3_modules("brand_new_arch", make_config())
    bad = make_config(backend={"options": {"target_modules": ["k_proj"], "feedforward_modules": ["fc2"]}})
    with pytest.raises(BabeltuneError, match="subset"):
        ia3_modules("llama", bad)


# --------------------------------------------------------------------------------------- unsloth


def test_unsloth_availability_without_gpu_does_not_import_unsloth(monkeypatch):
    import sys

    from babeltune.plugins import unsloth as unsloth_plugin

    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    ok, why = backend("unsloth").availability()
    assert (ok, why) == (False, "no NVIDIA GPU (torch.cuda.is_available() is False)")
    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: True)
    monkeypatch.setattr(unsloth_plugin, "unsloth_installed", lambda: False)
    ok, why = backend("unsloth").availability()
    assert not ok and why == "unsloth not installed (pip install 'babeltune[unsloth]')"
    assert "unsloth" not in sys.modules


def test_unsloth_translate_maps_every_value():
    config = make_config(
        model={"max_seq_length": 2048, "dtype": "bfloat16", "load_in_4bit": True},
        adapter={"r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                 "bias": "none", "use_rslora": True, "modules_to_save": ["embed_tokens", "lm_head"],
                 "embedding_learning_rate": 5e-6},
        training={"seed": 42, "gradient_checkpointing": True})
    out = backend("unsloth").translate(config)
    assert out["from_pretrained"] == {"max_seq_length": 2048, "dtype": "bfloat16", "load_in_4bit": True}
    assert out["get_peft_model"] == {
        "r": 32, "lora_alpha": 64, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "use_rslora": True, "use_gradient_checkpointing": "unsloth", "random_state": 42,
        "modules_to_save": ["embed_tokens", "lm_head"]}
    assert out["training_args"] == {"embedding_learning_rate": 5e-6}
    plain = backend("unsloth").translate(make_config(training={"gradient_checkpointing": False}))
    assert plain["from_pretrained"]["dtype"] is None and plain["get_peft_model"]["modules_to_save"] is None
    assert plain["get_peft_model"]["use_gradient_checkpointing"] is False
    assert plain["training_args"] == {"embedding_learning_rate": None}


def test_unsloth_load_without_gpu_is_one_line(tiny_model_dir, monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin

    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    with pytest.raises(BabeltuneError, match="no NVIDIA GPU.*--backend hf-peft"):
        backend("unsloth").load(make_config(), cpu_runtime(tiny_model_dir))


@pytest.mark.gpu
def test_unsloth_loads_on_gpu(tiny_model_dir, marathi_lines):
    from babeltune.plugins.unsloth import unsloth_installed

    if not unsloth_installed():
        pytest.skip("unsloth not installed")
    config = make_config(adapter={"r": 4, "modules_to_save": ["embed_tokens", "lm_head"], "embedding_learning_rate": 1e-5})
    unsloth = backend("unsloth")
    loaded = unsloth.load(config, Runtime(device="cuda", precision="bf16", model_dir=str(tiny_model_dir)))
    assert "embed_tokens.modules_to_save" in loaded.expected_trainable
    batch = loaded.tokenizer(marathi_lines[:2], return_tensors="pt", padding=True).to("cuda")
    assert_expected_got_gradients(loaded, _grads_after_two_steps(loaded, batch))
    groups = {g["name"]: g for g in unsloth.optimizer_param_groups(loaded.model, config)}
    assert groups["embeddings"]["lr"] == 1e-5
    trainer_class = unsloth.trainer_class()
    assert trainer_class.__name__ == "BabeltuneUnslothTrainer" and trainer_class.__mro__[1].__name__ == "UnslothTrainer"


# --------------------------------------------------------------------------------------- GPU


def gpu_runtime(model_dir, precision: str = "bf16") -> Runtime:
    return Runtime(device="cuda", precision=precision, model_dir=str(model_dir))


@pytest.mark.gpu
def test_hf_peft_on_gpu_bf16(tiny_model_dir, marathi_lines):
    import importlib.util

    config = make_config(adapter={"r": 4, "modules_to_save": ["embed_tokens", "lm_head"], "embedding_learning_rate": 1e-5})
    loaded = backend("hf-peft").load(config, gpu_runtime(tiny_model_dir))
    flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.get_device_capability()[0] >= 8
    assert loaded.attn_implementation == ("flash_attention_2" if flash else "sdpa")
    assert loaded.padding_free is flash
    assert next(loaded.model.parameters()).device.type == "cuda"
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)    # optimizer state in fp32, frozen base in bf16
    batch = loaded.tokenizer(marathi_lines[:2], return_tensors="pt", padding=True).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grads = _grads_after_two_steps(loaded, batch)
    assert_expected_got_gradients(loaded, grads)


@pytest.mark.gpu
def test_hf_peft_4bit_on_gpu(tiny_model_dir, marathi_lines):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    config = make_config(model={"load_in_4bit": True}, adapter={"r": 4})
    loaded = backend("hf-peft").load(config, gpu_runtime(tiny_model_dir))
    assert any(note.startswith("QLoRA") for note in loaded.notes)
    assert any(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    batch = loaded.tokenizer(marathi_lines[:2], return_tensors="pt", padding=True).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grads = _grads_after_two_steps(loaded, batch)
    assert_expected_got_gradients(loaded, grads)


@pytest.mark.gpu
def test_hf_peft_liger_on_gpu(tiny_model_dir, marathi_lines, tmp_path):
    import importlib.util
    import shutil

    from conftest import build_tiny_llama

    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel not installed")
    for path in tiny_model_dir.iterdir():            # untied: lm_head is its own trainable copy
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            shutil.copy(path, tmp_path / path.name)
    build_tiny_llama(tmp_path, vocab_size=len(backend("hf-peft").load(make_config(), cpu_runtime(tiny_model_dir)).tokenizer),
                     tie_word_embeddings=False)
    for modules in ([], ["lm_head"]):
        config = make_config(adapter={"r": 4, "modules_to_save": modules}, backend={"options": {"liger": True}})
        loaded = backend("hf-peft").load(config, gpu_runtime(tmp_path))
        assert any(note.startswith("kernels: liger (fused rmsnorm, swiglu, rope") for note in loaded.notes), loaded.notes
        assert any(type(m).__name__.startswith("Liger") for m in loaded.model.modules())
        batch = loaded.tokenizer(marathi_lines[:2], return_tensors="pt", padding=True).to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            grads = _grads_after_two_steps(loaded, batch)
        assert_expected_got_gradients(loaded, grads)   # with lm_head: its copy must get a gradient


@pytest.mark.gpu
def test_ia3_on_gpu(tiny_qwen2_dir, marathi_lines):
    loaded = backend("ia3").load(make_config(training={"learning_rate": 3e-3}), gpu_runtime(tiny_qwen2_dir))
    batch = loaded.tokenizer(marathi_lines[:2], return_tensors="pt", padding=True).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grads = _grads_after_two_steps(loaded, batch)
    assert_expected_got_gradients(loaded, grads)


def _grads_after_two_steps(loaded, batch) -> dict[str, float]:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=1e-2)
    loaded.model.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss = loaded.model(**batch, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        grads = {n: (0.0 if p.grad is None else p.grad.abs().sum().item())
                 for n, p in loaded.model.named_parameters() if p.requires_grad}
        optimizer.step()
    return grads


def test_unsloth_trainer_takes_the_models_own_loss_without_trl_per_step_metrics(tiny_model_dir, tmp_path):
    """TRL's SFTTrainer.compute_loss reads entropy/accuracy back from the GPU every micro-step; babeltune's
    Unsloth trainer uses transformers' compute_loss (the model's own loss), with the same value."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from babeltune.plugins.unsloth import babeltune_unsloth_trainer

    class MetricsHeavyTrainer(Trainer):          # stands in for UnslothTrainer (TRL SFTTrainer) on CPU
        def compute_loss(self, *args, **kwargs):
            raise AssertionError("the SFT per-step metrics path ran")

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = babeltune_unsloth_trainer(MetricsHeavyTrainer)(model=model, args=args)
    ids = torch.randint(0, 100, (2, 8))
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
    assert torch.allclose(loss, model(input_ids=ids, labels=ids).loss)
