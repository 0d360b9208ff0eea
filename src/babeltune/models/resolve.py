"""`resolve_model_dir(spec)`: every `--model` value -> a local Hugging Face folder. Never downloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models.convert import check_dtype, convert_gguf, is_complete
from babeltune.models.safety import check_model_folder


def gguf_converted_dir(gguf_path: Path, dtype: str) -> Path:
    """Cache folder for a user's GGUF file, keyed by its path, size and mtime (a changed file converts again)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return builtins.cache_dir() / "models" / f"gguf-{gguf_path.stem}-{key}-{dtype}"


def pull_builtin(name: str, *, dtype: str = "fp32", target: str | Path | None = None) -> Path:
    """Convert a built-in model once (into the cache, or `target`) and return the folder."""
    check_dtype(dtype)
    model = builtins.get_builtin(name)
    folder = Path(target).expanduser() if target else builtins.converted_dir(name, dtype)
    if is_complete(folder):
        return folder
    provenance = {"builtin": model.name, "title": model.title, "package": model.distribution, "licence": model.licence,
                  "licence_url": model.licence_url}
    return convert_gguf(builtins.builtin_gguf_path(name), folder, dtype=dtype, provenance=provenance)


def _unknown_model(spec: str) -> BabeltuneError:
    names = ", ".join(sorted(builtins.BUILTINS))
    return BabeltuneError(
        f"--model {spec!r} not found: pass a built-in name ({names}), a local Hugging Face folder with "
        "config.json, or a .gguf file (babeltune never downloads models)"
    )


def resolve_model_dir(spec: str, *, dtype: str = "fp32") -> Path:
    """Built-in name -> converted folder (converted once into the cache); GGUF path -> converted folder;
    HF folder -> itself after checking config.json; anything else -> BabeltuneError with the fix."""
    spec = str(spec).strip()
    if spec in builtins.BUILTINS:
        return pull_builtin(spec, dtype=dtype)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        check_dtype(dtype)
        return convert_gguf(path, gguf_converted_dir(path, dtype), dtype=dtype, provenance={"gguf": str(path.resolve())})
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BabeltuneError(f"{path}: no config.json in this folder; pass a Hugging Face model folder, a .gguf file or a built-in name")
        return check_model_folder(path)   # no auto_map code, no pickle weights: refused before anything loads
    if path.exists():
        raise BabeltuneError(f"{path}: not a model folder or .gguf file; pass a Hugging Face folder, a .gguf file or a built-in name")
    raise _unknown_model(spec)
