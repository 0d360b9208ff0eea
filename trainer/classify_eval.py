"""`babeltune eval --task classify`: accuracy and macro-F1 per language/domain, with the base model and with the
adapter, against the majority-class baseline; a confusion-matrix PNG with ``--report``.

The classification settings (label column, text column, verbalisers, prompt) default to what the adapter was
trained with (its babeltune_config.yaml); options given on the command line win."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_text
from babeltune.trainer import classify as cl


@dataclass
class ClassifySettings:
    label_column: str = "label"
    text_column: Optional[str] = None
    text_field: str = "text"
    verbalizers: dict[str, str] = field(default_factory=dict)
    prompt: str = "{text}\nLabel:"
    source: str = "defaults"


def parse_labels_option(value: str) -> dict[str, str]:
    """``--labels "-1=negative,0=neutral,1=positive"`` (or a JSON object) -> {label: verbaliser}."""
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BabeltuneError(f"--labels {value!r}: invalid JSON ({exc.msg}); write LABEL=TEXT,LABEL=TEXT") from None
        if not isinstance(parsed, dict):
            raise BabeltuneError(f"--labels {value!r}: expected an object of label: text")
        return {cl.label_text(k): str(v).strip() for k, v in parsed.items()}
    out = {}
    for item in text.split(","):
        label, sep, verbal = item.partition("=")
        if not sep or not label.strip() or not verbal.strip():
            raise BabeltuneError(f"--labels {value!r}: expected LABEL=TEXT pairs separated by commas, "
                                 "e.g. --labels \"-1=negative,0=neutral,1=positive\"")
        out[label.strip()] = verbal.strip()
    return out


def settings_from_adapter(adapter: Optional[str]) -> ClassifySettings:
    """The adapter's own classification settings (data.* of its resolved config) when it was trained for it."""
    if adapter is None:
        return ClassifySettings()
    from babeltune.config import DataConfig, read_yaml
    from babeltune.trainer.export import RESOLVED_CONFIG

    path = Path(adapter) / RESOLVED_CONFIG
    if not path.is_file():
        return ClassifySettings()
    data = read_yaml(path).get("data") or {}
    if data.get("mode") != "classify":
        return ClassifySettings()
    fields = {k: data[k] for k in ("train", "label_column", "text_column", "text_field", "label_verbalizers",
                                   "classify_prompt") if k in data}
    parsed = DataConfig.model_validate({"train": "-", **fields})
    return ClassifySettings(parsed.label_column, parsed.text_column, parsed.text_field, dict(parsed.label_verbalizers),
                            parsed.classify_prompt, f"the adapter's {RESOLVED_CONFIG}")


# --------------------------------------------------------------------------------------------- report


@dataclass
class CorpusResult:
    name: str
    source: str
    examples: int
    class_counts: dict[str, int]
    majority_label: str
    majority: cl.Scores
    base: cl.Scores
    adapter: Optional[cl.Scores] = None

    def to_dict(self) -> dict:
        return {"source": self.source, "examples": self.examples, "class_counts": self.class_counts,
                "majority_class": {"label": self.majority_label, **self.majority.to_dict()},
                "base": self.base.to_dict(), "adapter": self.adapter.to_dict() if self.adapter else None}


