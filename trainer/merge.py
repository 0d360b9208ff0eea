"""`babeltune merge`: one LoRA adapter for several languages, built with PEFT's ``add_weighted_adapter``.

Before anything loads, the inputs are checked: every adapter is a complete LoRA folder, all of them were trained
on the same base model (the identity `train` records beside every adapter), and their configs can be combined by
the chosen method (the same target modules; the same rank for the methods that add the A and B matrices
elementwise). The merged adapter is written like `train` writes one (staging folder, then rename), with the base
model's identity and ``babeltune_merge.json`` (inputs, method, weights, versions and, with eval texts, the
bits/char table: each language under its own adapter, under the merged one and under the base model).

PEFT does the merge maths. One workaround: PEFT (<= 0.21 at least) gives the merged adapter the first input's
``use_rslora`` while it folds every input's scaling into the merged matrices for a scaling of 1, so merged rsLoRA
adapters came out sqrt(r) times too strong (huggingface/peft#3449, #3761). The merged adapter is therefore created
as plain LoRA (``lora_alpha = r``, scaling 1), which reproduces an input exactly when merged alone (tested).

torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.errors import BabeltuneError, one_line
from babeltune.atomic import atomic_write_text

METHODS = ("linear", "cat", "ties", "dare_ties", "svd")
SAME_RANK = frozenset({"linear", "ties", "dare_ties"})   # PEFT combines the A and B matrices elementwise
PRUNING = frozenset({"ties", "dare_ties"})               # these keep a share (density) of each input's values
DEFAULT_DENSITY = 0.5                                    # the TIES/DARE papers' common middle setting
MANIFEST = "babeltune_merge.json"
MERGED = "default"   # PEFT saves the adapter named "default" at the folder's root, as `train` does
UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "lora_bias"}   # add_weighted_adapter gets these wrong (peft#3761)


# --------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class MergeSpec:
    """How to combine: PEFT's combination_type, one weight per input, density for ties/dare_ties."""

    method: str
    weights: tuple[float, ...]
    density: Optional[float] = None
    seed: int = 0   # dare_ties drops values at random

    def describe(self) -> str:
        weights = ",".join(f"{w:g}" for w in self.weights)
        return f"{self.method} weights {weights}" + (f" density {self.density:g}" if self.density is not None else "")


@dataclass
class AdapterInput:
    label: str          # the language, as given in --adapter LANG=DIR
    folder: Path
    config: dict        # adapter_config.json
    identity: Any       # BaseModelIdentity or None (an adapter saved without a record)

    @property
    def rank(self) -> int:
        pattern = self.config.get("rank_pattern") or {}
        return max([int(self.config.get("r") or 0), *map(int, pattern.values())])

    @property
    def target_modules(self) -> Any:
        modules = self.config.get("target_modules")
        return sorted(modules) if isinstance(modules, list) else modules


def parse_pairs(values: tuple[str, ...] | list[str], option: str, what: str) -> dict[str, str]:
    """'LANG=PATH' options -> {LANG: PATH}; a malformed or repeated one is a one-line error."""
    pairs: dict[str, str] = {}
    for value in values:
        label, sep, path = value.partition("=")
        label, path = label.strip(), path.strip()
        if not sep or not label or not path:
            raise BabeltuneError(f"{option} {value!r}: expected LANG={what}, e.g. {option} mr=runs/mr/adapter")
        if label in pairs:
            raise BabeltuneError(f"{option} {value!r}: {label!r} is given twice; pass one {what} per language")
        pairs[label] = path
    return pairs


