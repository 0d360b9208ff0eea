"""Which base model an adapter belongs to: a cheap, stable identity of a Hugging Face model folder.

An adapter applied to another base model with the same shapes loads with at most a warning and reports numbers
that mean nothing. `train` therefore records the base model's identity next to the adapter
(``babeltune_base_model.json``), and every path that puts an adapter on a base model (`babeltune eval --adapter`,
the reload check, `train --merge`) compares it with the base model it was given.

The identity reads only config.json and the safetensors headers plus a few bytes of every tensor, never whole
weight files, so it costs milliseconds even for large models:

* ``architecture``: sha256 of config.json (without keys that change with saving, e.g. dtype or
  transformers_version) and every tensor's name and shape;
* ``weights``: sha256 of every tensor's dtype and its first and last bytes, which tells a base model from its
  fine-tune or another seed. It is compared only between folders stored in the same dtypes (an fp32 and a bf16
  conversion of one model are the same base model).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from babeltune.errors import BabeltuneError
from babeltune.atomic import atomic_write_text

IDENTITY_FILE = "babeltune_base_model.json"
FORMAT_VERSION = 1
# config.json keys that differ between saves of the same model.
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache",
                                  "_attn_implementation", "attn_implementation", "_commit_hash"})
SAMPLE_BYTES = 64          # read from the start and the end of every tensor
MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class BaseModelIdentity:
    architecture: str      # 16 hex digits
    weights: str           # 16 hex digits
    dtypes: str            # e.g. "F32" or "BF16,F32"
    tensors: int
    source: str = ""       # the folder it was computed from (shown, never compared)

    def describe(self) -> str:
        return f"{self.source or '?'} (architecture {self.architecture}, weights {self.weights} {self.dtypes})"

    def differs_from(self, other: "BaseModelIdentity") -> Optional[str]:
        """What differs ("architecture" or "weights"), or None for the same base model."""
        if self.architecture != other.architecture:
            return "architecture"
        if self.dtypes == other.dtypes and self.weights != other.weights:
            return "weights"
        return None

    def to_json(self) -> str:
        return json.dumps({"babeltune_base_model": FORMAT_VERSION, **asdict(self)}, indent=2) + "\n"


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, offset where the data starts); a truncated or malformed file is a one-line error."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BabeltuneError(f"{path}: not a valid safetensors file ({exc}); the file is damaged or truncated: "
                             "copy or convert it again") from None
    if not isinstance(header, dict):
        raise BabeltuneError(f"{path}: not a valid safetensors file (header is not a JSON object); copy or convert it again")
    header.pop("__metadata__", None)
    data_start = 8 + length
    end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    if data_start + end > size:
        raise BabeltuneError(f"{path}: truncated safetensors file ({size:,} bytes, its header needs {data_start + end:,}); "
                             "the save or copy was interrupted: copy or convert it again")
    return header, data_start


def _config_digest(folder: Path) -> bytes:
    from babeltune.models.safety import read_json_object

    config = read_json_object(folder / "config.json")
    stable = {key: value for key, value in config.items() if key not in VOLATILE_CONFIG_KEYS}
    return json.dumps(stable, sort_keys=True, default=str).encode()


def identity_of(model_dir: str | Path) -> BaseModelIdentity:
    """The identity of a Hugging Face model folder (config.json + *.safetensors)."""
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not files:
        raise BabeltuneError(f"{folder}: no config.json and safetensors weights to identify the base model by; "
                             "pass a Hugging Face model folder")
    architecture, weights = hashlib.sha256(_config_digest(folder)), hashlib.sha256()
    dtypes, count = set(), 0
    for path in files:
        header, data_start = read_safetensors_header(path)
        with path.open("rb") as handle:
            for name in sorted(header):
                entry = header[name]
                architecture.update(f"{name}:{entry['shape']}\n".encode())
                begin, end = (data_start + int(offset) for offset in entry["data_offsets"])
                weights.update(f"{name}:{entry['dtype']}\n".encode() + _sample(handle, begin, end))
                dtypes.add(str(entry["dtype"]))
                count += 1
    return BaseModelIdentity(architecture.hexdigest()[:16], weights.hexdigest()[:16], ",".join(sorted(dtypes)),
                             count, str(folder))


def _sample(handle, begin: int, end: int) -> bytes:
    handle.seek(begin)
    if end - begin <= 2 * SAMPLE_BYTES:
        return handle.read(end - begin)
    head = handle.read(SAMPLE_BYTES)
    handle.seek(end - SAMPLE_BYTES)
    return head + handle.read(SAMPLE_BYTES)


def write_identity(adapter_dir: str | Path, model_dir: str | Path) -> BaseModelIdentity:
    identity = identity_of(model_dir)
    atomic_write_text(Path(adapter_dir) / IDENTITY_FILE, identity.to_json())
    return identity


def read_identity(adapter_dir: str | Path) -> Optional[BaseModelIdentity]:
    """The recorded identity, or None when the adapter has none (older babeltune, other tools)."""
    path = Path(adapter_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    from babeltune.models.safety import read_json_object

    data = read_json_object(path)
    try:
        return BaseModelIdentity(str(data["architecture"]), str(data["weights"]), str(data["dtypes"]),
                                 int(data["tensors"]), str(data.get("source", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise BabeltuneError(f"{path}: damaged base-model record ({exc!r} missing or invalid); copy the adapter "
                             "folder again, or delete this file to load the adapter unchecked") from None


def _identity_from_run_manifest(adapter_dir: Path) -> Optional[BaseModelIdentity]:
    """A checkpoint-N folder has no record of its own; its run's manifest.json (written at the end of the run) has."""
    manifest = adapter_dir.parent / "manifest.json"
    if not manifest.is_file():
        return None
    from babeltune.models.safety import read_json_object

    data = read_json_object(manifest).get("base_model")
    try:
        return BaseModelIdentity(**data) if isinstance(data, dict) else None
    except TypeError:
        return None


def check_adapter_base(adapter_dir: str | Path, model_dir: str | Path, *, what: str = "--adapter",
                       warn: Optional[Callable[[str], None]] = None) -> Optional[BaseModelIdentity]:
    """Refuse an adapter recorded for another base model (one line naming both identities). An adapter without a
    record loads, with one warning line through ``warn``. Returns the recorded identity."""
    recorded = read_identity(adapter_dir) or _identity_from_run_manifest(Path(adapter_dir))
    if recorded is None:
        if warn is not None:
            warn(f"warning: {what} {adapter_dir}: no {IDENTITY_FILE} here or manifest.json beside it (an older babeltune "
                 "or another tool saved it), so babeltune cannot check that it belongs to this base model")
        return None
    actual = identity_of(model_dir)
    difference = recorded.differs_from(actual)
    if difference:
        raise BabeltuneError(f"{what} {adapter_dir}: trained on base model {recorded.describe()}, but the base model "
                             f"given is {actual.describe()} (the {difference} differs); use the base model the adapter "
                             "was trained on")
    return recorded
