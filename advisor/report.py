"""`advise --report DIR`: a PNG histogram of document lengths in tokens with max_seq_length marked."""

from __future__ import annotations

import io
from pathlib import Path

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_bytes

REPORT_NAME = "doc_token_lengths.png"


def histogram_png(lengths: list[int], max_seq_length: int, *, title: str) -> bytes:
    """PNG bytes of the length histogram (matplotlib Agg backend: no display needed)."""
    buffer = io.BytesIO()
    histogram_figure(lengths, max_seq_length, title=title).savefig(buffer, format="png")
    return buffer.getvalue()


def histogram_figure(lengths: list[int], max_seq_length: int, *, title: str):
    """The length histogram with max_seq_length marked; the legend sits below the axes, off the data."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    bins = min(60, max(10, len(set(lengths))))
    axes.hist(lengths, bins=bins, color="#4c72b0", edgecolor="white")
    truncated = sum(1 for n in lengths if n > max_seq_length) / len(lengths)
    axes.axvline(max_seq_length, color="#c44e52", linestyle="--", linewidth=2,
                 label=f"max_seq_length = {max_seq_length} ({truncated:.1%} of documents longer)")
    axes.set_xlabel("document length (tokens)")
    axes.set_ylabel("documents")
    axes.set_title(title)
    # Inside the axes the legend covered the max_seq_length line, which usually lies at the right.
    figure.legend(loc="outside lower center", frameon=False)
    return figure


def write_report(advice, folder: str | Path) -> Path:
    """Write the histogram into ``folder`` (temp file + rename: no half-written PNG)."""
    examples = advice.measurements.example_lengths      # sft: lengths as train feeds them
    lengths = list(examples.totals) if examples is not None and examples.totals else advice.measurements.doc_token_lengths
    if not lengths:
        raise BabeltuneError("--report: the measurement kept no document lengths to plot; rerun without --report")
    seq = advice.decisions["max_seq_length"].value
    title = (f"{getattr(advice.profile, 'name', advice.language)} under {advice.measurements.tokenizer}: "
             f"{len(lengths):,} documents")
    data = histogram_png(lengths, seq, title=title)
    return atomic_write_bytes(Path(folder) / REPORT_NAME, data)
