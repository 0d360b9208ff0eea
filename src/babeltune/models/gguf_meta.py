"""Read a GGUF file's metadata (architecture, hyperparameters, vocabulary) without touching weights.

A small reader of the GGUF header (spec: github.com/ggml-org/ggml/blob/master/docs/gguf.md) instead of
`gguf.GGUFReader`, which builds one numpy view per array element and needs ~10 s for a 262k vocabulary;
reading the header this way takes well under a second.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from babeltune.errors import BabeltuneError

# The GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

GGUF_MAGIC = b"GGUF"
# value type code -> numpy dtype (little-endian); 8 = string, 9 = array
_SCALAR_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
MAX_HEADER_ITEM = 1 << 30


@dataclass
class GGUFMetadata:
    path: Path
    scalars: dict[str, Any]                                   # every non-array key -> value
    arrays: dict[str, list] = field(default_factory=dict)     # array keys (tokenizer.ggml.tokens, ...)
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # PyTorch order (rows, cols)

    @property
    def architecture(self) -> str:
        return str(self.scalars.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """A hyperparameter stored under the architecture's prefix, e.g. `llama.block_count`."""
        return self.scalars.get(f"{self.architecture}.{key}", default)

    @property
    def tokens(self) -> list[str]:
        return self.arrays.get("tokenizer.ggml.tokens", [])


class _Header:
    """Sequential little-endian reader over the header bytes."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle

    def read(self, size: int) -> bytes:
        if size > MAX_HEADER_ITEM:  # a corrupt length would otherwise try to allocate it
            raise ValueError(f"implausible length {size} in the header")
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("file ends inside the header")
        return data

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def string(self) -> str:
        return self.read(self.u64()).decode("utf-8", errors="replace")

    def value(self, type_code: int) -> Any:
        if type_code == _STRING:
            return self.string()
        if type_code == _ARRAY:
            return self.array()
        dtype = np.dtype(_SCALAR_DTYPES[type_code])
        return np.frombuffer(self.read(dtype.itemsize), dtype=dtype)[0].item()

    def array(self) -> list:
        item_type, count = self.u32(), self.u64()
        if item_type == _STRING:
            return self._strings(count)
        if item_type == _ARRAY:
            return [self.array() for _ in range(count)]
        dtype = np.dtype(_SCALAR_DTYPES[item_type])
        return np.frombuffer(self.read(dtype.itemsize * count), dtype=dtype).tolist()

    def _strings(self, count: int) -> list[str]:
        out = []
        read, unpack = self.handle.read, struct.unpack
        for _ in range(count):
            (length,) = unpack("<Q", read(8))
            data = read(length) if length <= MAX_HEADER_ITEM else b""
            if len(data) != length:
                raise ValueError("file ends inside a string array")
            out.append(data.decode("utf-8", errors="replace"))
        return out


def _parse(path: Path) -> GGUFMetadata:
    with path.open("rb") as raw:
        header = _Header(raw)
        if header.read(4) != GGUF_MAGIC:
            raise ValueError("no GGUF magic bytes")
        version = header.u32()
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (big-endian files are not supported)")
        tensor_count, kv_count = header.u64(), header.u64()
        meta = GGUFMetadata(path=path, scalars={})
        for _ in range(kv_count):
            key = header.string()
            value = header.value(header.u32())
            (meta.arrays if isinstance(value, list) else meta.scalars)[key] = value
        for _ in range(tensor_count):
            name = header.string()
            dims = [header.u64() for _ in range(header.u32())]
            header.u32(), header.u64()  # ggml type, data offset
            meta.tensor_shapes[name] = tuple(reversed(dims))
    return meta


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFMetadata:
    try:
        return _parse(Path(path))
    except (ValueError, KeyError, struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise BabeltuneError(f"{path}: not a readable GGUF file ({exc}); pass a .gguf model file") from None


def read_gguf_metadata(path: str | Path) -> GGUFMetadata:
    """Parsed metadata of a GGUF file, cached per (path, mtime, size) within the process."""
    target = Path(path)
    if not target.is_file():
        raise BabeltuneError(f"{target}: GGUF file not found; check the path")
    stat = target.stat()
    return _read_cached(str(target.resolve()), stat.st_mtime_ns, stat.st_size)
