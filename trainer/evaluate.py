"""Bits per character per language, before and after an adapter.

Each document is scored on its own: the tokenizer's BOS token is put in front (so the first text token is
predicted too) and documents longer than ``max_length`` are scored with a sliding window in which every
token is predicted exactly once, with up to half a window of preceding text as context. Token losses are
summed in float64. Bits per character = total nats / ln 2 / characters scored, which — unlike loss per
token — can be compared across tokenizers, and so across models and languages.

torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_text
from babeltune.models.safety import check_adapter_folder, check_no_remote_code, load_kwargs
from babeltune.trainer.data import IGNORE_INDEX
from babeltune.trainer.base_view import BaseView, in_place_parameters
from babeltune.trainer.export import is_peft_model

LOGIT_BUDGET = 1 << 28   # logits per forward pass (1 GiB in float32); batches shrink to stay under it


def _print_to_stderr(message: str) -> None:
    import sys
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class LanguageScore:
    """One model scored on one language's documents."""

    documents: int
    characters: int      # characters of the text whose tokens were predicted
    tokens: int          # tokens predicted (BOS and padding excluded)
    nats: float          # summed negative log-likelihood, natural log
    mean_loss: float     # nats per token
    perplexity: float    # exp(mean_loss)
    bits_per_char: float  # nats / ln 2 / characters

    @classmethod
    def from_totals(cls, documents: int, characters: int, tokens: int, nats: float) -> "LanguageScore":
        mean_loss = nats / tokens if tokens else float("nan")
        perplexity = math.exp(mean_loss) if tokens and mean_loss < 700 else float("inf" if tokens else "nan")
        bpc = nats / math.log(2) / characters if characters else float("nan")
        return cls(documents, characters, tokens, nats, mean_loss, perplexity, bpc)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LanguageResult:
    """One language: the score before the adapter and, when one was given, after it."""

    language: str
    before: LanguageScore
    after: Optional[LanguageScore] = None
    source: Optional[str] = None   # corpus path, when read from disk

    @property
    def documents(self) -> int:
        return self.before.documents

    @property
    def characters(self) -> int:
        return self.before.characters

    @property
    def delta_bits_per_char(self) -> Optional[float]:
        """after - before: negative means the adapter made this language cheaper to encode."""
        if self.after is None:
            return None
        return self.after.bits_per_char - self.before.bits_per_char

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "characters": self.characters,
            "source": self.source,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
            "delta_bits_per_char": self.delta_bits_per_char,
        }


@dataclass
class EvalReport:
    """Per-language results. ``to_dict()["languages"][LANG]`` holds
    {documents, characters, source, before: {...}, after: {...} | None, delta_bits_per_char}."""

    model: str
    adapter: Optional[str]
    max_length: int
    languages: dict[str, LanguageResult] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)   # files the corpus reader skipped, with reasons

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "adapter": self.adapter,
            "max_length": self.max_length,
            "metric": "bits_per_char = total nats / ln 2 / characters",
            "languages": {code: result.to_dict() for code, result in self.languages.items()},
            "skipped": list(self.skipped),
        }

    def to_json(self) -> str:
        return json.dumps(_finite_or_none(self.to_dict()), indent=2, ensure_ascii=False) + "\n"

    def write_json(self, path: str | Path) -> Path:
        """Write the report atomically (never half-written)."""
        return atomic_write_text(path, self.to_json())

    def render_table(self):
        """A rich Table: one row per language, before/after columns when an adapter was given."""
        from rich.table import Table

        with_after = any(r.after is not None for r in self.languages.values())
        title = f"bits per character — {self.model}" + (f" + {self.adapter}" if self.adapter else "")
        table = Table(title=title, caption="lower is better; comparable across tokenizers")
        for name in ("language", "docs", "chars", "tokens", "loss", "ppl", "bpc"):
            table.add_column(name, justify="left" if name == "language" else "right")
        if with_after:
            for name in ("loss after", "ppl after", "bpc after", "Δ bpc"):
                table.add_column(name, justify="right")
        for code, result in self.languages.items():
            table.add_row(*_table_row(code, result, with_after))
        return table


