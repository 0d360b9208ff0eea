"""Build a `tokenizers` tokenizer from a GGUF file's vocabulary, without loading any weights.

* `tokenizer.ggml.model == "llama"` (SentencePiece, e.g. Gemma-3): the GGUF holds pieces, scores and token
  types but no merges. SentencePiece's BPE repeatedly merges the adjacent pair whose concatenation is the
  highest-scoring vocabulary piece, so we list every split (left, right) of every normal piece, ordered by
  the piece's score: a rank-ordered BPE over those merges makes the same choices. Spaces become `▁`,
  unknown characters fall back to `<0xXX>` byte tokens, user-defined pieces (newline and space runs) are
  matched in the raw text first, and BOS is added when the GGUF says so.
  (transformers' own GGUF conversion of Gemma-3 drops the merges: ~14.9 nats/token on English.)
* `tokenizer.ggml.model == "gpt2"` (byte-level BPE, e.g. SmolLM2): vocabulary and merges are stored as-is.
"""

from __future__ import annotations

from babeltune.errors import BabeltuneError
from babeltune.models.gguf_meta import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    GGUFMetadata,
)

class UnsupportedGGUFTokenizer(BabeltuneError):
    """The GGUF's tokenizer family is not rebuilt here; callers fall back to transformers' conversion."""


SPACE_PIECE = "\u2581"  # ▁, SentencePiece's visible space
# llama.cpp pre-tokenizer names whose byte-level regex split is the GPT-2 one; "smollm" also splits digits.
_GPT2_STYLE_PRE = {"gpt2", "default", "smollm", "starcoder", "refact", "olmo"}
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact"}


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal piece, highest-scoring pieces first.

    Both halves must be normal pieces themselves: SentencePiece never merges into or out of control,
    user-defined or byte tokens. Ties (same piece, several splits) keep the leftmost split first."""
    normal = {piece for piece, kind in zip(tokens, types) if kind == TOKEN_NORMAL}
    ranked = sorted(
        (i for i, kind in enumerate(types) if kind == TOKEN_NORMAL and len(tokens[i]) > 1),
        key=lambda i: (-scores[i], i),
    )
    merges = []
    for index in ranked:
        piece = tokens[index]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((left, right))
    return merges


def _special_tokens(meta: GGUFMetadata):
    """AddedTokens: control tokens are special; user-defined ones are matched as plain text."""
    from tokenizers import AddedToken

    types = meta.arrays.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(meta.tokens)
    added = []
    for piece, kind in zip(meta.tokens, types):
        if kind == TOKEN_CONTROL:
            added.append(AddedToken(piece, special=True, normalized=False))
        elif kind == TOKEN_USER_DEFINED:
            added.append(AddedToken(piece, special=False, normalized=False))
    return added


def _bos_post_processor(meta: GGUFMetadata):
    from tokenizers import processors

    bos_id = meta.scalars.get("tokenizer.ggml.bos_token_id")
    if not meta.scalars.get("tokenizer.ggml.add_bos_token", False) or bos_id is None:
        return None
    bos = meta.tokens[bos_id]
    return processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )


def _sentencepiece_tokenizer(meta: GGUFMetadata):
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = meta.tokens
    scores = meta.arrays.get("tokenizer.ggml.scores")
    types = meta.arrays.get("tokenizer.ggml.token_type")
    if not scores or not types:
        raise BabeltuneError(f"{meta.path}: SentencePiece GGUF without token scores/types; cannot rebuild its tokenizer")
    unk_id = meta.scalars.get("tokenizer.ggml.unknown_token_id")
    vocab = {piece: i for i, piece in enumerate(tokens)}
    model = models.BPE(
        vocab=vocab,
        merges=sentencepiece_merges(tokens, scores, types),
        unk_token=tokens[unk_id] if unk_id is not None else None,
        byte_fallback=any(kind == TOKEN_BYTE for kind in types),
        fuse_unk=True,
    )
    tokenizer = Tokenizer(model)
    replace_space = [normalizers.Replace(" ", SPACE_PIECE)]
    if meta.scalars.get("tokenizer.ggml.add_space_prefix", False):
        replace_space.insert(0, normalizers.Prepend(SPACE_PIECE))
    tokenizer.normalizer = normalizers.Sequence(replace_space)
    decode_steps = [decoders.Replace(SPACE_PIECE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.scalars.get("tokenizer.ggml.add_space_prefix", False):
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def _byte_level_tokenizer(meta: GGUFMetadata):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pre = str(meta.scalars.get("tokenizer.ggml.pre", "default"))
    if pre not in _GPT2_STYLE_PRE:
        raise UnsupportedGGUFTokenizer(
            f"{meta.path}: byte-level GGUF tokenizer with pre-tokenizer {pre!r} is not supported; "
            "pass the model's Hugging Face folder (with tokenizer.json) instead"
        )
    merges = [tuple(line.split(" ", 1)) for line in meta.arrays.get("tokenizer.ggml.merges", [])]
    vocab = {piece: i for i, piece in enumerate(meta.tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre in _DIGIT_SPLIT_PRE:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def tokenizer_from_gguf(meta: GGUFMetadata):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's own (llama.cpp) tokenizer."""
    kind = meta.scalars.get("tokenizer.ggml.model")
    if not meta.tokens:
        raise BabeltuneError(f"{meta.path}: GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if kind == "llama":
        tokenizer = _sentencepiece_tokenizer(meta)
    elif kind == "gpt2":
        tokenizer = _byte_level_tokenizer(meta)
    else:
        raise UnsupportedGGUFTokenizer(f"{meta.path}: GGUF tokenizer type {kind!r} is not supported (supported: llama, gpt2)")
    tokenizer.add_tokens(_special_tokens(meta))
    bos_processor = _bos_post_processor(meta)
    if bos_processor is not None:
        tokenizer.post_processor = bos_processor
    return tokenizer


def _token(meta: GGUFMetadata, key: str):
    index = meta.scalars.get(f"tokenizer.ggml.{key}_token_id")
    return meta.tokens[index] if index is not None and 0 <= index < len(meta.tokens) else None


def tokenizer_config_from_gguf(meta: GGUFMetadata) -> dict:
    """tokenizer_config.json for `AutoTokenizer`: the generic fast class, so the tokenizer.json
    pipeline above is used exactly as built (model-specific classes would rebuild their own)."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _token(meta, "bos"),
        "eos_token": _token(meta, "eos"),
        "unk_token": _token(meta, "unknown"),
        "pad_token": _token(meta, "padding") or _token(meta, "eos"),
        "add_bos_token": bool(meta.scalars.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.scalars.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": int(meta.arch_value("context_length", 2048)),
        "clean_up_tokenization_spaces": False,
    }
    template = meta.scalars.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return {key: value for key, value in config.items() if value is not None}
