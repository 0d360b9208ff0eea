"""GGUF -> Hugging Face folder. Fast tests round-trip a tiny random Llama through a GGUF we write;
slow tests convert the real built-ins (cached for the session) and check what they say and score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models.convert import REQUIRED_FILES, convert_gguf
from babeltune.models.resolve import resolve_model_dir

DATA = Path(__file__).parent / "data"


# The shared built-in cache (tests/conftest.py), active for every test in this module.
pytestmark = pytest.mark.usefixtures("babeltune_cache")


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved for its rotary layout; transformers undoes this on load."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_llama_gguf(model, tokenizer_json: Path, path: Path, pre: str = "default") -> Path:
    """A float32 GGUF of a transformers Llama, laid out as llama.cpp's converter writes it."""
    import gguf

    config = model.config
    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    vocab_json = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = sorted(vocab_json["model"]["vocab"].items(), key=lambda item: item[1])
    specials = {token["content"] for token in vocab_json["added_tokens"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in vocab_json["model"]["merges"]]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in specials else 1 for token, _ in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
        writer.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(state[prefix + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(state[prefix + "self_attn.k_proj.weight"], kv_heads))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[prefix + hf_name + ".weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return write_llama_gguf(model, tiny_model_dir / "tokenizer.json", tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def logits_of(folder: Path, text: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_tiny_gguf_round_trip_gives_the_same_model(tiny_model_dir, tiny_gguf, tmp_path, marathi_lines):
    import torch

    folder = convert_gguf(tiny_gguf, tmp_path / "converted", dtype="fp32")
    assert all((folder / name).is_file() for name in REQUIRED_FILES)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    torch.testing.assert_close(logits_of(folder, marathi_lines[0]), logits_of(tiny_model_dir, marathi_lines[0]), rtol=1e-4, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_bf16_conversion_stores_bf16_tensors_and_is_a_noop_when_present(tiny_gguf, tmp_path):
    from safetensors import safe_open

    folder = convert_gguf(tiny_gguf, tmp_path / "bf16", dtype="bf16")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        dtypes = {str(handle.get_tensor(name).dtype) for name in handle.keys()}
        assert "lm_head.weight" not in handle.keys()  # tied to the embedding: stored once
    assert dtypes == {"torch.bfloat16"}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(tiny_gguf, folder, dtype="bf16") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_resolve_gguf_path_converts_into_the_cache_once(tiny_gguf, babeltune_cache):
    folder = resolve_model_dir(str(tiny_gguf))
    assert folder.parent == babeltune_cache / "models" and folder.name.endswith("-fp32")
    assert resolve_model_dir(str(tiny_gguf)) == folder


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 32)
    with pytest.raises(BabeltuneError):
        convert_gguf(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


def test_refuses_to_overwrite_a_foreign_folder(tiny_gguf, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BabeltuneError, match="not a complete converted model"):
        convert_gguf(tiny_gguf, tmp_path / "mine")
    with pytest.raises(BabeltuneError, match="--dtype 'fp16'"):
        convert_gguf(tiny_gguf, tmp_path / "other", dtype="fp16")


def test_unsupported_gguf_tokenizer_falls_back_to_transformers(tiny_model_dir, tmp_path, marathi_lines):
    from transformers import AutoModelForCausalLM

    from babeltune.models.tokenizers import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    gguf = write_llama_gguf(model, tiny_model_dir / "tokenizer.json", tmp_path / "qwen-style.gguf", pre="qwen2")
    tokenizer = load_tokenizer(str(gguf))
    ids = tokenizer.encode_batch(marathi_lines[:3])
    assert all(ids) and tokenizer.decode(ids[0]) == marathi_lines[0]
    # same vocabulary and merges: the byte-level pieces of a word are the same as the original's
    original = load_tokenizer(str(tiny_model_dir / "tokenizer.json"))
    assert tokenizer.encode_batch(["नमस्कार"]) == original.encode_batch(["नमस्कार"])


@pytest.mark.parametrize("spec", ["no-such-model", "/nonexistent/model.gguf"])
def test_resolve_unknown_model_names_the_fix(spec):
    with pytest.raises(BabeltuneError, match="smollm2-135m") as error:
        resolve_model_dir(spec)
    assert "\n" not in str(error.value)


def test_resolve_folder_checks_config_json(tiny_model_dir, tmp_path):
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir
    with pytest.raises(BabeltuneError, match="no config.json"):
        resolve_model_dir(str(tmp_path))


# --- real built-ins (slow) --------------------------------------------------------------------

needs = {name: pytest.mark.skipif(not builtins.is_installed(name), reason=f"{name}: `{model.install_command}`")
         for name, model in builtins.BUILTINS.items()}


@pytest.fixture(scope="module")
def gemma_fp32():
    return resolve_model_dir("gemma-3-270m", dtype="fp32")


@pytest.fixture(scope="module")
def smollm2_bf16():
    return resolve_model_dir("smollm2-135m", dtype="bf16")


def first_lines(language: str, count: int) -> list[str]:
    lines = [line for line in (DATA / "text" / f"{language}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:count]


def score_each_line_alone(tokenizer, model, lines: list[str], batch_size: int = 8) -> tuple[float, float]:
    """(nats/token, bits/char): each line on its own with BOS (right-padded batches of similar
    lengths, padding masked out of attention and loss), every token after BOS predicted."""
    import torch

    ordered = sorted(lines, key=len)
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = tokenizer(ordered[start:start + batch_size], return_tensors="pt", padding=True)
            assert tokenizer.padding_side == "right" and (batch.input_ids[:, 0] == tokenizer.bos_token_id).all()
            logits = model(**batch).logits[:, :-1]
            labels = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
            nats += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            tokens += int((labels != -100).sum())
    return nats / tokens, nats / math.log(2) / sum(map(len, lines))


@pytest.fixture(scope="module")
def gemma_loaded(gemma_fp32):
    """The converted Gemma-3 folder loaded once, strictly from local files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gemma_fp32), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gemma_fp32), local_files_only=True, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.mark.slow
@needs["smollm2-135m"]
def test_smollm2_says_paris(smollm2_bf16):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_bf16))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_bf16), dtype=torch.float32).eval()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(output[0, inputs.input_ids.shape[1]:]).startswith(" Paris")


@pytest.mark.slow
@needs["gemma-3-270m"]
@pytest.mark.parametrize("language,count,nats_per_token,bits_per_char", [("en", 20, 3.60, 1.110), ("mr", 50, 6.67, 3.299)])
def test_gemma_scores_match_reference(gemma_loaded, language, count, nats_per_token, bits_per_char):
    measured_nats, measured_bits = score_each_line_alone(*gemma_loaded, first_lines(language, count))
    assert measured_nats == pytest.approx(nats_per_token, rel=0.01)
    assert measured_bits == pytest.approx(bits_per_char, rel=0.01)


@pytest.mark.slow
@needs["gemma-3-270m"]
def test_gemma_folder_loads_offline_with_auto_classes(gemma_fp32, gemma_loaded):
    import torch

    tokenizer, model = gemma_loaded
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    assert tokenizer("The capital of France is").input_ids == [2, 818, 5279, 529, 7001, 563]
    assert tokenizer.pad_token == "<pad>"
    provenance = json.loads((gemma_fp32 / "babeltune_source.json").read_text())
    assert provenance["licence"] == "Gemma Terms of Use" and provenance["dtype"] == "fp32"


@pytest.mark.slow
@needs["gemma-3-270m"]
def test_facts_before_and_after_conversion_agree(gemma_fp32):
    from babeltune.models.facts import facts_from_folder, facts_from_gguf
    from safetensors import safe_open

    before = facts_from_gguf(builtins.builtin_gguf_path("gemma-3-270m"), "gemma-3-270m")
    after = facts_from_folder(gemma_fp32, "gemma-3-270m")
    assert {**before.to_dict(), "source": None} == {**after.to_dict(), "source": None}
    with safe_open(str(gemma_fp32 / "model.safetensors"), framework="pt") as handle:
        stored = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    assert stored == after.parameters == 268_098_176


@pytest.mark.slow   # two converting processes
def test_concurrent_conversions_of_one_gguf_both_succeed(tiny_gguf, tmp_path):
    """Three torchrun ranks converting the same model at once: a later rename finds a complete folder.

    Separate processes, as ranks are: threads would share transformers' process-wide loading state (its meta-device
    context), which made the threads fail each other and leaked into later tests."""
    import subprocess
    import sys

    target = tmp_path / "shared"
    script = "import sys; from babeltune.models.convert import convert_gguf; print(convert_gguf(sys.argv[1], sys.argv[2]))"
    ranks = [subprocess.Popen([sys.executable, "-c", script, str(tiny_gguf), str(target)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == [str(target)] * 3
    assert all((target / name).is_file() for name in REQUIRED_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]          # no staging folder left behind