def _table_row(code: str, result: LanguageResult, with_after: bool) -> list[str]:
    b = result.before
    row = [code, f"{b.documents:,}", f"{b.characters:,}", f"{b.tokens:,}",
           f"{b.mean_loss:.4f}", f"{b.perplexity:.2f}", f"{b.bits_per_char:.4f}"]
    if with_after:
        a, delta = result.after, result.delta_bits_per_char
        if a is None:
            row += ["-", "-", "-", "-"]
        else:
            colour = "green" if delta < 0 else "red" if delta > 0 else ""
            shown = f"{delta:+.4f}"
            row += [f"{a.mean_loss:.4f}", f"{a.perplexity:.2f}", f"{a.bits_per_char:.4f}",
                    f"[{colour}]{shown}[/{colour}]" if colour else shown]
    return row


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Infinity: write null instead, so every reader can parse the report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- windows

@dataclass(frozen=True)
class _Window:
    """One forward pass: ``input_ids``; the tokens at positions >= ``score_from`` are predicted."""

    document: int
    input_ids: list[int]
    score_from: int


def _prefix_token(tokenizer) -> Optional[int]:
    """The BOS id to put before every document, or None when the tokenizer has no BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else None


def _document_windows(document: int, ids: list[int], prefix: Optional[int], max_length: int,
                      stride: int) -> list[_Window]:
    """Cut one document into windows of at most ``max_length`` tokens so that each text token (all of
    them with a BOS prefix; all but the first without) is predicted exactly once. Windows after the first
    start again with BOS (models expect it at position 0) and carry ``max_length - stride`` tokens of
    context before the tokens they score."""
    head = [prefix] if prefix is not None else []
    budget = max_length - len(head)          # text tokens per window
    windows, begin, scored_until = [], 0, 0 if prefix is not None else 1
    while scored_until < len(ids):
        end = min(begin + budget, len(ids))
        context = scored_until - begin       # text tokens in this window that were scored before
        windows.append(_Window(document, head + ids[begin:end], len(head) + context))
        scored_until = end
        begin += stride                      # stride < budget, so the next window overlaps this one
    return windows


def _plan_windows(token_ids: list[list[int]], prefix: Optional[int], max_length: int,
                  stride: Optional[int]) -> list[_Window]:
    if max_length < 8:
        raise BabeltuneError(f"--max-length: {max_length} is too short for a sliding window; use at least 8 (default 1024)")
    budget = max_length - (1 if prefix is not None else 0)
    step = stride if stride is not None else max(1, budget // 2)
    if not 1 <= step <= budget - 1:
        raise BabeltuneError(f"stride: {step} must be between 1 and {budget - 1} (max_length minus BOS minus 1)")
    windows: list[_Window] = []
    for document, ids in enumerate(token_ids):
        windows.extend(_document_windows(document, ids, prefix, max_length, step))
    return windows


def _scored_characters(tokenizer, text: str, ids: list[int], prefix: Optional[int]) -> int:
    """Characters whose tokens get predicted: the whole text with BOS; without BOS the first token is
    context only, so its characters are not counted."""
    if prefix is not None or not ids:
        return len(text) if ids else 0
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return len(text) - offsets[0][1]
    return max(0, len(text) - len(tokenizer.decode(ids[:1])))


# --------------------------------------------------------------------------------------------- scoring

def score_texts(model, tokenizer, texts: Iterable[str], *, max_length: int = 1024, batch_size: int = 4,
                stride: Optional[int] = None, on_documents: Optional[Callable[[int], None]] = None) -> LanguageScore:
    """Score each text on its own under ``model`` and return the summed figures.

    Texts are tokenized without special tokens and prefixed with the tokenizer's BOS token; texts longer
    than ``max_length`` tokens go through a sliding window (``stride`` new tokens per window, default half
    a window) so that every token is predicted exactly once. Windows are batched (``batch_size``) with
    right padding and an attention mask; padding never changes the result. Empty texts are skipped.
    ``on_documents(n)`` is called as each batch completes n more documents (all their windows scored).
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        return LanguageScore.from_totals(0, 0, 0, 0.0)
    if batch_size < 1:
        raise BabeltuneError(f"batch_size: {batch_size} must be at least 1")
    prefix = _prefix_token(tokenizer)
    token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    characters = sum(_scored_characters(tokenizer, t, ids, prefix) for t, ids in zip(texts, token_ids))
    windows = _plan_windows(token_ids, prefix, max_length, stride)
    if on_documents is not None:
        on_documents(len(token_ids) - len({w.document for w in windows}))   # no window to score: done at once
    nats, tokens = _score_windows(model, windows, batch_size, _padding_id(tokenizer, prefix), on_documents)
    return LanguageScore.from_totals(len(texts), characters, tokens, nats)