@dataclass
class ClassifyReport:
    model: str
    adapter: Optional[str]
    labels: dict[str, str]
    prompt: str
    settings_source: str
    corpora: dict[str, CorpusResult] = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"task": "classify", "model": self.model, "adapter": self.adapter, "labels": self.labels,
                "prompt": self.prompt, "settings_from": self.settings_source,
                "prediction": "argmax over labels of the summed log-probability of the label's tokens after the prompt",
                "majority_baseline": "always the most frequent label of each evaluated set",
                "corpora": {name: result.to_dict() for name, result in self.corpora.items()}, "skipped": self.skipped}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), self.to_json())

    def render_table(self):
        from rich.table import Table

        table = Table(title=f"classification: {self.model}" + (f" + {self.adapter}" if self.adapter else ""))
        for column in ("corpus", "examples", "majority acc", "majority F1", "base acc", "base macro-F1"):
            table.add_column(column, justify="left" if column == "corpus" else "right")
        if self.adapter:
            table.add_column("adapter acc", justify="right")
            table.add_column("adapter macro-F1", justify="right")
        for name, r in self.corpora.items():
            row = [name, f"{r.examples:,}", f"{r.majority.accuracy:.3f}", f"{r.majority.macro_f1:.3f}",
                   f"{r.base.accuracy:.3f}", f"{r.base.macro_f1:.3f}"]
            if self.adapter:
                row += [f"{r.adapter.accuracy:.3f}", f"{r.adapter.macro_f1:.3f}"] if r.adapter else ["-", "-"]
            table.add_row(*row)
        return table

    def write_confusion_png(self, folder: str | Path) -> Path:
        """One confusion matrix per corpus and model (rows: gold label, columns: predicted)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from babeltune.atomic import atomic_write_bytes

        kinds = ["base"] + (["adapter"] if self.adapter else [])
        names = list(self.corpora)
        fig, axes = plt.subplots(len(names), len(kinds), figsize=(3.6 * len(kinds), 3.2 * len(names)), squeeze=False)
        labels = list(self.labels)
        for i, name in enumerate(names):
            for j, kind in enumerate(kinds):
                scores = getattr(self.corpora[name], kind)
                ax = axes[i][j]
                ax.imshow(scores.confusion, cmap="Blues")
                darkest = max(max(row) for row in scores.confusion) or 1
                for g, row in enumerate(scores.confusion):
                    for p, count in enumerate(row):
                        ax.text(p, g, str(count), ha="center", va="center", fontsize=9,
                                color="white" if count > darkest / 2 else "black")
                ax.set_xticks(range(len(labels)), labels)
                ax.set_yticks(range(len(labels)), labels)
                ax.set_xlabel("predicted")
                ax.set_ylabel("gold")
                ax.set_title(f"{name} {kind}: acc {scores.accuracy:.3f}, F1 {scores.macro_f1:.3f}", fontsize=9)
        fig.tight_layout()
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(folder / "confusion.png", buffer.getvalue())


# --------------------------------------------------------------------------------------------- running


def read_corpora(corpora: dict[str, str], settings: ClassifySettings, limit: Optional[int], strict: bool = False):
    """name -> examples, and every skip, per corpus (the advisor's reader, as train reads them)."""
    from babeltune.corpus.reader import CorpusSpec

    examples, skipped_all = {}, []
    for name, path in corpora.items():
        spec = CorpusSpec(path=path, text_column=settings.text_column, text_field=settings.text_field, strict=strict)
        skipped: list = []
        examples[name] = cl.read_labelled(spec, settings.label_column, skipped, option="--label-column", limit=limit)
        skipped_all += [{"corpus": name, "path": s.path, "reason": s.reason, "count": s.count} for s in skipped]
    return examples, skipped_all


def score_corpora(model, tokenizer, examples: dict[str, list], space: cl.LabelSpace, prompt: str, *, what: str,
                  batch_size: int = 8, max_length: int = 512, progress=None,
                  echo: Callable[[str], None] = lambda line: None) -> dict[str, cl.Scores]:
    """Scores per corpus of one model as it is (``what`` names it in the log: base or adapter)."""
    results = {}
    for name, rows in examples.items():
        texts, gold = [ex.text for ex in rows], [space.index(ex.label) for ex in rows]
        echo(f"eval {name} ({what}): scoring {len(rows):,} examples x {len(space.labels)} labels")
        counter = progress(f"classify {name} ({what})", len(rows)) if progress else nullcontext()
        with counter as bar:
            scores = cl.score_labels(model, tokenizer, texts, space, prompt, batch_size=batch_size,
                                     max_length=max_length, on_examples=bar.advance if bar is not None else None)
        results[name] = cl.Scores.of(gold, cl.predictions(scores), len(space.labels), cl.mean_gold_logprob(scores, gold))
    return results


def corpus_results(examples: dict[str, list], space: cl.LabelSpace, base: dict[str, cl.Scores],
                   adapted: Optional[dict[str, cl.Scores]], corpora: dict[str, str]) -> dict[str, CorpusResult]:
    out = {}
    for name, rows in examples.items():
        gold = [space.index(ex.label) for ex in rows]
        majority, majority_scores = cl.majority_baseline(gold, len(space.labels))
        out[name] = CorpusResult(name, corpora.get(name, ""), len(rows),
                                 {label: gold.count(i) for i, label in enumerate(space.labels)},
                                 space.labels[majority], majority_scores, base[name], adapted[name] if adapted else None)
    return out


def evaluate_classify(model_spec: str, corpora: dict[str, str], *, adapter: Optional[str] = None,
                      label_column: Optional[str] = None, text_column: Optional[str] = None,
                      labels: Optional[dict[str, str]] = None, prompt: Optional[str] = None,
                      max_examples: Optional[int] = None, batch_size: int = 8, max_length: int = 512,
                      device: Optional[str] = None, progress=None,
                      echo: Callable[[str], None] = lambda line: None) -> ClassifyReport:
    from babeltune.models.resolve import resolve_model_dir
    from babeltune.trainer import evaluate as ev

    if max_examples is not None and max_examples < 1:
        raise BabeltuneError(f"--max-documents: {max_examples} must be at least 1 (or leave it out for all examples)")
    model_dir = resolve_model_dir(model_spec)
    if adapter is not None:
        ev._check_adapter_folder(adapter)
        from babeltune.models.identity import check_adapter_base

        check_adapter_base(adapter, model_dir, warn=echo)
    settings = settings_from_adapter(adapter)
    overrides = {"label_column": label_column, "text_column": text_column, "verbalizers": labels, "prompt": prompt}
    for key, value in overrides.items():
        if value:
            setattr(settings, key, value)
    if prompt is not None and prompt.count("{text}") != 1:
        raise BabeltuneError(f"--prompt {prompt!r}: must contain {{text}} exactly once (where the example's text goes)")
    examples, skipped = read_corpora(corpora, settings, max_examples)
    observed = [ex.label for rows in examples.values() for ex in rows]
    space = cl.label_space(settings.verbalizers, observed, ", ".join(corpora.values()), option="--labels")
    echo("classify: labels " + ", ".join(f"{l!r} -> {v!r}" for l, v in space.to_dict().items())
         + f"; prompt {settings.prompt!r} (settings from {settings.source if not any(overrides.values()) else 'the command line'})")
    from babeltune.models.tokenizers import hf_tokenizer

    tokenizer = hf_tokenizer(model_dir)
    model = ev._load_model(model_dir, device, echo)
    run = dict(batch_size=batch_size, max_length=max_length, progress=progress, echo=echo)
    # The base model is scored before the adapter is attached: with BitFit (ia3) the trained biases replace the
    # base ones in place, so PEFT's disable_adapter() would not give the base model back.
    base = score_corpora(model, tokenizer, examples, space, settings.prompt, what="base", **run)
    adapted = None
    if adapter is not None:
        model, after_tokenizer = ev._attach_adapter(model, adapter, tokenizer)
        adapted = score_corpora(model, after_tokenizer, examples, space, settings.prompt, what="adapter", **run)
    results = corpus_results(examples, space, base, adapted, corpora)
    return ClassifyReport(str(model_spec), adapter, space.to_dict(), settings.prompt, settings.source, results, skipped)


def corpora_by_name(values: tuple[str, ...]) -> dict[str, str]:
    """NAME=PATH options (a language or a domain, any label) -> {name: path}; a name twice is an error."""
    from babeltune.trainer.evaluate_cli import parse_corpus_option

    out: dict[str, str] = {}
    for value in values:
        name, path = parse_corpus_option(value)
        if name in out:
            raise BabeltuneError(f"--corpus {value!r}: {name!r} is given twice; pass one corpus per name")
        out[name] = path
    return out


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
