"""Contracts shared by the advisor and the trainer: a text tokenizer and a model's facts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Protocol, runtime_checkable


@runtime_checkable
class TextTokenizer(Protocol):
    """What measurement needs from any tokenizer family (HF, SentencePiece, tiktoken, GGUF)."""

    name: str          # e.g. "smollm2", "cl100k", "/path/to/model"
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids for each text, WITHOUT special tokens (no BOS/EOS)."""
        ...


@dataclass(frozen=True)
class ModelFacts:
    """What the advisor and trainer need from a model, read from its config (no weights loaded)."""

    name: str                     # what the user passed (built-in name, folder, GGUF path)
    architecture: str             # e.g. LlamaForCausalLM
    model_type: str               # e.g. llama, gemma3_text
    parameters: int               # total parameter count, computed from the config
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int           # max_position_embeddings
    tied_embeddings: bool
    unsloth_supported: bool
    linear_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    has_bias: bool = False        # any bias terms in linear layers (for BitFit)
    source: Optional[str] = None  # resolved folder or file

    def to_dict(self) -> dict:
        return asdict(self)
