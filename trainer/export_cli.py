"""`babeltune export`: merge an adapter into its base model (checked to be the base it was trained on) and write
a GGUF for llama.cpp or a merged Hugging Face folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click

from babeltune.errors import BabeltuneError, handle_errors
from babeltune.atomic import check_writable

EXPORT_EXAMPLES = """\b
Examples:
  babeltune export --adapter runs/mr/adapter --format gguf --dtype q8_0 --out smollm2-mr.q8_0.gguf
  llama-cli -m smollm2-mr.q8_0.gguf -p "महाराष्ट्रातील"
  babeltune export --adapter runs/mr/adapter --model smollm2-135m --format hf --dtype bf16 --out smollm2-mr
"""


def _echo_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def base_model_of(adapter_dir: Path) -> str:
    """The base model an adapter was trained on: `train`'s resolved config, else PEFT's adapter_config.json."""
    import yaml

    from babeltune.models.safety import read_json_object

    resolved = adapter_dir / "babeltune_config.yaml"
    if resolved.is_file():
        try:
            data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise BabeltuneError(f"{resolved}: not readable YAML ({str(exc).splitlines()[0]}); pass --model") from None
        name = (data.get("model") or {}).get("name") if isinstance(data, dict) else None
        if name:
            return str(name)
    config = read_json_object(adapter_dir / "adapter_config.json")
    if config.get("base_model_name_or_path"):
        return str(config["base_model_name_or_path"])
    raise BabeltuneError(f"--adapter {adapter_dir}: records no base model (no babeltune_config.yaml model.name, no "
                         "base_model_name_or_path in adapter_config.json); pass --model")


def _resize_for_extended_vocabulary(base: Any, adapter_dir: Path) -> None:
    """An adapter trained with vocab.extend needs the base's embeddings grown first (babeltune.trainer.vocab, where
    that module exists in this tree)."""
    try:
        from babeltune.trainer.vocab import resize_for_adapter
    except ImportError:
        return
    resize_for_adapter(base, adapter_dir)


def merged_model(adapter_dir: Path, model_dir: Path, echo: Callable[[str], None] = _echo_stderr) -> tuple[Any, Any]:
    """(the base model in fp32 with the adapter folded in, the adapter's tokenizer or else the base's)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltune.models.identity import check_adapter_base
    from babeltune.models.safety import check_no_remote_code, load_kwargs
    from babeltune.models.tokenizers import hf_tokenizer

    check_adapter_base(adapter_dir, model_dir, what="--adapter", warn=echo)
    echo(f"export: loading {model_dir} (fp32) + {adapter_dir}")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True, **load_kwargs())
    _resize_for_extended_vocabulary(base, adapter_dir)
    try:
        adapted = PeftModel.from_pretrained(base, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BabeltuneError(f"--adapter {adapter_dir}: does not fit {model_dir} ({first_line[:300]}); pass the --model "
                             "it was trained on") from None
    merged = adapted.merge_and_unload().eval()
    if (adapter_dir / "tokenizer.json").is_file():   # train saves the (possibly extended) tokenizer with the adapter
        check_no_remote_code(adapter_dir, "--adapter")
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir), **load_kwargs())
    else:
        tokenizer = hf_tokenizer(model_dir)
    return merged, tokenizer


def write_hf(merged: Any, tokenizer: Any, out: Path, dtype: str) -> Path:
    import torch

    from babeltune.trainer.export import write_folder_atomically

    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = merged.to(torch_dtype)

    def write(staging: Path) -> None:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))

    return write_folder_atomically(out, write)


def export_adapter(adapter: str, out: str, *, fmt: str = "gguf", dtype: str = "f16", model_spec: Optional[str] = None,
                   name: Optional[str] = None, echo: Callable[[str], None] = _echo_stderr):
    """Check everything that can be checked before loading, merge, then write. Returns the ExportResult (gguf)
    or the folder (hf)."""
    from babeltune.models.resolve import resolve_model_dir
    from babeltune.models.safety import check_adapter_folder, read_json_object
    from babeltune.trainer.gguf_export import check_request, write_gguf

    adapter_dir = check_adapter_folder(adapter, "--adapter")
    model_dir = Path(resolve_model_dir(model_spec or base_model_of(adapter_dir)))
    arch = check_request(read_json_object(model_dir / "config.json"), fmt, dtype, str(model_dir / "config.json"))
    target = check_writable(out, "--out", folder=fmt == "hf")
    merged, tokenizer = merged_model(adapter_dir, model_dir, echo)
    if fmt == "hf":
        return write_hf(merged, tokenizer, target, dtype)
    label = name or f"{model_dir.name} + {adapter_dir.name}"
    echo(f"export: writing {arch} GGUF ({dtype}) to {target}")
    return write_gguf(merged, tokenizer, target, arch=arch, dtype=dtype, name=label, source=str(model_dir))


@click.command("export", epilog=EXPORT_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--adapter", required=True, metavar="DIR", help="PEFT adapter folder written by `train`.")
@click.option("--format", "fmt", default="gguf", show_default=True, metavar="gguf|hf",
              help="gguf: one file for llama.cpp (Llama/SmolLM2, Gemma-3); hf: a merged Hugging Face folder.")
@click.option("--dtype", default="f16", show_default=True, metavar="f16|bf16|q8_0|f32",
              help="Weight type of the matrices (vectors stay f32 in a GGUF); q8_0 only for gguf.")
@click.option("--out", required=True, metavar="FILE", help="The .gguf file (or, with --format hf, the folder) to write.")
@click.option("--model", "model_spec", default=None, metavar="M",
              help="Base model (built-in name, HF folder or GGUF); default: the one the adapter was trained on.")
@click.option("--name", default=None, metavar="TEXT", help="general.name in the GGUF (default: base + adapter folder).")
@handle_errors
def export_command(adapter, fmt, dtype, out, model_spec, name):
    """Merge an adapter into its base model and write it as a GGUF for llama.cpp (or a merged HF folder).

    The base model must be the one the adapter was trained on (checked by its recorded identity). The GGUF
    holds the architecture, rope and norm settings, the tokenizer (vocabulary, merges or scores, special
    tokens, chat template) and the tensors under llama.cpp's names."""
    from babeltune.console import quiet_libraries
    from babeltune.trainer.gguf_export import ExportResult

    with quiet_libraries():
        result = export_adapter(adapter, out, fmt=fmt, dtype=dtype, model_spec=model_spec, name=name)
    if isinstance(result, ExportResult):
        click.echo(result.summary())
    else:
        click.echo(f"wrote {result}")
