"""`babeltune export`: adapter merged into its base, written as a GGUF (llama.cpp) and loaded back.

Round trips on tiny random models: a Llama with a byte-level BPE (as SmolLM2) and a Gemma-3 with a
SentencePiece-style vocabulary (as Gemma-3-270M), each with a LoRA adapter trained a few steps on Marathi. The
exported GGUF is loaded back with babeltune's own GGUF -> HF conversion and with transformers' GGUF loader;
bits/char on held-out Marathi and English must match the merged HF model within 1% (f16), token ids must be
identical. The slow tests do the same with the real SmolLM2-135M."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TEXT, build_tiny_llama

from babeltune.errors import BabeltuneError

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def lines(language: str) -> list[str]:
    return [line for line in (TEXT / f"{language}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def held_out() -> dict[str, list[str]]:
    return {"mr": lines("mr")[-25:], "en": lines("en")[:25]}


# ------------------------------------------------------------------------------------------ builders

def build_tiny_sentencepiece_tokenizer(folder: Path) -> int:
    """A Gemma-3-style tokenizer (pieces with ▁ for spaces, scores, byte fallback, BOS added), built the way
    babeltune builds Gemma-3's: pieces from a BPE trained on the shipped text, ranked by training order,
    rebuilt through babeltune's GGUF tokenizer reader. Returns the vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    from babeltune.models.gguf_meta import GGUFMetadata
    from babeltune.models.gguf_tokenizer import tokenizer_config_from_gguf, tokenizer_from_gguf

    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.train([str(p) for p in sorted(TEXT.glob("*.txt"))], trainers.BpeTrainer(vocab_size=800, show_progress=False))
    pieces = [piece for piece, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1])]
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<start_of_turn>"]
    types = [3] * 4 + [6] * 256 + [1] * len(pieces) + [3]
    scores = [-1000.0] * 4 + [0.0] * 256 + [-float(i) for i in range(len(pieces))] + [-1000.0]
    meta = GGUFMetadata(path=folder / "tiny.gguf", scalars={
        "general.architecture": "gemma3", "gemma3.context_length": 512, "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False, "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}"
        "<start_of_turn>{{ m['content'] }}{% endfor %}"},
        arrays={"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types})
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_from_gguf(meta).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config_from_gguf(meta)), encoding="utf-8")
    return len(tokens)