def _padding_id(tokenizer, prefix: Optional[int]) -> int:
    # Any valid id works: padded positions are masked out of attention and out of the loss.
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None), prefix):
        if candidate is not None:
            return int(candidate)
    return 0


def _score_windows(model, windows: list[_Window], batch_size: int, pad_id: int,
                   on_documents: Optional[Callable[[int], None]] = None) -> tuple[float, int]:
    """Summed NLL (float64) and number of predicted tokens over all windows."""
    from collections import Counter

    import torch

    windows_left = Counter(w.document for w in windows)

    device = next(model.parameters()).device
    vocab = _vocab_size(model)
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in _batches(windows, batch_size, vocab):
                nats, tokens = _score_batch(model, batch, pad_id, device)
                total_nats += nats
                total_tokens += tokens
                if on_documents is not None:
                    windows_left.subtract(w.document for w in batch)
                    on_documents(sum(1 for w in {w.document for w in batch} if windows_left[w] == 0))
    finally:
        model.train(was_training)
    return total_nats, total_tokens


def _batches(windows: list[_Window], batch_size: int, vocab: int) -> Iterable[list[_Window]]:
    """Longest windows first, so each batch holds windows of similar length (less padding; the results
    do not depend on it). A batch also stays under LOGIT_BUDGET logits: a 262k-token vocabulary times
    4 x 1024 positions would otherwise need 4 GiB for the logits alone."""
    ordered = sorted(windows, key=lambda w: len(w.input_ids), reverse=True)
    batch: list[_Window] = []
    for window in ordered:
        width = len(batch[0].input_ids) if batch else len(window.input_ids)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width * vocab > LOGIT_BUDGET):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _vocab_size(model) -> int:
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 32000)


