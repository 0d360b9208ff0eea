"""Data rules: dedup (data.dedup).

Repeated documents are counted while measuring (babeltune.corpus.duplicates); `train` removes them with the
same keys before the held-out split. Removing them is the advice whenever there are any: repeated text is
memorised rather than learnt from and adds no information (Lee et al. 2022), and a near copy would sit on
both sides of the held-out split, flattering the evaluation.
"""

from __future__ import annotations

from babeltune.advisor.rules.context import LEE_DEDUP, RuleContext, fmt_tokens
from babeltune.advisor.types import Decision


def rule_dedup(ctx: RuleContext) -> Decision:
    m, found = ctx.measurements, ctx.measurements.duplicates
    if not found:
        return Decision("off", "duplicates were not measured for this corpus (0 counted)", [LEE_DEDUP])
    exact, near, docs = found["exact_duplicate_documents"], found["near_duplicate_documents"], m.documents
    about = f"about (sampled 1/{round(1 / found['sampling_rate']):,} of texts) " if found.get("sampled") else ""
    if near == 0:
        return Decision("off", f"none of the {docs:,} documents repeats another, exactly or near: nothing to "
                               "remove", [LEE_DEDUP])
    value = "near" if near > exact else "exact"
    left = found["near_unique_characters" if value == "near" else "unique_characters"]
    example = found.get("example")
    most = (f"; most repeated x{example['occurrences']:,}: {example['text'][:40]!r}"
            if example and example["occurrences"] > 2 else "")
    return Decision(value, (
        f"{about}{exact:,} of {docs:,} documents ({exact / docs:.1%}) repeat another exactly and {near:,} "
        f"({near / docs:.1%}) after normalising case, spaces, punctuation and URLs; removing them leaves "
        f"{fmt_tokens(left)} of {fmt_tokens(m.characters)} characters: repeats are memorised, add no "
        f"information and would sit on both sides of the held-out split{most}"), [LEE_DEDUP])
