"""Shared fixtures: a tiny random Llama built from a config, with a real BPE tokenizer trained on the
shipped Marathi/English/Hindi samples. Logic tests use it; real-model tests are marked slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"
TEXT = DATA / "text"
CONFIGS = DATA / "configs"

# The smallest valid config for logic tests that build no model from it (sections merge over these).
SMALL_CONFIG = {
    "language": "mr",
    "model": {"name": "tiny", "max_seq_length": 64},
    "data": {"train": str(TEXT / "mr.txt")},
    "training": {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2},
    "eval": {"evaluation_strategy": "no"},
}
# The corpus each shipped tiny-run config trains on.
TINY_RUN_DATA = {"tiny-cpt.yaml": TEXT / "mr.txt", "tiny-sft.yaml": DATA / "sft" / "mr_pairs.jsonl",
                 "tiny-padding-free.yaml": TEXT / "hi.txt"}


def make_config(**sections):
    """A TrainConfig from SMALL_CONFIG with ``sections`` merged in, e.g. make_config(adapter={"r": 4})."""
    from babeltune.config import TrainConfig

    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in SMALL_CONFIG.items()}
    for section, values in sections.items():
        merged[section] = {**merged.get(section, {}), **values}
    return TrainConfig.model_validate(merged)


def config_maker(**defaults):
    """make_config with a module's own defaults merged first (e.g. a shorter max_seq_length)."""
    def make(**sections):
        return make_config(**{key: {**defaults.get(key, {}), **sections.get(key, {})} for key in {*defaults, *sections}})
    return make


def tiny_config(name: str, model_dir: Path, output_dir: Path, *sets: str):
    """A shipped tiny-run config (tests/data/configs/NAME) for the tiny model, writing into ``output_dir``."""
    from babeltune.config import load_config

    return load_config(CONFIGS / name, [f"model.name={model_dir}", f"training.output_dir={output_dir}",
                                        f"data.train={TINY_RUN_DATA[name]}", *sets])


FAST_LANE = False   # `-m "not slow"`: property tests run a tenth of their examples (the full suite runs them all)


def pytest_configure(config):
    global FAST_LANE
    FAST_LANE = "not slow" in (config.getoption("markexpr", "") or "")


def examples(full: int) -> int:
    """How many examples a hypothesis test runs: ``full`` in the full suite, a tenth (at least 20) in the fast lane."""
    return full if not FAST_LANE else min(full, max(20, full // 10))


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA not available)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def build_tiny_tokenizer(folder: Path, vocab_size: int = 1024):
    """Train a byte-level BPE on the shipped samples and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(p) for p in sorted(TEXT.glob("*.txt"))], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama(folder: Path, vocab_size: int, seed: int = 0, **overrides):
    """A 2-layer Llama with hidden size 64, random weights, saved as a normal HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=0, pad_token_id=2,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path to a tiny random Llama + trained BPE tokenizer (a complete HF folder). Read-only: copy to modify."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tiny_tokenizer(folder)
    build_tiny_llama(folder, vocab_size=len(tokenizer))
    return folder


@pytest.fixture
def tiny_run_config(tiny_model_dir, tmp_path):
    """``(*sets, name="tiny-cpt.yaml", out=tmp_path / "run")`` -> the config of a tiny CPU run of the tiny model."""
    def build(*sets: str, name: str = "tiny-cpt.yaml", out: Path | None = None):
        return tiny_config(name, tiny_model_dir, out or tmp_path / "run", *sets)
    return build


@pytest.fixture(scope="session")
def marathi_lines() -> list[str]:
    return [line for line in (TEXT / "mr.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def english_lines() -> list[str]:
    return [line for line in (TEXT / "en.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def babeltune_cache(tmp_path_factory):
    """One cache for the whole test session (BABELTUNE_TEST_CACHE reuses a persistent one), so each
    built-in is converted once however many tests use it. Tokenizers cached in memory are dropped on
    entry and exit so none leaks from another cache folder."""
    from babeltune.models.tokenizers import load_tokenizer

    cache = os.environ.get("BABELTUNE_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "babeltune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BABELTUNE_CACHE", cache)
        patch.setenv("HF_HUB_OFFLINE", "1")
        load_tokenizer.cache_clear()
        yield Path(cache)
    load_tokenizer.cache_clear()


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tiny_model_dir):
    """A 2-layer Qwen2 (attention projections with bias) sharing the tiny tokenizer."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    for path in tiny_model_dir.iterdir():
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            shutil.copy(path, folder / path.name)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 eos_token_id=0, pad_token_id=2)).save_pretrained(folder)
    return folder
