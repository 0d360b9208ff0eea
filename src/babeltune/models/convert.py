"""GGUF -> a normal Hugging Face folder (config, safetensors, tokenizer, generation config).

transformers (with the `gguf` package) dequantizes the GGUF weights, but the resulting model refuses
`save_pretrained` while its GGUF quantization config is attached, so we save the state dict ourselves in
the requested dtype. The tokenizer is rebuilt from the GGUF vocabulary (see gguf_tokenizer.py), because
transformers' own conversion of SentencePiece GGUFs (Gemma-3) loses the merges.
Everything is written into a temporary folder next to the target and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from babeltune.errors import BabeltuneError
from babeltune.models.safety import load_kwargs

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
PROVENANCE_FILE = "babeltune_source.json"


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise BabeltuneError(f"--dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    return dtype


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # stderr, so that `pull` can print the folder as the last line of stdout.
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )


@contextmanager
def _gguf_progress_to(progress, task):
    """Show transformers' per-tensor dequantization loop (a bare tqdm) as our rich task instead."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def rich_tqdm(iterable, *args, **kwargs):
        items = list(iterable)
        progress.update(task, total=len(items), completed=0)
        for item in items:
            yield item
            progress.advance(task)

    gguf_utils.tqdm = rich_tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _load_dequantized(gguf_path: Path):
    """The GGUF as an fp32 transformers model (transformers dequantizes and renames the tensors)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own rich progress replaces its tqdm bars
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, low_cpu_mem_usage=True, **load_kwargs()
        )
    except (ValueError, KeyError, OSError) as exc:
        raise BabeltuneError(f"{gguf_path}: transformers cannot convert this GGUF ({exc})") from None
    finally:
        hf_logging.enable_progress_bar()


def _unique_tensors(model, dtype: str, progress, task) -> dict:
    """State dict in the target dtype, without the tied copies (safetensors refuses shared storage)."""
    import torch

    target = getattr(torch, DTYPES[dtype])
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            tensors[name] = tensor.detach().to(target).contiguous().clone()
        progress.advance(task)
    return tensors


def _write_config(model, folder: Path, dtype: str) -> None:
    config = model.config
    # The GGUF quantization config describes the source file, not these dequantized weights.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    config.dtype = DTYPES[dtype]
    config.save_pretrained(str(folder))
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:  # older transformers keep it on the class: drop it from the file
        saved.pop("quantization_config")
        (folder / "config.json").write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")


def _write_generation_config(model, folder: Path) -> None:
    from transformers import GenerationConfig

    config = model.config
    generation = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    generation.save_pretrained(str(folder))


def _write_tokenizer(gguf_path: Path, folder: Path) -> None:
    from babeltune.models.tokenizers import tokenizer_dir_from_gguf

    with tempfile.TemporaryDirectory(prefix=".tok.", dir=folder) as scratch:
        built = tokenizer_dir_from_gguf(gguf_path, Path(scratch) / "tokenizer")
        for item in built.iterdir():  # tokenizer.json, tokenizer_config.json (+ chat template files)
            shutil.copyfile(item, folder / item.name)


def _write_folder(gguf_path: Path, staging: Path, dtype: str, provenance: dict) -> None:
    from safetensors.torch import save_file

    with _progress() as progress:
        step = progress.add_task("rebuilding tokenizer from GGUF vocabulary", total=1)
        _write_tokenizer(gguf_path, staging)
        progress.advance(step)
        step = progress.add_task(f"dequantizing {gguf_path.name}", total=None)
        with _gguf_progress_to(progress, step):
            model = _load_dequantized(gguf_path)
        state = model.state_dict()
        step = progress.add_task(f"casting tensors to {dtype}", total=len(state))
        tensors = _unique_tensors(model, dtype, progress, step)
        step = progress.add_task("writing model.safetensors + configs", total=3)
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        progress.advance(step)
        _write_config(model, staging, dtype)
        progress.advance(step)
        _write_generation_config(model, staging)
        provenance = dict(provenance, dtype=dtype, tensors=len(tensors), source_gguf=str(gguf_path))
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        progress.advance(step)


def make_readable(folder: Path) -> None:
    """mkdtemp makes a private 0700 folder: give the result the usual permissions (respecting umask)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for item in folder.iterdir():
        item.chmod(0o666 & ~umask)


def convert_gguf(gguf_path: str | Path, target: str | Path, *, dtype: str = "fp32", provenance: Optional[dict] = None) -> Path:
    """Convert `gguf_path` into the HF folder `target`; a no-op when `target` is already complete."""
    check_dtype(dtype)
    gguf_path, target = Path(gguf_path), Path(target).expanduser()
    if is_complete(target):
        return target
    if not gguf_path.is_file():
        raise BabeltuneError(f"{gguf_path}: GGUF file not found; check the path")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if is_complete(target):   # another process finished it since the first check
            return target
        raise BabeltuneError(f"{target}: exists and is not a complete converted model; remove it or pick another --dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        _write_folder(gguf_path, staging, dtype, provenance or {})
        make_readable(staging)
        try:
            os.replace(staging, target)  # rename(2) also replaces an empty target folder
        except OSError:
            if not is_complete(target):   # not another process (e.g. a second torchrun rank) finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
