"""`advise` orchestration: language -> tokenizer(s) -> measurements -> model facts -> rules -> Advice.

Advice holds every decision with its reason, keyed by the config key it sets, the one TrainConfig built from
them (the schema `train` reads), the memory estimate and the measurements the reasons cite.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.advisor.memory import MemoryEstimate, budget_gib
from babeltune.advisor.types import Decision, Decisions, Measurements
from babeltune.config import TrainConfig, validate_config
from babeltune.errors import BabeltuneError

DEFAULT_GPU_GIB = 24.0
MIN_BUILTIN_GAIN = 1.2       # name an installed built-in only when it needs at least this many times fewer tokens
DEFAULT_TRAINING_SEED = 3407
KERNEL_NAMES = {"plain": "transformers + PEFT", "liger": "liger-kernel's fused ops", "unsloth": "Unsloth's kernels"}
MIN_LANGID_AGREEMENT = 0.5   # below this share of sampled documents in --lang, the corpus is "mostly another language"

@dataclass
class Candidate:
    """One tokenizer/model measured on the corpus (for model choice and --compare)."""

    spec: str
    kind: str                       # "model" | "tokenizer"
    measurements: Measurements

    def to_dict(self) -> dict:
        m = self.measurements
        return {"spec": self.spec, "kind": self.kind, "tokenizer": m.tokenizer, "tokens_per_char": m.tokens_per_char,
                "tokens_per_char_ci95": list(m.tokens_per_char_ci95), "tokens_per_word": m.tokens_per_word,
                "tokens": m.tokens, "tokens_exact": m.tokens_exact, "premium_vs_english": m.premium_vs_english}


@dataclass
class Advice:
    language: str
    profile: Any
    model: str
    tokenizer: Optional[str]
    goal: str
    gpu_memory_gib: float
    corpus: Any                     # CorpusSpec
    measurements: Measurements
    facts: Any                      # ModelFacts
    decisions: Decisions            # the rules' decisions by config key (the table), batch_size by name
    given: dict[str, Decision]      # config key -> the value the command gives (model, corpus, ...) and why
    config: TrainConfig             # built once from decisions + given; render_yaml writes it with their reasons
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    estimate: Any = None            # RunEstimate on the target device (babeltune.advisor.estimate)
    cpu_estimate: Any = None        # RunEstimate on this machine's CPU (measured probe), when it has no GPU

    def to_dict(self) -> dict:
        budget = budget_gib(self.gpu_memory_gib)
        return {
            "language": self.language,
            "language_name": getattr(self.profile, "name", self.language),
            "model": self.model, "tokenizer": self.measurements.tokenizer, "goal": self.goal,
            "gpu_memory_gib": self.gpu_memory_gib,
            "measurements": self.measurements.to_dict(),
            "parameters": {key: d.to_dict() for key, d in self.decisions.items()},
            "memory": {**self.memory.to_dict(), "budget_gib": round(budget, 3)},
            "model_facts": self.facts.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "cpu_estimate": self.cpu_estimate.to_dict() if self.cpu_estimate else None,
            "config": config_data(self.config),
        }


def parse_gpu_memory(text: Optional[str]) -> Optional[float]:
    """'24GB', '24', '80 GiB', '16g' -> GiB as a float (GPU makers' 'GB' are GiB: a 24 GB card has 24 GiB)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(g|gb|gib|m|mb|mib)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise BabeltuneError(f"--gpu-memory: {text!r} is not a memory size; use e.g. --gpu-memory 24GB")
    value = float(match.group(1))
    return value / 1024 if (match.group(2) or "g").startswith("m") else value


def measure_candidate(spec: str, kind: str, corpus, profile, *, full: bool, seed: int, reader=None) -> Candidate:
    from babeltune.advisor.measure import measure_corpus
    from babeltune.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(spec)
    return Candidate(spec, kind, measure_corpus(corpus, tokenizer, profile, full=full, seed=seed, reader=reader))


def pick_builtin(corpus, profile, *, full: bool, seed: int, echo: Callable[[str], None],
                 reader=None) -> tuple[Candidate, list[Candidate], str]:
    """Measure under every installed built-in's tokenizer; the fewest tokens per character wins."""
    from babeltune.models.builtins import BUILTINS, installed_builtins

    names = installed_builtins()
    if not names:
        raise BabeltuneError(f"--model: none given and no built-in model is installed ({', '.join(BUILTINS)}); "
                             "pass --model PATH, or run `babeltune models list` for the install command")
    candidates = []
    for name in names:
        echo(f"measuring {corpus.path} under {name}'s tokenizer ...")
        candidates.append(measure_candidate(name, "model", corpus, profile, full=full, seed=seed, reader=reader))
    best = min(candidates, key=lambda c: c.measurements.tokens_per_char)
    figures = ", ".join(f"{c.spec} {c.measurements.tokens_per_char:.3f}" for c in candidates)
    note = (f"no --model given: measured {len(candidates)} installed built-in(s) in tokens/char ({figures}); "
            f"picked {best.spec}, the fewest tokens per character")
    return best, candidates, note


def better_builtin_note(model: str, tokenizer: Optional[str], measurements: Measurements, profile) -> Optional[str]:
    """With --model given and a bad tokenizer fit: the installed built-in that needs the fewest tokens for the
    same sampled documents, when it needs >= MIN_BUILTIN_GAIN times fewer."""
    from babeltune.advisor.rules.embeddings import measured_fit
    from babeltune.models.builtins import installed_builtins
    from babeltune.models.tokenizers import load_tokenizer

    bad, fit_note = measured_fit(measurements, profile)
    docs = measurements.sample_documents
    if not bad or not docs:
        return None
    chars = sum(map(len, docs))
    own = sum(map(len, load_tokenizer(config_tokenizer(tokenizer) or model).encode_batch(docs))) / chars
    best = None
    for name in installed_builtins():
        if name == model:
            continue
        try:
            rate = sum(map(len, load_tokenizer(name).encode_batch(docs))) / chars
        except BabeltuneError:
            continue
        if best is None or rate < best[1]:
            best = (name, rate)
    if best is None or own / best[1] < MIN_BUILTIN_GAIN:
        return None
    name, rate = best
    return (f"{model} fits this text badly: {fit_note}; the installed built-in {name} needs {own / rate:.1f}x fewer "
            f"tokens for the same text ({rate:.3f} vs {own:.3f} tokens/char on {len(docs):,} sampled documents), "
            f"so {own / rate:.1f}x more text per optimizer step; compare with `advise --compare --model {model} "
            f"--model {name}` or advise for --model {name}")


def check_language(measurements: Measurements, profile, lang_arg: str) -> Optional[str]:
    """Error when the sampled documents are mostly another language; a warning line when agreement is low."""
    info = measurements.langid or {}
    agreement, top = info.get("agreement"), info.get("top")
    expected = info.get("expected") or getattr(profile, "langid_code", None)
    if agreement is None or expected is None or top is None:
        return None
    mismatch = info.get("mismatch", top != expected and agreement < MIN_LANGID_AGREEMENT)
    if mismatch:
        raise BabeltuneError(
            f"--corpus: {measurements.documents:,} documents look mostly like {top!r}, not --lang {lang_arg!r} "
            f"({agreement:.0%} of sampled documents identified as {expected!r}); pass the right --lang or corpus")
    if agreement < 0.8:
        return f"warning: only {agreement:.0%} of sampled documents were identified as {expected!r} (most common: {top!r})"
    return None


def resolve_models(model: Optional[str], tokenizer: Optional[str], corpus, profile, *, full: bool, seed: int,
                   echo: Callable[[str], None], reader=None) -> tuple[str, Measurements, list[Candidate], list[str]]:
    """Which model to advise for, and the measurements under the tokenizer that will train it."""
    notes: list[str] = []
    candidates: list[Candidate] = []
    if model is None:
        best, candidates, note = pick_builtin(corpus, profile, full=full, seed=seed, echo=echo, reader=reader)
        model, notes = best.spec, [note]
        measurements = best.measurements
    elif tokenizer is None:
        echo(f"measuring {corpus.path} under {model}'s tokenizer ...")
        measurements = measure_candidate(model, "model", corpus, profile, full=full, seed=seed,
                                         reader=reader).measurements
    if tokenizer is not None:
        echo(f"measuring {corpus.path} under tokenizer {tokenizer} ...")
        measurements = measure_candidate(tokenizer, "tokenizer", corpus, profile, full=full, seed=seed,
                                         reader=reader).measurements
        trains = ("training uses it too" if config_tokenizer(tokenizer)
                  else "training still uses the model's own tokenizer (only folders/tokenizer.json can train)")
        notes.append(f"--tokenizer {tokenizer}: measured with it instead of {model}'s own tokenizer; {trains}")
    return model, measurements, candidates, notes


def config_tokenizer(tokenizer: Optional[str]) -> Optional[str]:
    """Only folders and tokenizer.json files can train; tiktoken/SentencePiece overrides only measure."""
    if tokenizer and (Path(tokenizer).is_dir() or tokenizer.endswith("tokenizer.json")):
        return str(Path(tokenizer).resolve())
    return None


def given_decisions(*, language: str, model: str, tokenizer: Optional[str], corpus, goal: str,
                    backend: str = "hf-peft", kernels: str = "plain") -> dict[str, Decision]:
    """The config keys no rule decides: what the command gives (language, model, corpus, backend) and fixed
    defaults, each with the reason the YAML shows above it."""
    model_path = str(Path(model).resolve()) if Path(model).exists() else model
    trained_tokenizer = config_tokenizer(tokenizer)
    unsloth_hint = "; `advise --backend unsloth` where Unsloth is installed" if backend == "hf-peft" else ""
    given = {
        "schema_version": (1, "the config format this babeltune reads"),
        "language": (language, f"--lang resolved to {language}"),
        "model.name": (model_path, f"the base model ({model})"),
        "model.tokenizer": (trained_tokenizer, "--tokenizer" if trained_tokenizer else "null = the model's own tokenizer"),
        "model.dtype": ("auto", "auto = bf16 on GPUs that support it, fp32 on CPU"),
        "data.train": (str(Path(corpus.path).resolve()), "the measured corpus"),
        "data.mode": (goal, f"--goal {goal}"),
        "data.doc_split": (corpus.doc_split, f"--doc-split {corpus.doc_split}: how .txt files were cut into documents "
                                             "when measured"),
        "data.text_field": (corpus.text_field, f"--text-field {corpus.text_field} (.jsonl/.parquet)"),
        "data.text_column": (corpus.text_column, f"--text-column {corpus.text_column} (.csv/.tsv)" if corpus.text_column
                             else "--text-column: default ('text' if present, else the first column)"),
        "training.output_dir": (f"runs/{language}-{Path(model).stem}", "checkpoints, adapter, metrics and manifest"),
        "training.seed": (DEFAULT_TRAINING_SEED, "data split, shuffling and adapter initialisation"),
        "backend.name": (backend, f"--backend {backend}; memory sized for the kernels it runs here: "
                                  f"{KERNEL_NAMES.get(kernels, kernels)}{unsloth_hint}"),
    }
    return {key: Decision(value, reason) for key, (value, reason) in given.items()}


def build_config(decisions: dict[str, Decision], given: dict[str, Decision]) -> TrainConfig:
    """The one TrainConfig of the advice: every decision and given value at its dotted key (a decision that sets
    no key, such as batch_size, is only shown). The schema takes one of num_train_epochs and max_steps: with the
    run planned in steps, num_train_epochs is written as null (its reason still gives the epochs planned)."""
    from babeltune.advisor.rules import SHOWN_ONLY

    data: dict = {}
    for key, decision in {**given, **decisions}.items():
        if key in SHOWN_ONLY:
            continue
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = decision.value
    training = data.get("training", {})
    if training.get("max_steps") is not None and "num_train_epochs" in training:
        training["num_train_epochs"] = None
    return validate_config(data, source="advised config")


def config_data(config: TrainConfig) -> dict:
    """The keys advise set, as plain data in schema order (what the YAML holds)."""
    return config.model_dump(mode="json", exclude_unset=True)


def resolve_target(gpu: Optional[str], gpu_gib: Optional[float]) -> tuple[Optional[str], Optional[float]]:
    """--gpu NAME -> (throughput-table key or "cpu", memory in GiB unless --gpu-memory gave it)."""
    if gpu is None:
        return None, gpu_gib
    if gpu.strip().lower() == "cpu":
        from babeltune.advisor.probe import physical_memory_gib

        return "cpu", gpu_gib or math.floor(physical_memory_gib()) or DEFAULT_GPU_GIB
    from babeltune.advisor.throughput import load_table

    table = load_table()
    key = table.resolve_gpu(gpu)
    return key, gpu_gib or table.gpus[key].memory_gib


def decide(ctx, *, language: str, model: str, tokenizer: Optional[str], corpus, goal: str, backend: str = "hf-peft",
           kernels: str = "plain", labelled=None) -> tuple[Decisions, dict[str, Decision], TrainConfig]:
    """Run every rule on ``ctx``; the decisions, the given values and the one TrainConfig built from both."""
    from babeltune.advisor.rules import apply_rules

    decisions = apply_rules(ctx)
    given = given_decisions(language=language, model=model, tokenizer=tokenizer, corpus=corpus, goal=goal,
                            backend=backend, kernels=kernels)
    if labelled is not None:             # --goal classify: its keys and reasons (advisor/rules/classify.py)
        from babeltune.advisor.rules.classify import apply_classify

        apply_classify(decisions, given, labelled)
    return decisions, given, build_config(decisions, given)


def advise(lang: str, corpus, *, model: Optional[str] = None, tokenizer: Optional[str] = None,
           gpu_memory: Optional[str | float] = None, goal: str = "cpt", full: bool = False, seed: int = 0,
           backend: str = "hf-peft", kernels: str = "plain", gpus: int = 1,
           gpu: Optional[str] = None, max_steps: Optional[int] = None, minutes: Optional[float] = None,
           probe: bool = True, command: str = "advise", label_column: str = "label",
           echo: Callable[[str], None] = lambda line: None) -> Advice:
    """Measure ``corpus`` (a CorpusSpec) for language ``lang`` and decide every training parameter.
    ``backend`` is written to the config; memory is sized for ``kernels``, the kernels it trains with
    (the CLI asks the backend: babeltune.trainer.plugins.kernels_for), on each of ``gpus`` GPUs.
    ``gpu``: a GPU name from the throughput table, or "cpu" (a CPU-sized run, timed by a probe here);
    ``minutes``: with gpu "cpu", size the run to finish in that time; ``probe``: time the model on this CPU
    when the target is the CPU or this machine has no GPU."""
    from babeltune.advisor import estimate as est
    from babeltune.languages.language import resolve_language
    from babeltune.advisor.rules import RuleContext
    from babeltune.models.facts import model_facts

    from babeltune.advisor.sft import check_goal, sft_documents

    profile = resolve_language(lang, note=echo)
    gpu_gib = gpu_memory if isinstance(gpu_memory, (int, float)) else parse_gpu_memory(gpu_memory)
    check_goal(corpus, goal)             # the data must fit the goal before anything is measured
    target, gpu_gib = resolve_target(gpu, gpu_gib)
    if minutes is not None and target != "cpu":
        raise BabeltuneError(f"--minutes: {minutes:g} sizes a run on this CPU; add --gpu cpu (GPU runs follow the corpus)")
    notes = []
    if gpu_gib is None:
        gpu_gib = DEFAULT_GPU_GIB
        notes.append(f"no --gpu-memory given: advising for a common {DEFAULT_GPU_GIB:g} GB GPU")
    model, measurements, candidates, model_notes = resolve_models(
        model, tokenizer, corpus, profile, full=full, seed=seed, echo=echo,
        reader=sft_documents if goal == "sft" else None)
    if goal == "sft":
        measure_sft_examples(measurements, corpus, model, tokenizer, seed=seed, echo=echo)
    labelled = None
    if goal == "classify":               # trains like sft: rules see the rendered example lengths
        from babeltune.advisor.rules.classify import measure_labelled

        echo(f"reading labels ({label_column!r}) and rendering {corpus.path} examples as train feeds them ...")
        labelled = measure_labelled(corpus, label_column, model, tokenizer, seed=seed)
        if labelled.lengths is not None:
            measurements.example_lengths, measurements.sft_examples = labelled.lengths, labelled.lengths.to_dict()
    if not candidates:                   # --model given: would an installed built-in fit much better?
        better = better_builtin_note(model, tokenizer, measurements, profile)
        if better:
            notes.append(better)
    notes = model_notes + notes
    from babeltune.advisor.mojibake import warning_line

    for warning in (check_language(measurements, profile, lang),
                    warning_line(measurements.mojibake, measurements.documents)):
        if warning:
            notes.append(warning)
    facts = model_facts(model)
    if goal == "cpt":
        from babeltune.vocab import measure_for_advice

        measurements.vocab_extension = measure_for_advice(model, config_tokenizer(tokenizer), corpus,
                                                          tied=bool(facts.tied_embeddings), echo=echo)
    names = dict(language=profile.code, model=model, tokenizer=tokenizer, corpus=corpus, goal=goal, backend=backend,
                 kernels=kernels, labelled=labelled)

    def context(**extra):
        return RuleContext(measurements=measurements, facts=facts, profile=profile, gpu_memory_gib=float(gpu_gib),
                           goal="sft" if goal == "classify" else goal, gpu=target, max_steps=max_steps, kernels=kernels, gpus=gpus,
                           precision="fp32" if target == "cpu" else "bf16", **extra)

    ctx = context()
    decisions, given, config = decide(ctx, **names)
    measured, estimate, cpu_estimate = None, None, None
    if probe and (target == "cpu" or not est.has_cuda()):
        measured, why = est.run_probe(config, facts, echo)
        notes += [why] if why else []
    if measured and minutes is not None:
        budget = minutes * 60 - est.probe_startup_s(measured)
        ctx = context(time_budget_s=budget, cpu_tokens_per_s=measured.tokens_per_s)
        decisions, given, config = decide(ctx, **names)
    notes += ctx.notes
    if gpus > 1:
        notes.append(f"--gpus {gpus}: memory is per GPU; start it with `train --config FILE --gpus {gpus}` "
                     f"({'FSDP, the model sharded' if decisions['distributed'].value == 'fsdp' else 'DDP, a copy per GPU'})")
    if measured:
        cpu_estimate = est.cpu_estimate(ctx, config, measured)
    if target != "cpu":
        estimate = est.gpu_estimate(ctx, config)
        if cpu_estimate:
            notes.append(est.cpu_variant_note(cpu_estimate, command))
    elif cpu_estimate is None:
        notes.append("--gpu cpu: no run-time estimate without the probe" + (" (--no-probe)" if not probe else ""))
    return Advice(language=profile.code, profile=profile, model=model, tokenizer=tokenizer, goal=goal,
                  gpu_memory_gib=float(gpu_gib), corpus=corpus, measurements=measurements, facts=facts,
                  decisions=decisions, given=given, config=config, memory=ctx.estimate(),
                  notes=notes, candidates=candidates, estimate=estimate or cpu_estimate,
                  cpu_estimate=cpu_estimate if target != "cpu" else None)


def measure_sft_examples(measurements: Measurements, corpus, model: str, tokenizer: Optional[str], *, seed: int,
                         echo: Callable[[str], None]) -> None:
    """sft: example lengths as `train` renders them (chat template, BOS/EOS), for max_seq_length."""
    from babeltune.advisor.sft import measure_examples
    from babeltune.models.tokenizers import load_tokenizer

    echo(f"rendering {corpus.path} examples as train feeds them ...")
    lengths = measure_examples(corpus, model, tokenizer, load_tokenizer(tokenizer or model), seed=seed)
    measurements.example_lengths, measurements.sft_examples = lengths, lengths.to_dict()


def compare(lang: str, corpus, *, models: list[str], tokenizers: list[str], full: bool = False, seed: int = 0,
            echo: Callable[[str], None] = lambda line: None) -> tuple[Any, list[Candidate], Candidate]:
    """Measure the corpus under each model's and tokenizer's tokenizer; the best fit spends the fewest
    tokens per character (on one corpus, the premium vs English ranks the same way)."""
    from babeltune.languages.language import resolve_language

    profile = resolve_language(lang, note=echo)
    specs = [(m, "model") for m in models] + [(t, "tokenizer") for t in tokenizers]
    if len(specs) < 2:
        from babeltune.models.builtins import installed_builtins
        specs += [(name, "model") for name in installed_builtins() if (name, "model") not in specs]
    if len(specs) < 2:
        raise BabeltuneError("--compare: needs at least two candidates; pass several --model/--tokenizer")
    candidates = []
    for spec, kind in specs:
        echo(f"measuring {corpus.path} under {spec} ...")
        candidates.append(measure_candidate(spec, kind, corpus, profile, full=full, seed=seed))
    best = min(candidates, key=lambda c: c.measurements.tokens_per_char)
    return profile, candidates, best
