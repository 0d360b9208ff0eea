"""The training config: the YAML that `advise` writes and `train` reads.

One strict schema (unknown keys are errors, with a did-you-mean), split by section, with a
description on every field. `load_config` collects every problem and raises them once, one
``key: message`` line each.

Every value the schema accepts can run: numbers are finite and inside the ranges the libraries
underneath take (seeds fit numpy's 32-bit seed, counts fit 32 bits, max_seq_length fits the model's
position embeddings), and strings hold no NUL or lone surrogate (the OS cannot open such paths).
The YAML itself is read by one loader with limits (size, nesting, no aliases), so a small file cannot
expand into gigabytes.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from babeltune.errors import BabeltuneError, one_line

SCHEMA_VERSION = 1

# Limits of what a config may ask for (see the module docstring).
MAX_CONFIG_BYTES = 1024 * 1024      # advise writes ~5 KB; a megabyte is no config
MAX_YAML_DEPTH = 32                 # nested collections; the schema needs 4
MAX_SEQ_LENGTH = 131_072            # the longest max_position_embeddings of common open models (Llama 3.1, Qwen2.5)
MAX_SEED = 2 ** 32 - 1              # numpy.random.seed, which transformers.set_seed calls, takes 0..2**32-1
MAX_COUNT = 2 ** 31 - 1             # steps, limits and documents: int32, what torch/numpy index types hold
MAX_BATCH = 65_536                  # sequences per micro-step / accumulated micro-steps
MAX_EPOCHS = 10_000.0

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "adafactor",
    "sgd",
)


def _text_problem(value: Any) -> Optional[str]:
    """Why a string (or a string inside a list/dict) cannot be used as a path or name, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\x00), which no path or name can hold"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return "contains a lone surrogate (invalid Unicode), which cannot be encoded as a path"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = _text_problem(key) if isinstance(key, str) else None
        problem = problem or _text_problem(item)
        if problem:
            return problem
    return None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after", check_fields=False)
    @classmethod
    def _usable_text(cls, value):
        problem = _text_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ModelConfig(Section):
    name: str = Field(description="Built-in model name (see `babeltune models list`), a local Hugging Face folder, or a GGUF file.")
    tokenizer: Optional[str] = Field(None, description="Tokenizer override: a folder or tokenizer.json; default is the model's own.")
    max_seq_length: int = Field(ge=8, le=MAX_SEQ_LENGTH, description="Tokens per training sequence (packed block length in cpt mode); at most the model's max_position_embeddings.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights/compute dtype; auto = bf16 on GPUs that support it, fp32 on CPU.")
    load_in_4bit: bool = Field(False, description="QLoRA: load the frozen base weights in 4-bit NF4 (GPU + bitsandbytes only).")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="Attention kernel; auto = flash_attention_2 when installed and usable, else sdpa, else eager.")


def _yaml_false_as(word: str):
    """YAML 1.1 reads unquoted `no`/`off` as false: accept it as the word the user typed."""
    def convert(value):
        return word if value is False else value
    return convert


