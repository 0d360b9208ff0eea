"""Constructed inputs for rule and memory tests: real model shapes (from the models' published
configs) and measurements built from explicit document lengths, so rules are tested on their own."""

from __future__ import annotations

import random
from types import SimpleNamespace

from babeltune.advisor.types import Measurements
from babeltune.models.types import ModelFacts

# SmolLM2-135M and Llama-2-7B config.json values.
SMOLLM2 = ModelFacts(name="smollm2-135m", architecture="LlamaForCausalLM", model_type="llama", parameters=134_515_008,
                     layers=30, hidden_size=576, heads=9, kv_heads=3, head_dim=64, intermediate_size=1536,
                     vocab_size=49152, context_length=8192, tied_embeddings=True, unsloth_supported=True)
LLAMA2_7B = ModelFacts(name="llama-2-7b", architecture="LlamaForCausalLM", model_type="llama", parameters=6_738_415_616,
                       layers=32, hidden_size=4096, heads=32, kv_heads=32, head_dim=128, intermediate_size=11008,
                       vocab_size=32000, context_length=4096, tied_embeddings=False, unsloth_supported=True)

MARATHI = SimpleNamespace(code="mr", name="Marathi", space_delimited=True, langid_code="mr", resource_class=2)
JAPANESE = SimpleNamespace(code="ja", name="Japanese", space_delimited=False, langid_code="ja", resource_class=5)


def char_lengths(n: int = 2000, seed: int = 0, median_chars: float = 120.0) -> list[int]:
    """Document lengths in characters, log-normal like real sentence/paragraph corpora."""
    import math

    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(math.log(median_chars), 0.6))) for _ in range(n)]


def measurements(tokens_per_char: float = 1.16, total_tokens: int = 20_000, chars: list[int] | None = None,
                 premium: float | None = None, tokenizer: str = "smollm2") -> Measurements:
    """Measurements of a corpus whose sampled documents have ``chars`` characters each, scaled so that the
    whole corpus holds ``total_tokens`` tokens."""
    chars = chars if chars is not None else char_lengths()
    lengths = sorted(max(1, round(c * tokens_per_char)) for c in chars)

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))]

    mean = sum(lengths) / len(lengths)
    documents = max(1, round(total_tokens / mean))
    return Measurements(
        tokenizer=tokenizer, files=1, documents=documents, characters=round(total_tokens / tokens_per_char),
        bytes=round(total_tokens / tokens_per_char * 2.7), words=None, tokens=total_tokens, tokens_exact=False,
        tokens_per_char=tokens_per_char, tokens_per_char_ci95=(tokens_per_char * 0.99, tokens_per_char * 1.01),
        sampled_documents=len(lengths), sampled_characters=sum(chars),
        doc_tokens_percentiles={"p50": pct(0.5), "p90": pct(0.9), "p95": pct(0.95), "p99": pct(0.99), "max": lengths[-1]},
        doc_tokens_mean=mean, premium_vs_english=premium, doc_token_lengths=lengths)
