"""A Hugging Face fast tokenizer (its tokenizer.json) -> the GGUF tokenizer metadata llama.cpp reads.

Generic over the tokenizer.json, so an extended vocabulary (new pieces, merges or added tokens) is exported as
it is. The inverse of babeltune's GGUF reader (babeltune.models.gguf_tokenizer), two families:

* byte-level BPE (SmolLM2, GPT-2 style): ``tokenizer.ggml.model = "gpt2"``, vocabulary and merges as stored;
  the pre-tokenizer name is "smollm" when digits are split one by one before the byte-level split, else "gpt2".
* SentencePiece-style BPE (Gemma-3: spaces as ``▁``, byte fallback): ``tokenizer.ggml.model = "llama"``.
  llama.cpp's SentencePiece tokenizer merges the adjacent pair whose concatenation has the highest score, so the
  scores must rank pieces in the order the merges do. When the merge order follows the token ids (a
  SentencePiece vocabulary is sorted by score, and appended pieces come last) the score is minus the rank of the
  id among normal pieces: for Gemma-3 the same order as the scores llama.cpp's own converter writes, and the same
  values up to one gap in the original model that the tokenizer.json does not record; otherwise minus the rank
  of the first merge that builds the piece.

Token types: added special tokens are control tokens, other added tokens user-defined (matched as raw text
first), ``<0xXX>`` pieces of a byte-fallback model are byte tokens, ids without a piece are unused padding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from babeltune.errors import BabeltuneError
from babeltune.models.gguf_meta import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
)
from babeltune.models.gguf_tokenizer import SPACE_PIECE

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
CONTROL_SCORE, BYTE_SCORE = -1000.0, 0.0   # what llama.cpp's converter gives these pieces


@dataclass
class GGUFVocab:
    model: str                       # "gpt2" or "llama"
    pre: str                         # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]
    scores: Optional[list[float]] = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)   # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: Optional[str] = None


def _components(node: Any) -> list[dict]:
    """The steps of a (possibly nested Sequence) normalizer or pre-tokenizer, flattened."""
    if not isinstance(node, dict):
        return []
    inner = node.get("pretokenizers") or node.get("normalizers")
    if node.get("type") == "Sequence" and isinstance(inner, list):
        return [step for item in inner for step in _components(item)]
    return [node]


def _is_space_replace(step: dict) -> bool:
    return step.get("type") == "Replace" and step.get("pattern", {}).get("String") == " " and step.get("content") == SPACE_PIECE


def _family(data: dict, source: str) -> tuple[str, str, bool]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre, add_space_prefix) for this tokenizer.json."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise BabeltuneError(f"{source}: tokenizer model {model.get('type')!r} cannot be exported to GGUF "
                             "(supported: byte-level BPE as in SmolLM2/GPT-2, SentencePiece-style BPE as in Gemma-3)")
    pre_steps = [step.get("type") for step in _components(data.get("pre_tokenizer"))]
    normalizer = _components(data.get("normalizer"))
    if "ByteLevel" in pre_steps:
        unknown = [step for step in pre_steps if step not in ("ByteLevel", "Digits")]
        if unknown:
            raise BabeltuneError(f"{source}: byte-level pre-tokenizer with {', '.join(unknown)} has no llama.cpp "
                                 "pre-tokenizer name here (supported: ByteLevel, optionally after Digits)")
        digits = any(step.get("type") == "Digits" and step.get("individual_digits")
                     for step in _components(data.get("pre_tokenizer")))
        return "gpt2", "smollm" if digits else "gpt2", False
    if any(_is_space_replace(step) for step in normalizer) and not pre_steps:
        prefix = any(step.get("type") == "Prepend" and step.get("prepend") == SPACE_PIECE for step in normalizer)
        return "llama", "default", prefix
    raise BabeltuneError(f"{source}: BPE tokenizer with pre-tokenizer {pre_steps or None} and normalizer "
                         f"{[step.get('type') for step in normalizer] or None} cannot be exported to GGUF (supported: "
                         "byte-level BPE, or SentencePiece-style BPE that replaces spaces with ▁ in its normalizer)")


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for merge in model.get("merges") or []:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        pairs.append((left, right))
    return pairs


def _tokens_and_types(data: dict, rows: int, family: str, source: str) -> tuple[list[str], list[int]]:
    model = data["model"]
    by_id: dict[int, tuple[str, int]] = {}
    byte_fallback = family == "llama" and bool(model.get("byte_fallback"))
    for piece, index in model.get("vocab", {}).items():
        kind = TOKEN_BYTE if byte_fallback and BYTE_PIECE.fullmatch(piece) else TOKEN_NORMAL
        by_id[int(index)] = (piece, kind)
    unk = model.get("unk_token")
    for index, (piece, kind) in list(by_id.items()):
        if family == "llama" and piece == unk:
            by_id[index] = (piece, TOKEN_UNKNOWN)
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = (added["content"], TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED)
    size = max(by_id) + 1 if by_id else 0
    if size > rows:
        raise BabeltuneError(f"{source}: the tokenizer has {size:,} token ids but the model's embedding has {rows:,} "
                             "rows; resize the model's embeddings to the tokenizer before exporting")
    # ids without a piece (an embedding padded to a multiple of 64, say) become unused padding, as in llama.cpp
    pieces = [by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED)) for i in range(rows)]
    return [piece for piece, _ in pieces], [kind for _, kind in pieces]


def sentencepiece_scores(tokens: list[str], types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    """Scores that make llama.cpp's highest-score-first merging pick the pieces in the merges' order."""
    first_merge: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first_merge.setdefault(left + right, rank)
    normal = [i for i, kind in enumerate(types) if kind == TOKEN_NORMAL]
    merged = [first_merge[tokens[i]] for i in normal if tokens[i] in first_merge]
    by_id = all(a < b for a, b in zip(merged, merged[1:]))
    scores = [CONTROL_SCORE if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN) else BYTE_SCORE
              for kind in types]
    unmerged_rank = len(merges)
    for position, index in enumerate(normal):
        if by_id:
            scores[index] = -float(position)
        else:
            rank = first_merge.get(tokens[index])
            scores[index] = -float(rank if rank is not None else unmerged_rank + position)
    return scores


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    return {key: int(value) for key, value in ids.items() if value is not None}


def _adds_special(tokenizer: Any, token_id: Optional[int], position: int) -> bool:
    """Whether encoding text with special tokens puts ``token_id`` first (position 0) or last (-1)."""
    if token_id is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(special) > len(plain) and special[position] == token_id


def vocab_from_tokenizer(tokenizer: Any, rows: int, source: str = "tokenizer") -> GGUFVocab:
    """The GGUF vocabulary of a transformers fast tokenizer, padded to the model's ``rows`` embedding rows."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BabeltuneError(f"{source}: a slow (Python) tokenizer has no tokenizer.json to export; save the model "
                             "with a fast tokenizer (tokenizer.json)")
    data = json.loads(backend.to_str())
    family, pre, space_prefix = _family(data, source)
    tokens, types = _tokens_and_types(data, rows, family, source)
    merges = _merge_pairs(data["model"])
    special = _special_ids(tokenizer)
    vocab = GGUFVocab(model=family, pre=pre, tokens=tokens, types=types, special_ids=special,
                      add_bos=_adds_special(tokenizer, special.get("bos"), 0),
                      add_eos=_adds_special(tokenizer, special.get("eos"), -1),
                      add_space_prefix=space_prefix,
                      chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None)
    if family == "gpt2":
        vocab.merges = [f"{left} {right}" for left, right in merges]
    else:
        vocab.scores = sentencepiece_scores(tokens, types, merges)
    return vocab


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the tokenizer keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for key, add in adders.items():
        if key in vocab.special_ids:
            add(vocab.special_ids[key])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
