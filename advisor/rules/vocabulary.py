"""Vocabulary rule: vocab.extend (new merges/pieces appended to the tokenizer, new embedding rows learnt).

`advise` trains a candidate tokenizer on the corpus (babeltune.vocab) and measures tokens/char on held-out
sampled text before and after each extension size. An extension pays when it cuts the tokens per character a lot
(every step, context window and generated character gets cheaper by that factor) and the corpus holds enough
unique text to learn the new rows. The thresholds below are starting points from published work;
bench/vocab_extension.py measures where extension stops paying and calibrates them.
"""

from __future__ import annotations

from babeltune.advisor.rules.context import RuleContext, fmt_tokens
from babeltune.advisor.types import Decision

YAMAGUCHI = ("Yamaguchi et al. 2024, How Can We Effectively Expand the Vocabulary of LLMs with 0.01GB of Target "
             "Language Text?")
GEE_FVT = "Gee et al. 2022, Fast Vocabulary Transfer for Language Model Compression"
TAMIL_LLAMA = "Balachandran 2023, Tamil-LLaMA (+16k tokens, LoRA)"

MIN_EXTENSION_CHARS = 3_000_000
"""Unique text (English-equivalent characters) below which an extension does not pay. Yamaguchi et al. 2024 find
0.01 GB (about 30k target-language sentences) enough to adapt new embeddings when they start from a heuristic initialisation
(babeltune starts each new row as the mean of its pieces' rows, the fast vocabulary transfer of Gee et al. 2022);
30k sentences of ~100 characters = 3M characters. Tamil-LLaMA added 16k tokens and trained them with LoRA on far
more text. To be calibrated by bench/vocab_extension.py (held-out bits/char at equal GPU time, extended vs not)."""

MIN_SPEEDUP = 1.25
"""Fewest times fewer tokens per character worth new rows: below it the tokenizer already fits the language and the
rows to learn cost more than the shorter sequences save."""

MIN_STEP_GAIN = 1.10
"""A larger extension size must cut tokens/char by at least another 10% over the next smaller one measured."""

MIN_CHARS_PER_NEW_TOKEN = 190
"""Unique characters per new row: MIN_EXTENSION_CHARS spread over the 16k rows of the largest size measured, so a
corpus at the threshold learns up to 16k rows (Tamil-LLaMA's size) and a smaller size needs less text."""


def rule_vocab_extend(ctx: RuleContext) -> Decision:
    found = ctx.measurements.vocab_extension or {}
    evidence = [YAMAGUCHI, GEE_FVT, TAMIL_LLAMA]
    if ctx.goal != "cpt":
        return Decision(0, "sft teaches behaviour, not vocabulary: new rows need raw text (--goal cpt)", evidence)
    if not found:
        return Decision(0, "no extension was measured for this tokenizer (no tokenizer.json): 0", evidence)
    if not found.get("family") or not found.get("sizes"):
        return Decision(0, f"not measured: {found.get('why', 'no candidate merges')}", evidence)
    before, sizes = found["base_tokens_per_char"], found["sizes"]
    best = min(sizes, key=lambda s: s["tokens_per_char"])
    measured = (f"{before:.3f} -> {best['tokens_per_char']:.3f} tokens/char with +{best['new_tokens']:,} merges "
                f"({best['speedup']:.2f}x, on {fmt_tokens(found['heldout_characters'])} held-out characters)")
    if best["speedup"] < MIN_SPEEDUP:
        return Decision(0, f"{measured} < {MIN_SPEEDUP:g}x: the tokenizer already fits, new rows would not pay", evidence)
    size = ctx.text_size
    if size < MIN_EXTENSION_CHARS:
        return Decision(0, (f"{measured}, but {ctx.size_note()} < {fmt_tokens(MIN_EXTENSION_CHARS)} needed to learn new "
                            "rows (~30k sentences, Yamaguchi et al. 2024)"), evidence)
    chosen = None
    for option in sorted(sizes, key=lambda s: s["new_tokens"]):
        gain = option["speedup"] / chosen["speedup"] if chosen else option["speedup"]
        if (chosen and gain < MIN_STEP_GAIN) or size < option["new_tokens"] * MIN_CHARS_PER_NEW_TOKEN:
            break
        chosen = option
    if chosen is None:
        return Decision(0, f"{measured}, but {ctx.size_note()} holds < {MIN_CHARS_PER_NEW_TOKEN} characters per new row "
                           f"even for +{sizes[0]['new_tokens']:,}", evidence)
    return Decision(chosen["new_tokens"], (
        f"{before:.3f} -> {chosen['tokens_per_char']:.3f} tokens/char with +{chosen['new_tokens']:,} merges "
        f"({chosen['speedup']:.2f}x more text per token and step) and {ctx.size_note()} >= "
        f"{fmt_tokens(MIN_EXTENSION_CHARS)}: learn {chosen['embedding_rows']:,} new embedding rows, each started as "
        "the mean of its pieces (Gee et al. 2022)"), evidence)