def _score_batch(model, batch: list[_Window], pad_id: int, device) -> tuple[float, int]:
    import torch
    import torch.nn.functional as F

    width = max(len(w.input_ids) for w in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, window in enumerate(batch):
        n = len(window.input_ids)
        input_ids[row, :n] = torch.tensor(window.input_ids)
        attention[row, :n] = 1
        labels[row, window.score_from:n] = input_ids[row, window.score_from:n]
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
    nats, tokens = 0.0, 0
    for row in range(len(batch)):   # one row at a time keeps the float32 copy of the logits small
        targets = labels[row, 1:].to(logits.device)
        keep = targets != IGNORE_INDEX
        row_logits = logits[row, :-1][keep].float()
        losses = F.cross_entropy(row_logits, targets[keep], reduction="none")
        nats += float(losses.double().sum())
        tokens += int(keep.sum())
    return nats, tokens


# --------------------------------------------------------------------------------------------- reports

def evaluate_loaded(model, tokenizer, corpora: dict[str, list[str]], *, max_length: int = 1024,
                    batch_size: int = 4, stride: Optional[int] = None, model_name: str = "model",
                    adapter_name: Optional[str] = None, after_tokenizer=None, base_dir: Optional[Path] = None,
                    adapter_dir: Optional[Path] = None,
                    echo: Optional[Callable[[str], None]] = _print_to_stderr, progress=None) -> EvalReport:
    """Score in-memory texts per language with an already-loaded model.

    With a PEFT model, "before" is scored on the base model (``base_model_view``: adapter layers off and
    biases trained in place - by the config, or by ``adapter_dir``'s weights - read back from ``base_dir``, the
    base checkpoint) and "after" with the adapter
    active; any other model gets "before" only. ``after_tokenizer`` (default: the same
    tokenizer) is used for "after" when the adapter was saved with its own tokenizer. ``progress``
    (e.g. babeltune.console.CountProgress) is called as progress(description, total) and used as a
    context manager whose advance(n) counts scored documents.
    """
    echo = echo or (lambda _message: None)
    is_peft = is_peft_model(model)
    max_length = _cap_max_length(model, max_length, echo)
    report = EvalReport(model=model_name, adapter=adapter_name if is_peft else None, max_length=max_length)
    base_view = BaseView.prepare(model, base_dir, adapter_dir=adapter_dir, warn=echo) if is_peft else None  # read once
    for language, texts in corpora.items():
        echo(f"eval {language}: scoring {len(texts):,} documents" + (" before and after the adapter" if is_peft else ""))
        passes = 2 if is_peft else 1
        counter = progress(f"eval {language}", passes * len(texts)) if progress else nullcontext()
        with counter as bar:
            on_documents = bar.advance if bar is not None else None
            with (base_view.active() if base_view is not None else nullcontext()):
                before = score_texts(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                     stride=stride, on_documents=on_documents)
            after = None
            if is_peft:
                after = score_texts(model, after_tokenizer or tokenizer, texts, max_length=max_length,
                                    batch_size=batch_size, stride=stride, on_documents=on_documents)
        report.languages[language] = LanguageResult(language, before, after)
    return report


def _cap_max_length(model, max_length: int, echo: Callable[[str], None]) -> int:
    """Windows longer than the model's context would score garbage: cap at max_position_embeddings."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(limit, int) and 0 < limit < max_length:
        echo(f"eval: max_length {max_length} is longer than the model's context ({limit}); using {limit}")
        return limit
    return max_length


def evaluate_corpora(model_spec: str, corpora: dict[str, Any], *, adapter: Optional[str] = None,
                     max_documents: Optional[int] = None, max_length: int = 1024, batch_size: int = 4,
                     stride: Optional[int] = None, device: Optional[str] = None, model=None, tokenizer=None,
                     echo: Optional[Callable[[str], None]] = _print_to_stderr, progress=None) -> EvalReport:
    """Read each LANG corpus (a CorpusSpec or a path) with the advisor's reader, load the model (or use
    ``model``/``tokenizer`` when the caller already has them loaded), and score before and, with
    ``adapter`` (a PEFT folder), after. Returns an EvalReport."""
    echo = echo or (lambda _message: None)
    if max_documents is not None and max_documents < 1:
        raise BabeltuneError(f"--max-documents: {max_documents} must be at least 1 (or leave it out for all documents)")
    # Cheap checks first, so a typo fails before minutes of reading or loading.
    from babeltune.models.resolve import resolve_model_dir
    from babeltune.models.tokenizers import hf_tokenizer

    model_dir = resolve_model_dir(model_spec) if model is None else None
    if adapter is not None:
        _check_adapter_folder(adapter)
        if model_dir is not None:   # refuse an adapter recorded for another base model before loading anything
            from babeltune.models.identity import check_adapter_base

            check_adapter_base(adapter, model_dir, warn=echo)
    if model is not None and tokenizer is None:
        raise BabeltuneError("evaluate_corpora: pass the tokenizer together with an already-loaded model")
    documents, sources, skipped = _read_corpora(corpora, max_documents)
    if model is None:
        tokenizer = tokenizer or hf_tokenizer(model_dir)
        model = _load_model(model_dir, device, echo)
    after_tokenizer = None
    if adapter is not None:
        model, after_tokenizer = _attach_adapter(model, adapter, tokenizer)
    # Only an adapter that trained base parameters in place needs the base checkpoint back for "before".
    adapter_dir = Path(adapter) if adapter is not None else None
    base_dir = model_dir or (_base_dir_or_none(model_spec) if in_place_parameters(model, adapter_dir) else None)
    report = evaluate_loaded(model, tokenizer, documents, max_length=max_length, batch_size=batch_size,
                             stride=stride, model_name=str(model_spec), adapter_name=adapter,
                             after_tokenizer=after_tokenizer, base_dir=base_dir, adapter_dir=adapter_dir, echo=echo, progress=progress)
    for language, result in report.languages.items():
        result.source = sources.get(language)
    report.skipped = skipped
    return report


def _base_dir_or_none(model_spec: str) -> Optional[Path]:
    """The base checkpoint folder of an already-loaded model, when its name resolves to one."""
    from babeltune.models.resolve import resolve_model_dir

    try:
        return resolve_model_dir(model_spec)
    except (BabeltuneError, OSError):
        return None


def _read_corpora(corpora: dict[str, Any], max_documents: Optional[int]):
    """LANG -> documents via the advisor's corpus reader (same formats and errors as `advise`); a list of texts
    is taken as the documents themselves."""
    from babeltune.corpus.reader import CorpusSpec, iter_documents

    documents, sources, skipped_all = {}, {}, []
    for language, spec in corpora.items():
        if isinstance(spec, list):   # documents given in memory (eval.forgetting's shipped reference sentences)
            documents[language] = spec[:max_documents] if max_documents is not None else list(spec)
            sources[language] = f"babeltune's {language} reference sentences ({len(documents[language])})"
            continue
        spec = spec if isinstance(spec, CorpusSpec) else CorpusSpec(path=str(spec))
        skipped: list = []
        texts = []
        for text in iter_documents(spec, skipped):
            texts.append(text)
            if max_documents is not None and len(texts) >= max_documents:
                break
        if not texts:
            raise BabeltuneError(f"--corpus {language}={spec.path}: no documents to score (empty, or every file "
                                 "was skipped); point it at UTF-8 text, JSONL, CSV or parquet with text in it")
        documents[language], sources[language] = texts, str(spec.path)
        skipped_all += [{"language": language, "path": s.path, "reason": s.reason} for s in skipped]
    return documents, sources, skipped_all


def _load_model(model_dir: Path, device: Optional[str], echo: Callable[[str], None]):
    """fp32 on CPU; bf16 on a GPU (fp16 on GPUs without bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    echo(f"eval: loading {model_dir} on {device} ({str(dtype).replace('torch.', '')})")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True, **load_kwargs())
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BabeltuneError(f"--model {model_dir}: cannot load the weights ({first_line}); "
                             "check that the folder holds a complete causal-LM checkpoint") from exc
    return model.to(device).eval()


