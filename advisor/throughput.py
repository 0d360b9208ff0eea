"""Measured training throughput by GPU, model size and shape: the table behind `advise`'s GPU-efficient
shapes and its run-time estimate.

The data is ``advisor/data/throughput.json`` (schema: ``ThroughputTable``). Each record is one measured run:
GPU, model and its parameter count, backend and kernels, micro-batch x sequence length, packing,
checkpointing and the real (non-padding) tokens per second. Adding a measurement is adding a record; the
loader needs no change.

How a query is answered (``ShapeCurve``):
  1. records of the same backend (else all), the same packing (else ``blocks``, else all) and, when asked,
     the same gradient checkpointing (records with ``null`` match either);
  2. for each model size, the target GPU's own records when it has any there (never mixed with others);
     otherwise every GPU's records scaled by the ratio of published tensor TFLOPS (``gpus``), and the basis
     says so;
  3. per model size, tokens/s against tokens per micro-step, interpolated linearly in log-log space between
     measured shapes; below the smallest measured shape tokens/s falls in proportion to the tokens (a fixed
     cost per step dominates there, as issue 12 measured), above the largest it stays flat (saturated);
  4. between measured model sizes, log-log interpolation in the parameter count; above the largest, tokens/s
     scales with 1 / parameters (compute per token grows with the parameters); below the smallest, no faster
     than it (the fixed per-step costs do not shrink with the model).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from babeltune.errors import BabeltuneError

TABLE_PATH = Path(__file__).with_name("data") / "throughput.json"
DEFAULT_PACKING = "blocks"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(Strict):
    name: str = Field(description="Full product name.")
    memory_gib: float = Field(gt=0, description="Memory as sold (a 24 GB card has 24 GiB usable for the advisor).")
    tensor_tflops: float = Field(gt=0, description="Published dense bf16 (fp16 where no bf16) tensor-core TFLOPS.")
    bf16: bool = Field(True, description="Supports bf16.")
    aliases: list[str] = Field(default_factory=list)
    source: str = Field(description="Where the figures come from.")


class ThroughputRecord(Strict):
    gpu: str = Field(description="Key in ``gpus``.")
    model: str
    params: int = Field(gt=0, description="Total parameters of the model.")
    backend: str = Field(description="babeltune backend (hf-peft, unsloth, ...) or a bare loop (bare-...).")
    kernels: Literal["plain", "liger", "unsloth"]
    micro_batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    grad_accum: int = Field(1, ge=1)
    packing: Literal["blocks", "padding_free", "off"]
    gradient_checkpointing: Optional[bool] = Field(None, description="null when not reported.")
    tokens_per_s: float = Field(gt=0, description="Real (non-padding) tokens per second.")
    tokens_per_micro_step: Optional[int] = Field(None, ge=1, description="Real tokens per micro-step when rows are "
                                                 "not full (padding); default micro_batch x seq_len.")
    peak_gib: Optional[float] = Field(None, gt=0)
    source: str = Field(description="The bench result file (and key) or the issue the figure comes from.")

    @property
    def tokens(self) -> int:
        return self.tokens_per_micro_step or self.micro_batch * self.seq_len

    def describe(self) -> str:
        return (f"{self.gpu} {self.model} {self.backend}/{self.kernels} {self.micro_batch} x {self.seq_len}: "
                f"{self.tokens_per_s:,.0f} tok/s")


class ThroughputTable(Strict):
    schema_version: Literal[1]
    about: str = ""
    gpus: dict[str, GpuSpec]
    records: list[ThroughputRecord]

    @model_validator(mode="after")
    def _known_gpus(self):
        for index, record in enumerate(self.records):
            if record.gpu not in self.gpus:
                raise ValueError(f"records[{index}].gpu {record.gpu!r} is not a key of gpus ({', '.join(self.gpus)})")
        return self

    def resolve_gpu(self, name: str) -> str:
        """The table key for a GPU name or alias (case and spaces ignored)."""
        wanted = name.lower().replace(" ", "").replace("_", "-")
        for key, spec in self.gpus.items():
            if wanted == key or wanted in spec.aliases:
                return key
        raise BabeltuneError(f"--gpu: {name!r} is not a GPU babeltune knows (known: {', '.join(self.gpus)}, or cpu); "
                             "pass the nearest one, and --gpu-memory for its memory")


def _squeezed(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def table_gpu_for_device(device_name: str, table: Optional[ThroughputTable] = None) -> Optional[str]:
    """The table key of a GPU as the driver names it (``torch.cuda.get_device_name``: "NVIDIA H100 80GB HBM3",
    "NVIDIA A100-SXM4-40GB", "NVIDIA H100 PCIe"), or None when the table has no such GPU. A memory size in the
    name picks the variant of that size (a100-40gb); otherwise the longest key or alias found in the name wins
    (a100 before a10, h100-pcie before h100)."""
    import re

    table = table or load_table()
    name = _squeezed(device_name)
    best: Optional[tuple[int, int, str]] = None
    for key, spec in table.gpus.items():
        raw = [key, *spec.aliases]
        # "a100-40gb" is also an "a100"
        labels = {_squeezed(label) for label in raw} | {_squeezed(re.sub(r"[-_ ]\d+gb?$", "", label)) for label in raw}
        found = [len(label) for label in labels if label and label in name]
        if found:
            rank = (100 * (f"{spec.memory_gib:g}gb" in name) + max(found), -len(key), key)
            best = max(best, rank) if best else rank
    return best[2] if best else None


def load_table(path: Optional[str | Path] = None) -> ThroughputTable:
    """Read and validate a throughput table (default: the one shipped in the package)."""
    return _load(str(path or TABLE_PATH))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> ThroughputTable:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return ThroughputTable.model_validate(data)
    except FileNotFoundError:
        raise BabeltuneError(f"{path}: throughput table not found; reinstall babeltune") from None
    except json.JSONDecodeError as exc:
        raise BabeltuneError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the record there") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "table"
        raise BabeltuneError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}; fix that record") from None


def log_interpolate(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    if x1 == x0:
        return y0
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


def along_tokens(points: list[tuple[int, float]], tokens: float) -> float:
    """tokens/s at ``tokens`` per micro-step from one model's measured (tokens, tokens/s) points."""
    if tokens <= points[0][0]:
        return points[0][1] * tokens / points[0][0]     # fixed cost per step: throughput ~ tokens
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if tokens == x1:
            return y1
        if tokens < x1:
            return log_interpolate(tokens, x0, y0, x1, y1)
    return points[-1][1]                                 # saturated