def build_tiny_gemma3(folder: Path, vocab_size: int, seed: int = 0):
    """6 layers (the 6th global, as llama.cpp's Gemma-3 pattern), a sliding window of 8 tokens so the local
    layers matter, head_dim 256 = query_pre_attn_scalar (as in Gemma-3-270M), random norm weights."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                              sliding_window=8, max_position_embeddings=512, tie_word_embeddings=True,
                              bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():   # Gemma's norms start at 0 (scale 1 + w): random ones test the +1 convention
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    return model


def train_adapter(model_dir: Path, out: Path, steps: int = 8) -> Path:
    """A LoRA adapter trained a few steps on Marathi, saved as `train` saves it (weights, tokenizer, base identity)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.models.identity import write_identity

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    ids = [i for line in lines("mr")[:-40] for i in tokenizer(line + "\n", add_special_tokens=False)["input_ids"]]
    blocks = torch.tensor(ids[: (len(ids) // 64) * 64]).view(-1, 64)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        batch = blocks[(step * 4) % len(blocks):][:4]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_identity(out, model_dir)
    return out


@pytest.fixture(scope="module")
def llama_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model_dir, train_adapter(tiny_model_dir, tmp_path_factory.mktemp("llama-adapter") / "adapter")


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    build_tiny_gemma3(folder, build_tiny_sentencepiece_tokenizer(folder))
    return folder, train_adapter(folder, tmp_path_factory.mktemp("gemma-adapter") / "adapter")


RUNS = ["llama_run", "gemma_run"]


# ------------------------------------------------------------------------------------------ helpers

def export(adapter: Path, out: Path, *args: str):
    from babeltune.trainer.export_cli import export_command

    return CliRunner().invoke(export_command, ["--adapter", str(adapter), "--out", str(out), *args])


def merged(run):
    from babeltune.trainer.export_cli import merged_model

    model_dir, adapter = run
    return merged_model(adapter, model_dir, echo=lambda _: None)


def bits_per_char(model, tokenizer) -> dict[str, float]:
    from babeltune.trainer.evaluate import score_texts

    return {language: score_texts(model, tokenizer, texts, max_length=256, batch_size=8).bits_per_char
            for language, texts in held_out().items()}


def load_back_babeltune(gguf_file: Path, folder: Path):
    """babeltune's own GGUF -> HF conversion (tokenizer rebuilt from the GGUF vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.models.convert import convert_gguf

    convert_gguf(gguf_file, folder)
    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(folder))


def load_back_transformers(gguf_file: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32).eval()


def same_ids(reference, other) -> None:
    for language, texts in held_out().items():
        for text in texts + ["नमस्कार, world!  12345\n\ttabs"]:
            assert other(text)["input_ids"] == reference(text)["input_ids"], (language, text)


# ------------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("run_name", RUNS)
def test_f16_gguf_reloads_within_one_percent_and_tokenizes_identically(run_name, request, tmp_path):
    run = request.getfixturevalue(run_name)
    model, tokenizer = merged(run)
    reference = bits_per_char(model, tokenizer)
    base_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(run[0])
    assert bits_per_char(base_model, tokenizer)["mr"] > reference["mr"] + 0.05   # the adapter changed the model

    result = export(run[1], tmp_path / "model.f16.gguf", "--dtype", "f16")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "F16" in result.stdout
    own_model, own_tokenizer = load_back_babeltune(tmp_path / "model.f16.gguf", tmp_path / "own")
    same_ids(tokenizer, own_tokenizer)
    for language, bpc in bits_per_char(own_model, own_tokenizer).items():
        assert bpc == pytest.approx(reference[language], rel=0.01), (language, bpc, reference)
    for language, bpc in bits_per_char(load_back_transformers(tmp_path / "model.f16.gguf"), tokenizer).items():
        assert bpc == pytest.approx(reference[language], rel=0.01), (language, bpc, reference)


@pytest.mark.parametrize("run_name", RUNS)
def test_f32_gguf_holds_exactly_the_merged_weights(run_name, request, tmp_path):
    """f32: every tensor comes back bit for bit, so the Q/K permutation is the exact inverse of the loader's; Gemma's
    norms stored as 1 + w come back within float32 rounding of w (one ulp of values near 1)."""
    import torch

    run = request.getfixturevalue(run_name)
    model, _ = merged(run)
    assert export(run[1], tmp_path / "m.gguf", "--dtype", "f32").exit_code == 0
    reloaded = load_back_transformers(tmp_path / "m.gguf").state_dict()
    original = model.state_dict()
    assert set(reloaded) == set(original)
    for name, tensor in original.items():
        if run_name == "gemma_run" and "norm" in name:
            assert float((reloaded[name] - tensor).abs().max()) <= 2 ** -23, name
        else:
            assert torch.equal(reloaded[name], tensor), name


@pytest.mark.parametrize("run_name", ["llama_run", pytest.param("gemma_run", marks=pytest.mark.slow)])
def test_q8_0_and_bf16_are_smaller_and_close(run_name, request, tmp_path):
    from babeltune.models.gguf_meta import read_gguf_metadata

    run = request.getfixturevalue(run_name)
    model, tokenizer = merged(run)
    reference = bits_per_char(model, tokenizer)
    sizes = {}
    for dtype in ("f16", "q8_0", "bf16"):
        result = export(run[1], tmp_path / f"m.{dtype}.gguf", "--dtype", dtype)
        assert result.exit_code == 0, result.output
        sizes[dtype] = (tmp_path / f"m.{dtype}.gguf").stat().st_size
        reloaded = bits_per_char(load_back_transformers(tmp_path / f"m.{dtype}.gguf"), tokenizer)
        for language, bpc in reloaded.items():
            assert bpc == pytest.approx(reference[language], rel=0.01 if dtype != "bf16" else 0.02), (dtype, language)
    assert sizes["q8_0"] < sizes["f16"] == sizes["bf16"]
    assert read_gguf_metadata(tmp_path / "m.q8_0.gguf").scalars["general.file_type"] == 7   # MOSTLY_Q8_0


def test_llama_metadata_and_tensor_names(llama_run, tmp_path):
    from babeltune.models.gguf_meta import read_gguf_metadata

    assert export(llama_run[1], tmp_path / "m.gguf").exit_code == 0
    meta = read_gguf_metadata(tmp_path / "m.gguf")
    config = json.loads((llama_run[0] / "config.json").read_text())
    assert meta.architecture == "llama"
    assert (meta.arch_value("block_count"), meta.arch_value("embedding_length"), meta.arch_value("attention.head_count"),
            meta.arch_value("attention.head_count_kv"), meta.arch_value("context_length")) == (2, 64, 4, 2, 512)
    assert meta.arch_value("rope.freq_base") == config["rope_parameters"]["rope_theta"]
    assert meta.arch_value("attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert meta.scalars["tokenizer.ggml.model"] == "gpt2" and meta.scalars["tokenizer.ggml.pre"] == "gpt2"
    assert len(meta.tokens) == config["vocab_size"] and meta.arrays["tokenizer.ggml.merges"]
    assert meta.scalars["tokenizer.ggml.eos_token_id"] == 0 and meta.scalars["tokenizer.ggml.padding_token_id"] == 2
    assert "output.weight" not in meta.tensor_shapes   # tied: llama.cpp reuses token_embd
    assert meta.tensor_shapes["blk.1.attn_k.weight"] == (32, 64) and "blk.1.ffn_gate.weight" in meta.tensor_shapes


def test_gemma3_metadata_tokenizer_and_chat_template(gemma_run, tmp_path):
    from babeltune.models.gguf_meta import read_gguf_metadata

    assert export(gemma_run[1], tmp_path / "g.gguf").exit_code == 0
    meta = read_gguf_metadata(tmp_path / "g.gguf")
    assert meta.architecture == "gemma3"
    assert (meta.arch_value("attention.key_length"), meta.arch_value("attention.sliding_window")) == (256, 8)
    assert meta.scalars["tokenizer.ggml.model"] == "llama" and meta.scalars["tokenizer.ggml.add_bos_token"] is True
    types, scores = meta.arrays["tokenizer.ggml.token_type"], meta.arrays["tokenizer.ggml.scores"]
    assert types[:5] == [3, 3, 3, 3, 6] and types[-1] == 3
    # the scores the tokenizer was built from (-rank of each normal piece) come back exactly
    assert scores[260:265] == [-0.0, -1.0, -2.0, -3.0, -4.0] and scores[0] == -1000.0
    assert "<start_of_turn>" in meta.scalars["tokenizer.chat_template"]
    assert "blk.5.post_ffw_norm.weight" in meta.tensor_shapes and "blk.0.attn_q_norm.weight" in meta.tensor_shapes


def test_extended_vocabulary_is_exported(tiny_model_dir, tmp_path):
    """Added tokens (a vocabulary extended for Marathi) become user-defined GGUF tokens and tokenize the same."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["महाराष्ट्र", "नमस्कार"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)   # rows beyond the vocabulary
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapter = train_adapter(base, tmp_path / "adapter", steps=1)
    assert export(adapter, tmp_path / "x.gguf").exit_code == 0
    own_model, own_tokenizer = load_back_babeltune(tmp_path / "x.gguf", tmp_path / "own")
    same_ids(tokenizer, own_tokenizer)
    assert tokenizer("महाराष्ट्र नमस्कार")["input_ids"][0] == len(tokenizer) - 2
    assert own_model.get_input_embeddings().weight.shape[0] % 64 == 0


def test_hf_format_writes_the_merged_folder(llama_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = merged(llama_run)
    result = export(llama_run[1], tmp_path / "merged", "--format", "hf", "--dtype", "f32")
    assert result.exit_code == 0, result.output
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = tokenizer(lines("mr")[-1], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------ errors

def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr   # progress lines may precede it
    for needle in needles:
        assert needle in errors[0], result.stderr


def test_missing_adapter_is_one_line(tmp_path):
    one_error_line(export(tmp_path / "nope", tmp_path / "x.gguf"), "--adapter", "nope")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("args,needles", [
    (["--dtype", "q4_k"], ["--dtype 'q4_k'", "f16, bf16, q8_0, f32"]),
    (["--format", "hf", "--dtype", "q8_0"], ["--dtype 'q8_0'", "--format hf"]),
    (["--format", "onnx"], ["--format 'onnx'", "gguf, hf"]),
])
def test_unsupported_dtype_or_format_is_one_line(llama_run, tmp_path, args, needles):
    one_error_line(export(llama_run[1], tmp_path / "x.gguf", *args), *needles)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_is_one_line(llama_run, tmp_path):
    other = tmp_path / "qwen"
    shutil.copytree(llama_run[0], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, model_type="qwen2")))
    one_error_line(export(llama_run[1], tmp_path / "x.gguf", "--model", str(other)),
                   "model_type 'qwen2'", "llama, gemma3_text", "--format hf")


def test_adapter_of_another_base_is_refused(llama_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_run[0] / name, other / name)
    build_tiny_llama(other, vocab_size=json.loads((llama_run[0] / "config.json").read_text())["vocab_size"], seed=1)
    one_error_line(export(llama_run[1], tmp_path / "x.gguf", "--model", str(other)), "weights differs")
    assert not (tmp_path / "x.gguf").exists()


def test_a_failed_write_leaves_the_old_file_and_no_partial(llama_run, tmp_path, monkeypatch):
    import errno

    import gguf

    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous export")

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    one_error_line(export(llama_run[1], target), "m.gguf", "No space left", "free disk space")
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_unsupported_tokenizer_is_one_line(llama_run, tmp_path):
    """A WordPiece tokenizer has no GGUF form here: refused by name, nothing written."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from babeltune.trainer.gguf_vocab import vocab_from_tokenizer

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(BabeltuneError, match="tokenizer model 'WordPiece' cannot be exported"):
        vocab_from_tokenizer(wordpiece, rows=2)


def test_help_has_an_example():
    from babeltune.cli import cli

    assert "export" in CliRunner().invoke(cli, ["--help"]).stdout
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0 and "babeltune export --adapter" in result.stdout and "q8_0" in result.stdout


# ------------------------------------------------------------------------------------------ real models (slow)

def _builtin_dir(name: str) -> Path:
    from babeltune.models import builtins
    from babeltune.models.resolve import resolve_model_dir

    if not builtins.is_installed(name):
        pytest.skip(f"{name}: `{builtins.BUILTINS[name].install_command}`")
    return Path(resolve_model_dir(name, dtype="fp32"))


@pytest.mark.slow
def test_smollm2_with_a_trained_adapter_round_trips(tmp_path):
    model_dir = _builtin_dir("smollm2-135m")
    adapter = train_adapter(model_dir, tmp_path / "adapter", steps=3)
    model, tokenizer = merged((model_dir, adapter))
    reference = bits_per_char(model, tokenizer)
    result = export(adapter, tmp_path / "smollm2.f16.gguf")
    assert result.exit_code == 0, result.output
    own_model, own_tokenizer = load_back_babeltune(tmp_path / "smollm2.f16.gguf", tmp_path / "own")
    same_ids(tokenizer, own_tokenizer)
    for language, bpc in bits_per_char(own_model, own_tokenizer).items():
        assert bpc == pytest.approx(reference[language], rel=0.01), (language, bpc, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_base_export_matches_llama_cpps_own_conversion(name, tmp_path):
    """The built-in base model exported in f32 against the GGUF llama.cpp's converter made (the pip-installed
    file our fp32 folder was dequantized from): same hyperparameters, the same tokenizer arrays (tokens, types,
    merges or scores), the same tensor names and shapes, and the same values in llama.cpp's layout (Q/K
    permuted, Gemma norms + 1) up to float32 rounding."""
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM

    from babeltune.models import builtins
    from babeltune.models.gguf_meta import read_gguf_metadata
    from babeltune.models.tokenizers import hf_tokenizer
    from babeltune.trainer.gguf_export import ARCHITECTURES, write_gguf

    model_dir = _builtin_dir(name)
    original = builtins.builtin_gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    write_gguf(model, hf_tokenizer(model_dir), tmp_path / "base.gguf", arch=ARCHITECTURES[model.config.model_type],
               dtype="f32", name=name)
    ours, theirs = read_gguf_metadata(tmp_path / "base.gguf"), read_gguf_metadata(original)
    arch = theirs.architecture
    for key, value in theirs.scalars.items():
        if key.startswith(f"{arch}.") or (key.startswith("tokenizer.") and key != "tokenizer.ggml.add_sep_token"):
            assert ours.scalars.get(key) == pytest.approx(value) if isinstance(value, float) else ours.scalars.get(key) == value, key
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert ours.arrays.get(key) == theirs.arrays.get(key), key
    if "tokenizer.ggml.scores" in theirs.arrays:
        # llama.cpp only compares scores: the same order of every normal piece (Gemma-3's own scores have one gap
        # of 32 at id 236742 that the tokenizer.json no longer records), the same values for all other pieces
        types, our_scores, their_scores = (theirs.arrays["tokenizer.ggml.token_type"], ours.arrays["tokenizer.ggml.scores"],
                                           theirs.arrays["tokenizer.ggml.scores"])
        normal = [i for i, kind in enumerate(types) if kind == 1]
        assert sorted(normal, key=lambda i: -our_scores[i]) == sorted(normal, key=lambda i: -their_scores[i])
        assert len({our_scores[i] for i in normal}) == len(normal)
        assert [our_scores[i] for i, kind in enumerate(types) if kind != 1] == [their_scores[i] for i, kind in enumerate(types) if kind != 1]
    assert ours.tensor_shapes == theirs.tensor_shapes
    reader = GGUFReader(original)
    our_tensors = {t.name: t for t in GGUFReader(tmp_path / "base.gguf").tensors}
    for tensor in reader.tensors:
        if tensor.name.startswith(("blk.0.", "blk.1.", "output_norm")):
            expected = dequantize(tensor.data, tensor.tensor_type)
            got = np.asarray(our_tensors[tensor.name].data).reshape(expected.shape)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * max(1.0, float(np.abs(expected).max())),
                                       err_msg=tensor.name)
