"""Rendering advice: the YAML config (header + a reason comment on every key), a rich table, and the
--compare table."""

from __future__ import annotations

from typing import Any

import yaml

from babeltune import __version__
from pydantic import BaseModel

from babeltune.advisor.advise import Advice, Candidate
from babeltune.advisor.memory import BUDGET_SHARE
from babeltune.corpus.readlog import report_lines


def yaml_value(value: Any) -> str:
    """One YAML flow value (lists inline), exactly as yaml.safe_load will read it back."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 20).strip()
    return text.removesuffix("...").strip()


def measurement_lines(advice: Advice) -> list[str]:
    m = advice.measurements
    low, high = m.tokens_per_char_ci95
    exact = "exact" if m.tokens_exact else f"estimated from {m.sampled_documents:,} sampled documents"
    pct = m.doc_tokens_percentiles
    lines = [
        f"corpus: {advice.corpus.path}: {m.files} file(s), {m.documents:,} documents, {m.characters:,} characters, "
        f"{m.bytes:,} bytes" + (f", {m.words:,} words" if m.words else ""),
        f"tokenizer {m.tokenizer}: {m.tokens:,} tokens ({exact}); {m.tokens_per_char:.3f} tokens/char "
        f"(95% CI {low:.3f}-{high:.3f})" + (f"; {m.tokens_per_word:.2f} tokens/word" if m.tokens_per_word else ""),
        "document tokens: " + ", ".join(f"{k} {v:,}" for k, v in pct.items()),
    ]
    if m.sft_examples:
        ex = m.sft_examples
        lines.append("example tokens as train feeds them: " + ", ".join(f"{k} {v:,}" for k, v in ex["tokens_percentiles"].items())
                     + f" ({ex['rendering']}; {ex['examples_measured']:,} of {ex['records']:,} records)")
    if m.duplicates:
        d = m.duplicates
        about = f" (estimated: sampled 1/{round(1 / d['sampling_rate']):,} of texts)" if d.get("sampled") else ""
        lines.append(f"duplicates: {d['exact_duplicate_documents']:,} exact and {d['near_duplicate_documents']:,} near "
                     f"of {m.documents:,} documents; {d['unique_characters']:,} characters of unique text{about}")
    if m.premium_vs_english is not None:
        lines.append(f"premium vs English: {m.premium_vs_english:.2f}x on {m.premium_reference or 'parallel reference text'}")
    lines += report_lines(m.skipped)     # one line per file: what was skipped or cut, counted
    return lines


def memory_line(advice: Advice) -> str:
    budget = advice.gpu_memory_gib * BUDGET_SHARE
    return (f"memory estimate: {advice.memory.describe()} <= {budget:.1f} GiB "
            f"({BUDGET_SHARE:.0%} of {advice.gpu_memory_gib:g} GB)")


def estimate_lines(advice: Advice) -> list[str]:
    """The run-time estimate on the target device, and on this machine's CPU when it differs."""
    return [e.line() for e in (advice.estimate, advice.cpu_estimate) if e is not None]


def header_lines(advice: Advice, command: str) -> list[str]:
    name = getattr(advice.profile, "name", advice.language)
    lines = [f"babeltune {__version__}: config written by `advise`; every key carries the reason for its value.",
             f"command: {command}",
             f"language: {name} ({advice.language}); model: {advice.model}; goal: {advice.goal}"]
    lines += measurement_lines(advice)
    lines.append(memory_line(advice))
    lines += estimate_lines(advice)
    batch = advice.decisions.get("batch_size")
    if batch is not None:
        lines.append(f"batch_size (effective) = {batch.value}: {batch.reason}")
    lines += advice.notes
    return lines


def key_reason(advice: Advice, dotted: str) -> str:
    """The reason for the value at ``dotted``: the rule's decision, else what the command gave."""
    decision = advice.decisions.get(dotted) or advice.given.get(dotted)
    if decision is None:
        raise KeyError(f"advice sets {dotted} without a decision or given value: no reason to write above it")
    return decision.reason


def keyed_lines(advice: Advice, key: str, value: Any, indent: str = "") -> list[str]:
    reason = key_reason(advice, key)
    return ([f"{indent}# {reason}"] if reason else []) + [f"{indent}{key.rpartition('.')[2]}: {yaml_value(value)}"]


def render_yaml(advice: Advice, command: str) -> str:
    """advice.config as YAML: header comments, then every key advise set, in schema order, with its reason as a
    comment above it."""
    out = [f"# {line}" for line in header_lines(advice, command)]
    config = advice.config
    for section in type(config).model_fields:
        if section not in config.model_fields_set:
            continue
        body = getattr(config, section)
        if not isinstance(body, BaseModel):
            out += [""] + keyed_lines(advice, section, body)
            continue
        out += ["", f"{section}:"]
        for key in type(body).model_fields:
            if key in body.model_fields_set:
                out += keyed_lines(advice, f"{section}.{key}", getattr(body, key), indent="  ")
    return "\n".join(out) + "\n"


def render_table(advice: Advice, console, *, header: bool = True) -> None:
    """Human-readable advice: measurements, notes, memory (unless header=False), then one row per parameter."""
    from rich.table import Table
    from rich.text import Text

    for line in header_lines(advice, command="")[2:] if header else []:
        console.print(line, markup=False, highlight=False)
    table = Table(title=f"babeltune advice: {getattr(advice.profile, 'name', advice.language)} on {advice.model}",
                  show_lines=False)
    table.add_column("parameter", style="bold")
    table.add_column("value", overflow="fold")
    table.add_column("reason (measured)", overflow="fold")
    for key, decision in advice.decisions.items():
        table.add_row(Text(key), Text(yaml_value(decision.value)), Text(decision.reason))   # no markup: [..] is data
    console.print(table)


def render_compare(profile, candidates: list[Candidate], best: Candidate, console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"tokenizer fit on {getattr(profile, 'name', '')} ({getattr(profile, 'code', '')})")
    for column in ("candidate", "tokens/char", "95% CI", "tokens/word", "premium vs English", "tokens"):
        table.add_column(column, overflow="fold")   # a narrow terminal wraps a number, never cuts it to `3,5…`
    for c in sorted(candidates, key=lambda c: c.measurements.tokens_per_char):
        m = c.measurements
        low, high = m.tokens_per_char_ci95
        table.add_row(Text(f"{c.spec} ({c.kind})"), f"{m.tokens_per_char:.3f}", f"{low:.3f}-{high:.3f}",
                      f"{m.tokens_per_word:.2f}" if m.tokens_per_word else "-",
                      f"{m.premium_vs_english:.2f}x" if m.premium_vs_english is not None else "-", f"{m.tokens:,}")
    console.print(table)
    console.print(compare_verdict(candidates, best), markup=False, highlight=False)


def compare_verdict(candidates: list[Candidate], best: Candidate) -> str:
    worst = max(candidates, key=lambda c: c.measurements.tokens_per_char)
    ratio = worst.measurements.tokens_per_char / best.measurements.tokens_per_char
    return (f"best fit: {best.spec} ({best.measurements.tokens_per_char:.3f} tokens/char; {worst.spec} spends "
            f"{ratio:.2f}x as many tokens on the same text)")