@dataclass
class ShapeCurve:
    """Tokens/s of one model on one GPU as a function of tokens per micro-step (see the module docstring)."""

    gpu: str
    params: int
    groups: dict[int, list[tuple[int, float]]]          # params -> sorted (tokens, scaled tokens/s)
    records: list[ThroughputRecord]
    caveats: list[str] = field(default_factory=list)

    def tokens_per_s(self, tokens: float) -> float:
        sizes = sorted(self.groups)
        at = {size: along_tokens(self.groups[size], tokens) for size in sizes}
        if self.params <= sizes[0]:
            return at[sizes[0]]      # no faster than the smallest measured model: fixed per-step costs stay
        if self.params >= sizes[-1]:
            return at[sizes[-1]] * sizes[-1] / self.params
        for low, high in zip(sizes, sizes[1:]):
            if self.params <= high:
                return log_interpolate(self.params, low, at[low], high, at[high])
        raise AssertionError("unreachable")

    @property
    def peak_tokens(self) -> int:
        """The largest measured tokens per micro-step (where the curve is flat)."""
        return max(tokens for points in self.groups.values() for tokens, _ in points)

    @property
    def peak(self) -> float:
        return self.tokens_per_s(self.peak_tokens)

    def efficiency(self, tokens: float) -> float:
        return self.tokens_per_s(tokens) / self.peak

    def smallest_tokens_reaching(self, share: float, minimum: int = 1) -> int:
        """The smallest power-of-two tokens per micro-step (>= minimum) that reaches ``share`` of the peak."""
        tokens = 1 << max(0, math.ceil(math.log2(max(1, minimum))))
        while tokens < self.peak_tokens and self.efficiency(tokens) < share:
            tokens *= 2
        return tokens

    def basis(self) -> str:
        """One line naming the measurements behind the curve (for reasons and the estimate)."""
        shown = sorted(self.records, key=lambda r: (abs(math.log(r.params / self.params)), r.tokens))[:3]
        more = f" and {len(self.records) - len(shown)} more" if len(self.records) > len(shown) else ""
        text = "measured " + "; ".join(r.describe() for r in shown) + more
        return text + (f" ({'; '.join(self.caveats)})" if self.caveats else "")


def _filtered(records: list[ThroughputRecord], test, what: str, caveats: list[str]) -> list[ThroughputRecord]:
    kept = [r for r in records if test(r)]
    if kept:
        return kept
    caveats.append(f"no record for {what}")
    return records


