"""`train` with vocab.extend: the extended tokenizer, the new embedding rows, and what reloading needs.

Shared by every LoRA backend (hf-peft, unsloth): ``extend_for_training`` runs on the base model before the adapter
is attached, ``peft_token_indices`` gives the LoraConfig its ``trainable_token_indices``, and every place that loads a
saved adapter calls ``resize_for_adapter`` on the fresh base first.

- Tokenizer: merges learnt from data.train (the held-out split excluded) are appended to the base tokenizer.json by
  babeltune.vocab, so every existing id and every text the new merges do not touch tokenise as before.
- Rows: embeddings (and an untied lm_head) grow to hold the new ids; each new row starts as the mean of the rows of
  the pieces the base tokenizer cut it into (fast vocabulary transfer, Gee et al. 2022), input and output rows alike.
- Training: PEFT ``trainable_token_indices`` trains only the new rows (tied models: one shared copy), beside LoRA.
- Saving: the adapter holds the trained rows; ``babeltune_vocab.json`` records the rows the base must be resized to
  (and each new row's pieces, so the fresh base gets the same starting rows: the adapter switched off is the
  starting point, not random rows). Reload: base -> ``resize_for_adapter`` -> ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from babeltune.errors import BabeltuneError

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

EXTENSION_FILE = "babeltune_vocab.json"
ATTRIBUTE = "_babeltune_vocab_extension"     # set on the base model instance by extend_for_training


@dataclass
class VocabExtension:
    base_rows: int                          # embedding rows of the base model
    rows: int                               # embedding rows after the extension
    new_ids: list[int]
    pieces: list[list[int]]                 # each new id's pieces under the base tokenizer (its starting row = their mean)
    joined_scripts: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def read(cls, folder: Path) -> Optional["VocabExtension"]:
        path = Path(folder) / EXTENSION_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise BabeltuneError(f"{path}: unreadable vocabulary extension ({exc}); train again or restore the file") from None


def training_texts(config: "TrainConfig") -> list[str]:
    """data.train as `train` uses it (dedup, held-out split removed): the text the new merges are learnt from."""
    from babeltune.trainer import data as d

    sft = config.data.mode == "sft"
    items = (d.read_records if sft else d.read_documents)(config, config.data.train, [])
    items, _ = d.remove_duplicates(items, d.dedup_key(config))
    if not config.data.eval:
        items, _ = d.split_heldout(items, d.record_text if sft else (lambda text: text), config.data.eval_fraction)
    return [d.record_plain_text(item, config) for item in items] if sft else items


def extended_tokenizer(tokenizer: Any, texts: list[str], count: int) -> tuple[Any, list[str], list[str]]:
    """(the transformers tokenizer with ``count`` merges appended, the new pieces, scripts whose marks now join)."""
    from babeltune.vocab import build_extension
    from transformers import AutoTokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    extended, added, scripts = build_extension(spec, texts, count)
    if not added:
        raise BabeltuneError(f"vocab.extend: {count}, but data.train supports no new merge the base tokenizer lacks; "
                             "set vocab.extend: 0")
    folder = Path(tempfile.mkdtemp(prefix="babeltune-vocab-"))
    try:
        tokenizer.save_pretrained(str(folder))
        (folder / "tokenizer.json").write_text(json.dumps(extended, ensure_ascii=False), encoding="utf-8")
        new = AutoTokenizer.from_pretrained(str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if new.pad_token is None:
        new.pad_token = tokenizer.pad_token
    return new, added, scripts


def piece_ids(base_tokenizer: Any, tokens: list[str]) -> list[list[int]]:
    """Each new token's pieces under the base tokenizer's own BPE model (the token text is already pre-tokenised)."""
    model = base_tokenizer.backend_tokenizer.model
    return [[t.id for t in model.tokenize(token)] for token in tokens]


def initialise_rows(model: Any, extension: VocabExtension) -> None:
    """Resize embeddings (and an untied lm_head) to ``extension.rows``; each new row = mean of its pieces' rows."""
    import torch

    if model.get_input_embeddings().weight.shape[0] != extension.rows:
        model.resize_token_embeddings(extension.rows, mean_resizing=False)
    outputs = model.get_output_embeddings()
    matrices = [model.get_input_embeddings().weight]
    if outputs is not None and outputs.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(outputs.weight)
    with torch.no_grad():
        for weight in matrices:
            for new_id, pieces in zip(extension.new_ids, extension.pieces):
                weight[new_id] = weight[pieces].float().mean(dim=0).to(weight.dtype)


