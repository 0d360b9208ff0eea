"""The training config: the YAML that `advise` writes and `train` reads.

One strict schema (unknown keys are errors, with a did-you-mean), split by section, with a
description on every field. `load_config` collects every problem and raises them once, one
``key: message`` line each.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from babeltune.errors import BabeltuneError

SCHEMA_VERSION = 1

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "adafactor",
    "sgd",
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field(description="Built-in model name (see `babeltune models list`), a local Hugging Face folder, or a GGUF file.")
    tokenizer: Optional[str] = Field(None, description="Tokenizer override: a folder or tokenizer.json; default is the model's own.")
    max_seq_length: int = Field(ge=8, le=1_048_576, description="Tokens per training sequence (packed block length in cpt mode).")
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
    mode: Literal["cpt", "sft"] = Field("cpt", description="cpt = continued pretraining on raw text; sft = instruction/response pairs, loss on responses only.")
    text_field: str = Field("text", description="JSONL/parquet field holding the text (cpt mode).")
    text_column: Optional[str] = Field(None, description="CSV/TSV column holding the text; default: a column named text, else the first.")
    doc_split: Literal["line", "paragraph", "file"] = Field("line", description="How .txt files split into documents.")
    prompt_field: str = Field("instruction", description="SFT: field with the prompt.")
    response_field: str = Field("response", description="SFT: field with the response (the only tokens that carry loss).")
    messages_field: str = Field("messages", description="SFT: field with chat messages ([{role, content}]), used when present.")
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of documents held out when no eval corpus is given.")
    packing: Literal["off", "blocks", "padding_free"] = Field(
        "blocks", description="off = one document per row (padded); blocks = concatenate with EOS and cut into max_seq_length blocks; padding_free = whole documents packed into rows with restarting position ids, attention kept within each document (flash-attention varlen, or transformers' packed-sequence mask with sdpa/eager).")

    dedup: Literal["off", "exact", "near"] = Field(
        "off", description="Remove repeated training documents before the held-out split: exact = identical text; near = identical after dropping URLs, @mentions, ASCII case, spaces and punctuation. The first copy is kept; how many were removed is logged and written to the manifest. `advise` decides it from the duplicates it counted.")
    _packing_off = field_validator("packing", mode="before")(_yaml_false_as("off"))
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
    embedding_learning_rate: Optional[float] = Field(None, gt=0, description="Learning rate for modules_to_save (embeddings/lm_head), usually 2-10x lower.")


class TrainingConfig(Section):
    output_dir: str = Field("runs/babeltune", description="Where checkpoints, metrics, the adapter and the manifest go.")
    per_device_train_batch_size: int = Field(ge=1, description="Sequences per device per micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    learning_rate: float = Field(gt=0, lt=1, description="Peak learning rate for the adapter.")
    num_train_epochs: Optional[float] = Field(None, gt=0, description="Epochs over the training set (set this or max_steps).")
    max_steps: Optional[int] = Field(None, ge=1, description="Optimizer steps (set this or num_train_epochs).")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="Decoupled weight decay (AdamW).")
    optimizer: str = Field("adamw_torch", description=f"One of {', '.join(OPTIMIZERS)}.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.0, ge=0, le=0.5, description="Share of steps spent warming up (ignored when warmup_steps > 0).")
    warmup_steps: int = Field(0, ge=0, description="Warmup steps; wins over warmup_ratio when > 0.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (non-reentrant) to save memory.")
    seed: int = Field(3407, description="Seed for data split, shuffling and adapter initialisation.")
    logging_steps: int = Field(10, ge=1, description="Log loss every N optimizer steps.")
    save_steps: int = Field(200, ge=1, description="Write a checkpoint every N optimizer steps.")
    save_total_limit: int = Field(3, ge=1, description="Checkpoints kept on disk.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Mixed precision; auto = bf16 where supported, fp32 on CPU.")
    max_nonfinite_losses: int = Field(3, ge=1, description="NaN guard: stop after this many optimizer steps with a non-finite loss (the last good checkpoint is kept).")

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
    eval_steps: Optional[int] = Field(None, ge=1, description="Evaluate every N optimizer steps (evaluation_strategy: steps).")
    save_strategy: Literal["no", "steps", "epoch"] = Field("steps", description="When to write checkpoints.")
    per_device_eval_batch_size: int = Field(4, ge=1, description="Sequences per device during evaluation.")
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="Stop after N evaluations without improvement; null = off.")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Minimum eval-loss improvement that counts.")
    max_eval_documents: int = Field(2000, ge=1, description="Cap on held-out documents evaluated.")
    extra_corpora: dict[str, str] = Field(default_factory=dict, description="LANG: PATH corpora scored in bits/char at the end (e.g. en for forgetting).")

    _strategy_no = field_validator("evaluation_strategy", "save_strategy", mode="before")(_yaml_false_as("no"))


class BackendConfig(Section):
    name: str = Field("hf-peft", description="Training backend plugin (see `babeltune plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options, passed through unchanged.")


class TrainConfig(Section):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Config format version.")
    language: str = Field(description="Target language code (ISO 639), e.g. mr.")
    model: ModelConfig
    data: DataConfig
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
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
            problems.append("eval.save_strategy: early stopping keeps the best checkpoint, so save_strategy must equal evaluation_strategy")
        if (ev.early_stopping_patience is not None and ev.evaluation_strategy == "steps" and ev.eval_steps
                and tr.save_steps % ev.eval_steps):
            problems.append(f"training.save_steps: {tr.save_steps} must be a multiple of eval.eval_steps ({ev.eval_steps}) for early stopping")
        if self.adapter.embedding_learning_rate is not None and not self.adapter.modules_to_save:
            problems.append("adapter.embedding_learning_rate: set only with modules_to_save (embed_tokens/lm_head)")
        if problems:
            raise ValueError("\n".join(problems))
        return self


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


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or source
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _field_names(TrainConfig, loc), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(_field_names(TrainConfig, loc))}"
            lines.append(f"{key}: unknown key{hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
            continue
        for sub in msg.splitlines():
            # cross-field messages already start with their own key
            if ": " in sub and sub.split(": ", 1)[0].count(".") >= 1 and " " not in sub.split(": ", 1)[0]:
                lines.append(sub)
            else:
                shown = err.get("input")
                value = "" if isinstance(shown, (dict, list)) or shown is None else f" (got {shown!r})"
                lines.append(f"{key}: {sub}{value}")
    return "\n".join(one_line(f"{source}: {line}") for line in lines)


def one_line(text: str) -> str:
    """Escape characters that would break or hide a `key: message` line (control characters, and the
    separators str.splitlines() splits on, such as \\x1e or \\u2028) as they appear in keys or values."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (['training', 'learning_rate'], 1e-4); values parse as YAML."""
    if "=" not in item:
        raise BabeltuneError(f"--set {item!r}: expected key=value, e.g. --set training.learning_rate=1e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BabeltuneError(f"{path}: config file not found; write one with `advise --out {path}`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BabeltuneError(f"{path}: not UTF-8 text (byte {exc.start}); a config is a YAML text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BabeltuneError(one_line(f"{path}: {where}malformed YAML ({problem}); fix the syntax there")) from None
    if data is None:
        raise BabeltuneError(f"{path}: the config is empty; write one with `advise --out {path}`")
    if not isinstance(data, dict):
        raise BabeltuneError(f"{path}: top level must be a mapping of sections (model, data, ...), got {type(data).__name__}")
    return data


def validate_config(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise BabeltuneError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read, override (``--set key=value``) and validate a config; every problem raised at once."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    return validate_config(data, source=str(path))


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
