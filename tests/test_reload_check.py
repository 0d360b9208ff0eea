"""The reload check decides on the saved tensors and maths config; logits are a second line of evidence whose kernel
noise alone never fails a run (seen on an H100: a correctly saved bf16 adapter failed at 40% of a small effect)."""

import json

import pytest

from babeltune.errors import BabeltuneError

TEXTS = ["नमस्कार, आज हवामान छान आहे.", "मराठी भाषा"]


def trained_adapter(tiny_model_dir, tmp_path, *, scale=0.5, **lora):
    """A LoRA model with non-zero B (as after training), saved the way save_final saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = dict(r=4, lora_alpha=32, use_rslora=True, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                    task_type="CAUSAL_LM")
    settings.update(lora)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(**settings))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder, safe_serialization=True)
    return model, tokenizer, folder


def check(model, tokenizer, folder, tiny_model_dir, precision="fp32"):
    from babeltune.trainer import export

    return export.reload_check(model, folder, str(tiny_model_dir), tokenizer, TEXTS, precision=precision, max_length=32)


def with_kernel_noise(monkeypatch, eps):
    """The reloaded model runs other RMSNorm numerics than the trained one (as a fused kernel would)."""
    from babeltune.trainer import export

    real = export.load_saved

    def load(folder, model_dir, in_memory):
        reloaded = real(folder, model_dir, in_memory)
        for module in reloaded.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.variance_epsilon = eps
        return reloaded

    monkeypatch.setattr(export, "load_saved", load)


def test_a_correct_adapter_with_kernel_noise_passes_with_a_note(tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path, scale=0.02)
    with_kernel_noise(monkeypatch, eps=0.5)
    result, reloaded = check(model, tokenizer, folder, tiny_model_dir)
    # the noise is far beyond the fp32 tolerance and most of the small adapter's effect ...
    assert result.relative_diff > result.tolerance and result.unexplained_share > 0.25
    # ... but the saved tensors and config are the trained ones: a pass, with the numerics named in the manifest
    assert result.tensors_match and result.passed
    assert any(note.startswith("numerics: logits differ") for note in result.notes)
    assert any(note.startswith("kernels") for note in result.notes)
    assert result.to_dict()["tensors_match"] is True
    assert reloaded is not None and model.training   # the trained model's mode is restored


def test_a_correct_adapter_passes_without_numerics_note(tiny_model_dir, tmp_path):
    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    result, _ = check(model, tokenizer, folder, tiny_model_dir)
    assert result.tensors_match and result.relative_diff <= result.tolerance
    assert not any(note.startswith("numerics") for note in result.notes)


def rewrite_tensors(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def rewrite_config(folder, **fields):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def one_key(tensors, part):
    return next(key for key in sorted(tensors) if part in key)


def test_an_altered_tensor_fails_naming_it(tiny_model_dir, tmp_path):
    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    names = []

    def alter(tensors):
        names.append(one_key(tensors, "layers.1.self_attn.v_proj.lora_B"))
        tensors[names[0]] = tensors[names[0]] * 1.001

    rewrite_tensors(folder, alter)
    with pytest.raises(BabeltuneError, match=f"not the trained one: tensor {names[0]} in adapter_model.safetensors "
                                             "differs from the trained one"):
        check(model, tokenizer, folder, tiny_model_dir)


def test_a_missing_tensor_fails_naming_it(tiny_model_dir, tmp_path):
    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    names = []

    def drop(tensors):
        names.append(one_key(tensors, "q_proj.lora_A"))
        del tensors[names[0]]

    rewrite_tensors(folder, drop)
    with pytest.raises(BabeltuneError, match=f"tensor {names[0]} is missing from adapter_model.safetensors"):
        check(model, tokenizer, folder, tiny_model_dir)


@pytest.mark.parametrize("fields, named", [
    ({"target_modules": ["q_proj"]}, "target_modules: saved ['q_proj'], trained ['q_proj', 'v_proj']"),
    ({"use_rslora": False}, "use_rslora: saved False, trained True"),
    ({"lora_alpha": 16}, "lora_alpha: saved 16, trained 32"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save: saved ['lm_head'], trained None"),
])
def test_a_config_field_that_changes_the_maths_fails_naming_it(tiny_model_dir, tmp_path, fields, named):
    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    rewrite_config(folder, **fields)
    with pytest.raises(BabeltuneError, match="not the trained one: adapter_config.json " + named.replace("[", r"\[")
                       .replace("]", r"\]")):
        check(model, tokenizer, folder, tiny_model_dir)


def test_the_trained_model_changed_after_the_save_fails(tiny_model_dir, tmp_path):
    import torch

    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.add_(1e-3)
    with pytest.raises(BabeltuneError, match=r"tensor base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A"
                                             r"\.weight in adapter_model\.safetensors differs"):
        check(model, tokenizer, folder, tiny_model_dir)


def test_bf16_under_the_trainers_autocast_reloads_to_the_same_logits(tiny_model_dir, tmp_path):
    """As after Trainer(bf16=True): bf16 base, fp32 LoRA and modules_to_save copies, the forward wrapped in autocast
    by accelerate. Both models run under the same autocast, so the reload gives the same logits (before, the reload
    ran its LoRA in fp32 outside autocast: 2.5e-2 relative here, at the bf16 tolerance as on the H100)."""
    import types

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.plugins.common import upcast_trainable

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, use_rslora=True, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["embed_tokens"], task_type="CAUSAL_LM"))
    upcast_trainable(model, "bf16")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    forward = model.forward.__func__
    model._original_forward = model.forward
    model.forward = types.MethodType(torch.autocast("cpu", dtype=torch.bfloat16)(forward), model)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder, safe_serialization=True)
    result, _ = check(model, tokenizer, folder, tiny_model_dir, precision="bf16")
    assert result.tensors_match and result.max_abs_diff == 0.0
    assert any("modules_to_save copies keep the base dtype" in note for note in result.notes)


def test_a_reload_that_does_not_hold_the_saved_tensors_fails_naming_it(tiny_model_dir, tmp_path, monkeypatch):
    """The file is right but the loaded model is not (a key PEFT skipped on load, say)."""
    import torch

    from babeltune.trainer import export

    model, tokenizer, folder = trained_adapter(tiny_model_dir, tmp_path)
    real = export.load_saved

    def load(*args):
        reloaded = real(*args)
        with torch.no_grad():
            reloaded.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight.zero_()
        return reloaded

    monkeypatch.setattr(export, "load_saved", load)
    with pytest.raises(BabeltuneError, match=r"tensor base_model\.model\.model\.layers\.1\.self_attn\.v_proj\.lora_B"
                                             r"\.weight in the reloaded model differs"):
        check(model, tokenizer, folder, tiny_model_dir)
