"""`babeltune plugins [--json]`: the loaded plugins, their package, version and hooks, and the backends
each provides with whether it can run on this machine (and why not). `--options NAME`: the keys a
backend accepts under backend.options, with type, default and description."""

from __future__ import annotations

import json
from typing import Optional

import click

from babeltune.errors import handle_errors


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--options", "options_of", metavar="NAME", default=None,
              help="Show the backend.options that backend NAME accepts (type, default, description).")
@handle_errors
def plugins_command(as_json: bool, options_of: Optional[str]) -> None:
    """List training backends and the plugins that provide them.

    BABELTUNE_PLUGINS=name,name limits which plugins load; third-party packages register through the
    `babeltune` entry-point group (see docs/writing-a-backend.md)."""
    from babeltune.trainer.plugins import ENV_VAR, plugin_descriptions, wanted_plugins

    if options_of is not None:
        _print_options(options_of, as_json)
        return
    entries = plugin_descriptions()
    if as_json:
        click.echo(json.dumps({"plugins": entries, "limited_by": ENV_VAR if wanted_plugins() else None}, indent=2))
        return
    _print_table(entries)


def _print_table(entries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="babeltune backends", show_lines=False)
    for column in ("backend", "available", "plugin", "package", "version", "hooks"):
        table.add_column(column)
    for entry in entries:
        backends = entry["backends"] or [{"name": "-", "available": None, "reason": None}]
        for backend in backends:
            if backend["available"] is None:
                state = ""
            elif backend["available"]:
                state = "yes"
            else:
                state = f"no: {backend['reason']}"
            table.add_row(backend["name"], state, entry["name"], entry["package"], entry["version"],
                          ", ".join(entry["hooks"]))
    Console(soft_wrap=True).print(table)


def _print_options(name: str, as_json: bool) -> None:
    from babeltune.trainer.plugins import describe_options

    options = describe_options(name)
    if as_json:
        click.echo(json.dumps({"backend": name, "options": options}, indent=2, default=str))
        return
    if not options:
        click.echo(f"backend {name} takes no backend.options (every setting comes from the config's sections)")
        return
    click.echo(f"backend.options for backend {name}:")
    for option in options:
        default = json.dumps(option["default"], default=str)   # JSON is YAML: null, true, "auto", 16.0
        click.echo(f"  {option['key']}: {option['type']} (default {default})")
        click.echo(f"      {option['description']}")