def merge_spec(method: str, weights: Optional[str], density: Optional[float], count: int, seed: int = 0) -> MergeSpec:
    """Check --method/--weights/--density against the number of adapters. Default weights: 1 each (every
    language keeps its whole update; --weights 0.5,0.5 averages instead)."""
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise BabeltuneError(f"--method {method!r}: not a merge method; {hint}use one of {', '.join(METHODS)}")
    parsed = tuple(_weights(weights, count)) if weights else (1.0,) * count
    if method in PRUNING:
        density = DEFAULT_DENSITY if density is None else density
        if not 0 < density <= 1:
            raise BabeltuneError(f"--density {density:g}: must be in (0, 1] (the share of each adapter's values kept)")
    elif density is not None:
        raise BabeltuneError(f"--density {density:g}: only {' and '.join(sorted(PRUNING))} prune values; drop --density "
                             f"for --method {method}")
    return MergeSpec(method, parsed, density, seed)


def _weights(text: str, count: int) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise BabeltuneError(f"--weights {text!r}: expected {count} comma-separated numbers, e.g. "
                             f"--weights {','.join(['0.5'] * count)}") from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise BabeltuneError(f"--weights {text!r}: expected {count} finite numbers (one per --adapter, in order), "
                             f"got {len(values)}")
    return values


def read_inputs(adapters: dict[str, str]) -> list[AdapterInput]:
    """Each --adapter folder checked (complete, safetensors, no code) with its config and recorded base model."""
    from babeltune.models.identity import read_identity
    from babeltune.models.safety import check_adapter_folder, read_json_object

    if len(adapters) < 2:
        raise BabeltuneError(f"--adapter: {len(adapters)} given; merging needs at least two, e.g. "
                             "--adapter mr=runs/mr/adapter --adapter hi=runs/hi/adapter")
    inputs = []
    for label, path in adapters.items():
        folder = check_adapter_folder(path, f"--adapter {label}")
        config = read_json_object(folder / "adapter_config.json")
        inputs.append(AdapterInput(label, folder, config, read_identity(folder)))
    return inputs


# --------------------------------------------------------------------------------------------- checks

def check_compatible(inputs: list[AdapterInput], spec: MergeSpec) -> None:
    """One line for the first reason these adapters cannot be merged with this method."""
    first = inputs[0]
    for item in inputs:
        where = f"--adapter {item.label}={item.folder}"
        kind = item.config.get("peft_type")
        if kind != "LORA":
            raise BabeltuneError(f"{where}: a {kind} adapter; babeltune merge combines LoRA adapters only "
                                 "(train them with --backend hf-peft)")
        for key, name in UNSUPPORTED.items():
            if item.config.get(key):
                raise BabeltuneError(f"{where}: trained with {name} ({key}: true), which PEFT's add_weighted_adapter "
                                     "does not merge correctly (huggingface/peft#3761); merge plain LoRA adapters")
        if item.config.get("modules_to_save"):
            raise BabeltuneError(f"{where}: trains {', '.join(item.config['modules_to_save'])} in full "
                                 "(modules_to_save), which add_weighted_adapter cannot combine; merge adapters "
                                 "trained without adapter.modules_to_save")
        if item.target_modules != first.target_modules:
            raise BabeltuneError(f"{where}: target_modules {item.target_modules} differ from {first.label}'s "
                                 f"{first.target_modules}; merge adapters trained on the same modules")
    ranks = {item.label: item.rank for item in inputs}
    if spec.method in SAME_RANK and len(set(ranks.values())) > 1:
        shown = ", ".join(f"{label} r={rank}" for label, rank in ranks.items())
        raise BabeltuneError(f"--method {spec.method}: needs adapters of one rank (it adds their A and B matrices), "
                             f"but {shown}; use --method cat or svd, which take different ranks")
    _check_same_base(inputs)
    _check_same_tokenizer(inputs)


def _check_same_base(inputs: list[AdapterInput]) -> None:
    recorded = [item for item in inputs if item.identity is not None]
    for item in recorded[1:]:
        difference = item.identity.differs_from(recorded[0].identity)
        if difference:
            raise BabeltuneError(
                f"--adapter {item.label}={item.folder}: trained on base model {item.identity.describe()}, but "
                f"{recorded[0].label}'s adapter on {recorded[0].identity.describe()} (the {difference} differs); "
                "adapters can only be merged when they share a base model")


