"""`babeltune <cmd>`: one entry point for every command. Subcommands are imported lazily so that
`--help` stays instant (torch and transformers load only inside the commands that need them)."""

from __future__ import annotations

import importlib

import click

from babeltune import __version__
from babeltune.cli_errors import Group

# name -> "module:attribute" of a click command; imported only when that command runs.
SUBCOMMANDS = {
    "advise": ("babeltune.advisor.cli:advise", "Measure a corpus under the model's own tokenizer and write an explained config."),
    "train": ("babeltune.trainer.cli:train", "Train an adapter from a config written by `advise`."),
    "eval": ("babeltune.trainer.evaluate_cli:eval_command", "Bits per character per language, before and after an adapter."),
    "export": ("babeltune.trainer.export_cli:export_command", "Merge an adapter into its base and write a GGUF (llama.cpp) or HF folder."),
    "models": ("babeltune.models.cli:models", "Built-in models and named tokenizers (offline)."),
    "plugins": ("babeltune.trainer.plugins_cli:plugins_command", "List training backends and the plugins that provide them."),
    "merge": ("babeltune.trainer.merge_cli:merge_command", "One LoRA adapter for several languages (PEFT add_weighted_adapter), measured per language."),
    "demo": ("babeltune.demo:demo", "advise -> train -> eval on the shipped Marathi sample and SmolLM2-135M."),
}


class LazyGroup(Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx, formatter):
        # Short help from the table above, so listing commands imports nothing.
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="babeltune")
def cli():
    """babeltune: fine-tune LLMs for a specific language.

    Measure what the tokenizer costs on your language, get a config whose every value carries a
    reason, train it through a pluggable backend, and compare runs in bits per character."""
    ctx = click.get_current_context()
    if ctx.invoked_subcommand is None:
        # Bare `babeltune` asks what the tool does: help is the answer, not a usage error (exit 0).
        click.echo(ctx.get_help())


def main():
    cli()


if __name__ == "__main__":
    main()
