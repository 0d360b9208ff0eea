"""What babeltune accepts from a model, tokenizer or adapter folder: JSON, text and safetensors, never code.

* No code: an ``auto_map`` key in config.json, tokenizer_config.json or adapter_config.json tells transformers to
  import Python files shipped in the folder. Left alone (``trust_remote_code=None``) transformers asks "Do you wish
  to run the custom code? [y/N]" on stdin, and a "y" (or anything piped in) runs that code. babeltune refuses such
  a folder before anything loads, and passes ``trust_remote_code`` explicitly to every loader, so the prompt can
  never appear. Only ``--trust-remote-code`` (recorded in the run manifest) lets the code run.
* No pickle: ``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``/``*.pth``/``*.ckpt`` are pickle files, and
  unpickling runs code (torch's ``weights_only`` stops most of it, with a traceback). A folder whose weights are
  pickles is refused with the file name and the fix; pickles beside safetensors weights are never opened.

The trust setting is one per process: the CLIs set it from their flag with :func:`allow_remote_code`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from babeltune.errors import BabeltuneError

CODE_KEY = "auto_map"
# Files transformers/PEFT read an auto_map from (processor files matter to multimodal folders).
CODE_CONFIG_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json", "processor_config.json",
                     "preprocessor_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Written by the HF Trainer into checkpoint-N folders and never loaded as weights (owned by resume).
TRAINER_STATE_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
TRUST_FLAG = "--trust-remote-code"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# A tokenizer saved with save_pretrained: its config plus one of the vocabulary files.
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")

_trust_remote_code = False


def remote_code_trusted() -> bool:
    """True only inside :func:`allow_remote_code` (the user passed ``--trust-remote-code``)."""
    return _trust_remote_code


@contextmanager
def allow_remote_code(enabled: bool = True) -> Iterator[None]:
    """Within this block, folders with ``auto_map`` load and transformers may import their code."""
    global _trust_remote_code
    previous, _trust_remote_code = _trust_remote_code, bool(enabled)
    try:
        yield
    finally:
        _trust_remote_code = previous


def load_kwargs() -> dict[str, Any]:
    """Keyword arguments for every transformers ``from_pretrained``: the trust decision, stated explicitly, so
    transformers never falls back to asking on stdin."""
    return {"trust_remote_code": _trust_remote_code}


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BabeltuneError(f"{path}: not a readable JSON file ({exc}); restore it from the model's source") from None
    if not isinstance(data, dict):
        raise BabeltuneError(f"{path}: expected a JSON object, found {type(data).__name__}; restore it from the model's source")
    return data


def _code_modules(auto_map: Any) -> list[str]:
    """The Python files an auto_map points at ("evil.EvilModel" -> evil.py), for the message."""
    refs = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    names = set()
    for ref in refs:
        for item in ref if isinstance(ref, (list, tuple)) else [ref]:
            if isinstance(item, str) and "." in item:
                name = item.split("--")[-1].rsplit(".", 1)[0] + ".py"
                names.add(name if name.isprintable() else repr(name))   # a newline must not forge an error line
    return sorted(names)


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def check_no_remote_code(folder: str | Path, what: str = "") -> None:
    """Refuse a folder whose JSON configs ask transformers to import code (``auto_map``), unless trusted.
    ``what`` names the option the folder came from (e.g. "--adapter"), when the caller knows it."""
    folder = Path(folder)
    if _trust_remote_code or not folder.is_dir():
        return
    for name in CODE_CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        data = read_json_object(path)
        if data.get(CODE_KEY):
            modules = ", ".join(_code_modules(data[CODE_KEY])) or "custom code"
            model_type = data.get("model_type") if name == "config.json" else None
            # (no transformers import to look model_type up: a refusal stays instant)
            fix = (f"if transformers supports model_type {model_type!r} itself, delete the '{CODE_KEY}' key"
                   if isinstance(model_type, str) else "use a model transformers supports natively")
            raise BabeltuneError(f"{_prefix(what)}{path}: '{CODE_KEY}' would run Python from that folder ({modules}); "
                                 f"babeltune never runs code from a model folder: {fix}, or pass {TRUST_FLAG} "
                                 "if you have read that code and trust it")


def _is_trainer_state(path: Path) -> bool:
    return path.name in TRAINER_STATE_FILES or path.name.startswith("rng_state")


def pickle_weight_files(folder: str | Path) -> list[Path]:
    """Pickle files in ``folder`` that a loader could take for weights (Trainer state files excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file() and not _is_trainer_state(p))


