"""`advise --merge`: which merge method and weights keep every language within X% of its own adapter, measured.

A small grid: every method of `babeltune merge` with weights 1 each (each language keeps its whole update) and
1/n each (the average). Each candidate is built with PEFT's add_weighted_adapter on the loaded inputs and scored
in bits/char on every language's held-out text with `babeltune eval`'s scorer; nothing is estimated. The advice
is the candidate whose worst language is closest to its own adapter; it passes when that worst language is within
the limit. Languages evaluated without an adapter of their own (e.g. English, for forgetting) are shown, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.trainer.merge import (DEFAULT_DENSITY, MERGED, METHODS, PRUNING, SAME_RANK, MergeEval, MergeSpec,
                                     add_merged, base_model_dir, check_compatible, eval_rows, input_name, load_inputs,
                                     merge_spec, read_eval_texts, read_inputs, reference_scores, score_all)

DEFAULT_WITHIN = 5.0   # percent of the own adapter's bits/char


@dataclass
class MergeAdvice:
    within: float
    candidates: list[MergeEval] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # candidates not tried, with the reason
    documents: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> Optional[MergeEval]:
        judged = [c for c in self.candidates if c.worst_vs_own() is not None]
        return min(judged, key=lambda c: c.worst_vs_own()) if judged else None

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best.worst_vs_own() <= self.within

    def reason_lines(self) -> list[str]:
        best = self.best
        if best is None:
            return ["merge: no evaluated language has an adapter of its own, so nothing can be judged; give --eval "
                    "LANG=FILE for the languages of the --adapter options"]
        shown = "; ".join(_row_text(row) for row in best.rows if row.own is not None)
        notes = [f"note: {row.language}: {self.within:g}% of its own adapter's bits/char ({row.own * self.within / 100:.3f}) "
                 f"is more than the adapter's gain over the base ({row.base - row.own:.3f}), so a merge that kept none "
                 "of the gain would pass; lower --within" for row in best.rows
                 if row.own is not None and row.own * self.within / 100 >= row.base - row.own]
        tried = f"best of {len(self.candidates)} merges measured on {_documents(self.documents)}"
        if self.passed:
            return [f"merge = {best.spec.describe()}: keeps every language within {self.within:g}% of its own "
                    f"adapter's bits/char: {shown} ({tried})"] + notes
        return [f"merge: none of {len(self.candidates)} merges keeps every language within {self.within:g}% of its own "
                f"adapter; the closest is {best.spec.describe()}: {shown}; keep one adapter per language, or train "
                "one adapter on the mixed corpus"] + notes

    def to_dict(self) -> dict:
        best = self.best
        return {"within_percent": self.within, "passed": self.passed, "best": best.spec.describe() if best else None,
                "reasons": self.reason_lines(), "skipped": self.skipped, "documents": self.documents,
                "candidates": [c.to_dict() | {"worst_vs_own_percent": c.worst_vs_own()} for c in self.candidates]}


def _row_text(row) -> str:
    kept = "" if row.gain_kept_percent is None else f", {row.gain_kept_percent:.0f}% of its gain kept"
    return (f"{row.language} {row.vs_own_percent:+.2f}% ({row.merged:.3f} vs {row.own:.3f} bits/char, base "
            f"{row.base:.3f}{kept})")


def _documents(documents: dict[str, int]) -> str:
    return ", ".join(f"{count:,} {language} documents" for language, count in documents.items())


def candidate_specs(count: int, ranks_equal: bool, seed: int = 0,
                    methods: tuple[str, ...] = METHODS) -> tuple[list[MergeSpec], list[str]]:
    """The grid, and the candidates left out (methods that need one rank when the ranks differ)."""
    specs, skipped = [], []
    for method in methods:
        if method in SAME_RANK and not ranks_equal:
            skipped.append(f"{method}: needs adapters of one rank")
            continue
        for weight in (1.0, 1.0 / count):
            specs.append(MergeSpec(method, (round(weight, 4),) * count,
                                   DEFAULT_DENSITY if method in PRUNING else None, seed))
    return specs, skipped


def advise_merge(adapters: dict[str, str], evals: dict[str, str], *, within: float = DEFAULT_WITHIN,
                 model_spec: Optional[str] = None, max_documents: Optional[int] = None, max_length: int = 1024,
                 batch_size: int = 4, seed: int = 0, methods: tuple[str, ...] = METHODS,
                 echo: Callable[[str], None] = print) -> MergeAdvice:
    for method in methods:
        merge_spec(method, None, None, len(adapters))   # an unknown name is one line before anything loads
    missing = [label for label in adapters if label not in evals]
    if missing:
        raise BabeltuneError(f"--eval: no held-out text for {', '.join(missing)}; advise --merge compares every "
                             f"language with its own adapter: add --eval {missing[0]}=FILE")
    inputs = read_inputs(adapters)
    check_compatible(inputs, MergeSpec("cat", (1.0,) * len(inputs)))   # base, tokenizer, modules; ranks below
    model_dir = base_model_dir(inputs, model_spec, warn=echo)
    texts = read_eval_texts(evals, max_documents, echo)
    specs, skipped = candidate_specs(len(inputs), len({item.rank for item in inputs}) == 1, seed, methods)
    model, tokenizer = load_inputs(inputs, model_dir)
    kwargs = {"max_length": max_length, "batch_size": batch_size}
    reference = reference_scores(model, tokenizer, texts, [item.label for item in inputs], echo, kwargs)
    advice = MergeAdvice(within, skipped=skipped, documents={k: len(v) for k, v in texts.items()})
    for index, spec in enumerate(specs, start=1):
        echo(f"advise --merge: [{index}/{len(specs)}] {spec.describe()}")
        add_merged(model, len(inputs), spec, name=MERGED)
        merged = score_all(model, tokenizer, texts, {"merged": MERGED}, **kwargs)["merged"]
        model.set_adapter(input_name(0))   # the merged one is deleted for the next candidate
        model.delete_adapter(MERGED)
        advice.candidates.append(MergeEval(spec, eval_rows(reference["base"], reference["own"], merged)))
    return advice


def render_advice(advice: MergeAdvice):
    from rich.table import Table

    languages = [row.language for row in advice.candidates[0].rows] if advice.candidates else []
    table = Table(title=f"advise --merge: bits/char of each merge vs each language's own adapter "
                        f"(limit +{advice.within:g}%)", caption="vs own = (merged - own) / own; lower is better")
    table.add_column("merge", justify="left")
    for language in languages:
        table.add_column(f"{language} vs own", justify="right")
    table.add_column("worst", justify="right")
    table.add_column("within", justify="left")
    best = advice.best
    for candidate in advice.candidates:
        worst = candidate.worst_vs_own()
        cells = ["-" if row.vs_own_percent is None else f"{row.vs_own_percent:+.2f}%" for row in candidate.rows]
        verdict = "yes" if worst is not None and worst <= advice.within else "no"
        name = candidate.spec.describe() + (" *" if candidate is best else "")
        table.add_row(name, *cells, "-" if worst is None else f"{worst:+.2f}%", verdict)
    return table