def _attach_adapter(model, adapter: str, tokenizer):
    """Wrap ``model`` with the PEFT adapter in ``adapter``; returns (model, tokenizer for 'after')."""
    folder = _check_adapter_folder(adapter)
    from peft import PeftModel

    try:
        from babeltune.trainer.vocab import resize_for_adapter

        resize_for_adapter(model, folder)   # vocab.extend: the base grows to the adapter's rows first
        wrapped = PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BabeltuneError(f"--adapter {adapter}: does not fit this model ({first_line[:300]}); "
                             "evaluate it with the --model it was trained on") from exc
    wrapped.eval()
    return wrapped, _adapter_tokenizer(folder, tokenizer)


def _check_adapter_folder(adapter: str) -> Path:
    """Complete (config, safetensors weights, tokenizer), no auto_map code, no pickle weights: else one line."""
    return check_adapter_folder(adapter, "--adapter")


def _adapter_tokenizer(folder: Path, base_tokenizer):
    """The tokenizer saved with the adapter when there is one (train saves it), else the base one."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return base_tokenizer
    from transformers import AutoTokenizer

    check_no_remote_code(folder, "--adapter")
    try:
        return AutoTokenizer.from_pretrained(str(folder), **load_kwargs())
    except (OSError, ValueError):
        return base_tokenizer