def extend_for_training(config: "TrainConfig", model: Any, tokenizer: Any, texts: Optional[list[str]] = None) -> tuple[Any, Optional[VocabExtension], list[str]]:
    """With vocab.extend > 0: (the extended tokenizer, the extension, notes), the model resized and initialised.
    Call before gradient checkpointing hooks the input embeddings and before the adapter is attached."""
    count = config.vocab.extend
    if count <= 0:
        return tokenizer, None, []
    texts = training_texts(config) if texts is None else texts
    before = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:2000])
    new_tokenizer, added, scripts = extended_tokenizer(tokenizer, texts, count)
    after = sum(len(new_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:2000])
    new_ids = new_tokenizer.convert_tokens_to_ids(added)
    base_rows = model.get_input_embeddings().weight.shape[0]
    extension = VocabExtension(base_rows, max(base_rows, max(new_ids) + 1), new_ids, piece_ids(tokenizer, added),
                               scripts, added)
    initialise_rows(model, extension)
    setattr(model, ATTRIBUTE, extension)
    chars = sum(len(t) for t in texts[:2000]) or 1
    notes = [f"vocab.extend: +{len(added):,} merges learnt from data.train: {before / chars:.3f} -> {after / chars:.3f} "
             f"tokens/char ({before / max(after, 1):.2f}x); embeddings {base_rows:,} -> {extension.rows:,} rows, new rows "
             "start as the mean of their pieces' rows"]
    if scripts:
        notes.append(f"vocab.extend: combining marks of {', '.join(scripts)} join letters in the split regex "
                     "(text in other scripts splits exactly as before)")
    return new_tokenizer, extension, notes


def extension_of(model: Any) -> Optional[VocabExtension]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, ATTRIBUTE, None)


def peft_token_indices(model: Any, extension: Optional[VocabExtension], tied: bool) -> Optional[Any]:
    """LoraConfig.trainable_token_indices for the new rows: the input embeddings (PEFT ties lm_head to them when the
    model ties its weights), and lm_head too when untied."""
    if extension is None:
        return None
    embed = next(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if module is model.get_input_embeddings())
    if tied or model.get_output_embeddings() is None:
        return {embed: list(extension.new_ids)}
    head = next(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                if module is model.get_output_embeddings())
    return {embed: list(extension.new_ids), head: list(extension.new_ids)}


def write_extension(model: Any, folder: Path) -> None:
    """babeltune_vocab.json beside a saved adapter (nothing when the run did not extend the vocabulary)."""
    extension = extension_of(model)
    if extension is not None:
        from babeltune.atomic import atomic_write_text

        atomic_write_text(Path(folder) / EXTENSION_FILE, extension.to_json())


def resize_for_adapter(base: Any, folder: Path) -> Optional[VocabExtension]:
    """Before ``PeftModel.from_pretrained(base, folder)``: grow a fresh base to the adapter's rows, new rows started
    as in training (the adapter then puts the trained rows in place)."""
    extension = VocabExtension.read(Path(folder))
    if extension is not None:
        rows = base.get_input_embeddings().weight.shape[0]
        if rows != extension.base_rows:
            raise BabeltuneError(f"{folder}: this adapter extends a {extension.base_rows:,}-row vocabulary, the base model "
                                 f"has {rows:,} rows; load it on the base model it was trained on")
        initialise_rows(base, extension)
        setattr(base, ATTRIBUTE, extension)
    return extension