def _cell_value(records: list[ThroughputRecord], gpu: str, scale: dict[str, float]) -> float:
    """Median tokens/s of one (model, shape, packing) cell, from the target GPU's records when it has any."""
    own = [r for r in records if r.gpu == gpu]
    return statistics.median(r.tokens_per_s * scale[r.gpu] for r in (own or records))


def _packing_factor(cells: dict, packing: str, gpu: str, scale: dict[str, float], caveats: list[str]) -> float:
    """tokens/s with ``packing`` relative to blocks, measured where both ran on the same model and shape."""
    if packing == DEFAULT_PACKING:
        return 1.0
    ratios = [_cell_value(by_packing[packing], gpu, scale) / _cell_value(by_packing[DEFAULT_PACKING], gpu, scale)
              for by_packing in cells.values() if packing in by_packing and DEFAULT_PACKING in by_packing]
    if not ratios:
        caveats.append(f"no measured {packing} vs {DEFAULT_PACKING} pair: {DEFAULT_PACKING} speed assumed")
        return 1.0
    return statistics.median(ratios)


def bracketing_sizes(sizes: list[int], params: int) -> set[int]:
    """The measured model sizes a query for ``params`` reads: the nearest below and above (or the nearest one)."""
    below = [s for s in sizes if s <= params]
    above = [s for s in sizes if s >= params]
    return {s for s in (below[-1] if below else None, above[0] if above else None) if s is not None}


def shape_curve(table: ThroughputTable, gpu: str, params: int, *, backend: str = "hf-peft",
                packing: str = DEFAULT_PACKING, gradient_checkpointing: Optional[bool] = None) -> ShapeCurve:
    """The throughput curve for ``params`` on ``gpu`` (a table key), from the best-matching records."""
    if not table.records:
        raise BabeltuneError(f"{TABLE_PATH}: the throughput table has no records; add a measured run")
    caveats: list[str] = []
    records = _filtered(table.records, lambda r: r.backend == backend, f"backend {backend}", caveats)
    if gradient_checkpointing is not None:
        records = _filtered(records, lambda r: r.gradient_checkpointing in (None, gradient_checkpointing),
                            f"gradient_checkpointing {str(gradient_checkpointing).lower()}", caveats)
    target = table.gpus[gpu].tensor_tflops
    scale = {r.gpu: target / table.gpus[r.gpu].tensor_tflops for r in records}
    cells: dict[tuple[int, int], dict[str, list[ThroughputRecord]]] = {}
    for r in records:
        cells.setdefault((r.params, r.tokens), {}).setdefault(r.packing, []).append(r)
    factor = _packing_factor(cells, packing, gpu, scale, caveats)
    groups: dict[int, list[tuple[int, float]]] = {}
    used: list[ThroughputRecord] = []
    sizes = bracketing_sizes(sorted({size for size, _ in cells}), params)
    # a model size the target GPU has measured reads only those records (never a mix of own and scaled points)
    own_sizes = {size for (size, _), by_packing in cells.items()
                 if any(r.gpu == gpu for rs in by_packing.values() for r in rs)}
    for (size, tokens), by_packing in sorted(cells.items()):
        if size not in sizes:
            continue
        if size in own_sizes:
            by_packing = {p: [r for r in rs if r.gpu == gpu] for p, rs in by_packing.items()}
            by_packing = {p: rs for p, rs in by_packing.items() if rs}
        if packing in by_packing:
            chosen, value = by_packing[packing], _cell_value(by_packing[packing], gpu, scale)
        elif DEFAULT_PACKING in by_packing:
            chosen = by_packing[DEFAULT_PACKING]
            value = _cell_value(chosen, gpu, scale) * factor
        else:
            continue
        groups.setdefault(size, []).append((tokens, value))
        used += [r for r in chosen if r.gpu == gpu] or chosen
    if not groups:
        raise BabeltuneError(f"{TABLE_PATH}: no {backend} record with packing {packing} or {DEFAULT_PACKING}; "
                             "add a measured run")
    if factor != 1.0:
        caveats.append(f"{packing} at {factor:.2f}x the speed of {DEFAULT_PACKING} (measured pair)")
    scaled = sorted({r.gpu for r in used if r.gpu != gpu})
    if scaled:
        caveats.append(f"{', '.join(scaled)} records scaled to {gpu} by published tensor TFLOPS "
                       f"({target:g} / {', '.join(f'{table.gpus[s].tensor_tflops:g}' for s in scaled)})")
    return ShapeCurve(gpu=gpu, params=params, groups=groups, records=used, caveats=caveats)