def _check_same_tokenizer(inputs: list[AdapterInput]) -> None:
    digests = {item.label: _file_digest(item.folder / "tokenizer.json") for item in inputs}
    first = inputs[0].label
    for label, digest in digests.items():
        if digest != digests[first]:
            raise BabeltuneError(f"--adapter {label}: its tokenizer.json differs from {first}'s (an extended "
                                 "vocabulary?); adapters can only be merged when they use the same tokenizer")


def _file_digest(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_model_dir(inputs: list[AdapterInput], model_spec: Optional[str], warn: Callable[[str], None]) -> Path:
    """--model, else the model named in the first adapter's resolved config; every adapter is checked against it
    with the same check as `eval` and the reload check."""
    from babeltune.models.identity import check_adapter_base
    from babeltune.models.resolve import resolve_model_dir

    spec = model_spec or _trained_model_name(inputs[0])
    if spec is None:
        raise BabeltuneError(f"--adapter {inputs[0].label}={inputs[0].folder}: no babeltune_config.yaml names its base "
                             "model; pass --model M (the built-in name or folder it was trained on)")
    model_dir = Path(resolve_model_dir(spec))
    for item in inputs:
        check_adapter_base(item.folder, model_dir, what=f"--adapter {item.label}", warn=warn)
    return model_dir


def _trained_model_name(item: AdapterInput) -> Optional[str]:
    from babeltune.config import read_yaml

    path = item.folder / "babeltune_config.yaml"
    if not path.is_file():
        return None
    data = read_yaml(path)   # babeltune's one YAML loader (limits, no aliases)
    name = (data.get("model") or {}).get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


# --------------------------------------------------------------------------------------------- merging

def load_inputs(inputs: list[AdapterInput], model_dir: Path, device: Optional[str] = None):
    """The base model in float32 (merging and SVD in full precision) with every input adapter loaded under the
    internal name ``input-<i>``; returns (PeftModel, tokenizer of the first adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.models.safety import load_kwargs

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True,
                                                **load_kwargs()).to(device)
    model = PeftModel.from_pretrained(base, str(inputs[0].folder), adapter_name=input_name(0))
    for index, item in enumerate(inputs[1:], start=1):
        model.load_adapter(str(item.folder), adapter_name=input_name(index))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(inputs[0].folder), **load_kwargs())
    return model, tokenizer


def input_name(index: int) -> str:
    return f"input-{index}"


def add_merged(model, count: int, spec: MergeSpec, name: str = MERGED) -> None:
    """PEFT's add_weighted_adapter over the loaded inputs, created as plain LoRA (see the module docstring)."""
    import torch

    names = [input_name(i) for i in range(count)]
    first = model.peft_config[names[0]]
    rslora = first.use_rslora
    first.use_rslora = False    # the new adapter copies this flag; the inputs' own scalings are already computed
    try:
        torch.manual_seed(spec.seed)
        model.add_weighted_adapter(names, list(spec.weights), name, combination_type=spec.method,
                                   density=spec.density)
    except (ValueError, TypeError) as exc:
        raise BabeltuneError(one_line(f"--method {spec.method}: PEFT refused the merge ({exc}); see `babeltune merge "
                                      "--help` for the methods and what each needs")) from None
    finally:
        first.use_rslora = rslora


def manifest_record(inputs: list[AdapterInput], spec: MergeSpec, merged_config: Any, model_dir: Path,
                    command: Optional[str]) -> dict:
    from babeltune.trainer.manifest import base_model_identity, library_versions

    return {
        "babeltune_merge": 1, "command": command, "method": spec.method, "weights": list(spec.weights),
        "density": spec.density, "seed": spec.seed,
        "inputs": {item.label: {"path": str(item.folder.resolve()), "r": item.rank,
                                "lora_alpha": item.config.get("lora_alpha"), "use_rslora": bool(item.config.get("use_rslora")),
                                "target_modules": item.target_modules,
                                "adapter_sha256": _file_digest(item.folder / "adapter_model.safetensors")}
                   for item in inputs},
        "merged": {"r": merged_config.r, "lora_alpha": merged_config.lora_alpha, "use_rslora": merged_config.use_rslora},
        "base_model": base_model_identity(str(model_dir)), "libraries": library_versions(),
    }


# --------------------------------------------------------------------------------------------- evaluation

@dataclass
class LanguageRow:
    """One language: bits/char under the base model, its own adapter (None without one) and the merged one."""

    language: str
    documents: int
    characters: int
    base: float
    own: Optional[float]
    merged: float

    @property
    def vs_own_percent(self) -> Optional[float]:
        """(merged - own) / own in percent: how much worse the merged adapter encodes this language."""
        return None if self.own is None else 100.0 * (self.merged - self.own) / self.own

    @property
    def gain_kept_percent(self) -> Optional[float]:
        """Share of the own adapter's improvement over the base that the merged adapter keeps."""
        if self.own is None or self.base == self.own:
            return None
        return 100.0 * (self.base - self.merged) / (self.base - self.own)

    def to_dict(self) -> dict:
        return {**asdict(self), "vs_own_percent": self.vs_own_percent, "gain_kept_percent": self.gain_kept_percent}


@dataclass
class MergeEval:
    spec: MergeSpec
    rows: list[LanguageRow] = field(default_factory=list)

    def worst_vs_own(self) -> Optional[float]:
        values = [row.vs_own_percent for row in self.rows if row.vs_own_percent is not None]
        return max(values) if values else None

    def to_dict(self) -> dict:
        return {"merge": self.spec.describe(), "metric": "bits_per_char = total nats / ln 2 / characters",
                "languages": {row.language: row.to_dict() for row in self.rows}}


def read_eval_texts(evals: dict[str, str], max_documents: Optional[int],
                    echo: Callable[[str], None]) -> dict[str, list[str]]:
    """LANG -> documents, read by the same reader as `babeltune eval` (same formats, same errors; every skipped
    file said)."""
    from babeltune.trainer.evaluate import _read_corpora

    documents, _sources, skipped = _read_corpora(evals, max_documents)
    for item in skipped:
        echo(f"--eval {item['language']}: skipped {item['path']}: {item['reason']}")
    return documents


def score_all(model, tokenizer, texts: dict[str, list[str]], adapters: dict[str, Optional[str]], *,
              max_length: int = 1024, batch_size: int = 4) -> dict[str, Any]:
    """LanguageScore of each language under each named adapter (None = the base model), with `eval`'s scorer."""
    from contextlib import nullcontext

    from babeltune.trainer.evaluate import score_texts

    scores: dict[str, Any] = {}
    for key, adapter in adapters.items():
        if adapter is not None:
            model.set_adapter(adapter)
        with model.disable_adapter() if adapter is None else nullcontext():
            scores[key] = {language: score_texts(model, tokenizer, docs, max_length=max_length, batch_size=batch_size)
                           for language, docs in texts.items()}
    return scores


def eval_rows(base: dict, own: dict, merged: dict) -> list[LanguageRow]:
    """Rows from score_all results: ``own[lang]`` is the language's score under its own adapter (absent: none)."""
    rows = []
    for language, score in merged.items():
        own_score = own.get(language)
        rows.append(LanguageRow(language, score.documents, score.characters, base[language].bits_per_char,
                                own_score.bits_per_char if own_score is not None else None, score.bits_per_char))
    return rows


def own_scores(model, tokenizer, texts: dict[str, list[str]], labels: list[str], **kwargs) -> dict[str, Any]:
    """Each evaluated language under its own input adapter (languages without an adapter are left out)."""
    own = {}
    for index, label in enumerate(labels):
        if label in texts:
            own[label] = score_all(model, tokenizer, {label: texts[label]}, {"own": input_name(index)}, **kwargs)["own"][label]
    return own


def render_table(evaluation: MergeEval):
    from rich.table import Table

    table = Table(title=f"bits per character — merged adapter ({evaluation.spec.describe()})",
                  caption="lower is better; vs own = (merged - own) / own; kept = share of the own adapter's gain over the base")
    for name in ("language", "docs", "chars", "base", "own adapter", "merged", "vs own", "kept"):
        table.add_column(name, justify="left" if name == "language" else "right")
    for row in evaluation.rows:
        table.add_row(row.language, f"{row.documents:,}", f"{row.characters:,}", f"{row.base:.4f}",
                      "-" if row.own is None else f"{row.own:.4f}", f"{row.merged:.4f}",
                      "-" if row.vs_own_percent is None else f"{row.vs_own_percent:+.2f}%",
                      "-" if row.gain_kept_percent is None else f"{row.gain_kept_percent:.0f}%")
    return table


# --------------------------------------------------------------------------------------------- the command

def merge_adapters(adapters: dict[str, str], spec_args: dict, out: str | Path, *, model_spec: Optional[str] = None,
                   evals: Optional[dict[str, str]] = None, max_documents: Optional[int] = None, max_length: int = 1024,
                   batch_size: int = 4, overwrite: bool = False, command: Optional[str] = None,
                   echo: Callable[[str], None] = print) -> tuple[Path, Optional[MergeEval]]:
    """Check, merge, write ``out`` atomically (adapter + identity + manifest, with the eval table when ``evals``
    is given: the merged adapter is scored as reloaded from the staging folder). Returns (folder, evaluation)."""
    from babeltune.trainer.export import write_folder_atomically

    out = _check_out(out, overwrite)
    inputs = read_inputs(adapters)
    spec = merge_spec(count=len(inputs), **spec_args)
    check_compatible(inputs, spec)
    model_dir = base_model_dir(inputs, model_spec, warn=echo)
    texts = read_eval_texts(evals, max_documents, echo) if evals else {}
    echo(f"merge: loading {model_dir} with {len(inputs)} adapters ({', '.join(i.label for i in inputs)})")
    model, tokenizer = load_inputs(inputs, model_dir)
    kwargs = {"max_length": max_length, "batch_size": batch_size}
    before = reference_scores(model, tokenizer, texts, [i.label for i in inputs], echo, kwargs) if texts else None
    add_merged(model, len(inputs), spec)
    record = manifest_record(inputs, spec, model.peft_config[MERGED], model_dir, command)
    result: dict[str, Any] = {}

    def write(staging: Path) -> None:
        from babeltune.models.identity import write_identity
        from babeltune.models.safety import adapter_folder_problem

        model.save_pretrained(str(staging), selected_adapters=[MERGED], safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        write_identity(staging, model_dir)
        problem = adapter_folder_problem(staging)
        if problem:
            raise BabeltuneError(f"{out}: the merged adapter was not saved completely ({problem}); check disk space")
        if before is not None:
            echo(f"merge: scoring the merged adapter as saved ({spec.describe()})")
            model.load_adapter(str(staging), adapter_name="saved")
            merged = score_all(model, tokenizer, texts, {"merged": "saved"}, **kwargs)["merged"]
            result["eval"] = MergeEval(spec, eval_rows(before["base"], before["own"], merged))
            record["eval"] = _json_safe(result["eval"].to_dict())
        atomic_write_text(staging / MANIFEST, json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    folder = write_folder_atomically(out, write)
    return folder, result.get("eval")


def reference_scores(model, tokenizer, texts, labels, echo, kwargs) -> dict:
    echo(f"merge: scoring {', '.join(f'{k} ({len(v):,} docs)' for k, v in texts.items())} under the base model "
         "and each language's own adapter")
    return {"base": score_all(model, tokenizer, texts, {"base": None}, **kwargs)["base"],
            "own": own_scores(model, tokenizer, texts, labels, **kwargs)}


def _check_out(out: str | Path, overwrite: bool) -> Path:
    from babeltune.atomic import check_writable

    folder = check_writable(out, "--out", folder=True)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise BabeltuneError(f"--out {folder}: exists and is not empty; choose a new folder or pass --overwrite "
                             "to replace it (it is replaced only once the merged adapter is complete)")
    return folder


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