class DataConfig(Section):
    train: str = Field(description="Training corpus: a file or a folder (.txt, .jsonl, .csv, .tsv, .parquet).")
    eval: Optional[str] = Field(None, description="Held-out corpus; when absent a deterministic split of `train` is used.")
    mode: Literal["cpt", "sft", "classify"] = Field("cpt", description="cpt = continued pretraining on raw text; sft = instruction/response pairs, loss on responses only; classify = labelled text (text_column/text_field + label_column), each label's verbaliser appended after classify_prompt and trained with loss on the label tokens only.")
    text_field: str = Field("text", description="JSONL/parquet field holding the text (cpt and classify modes).")
    text_column: Optional[str] = Field(None, description="CSV/TSV column holding the text; default: a column named text, else the first.")
    doc_split: Literal["line", "paragraph", "file"] = Field("line", description="How .txt files split into documents.")
    strict: bool = Field(False, description="Fail on anything the corpus reader would skip (an unreadable or binary file, a line with undecodable bytes, a malformed CSV row) instead of skipping it and reporting the count.")
    prompt_field: str = Field("instruction", description="SFT: field with the prompt.")
    response_field: str = Field("response", description="SFT: field with the response (the only tokens that carry loss).")
    messages_field: str = Field("messages", description="SFT: field with chat messages ([{role, content}]), used when present.")
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of documents held out when no eval corpus is given.")
    packing: Literal["off", "blocks", "padding_free"] = Field(
        "blocks", description="off = one document per row (padded); blocks = concatenate with EOS and cut into max_seq_length blocks; padding_free = whole documents packed into rows with restarting position ids, attention kept within each document (flash-attention varlen, or transformers' packed-sequence mask with sdpa/eager).")

    dedup: Literal["off", "exact", "near"] = Field(
        "off", description="Remove repeated training documents before the held-out split: exact = identical text; near = identical after dropping URLs, @mentions, ASCII case, spaces and punctuation. The first copy is kept; how many were removed is logged and written to the manifest. `advise` decides it from the duplicates it counted.")
    label_column: str = Field("label", description="classify: the CSV/TSV/parquet column or JSONL field holding each example's label.")
    label_verbalizers: dict[str, str] = Field(default_factory=dict, description="classify: label value (as written in the data) -> the short text the model learns to write for it, e.g. {'-1': negative, '0': neutral, '1': positive}; empty = auto: each label's own text. Every label in the data must be listed when set.")
    classify_prompt: str = Field("{text}\nLabel:", description="classify: the prompt before the label; {text} stands for the example's text (the label follows after one space).")
    _packing_off = field_validator("packing", mode="before")(_yaml_false_as("off"))

    @field_validator("classify_prompt")
    @classmethod
    def _one_text_slot(cls, value: str) -> str:
        if value.count("{text}") != 1:
            raise ValueError("must contain {text} exactly once (where the example's text goes), e.g. '{text}\\nLabel:'")
        return value

    @field_validator("label_verbalizers", mode="before")
    @classmethod
    def _labels_as_written(cls, value):
        # YAML reads `-1: negative` with an int key; labels are compared as the text the data holds
        if isinstance(value, dict):
            return {(str(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else k): v for k, v in value.items()}
        return value

    @field_validator("label_verbalizers")
    @classmethod
    def _distinct_verbalizers(cls, value: dict[str, str]) -> dict[str, str]:
        empty = [label for label, text in value.items() if not text.strip()]
        if empty:
            raise ValueError(f"label {empty[0]!r} has an empty verbaliser; give every label a short non-empty text")
        texts = [text.strip() for text in value.values()]
        repeated = sorted({text for text in texts if texts.count(text) > 1})
        if repeated:
            raise ValueError(f"verbaliser {repeated[0]!r} is given to more than one label; each label needs its own text")
        return value
    _dedup_off = field_validator("dedup", mode="before")(_yaml_false_as("off"))


class AdapterConfig(Section):
    r: int = Field(16, ge=1, le=4096, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (alpha/r, or alpha/sqrt(r) with rsLoRA).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Union[list[str], Literal["all-linear"]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters, or 'all-linear'.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r) (Kalajdzievski 2023).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (Liu et al. 2024).")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full, e.g. embed_tokens and lm_head.")
    embedding_learning_rate: Optional[float] = Field(None, gt=0, lt=1, description="Learning rate for modules_to_save (embeddings/lm_head), usually 2-10x lower.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules_or_all_linear(cls, value):
        # one message instead of one per branch of the union
        if value == "all-linear" or (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            return value
        raise ValueError("expected a non-empty list of module names (e.g. [q_proj, v_proj]) or 'all-linear'")


class TrainingConfig(Section):
    output_dir: str = Field("runs/babeltune", description="Where checkpoints, metrics, the adapter and the manifest go.")
    per_device_train_batch_size: int = Field(ge=1, le=MAX_BATCH, description="Sequences per device per micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_BATCH, description="Micro-steps per optimizer step.")
    learning_rate: float = Field(gt=0, lt=1, description="Peak learning rate for the adapter.")
    num_train_epochs: Optional[float] = Field(None, gt=0, le=MAX_EPOCHS, description="Epochs over the training set (set this or max_steps).")
    max_steps: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="Optimizer steps (set this or num_train_epochs).")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="Decoupled weight decay (AdamW).")
    optimizer: str = Field("adamw_torch", description=f"One of {', '.join(OPTIMIZERS)}.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, le=0.5, description="Share of steps spent warming up (ignored when warmup_steps > 0).")
    warmup_steps: int = Field(0, ge=0, le=MAX_COUNT, description="Warmup steps; wins over warmup_ratio when > 0.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (non-reentrant) to save memory.")
    seed: int = Field(3407, ge=0, le=MAX_SEED, description="Seed for data split, shuffling and adapter initialisation (0 to 2**32-1).")
    logging_steps: int = Field(10, ge=1, le=MAX_COUNT, description="Log loss every N optimizer steps.")
    save_steps: int = Field(200, ge=1, le=MAX_COUNT, description="Write a checkpoint every N optimizer steps.")
    save_total_limit: int = Field(3, ge=1, le=MAX_COUNT, description="Checkpoints kept on disk.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Mixed precision; auto = bf16 where supported, fp32 on CPU.")
    max_nonfinite_losses: int = Field(3, ge=1, le=MAX_COUNT, description="NaN guard: stop after this many optimizer steps with a non-finite loss (the last good checkpoint is kept).")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With train --gpus N: ddp = a full copy of the model on every GPU; fsdp = the frozen base weights sharded over the GPUs (PyTorch FSDP2), for models that do not fit one GPU.")
    report_to: Union[Literal["none"], list[str]] = Field(
        "none", description="Logging integrations the HF Trainer reports to, e.g. [tensorboard] or [wandb, mlflow] (each must be installed); none = only babeltune's own metrics.jsonl and loss.png, which are written either way.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _integration_list(cls, value):
        # one name may be given as a string; an empty list means none
        if isinstance(value, str) and value != "none":
            value = [value]
        if isinstance(value, list) and not value:
            return "none"
        if value == "none" or (isinstance(value, list) and all(isinstance(v, str) and v and v != "none" for v in value)):
            return value
        raise ValueError("expected none or a list of integration names, e.g. [tensorboard]")

    @model_validator(mode="after")
    def _one_length(self):
        if self.optimizer not in OPTIMIZERS:
            close = difflib.get_close_matches(self.optimizer, OPTIMIZERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}{hint}")
        if self.max_steps is None and self.num_train_epochs is None:
            raise ValueError("set max_steps or num_train_epochs")
        if self.max_steps is not None and self.num_train_epochs is not None:
            raise ValueError(
                f"max_steps={self.max_steps} and num_train_epochs={self.num_train_epochs} are both set; the HF Trainer "
                "would let max_steps silently win: keep one (train --max-steps N replaces num_train_epochs)")
        return self


class EvalConfig(Section):
    evaluation_strategy: Literal["no", "steps", "epoch"] = Field("steps", description="When to evaluate on the held-out split.")
    eval_steps: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="Evaluate every N optimizer steps (evaluation_strategy: steps).")
    save_strategy: Literal["no", "steps", "epoch"] = Field("steps", description="When to write checkpoints.")
    per_device_eval_batch_size: int = Field(4, ge=1, le=MAX_BATCH, description="Sequences per device during evaluation.")
    early_stopping_patience: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="Stop after N evaluations without improvement; null = off.")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Minimum eval-loss improvement that counts.")
    max_eval_documents: int = Field(2000, ge=1, le=MAX_COUNT, description="Cap on held-out documents evaluated.")
    extra_corpora: dict[str, str] = Field(default_factory=dict, description="LANG: PATH corpora scored in bits/char at the end (e.g. en for forgetting).")
    forgetting: list[str] = Field(default_factory=lambda: ["en"], description="Language codes whose parallel reference sentences, shipped with babeltune (lang_profiles/reference/), are scored in bits/char before and after the adapter at the end of the run (the first 200 sentences each): what the adapter costs the languages the model already knew. The run's own language and languages given in extra_corpora are skipped; [] = none.")

    _strategy_no = field_validator("evaluation_strategy", "save_strategy", mode="before")(_yaml_false_as("no"))

    @field_validator("forgetting")
    @classmethod
    def _shipped_reference(cls, codes: list[str]) -> list[str]:
        from babeltune.languages.profiles import load_profiles

        shipped = sorted(code for code, profile in load_profiles().items() if profile.reference)
        unknown = [code for code in codes if code.strip().lower() not in shipped]
        if unknown:
            raise ValueError(f"{unknown[0]!r} has no shipped reference text; use codes from {', '.join(shipped)} (or [] for none)")
        return [code.strip().lower() for code in codes]


class VocabConfig(Section):
    extend: int = Field(0, ge=0, le=262_144, description="New tokenizer merges/pieces to learn from data.train and append to the base tokenizer (existing ids and other languages' tokenisation unchanged); each gets a new embedding row started as the mean of its pieces' rows and trained with the adapter. 0 = the base tokenizer as is. `advise` decides it from measured tokens/char and corpus size.")


class BackendConfig(Section):
    name: str = Field("hf-peft", description="Training backend plugin (see `babeltune plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options, checked against the backend's Options model (see `babeltune plugins --options NAME`).")


class TrainConfig(Section):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Config format version.")
    language: str = Field(description="Target language code (ISO 639), e.g. mr.")
    model: ModelConfig
    data: DataConfig
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)

    @model_validator(mode="after")
    def _cross_field(self):
        problems = []
        ev, tr = self.eval, self.training
        if ev.early_stopping_patience is not None and ev.evaluation_strategy == "no":
            problems.append("eval.early_stopping_patience: early stopping needs evaluation_strategy steps or epoch")
        if ev.evaluation_strategy == "steps" and ev.eval_steps is None:
            problems.append("eval.eval_steps: evaluation_strategy is steps, so eval_steps must be set")
        if ev.early_stopping_patience is not None and ev.save_strategy != ev.evaluation_strategy:
            problems.append("eval.save_strategy: early stopping (eval.early_stopping_patience) keeps the best checkpoint, "
                            "so save_strategy must equal evaluation_strategy")
        if (ev.early_stopping_patience is not None and ev.evaluation_strategy == "steps" and ev.eval_steps
                and tr.save_steps % ev.eval_steps):
            problems.append(f"training.save_steps: {tr.save_steps} must be a multiple of eval.eval_steps ({ev.eval_steps}) "
                            "for early stopping (eval.early_stopping_patience)")
        if self.adapter.embedding_learning_rate is not None and not self.adapter.modules_to_save:
            problems.append("adapter.embedding_learning_rate: set only with modules_to_save (embed_tokens/lm_head)")
        if problems:
            raise ValueError("\n".join(problems))
        return self


# ---------------------------------------------------------------------------------------------
# Reading YAML: one loader, with limits


class _Refused(yaml.YAMLError):
    """A limit of the config loader (an alias, too deep a nesting), at a line and column."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, no tags that build objects) without aliases and with a
    nesting limit. Aliases are what a YAML bomb expands: ten lines of ``*a`` references become billions
    of values once validated or dumped. A config never needs them, so every alias is refused."""

    _depth = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed in a config; write the value out", mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels; a config needs 4", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:   # a date like 2024-13-45, an integer over Python's 4300-digit limit
            reason = str(exc).split(":")[0]
            raise _Refused(f"unreadable value ({reason}); quote it if it is text, or fix it", node.start_mark) from None


def parse_yaml(text: str, where: str) -> Any:
    """The one way babeltune reads config YAML (files and ``--set`` values): safe, alias-free, at most
    MAX_YAML_DEPTH deep. Problems are one BabeltuneError line starting with ``where``."""
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if isinstance(exc, _Refused):
            raise BabeltuneError(one_line(f"{where}: {at}{exc.problem}")) from None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BabeltuneError(one_line(f"{where}: {at}malformed YAML ({problem}); fix the syntax there")) from None


# ---------------------------------------------------------------------------------------------
# Loading with collected, one-line errors


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Known field names at ``loc`` (for did-you-mean on unknown keys)."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _shown(value: Any) -> str:
    """`` (got 'x')`` for a scalar input, cut to a readable length; nothing for collections."""
    if isinstance(value, (dict, list)) or value is None:
        return ""
    text = repr(value)
    return f" (got {text[:77] + '...' if len(text) > 80 else text})"


# pydantic's tag of a union branch in an error's location (list[str], literal['x'], float, ...)
_UNION_BRANCH = re.compile(r"^([a-z][a-z-]*\[.*\]|bool|int|float|str|bytes|none|list|dict)$")


def error_lines(exc: ValidationError, model: type[BaseModel], prefix: str = "", owner: str = "") -> list[str]:
    """One ``dotted.key: message`` line per problem (``prefix`` before each key; ``owner`` names what
    the keys belong to in unknown-key messages, e.g. 'backend hf-peft')."""
    lines, union_keys = [], set()
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        if err["type"] != "extra_forbidden" and any(_UNION_BRANCH.match(part) for part in loc):
            # a branch of a union (list[str], literal['x'], ...): one line per key, the first branch's message
            loc = tuple(part for part in loc if not _UNION_BRANCH.match(part))
            if loc in union_keys:
                continue
            union_keys.add(loc)
        key = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "top level"
        if err["type"] == "extra_forbidden":
            known = _field_names(model, loc)
            close = difflib.get_close_matches(loc[-1], known, n=1)
            where = f" for {owner}" if owner else ""
            hint = (f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}" if known
                    else f"; {owner or 'this section'} takes no keys")
            lines.append(f"{key}: unknown key{where}{hint}")
            continue
        if err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
            continue
        for sub in err["msg"].removeprefix("Value error, ").splitlines():
            # cross-field messages already start with their own key
            if ": " in sub and sub.split(": ", 1)[0].count(".") >= 1 and " " not in sub.split(": ", 1)[0]:
                lines.append(sub)
            else:
                lines.append(f"{key}: {sub}{_shown(err.get('input'))}")
    return [one_line(line) for line in lines]


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    return "\n".join(f"{source}: {line}" for line in error_lines(exc, TrainConfig))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (['training', 'learning_rate'], 1e-4); values parse as YAML
    (through the same limited loader as files); text that is not YAML stays text."""
    if "=" not in item:
        raise BabeltuneError(one_line(f"--set {item!r}: expected key=value, e.g. --set training.learning_rate=1e-4"))
    key, raw = item.split("=", 1)
    try:
        value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except BabeltuneError as exc:
        if "malformed YAML" not in str(exc):
            raise   # a limit (alias, nesting), not a typo
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def set_values(data: dict, values: dict[str, Any], on_replace: Optional[Callable[[str, Any, Any], None]] = None) -> dict:
    """Typed values at dotted keys (what a command's own flags set, after ``--set``); None removes the key.
    ``on_replace(key, old, new)`` hears each value that was set to something else. A section that is not a
    mapping is left for the schema to report."""
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            old = node.get(last)
            if old is not None and old != value and on_replace is not None:
                on_replace(dotted, old, value)
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """A config file's top-level mapping, read through :func:`parse_yaml` (at most MAX_CONFIG_BYTES)."""
    path = Path(path)
    if not path.is_file():
        raise BabeltuneError(f"{path}: config file not found; write one with `advise --out {path}`")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise BabeltuneError(f"{path}: cannot read the config ({exc.strerror}); check the file's permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise BabeltuneError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config (advise writes ~5 KB) "
                             "cannot be this big: is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BabeltuneError(f"{path}: not UTF-8 text (byte {exc.start}); a config is a YAML text file") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise BabeltuneError(f"{path}: the config is empty; write one with `advise --out {path}`")
    if not isinstance(data, dict):
        raise BabeltuneError(f"{path}: top level must be a mapping of sections (model, data, ...), got {type(data).__name__}")
    return data


def _context_problems(data: Any) -> list[str]:
    """model.max_seq_length beyond the model's max_position_embeddings, when the model is known here
    (a local folder, a GGUF file or an installed built-in; read from its config/metadata, nothing run)."""
    model = data.get("model") if isinstance(data, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    length = model.get("max_seq_length") if isinstance(model, dict) else None
    if not isinstance(name, str) or _text_problem(name) or type(length) is not int or not 8 <= length <= MAX_SEQ_LENGTH:
        return []
    from babeltune.models.facts import context_length

    limit = context_length(name)
    if limit and length > limit:
        return [one_line(f"model.max_seq_length: {length} is more than {name}'s max_position_embeddings ({limit}); "
                         f"set at most {limit}")]
    return []


# pip package of each HF Trainer integration whose name differs from it
INTEGRATION_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit", "kubeflow": "kfp"}


def report_to_problems(report_to: Union[str, list[str]]) -> list[str]:
    """training.report_to: every name must be an integration the installed transformers knows and is installed
    (transformers is imported only when a name is set, so the default costs nothing)."""
    if report_to == "none":
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    known, available = sorted(INTEGRATION_TO_CALLBACK), set(get_available_reporting_integrations())
    problems = []
    for name in report_to:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(one_line(f"training.report_to: {name!r} is not an integration of the HF Trainer; {hint}"
                                     f"use one of {', '.join(known)}, or none"))
        elif name not in available:
            package = INTEGRATION_PACKAGES.get(name, name)
            problems.append(one_line(f"training.report_to: {name} is not installed; pip install {package} "
                                     "(or remove it from training.report_to)"))
    return problems


def option_problems(options_model: type[BaseModel], options: Any, backend: str) -> tuple[Optional[BaseModel], list[str]]:
    """``backend.options`` validated against a backend's Options model: (the typed options, []) or
    (None, one ``backend.options.key: message`` line per problem)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return None, []     # the schema reports backend.options itself
    try:
        return options_model.model_validate(options), []
    except ValidationError as exc:
        return None, error_lines(exc, options_model, prefix="backend.options.", owner=f"backend {backend}")


def validate_config(data: dict, source: str = "config", options_model: Optional[type[BaseModel]] = None,
                    backend: Optional[str] = None, problems: Sequence[str] = ()) -> TrainConfig:
    """``data`` as a TrainConfig; with ``options_model`` (the selected backend's Options) backend.options
    is checked too. Every problem (``problems`` found before, e.g. an unknown backend name, first) is raised
    at once, one ``<source>: key: message`` line each."""
    lines: list[str] = list(problems)
    config = None
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        lines += error_lines(exc, TrainConfig)
    lines += _context_problems(data)
    if config is not None:
        lines += report_to_problems(config.training.report_to)
    if options_model is not None:
        section = data.get("backend") if isinstance(data, dict) else None
        options = section.get("options") if isinstance(section, dict) else None
        name = backend or (section.get("name") if isinstance(section, dict) else None) or "hf-peft"
        lines += option_problems(options_model, options, str(name))[1]
    if lines:
        raise BabeltuneError(*(one_line(f"{source}: {line}") for line in lines))
    return config


def load_config(path: str | Path, overrides: Optional[list[str]] = None,
                options_model: Optional[type[BaseModel]] = None, *, values: Optional[dict[str, Any]] = None,
                on_replace: Optional[Callable[[str, Any, Any], None]] = None,
                options_for: Optional[Callable[[str], Optional[type[BaseModel]]]] = None) -> TrainConfig:
    """The one config loader: read, override (``--set key=value`` strings, then ``values`` from a command's own
    flags, see :func:`set_values`) and validate; every problem raised at once. ``options_for(backend name)``
    gives the Options model backend.options is checked against (instead of a fixed ``options_model``); the
    BabeltuneError it raises for an unknown backend name is reported with the other problems."""
    data = set_values(apply_overrides(read_yaml(path), list(overrides or [])), values or {}, on_replace)
    problems: list[str] = []
    if options_for is not None:
        section = data.get("backend")
        name = section.get("name", "hf-peft") if isinstance(section, dict) else "hf-peft"
        try:
            options_model = options_for(name)
        except BabeltuneError as exc:     # an unknown backend: one more line of this file's problems
            problems, options_model = list(exc.lines), None
    return validate_config(data, source=str(path), options_model=options_model, problems=problems)


def describe_fields() -> dict[str, str]:
    """Dotted key -> description, for docs and for `advise` comments on keys without a rule."""
    out = {}
    for section_name, field in TrainConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, sub in annotation.model_fields.items():
                out[f"{section_name}.{name}"] = sub.description or ""
        else:
            out[section_name] = field.description or ""
    return out