def check_no_pickle_weights(folder: str | Path, what: str = "", safetensors_names: tuple[str, ...] = ()) -> None:
    """Refuse a folder whose weights would come from a pickle: pickle weight files and no safetensors weights
    (``safetensors_names``: the file names that count; default any ``*.safetensors``)."""
    folder = Path(folder)
    pickles = pickle_weight_files(folder)
    if not pickles:
        return
    if safetensors_names:
        has_safetensors = any((folder / name).is_file() for name in safetensors_names)
    else:
        has_safetensors = any(folder.glob("*.safetensors"))
    if has_safetensors:
        return   # loaders prefer safetensors, and babeltune tells transformers to use nothing else
    raise BabeltuneError(f"{_prefix(what)}{pickles[0]}: a pickle file, and unpickling can run code; babeltune loads weights "
                         "from safetensors only: convert it (e.g. load it once in a trusted Python session and "
                         "save_pretrained(..., safe_serialization=True)) and remove the pickle")


def check_model_folder(folder: str | Path, what: str = "") -> Path:
    """Both checks for a base model / tokenizer folder; returns the folder."""
    check_no_remote_code(folder, what)
    check_no_pickle_weights(folder, what)
    return Path(folder)


def adapter_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete adapter (what `train` writes: adapter_config.json, safetensors weights
    and the tokenizer), or None."""
    if not folder.is_dir():
        return "not a folder"
    if not (folder / ADAPTER_CONFIG).is_file():
        return f"no {ADAPTER_CONFIG} there"
    read_json_object(folder / ADAPTER_CONFIG)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        return f"no {ADAPTER_WEIGHTS} there"
    from babeltune.models.identity import read_safetensors_header

    read_safetensors_header(folder / ADAPTER_WEIGHTS)   # a truncated file is its own one-line error
    if not (folder / "tokenizer_config.json").is_file() or not any((folder / n).is_file() for n in TOKENIZER_VOCAB_FILES):
        return "no tokenizer (tokenizer_config.json with tokenizer.json, tokenizer.model or vocab.json)"
    return None


def check_adapter_folder(folder: str | Path, what: str = "--adapter") -> Path:
    """A complete adapter folder without code or pickles, else one line naming what is missing and the fix."""
    folder = Path(folder).expanduser()
    check_no_remote_code(folder, what)
    check_no_pickle_weights(folder, what, safetensors_names=(ADAPTER_WEIGHTS,))
    problem = adapter_folder_problem(folder)
    if problem:
        raise BabeltuneError(f"{what} {folder}: {problem}; pass a complete adapter folder written by `train` (its "
                             "adapter/ or a checkpoint-N folder); an interrupted copy or save leaves files out")
    return folder


def model_class_for(model_dir: str):
    """The transformers causal-LM class for a folder, read from config.json only (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model_folder(model_dir)
    config = AutoConfig.from_pretrained(model_dir, **load_kwargs())
    remote = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
    if remote and remote_code_trusted():   # --trust-remote-code: the folder's own class
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(remote, model_dir)
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise BabeltuneError(
            f"{model_dir}: model_type {config.model_type!r} is not a causal language model transformers knows; "
            "use a decoder-only model (Llama, Qwen, Gemma, Mistral, ...)") from None
