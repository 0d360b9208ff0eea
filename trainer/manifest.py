"""The run manifest (manifest.json): what ran, where, on what, so a run can be reproduced and compared.

Library versions, device, sha256 of the config / corpus / tokenizer, the resolved config, backend notes,
data statistics and results.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from babeltune.atomic import atomic_write_text
from babeltune.models.safety import remote_code_trusted

if TYPE_CHECKING:
    from babeltune.config import TrainConfig
    from babeltune.trainer.backend import Runtime

MANIFEST = "manifest.json"
LIBRARIES = ("babeltune", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pluggy",
             "pydantic", "bitsandbytes", "unsloth", "flash-attn")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")


def library_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_facts(runtime: "Runtime") -> dict[str, Any]:
    facts: dict[str, Any] = {"device": runtime.device, "precision": runtime.precision, "world_size": runtime.world_size,
                             "gradient_accumulation_steps_per_process": runtime.gradient_accumulation_steps,
                             "platform": platform.platform(), "machine": platform.machine()}
    import torch

    facts["torch_cuda"] = torch.version.cuda
    if runtime.device == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
        facts["gpu"] = torch.cuda.get_device_name(index)
        facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
        facts["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    return facts


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_files(paths: list[Path]) -> Optional[str]:
    """One hash over several files (names and contents, in name order); None when none exist."""
    digest, found = hashlib.sha256(), False
    for path in sorted(p for p in paths if p.is_file()):
        found = True
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest() if found else None


def config_hash(config: "TrainConfig") -> str:
    """sha256 of the resolved config (canonical JSON), independent of YAML formatting and comments."""
    return sha256_text(json.dumps(config.model_dump(mode="json"), sort_keys=True))


def corpus_hash(config: "TrainConfig", path: str) -> Optional[str]:
    from babeltune.corpus.reader import corpus_sha256

    from babeltune.trainer.data import corpus_spec

    return corpus_sha256(corpus_spec(config, path))


def base_model_identity(model_dir: str) -> Optional[dict]:
    """The base model's identity (the one recorded beside the adapter), or None for a folder without safetensors."""
    from babeltune.errors import BabeltuneError
    from babeltune.models.identity import identity_of

    try:
        return asdict(identity_of(model_dir))
    except BabeltuneError:
        return None


def build_manifest(config: "TrainConfig", runtime: "Runtime", *, backend: str, config_file: Optional[str] = None,
                   tokenizer_dir: Optional[Path] = None, extra: Optional[dict] = None) -> dict[str, Any]:
    hashes = {
        "config": config_hash(config),
        "config_file": sha256_files([Path(config_file)]) if config_file else None,
        "train_corpus": corpus_hash(config, config.data.train),
        "eval_corpus": corpus_hash(config, config.data.eval) if config.data.eval else None,
        "tokenizer": sha256_files([tokenizer_dir / name for name in TOKENIZER_FILES]) if tokenizer_dir else None,
    }
    manifest = {
        "babeltune_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "backend": backend,
        "model_dir": runtime.model_dir,
        "libraries": library_versions(),
        "device": device_facts(runtime),
        "sha256": hashes,
        "trust_remote_code": remote_code_trusted(),   # True only with --trust-remote-code
        "base_model": base_model_identity(runtime.model_dir),
        "config": config.model_dump(mode="json"),
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(output_dir: str | Path, manifest: dict) -> Path:
    return atomic_write_text(Path(output_dir) / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
