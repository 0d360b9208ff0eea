"""`babeltune merge` (one adapter for several languages) and `advise --merge` (which method and weights keep every
language within X% of its own adapter). Heavy libraries load inside the commands, so `--help` stays instant."""

from __future__ import annotations

import shlex
import sys

import click

from babeltune.cli_errors import Command
from babeltune.errors import handle_errors
from babeltune.atomic import check_writable

METHOD_HELP = ("PEFT add_weighted_adapter combination: linear (adds A and B matrices; one rank; measured worse than the base "
               "model on independently trained adapters: cross terms), cat (exact sum of "
               "the updates, rank = sum of ranks), ties / dare_ties (prune to --density, elect signs; one rank), "
               "svd (the exact sum truncated to the largest rank).")

MERGE_EXAMPLES = """
\b
Examples:
  babeltune merge --adapter mr=runs/mr/adapter --adapter hi=runs/hi/adapter --method cat --out runs/mr-hi
  babeltune merge --adapter mr=runs/mr/adapter --adapter hi=runs/hi/adapter --method ties --weights 1,1 \\
      --density 0.5 --out runs/mr-hi --eval mr=mr_heldout.txt --eval hi=hi_heldout.txt --eval en=en.txt
"""

ADVISE_EXAMPLES = """
\b
Examples:
  babeltune advise --merge --adapter mr=runs/mr/adapter --adapter hi=runs/hi/adapter \\
      --eval mr=mr_heldout.txt --eval hi=hi_heldout.txt --within 5
"""


def _echo_stderr(message: str) -> None:
    click.echo(message, file=sys.stderr)


def _common(command):
    """Options shared by both commands: inputs, base model, held-out scoring."""
    options = [
        click.option("--adapter", "adapter_options", multiple=True, required=True, metavar="LANG=DIR",
                     help="A LoRA adapter folder written by `train`, with its language (repeat, at least two)."),
        click.option("--model", "model_spec", default=None, metavar="M",
                     help="Base model (default: the one named in the first adapter's babeltune_config.yaml)."),
        click.option("--max-documents", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Score at most N documents per language."),
        click.option("--max-length", type=click.IntRange(min=8), default=1024, show_default=True, metavar="N",
                     help="Tokens per forward pass when scoring."),
        click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, metavar="N",
                     help="Windows per forward pass when scoring."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Allow Python code that a model/adapter folder names in auto_map to run."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("merge", cls=Command, epilog=MERGE_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@_common
@click.option("--method", default="cat", show_default=True, metavar="|".join(("linear", "cat", "ties", "dare_ties", "svd")),
              help=METHOD_HELP)
@click.option("--weights", default=None, metavar="W1,W2,...",
              help="One weight per --adapter, in order (default 1 each: every language keeps its whole update).")
@click.option("--density", type=float, default=None, metavar="D", help="ties/dare_ties: share of values kept (default 0.5).")
@click.option("--seed", type=int, default=0, show_default=True, help="dare_ties drops values at random: its seed.")
@click.option("--eval", "eval_options", multiple=True, metavar="LANG=FILE",
              help="Held-out text per language: bits/char under the base, its own adapter and the merged one.")
@click.option("--out", required=True, metavar="DIR", help="Folder for the merged adapter (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder (once the new one is complete).")
@handle_errors
def merge_command(adapter_options, model_spec, max_documents, max_length, batch_size, as_json, trust_remote_code,
                  method, weights, density, seed, eval_options, out, overwrite):
    """Merge LoRA adapters of several languages into one with PEFT's add_weighted_adapter, after checking that
    they share a base model and compatible configs; with --eval, measure what each language keeps."""
    from babeltune.trainer.merge import parse_pairs

    adapters = parse_pairs(adapter_options, "--adapter", "DIR")
    evals = parse_pairs(eval_options, "--eval", "FILE")
    check_writable(out, "--out", folder=True)
    from babeltune.console import quiet_libraries, table_console
    from babeltune.models.safety import allow_remote_code
    from babeltune.trainer.merge import merge_adapters, render_table

    command = "babeltune merge " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["merge"] else None
    spec_args = {"method": method, "weights": weights, "density": density, "seed": seed}
    with allow_remote_code(trust_remote_code), quiet_libraries():
        folder, evaluation = merge_adapters(adapters, spec_args, out, model_spec=model_spec, evals=evals or None,
                                            max_documents=max_documents, max_length=max_length, batch_size=batch_size,
                                            overwrite=overwrite, command=command, echo=_echo_stderr)
    _echo_stderr(f"merge: wrote {folder} (load it with PeftModel.from_pretrained, or `babeltune eval --adapter {folder}`)")
    if as_json:
        click.echo((folder / "babeltune_merge.json").read_text(encoding="utf-8"), nl=False)
    elif evaluation is not None:
        table_console().print(render_table(evaluation))


@click.command("advise --merge", cls=Command, epilog=ADVISE_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@_common
@click.option("--eval", "eval_options", multiple=True, required=True, metavar="LANG=FILE",
              help="Held-out text for every --adapter language (more languages, e.g. en, are shown, not judged).")
@click.option("--within", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="PERCENT",
              help="A merge passes when every language's bits/char is at most this much above its own adapter's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for dare_ties.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Try only these methods (repeatable; default: linear, cat, ties, dare_ties, svd).")
@handle_errors
def advise_merge_command(adapter_options, model_spec, max_documents, max_length, batch_size, as_json,
                         trust_remote_code, eval_options, within, seed, methods):
    """Try each merge method with weights 1 and 1/n, measure bits/char per language, and advise the merge whose
    worst language stays closest to its own adapter (passing when within --within percent)."""
    from babeltune.trainer.merge import parse_pairs

    adapters = parse_pairs(adapter_options, "--adapter", "DIR")
    evals = parse_pairs(eval_options, "--eval", "FILE")
    from babeltune.console import quiet_libraries, table_console
    from babeltune.models.safety import allow_remote_code
    from babeltune.trainer.merge_advice import advise_merge, render_advice

    with allow_remote_code(trust_remote_code), quiet_libraries():
        advice = advise_merge(adapters, evals, within=within, model_spec=model_spec, max_documents=max_documents,
                              max_length=max_length, batch_size=batch_size, seed=seed, echo=_echo_stderr,
                              **({"methods": tuple(methods)} if methods else {}))
    if as_json:
        import json

        click.echo(json.dumps(advice.to_dict(), indent=2, ensure_ascii=False))
    else:
        table_console().print(render_advice(advice))
    for line in advice.reason_lines() + [f"skipped: {line}" for line in advice.skipped]:
        _echo_stderr(line)
    if advice.best is not None:
        _echo_stderr("next: " + merge_command_line(adapters, advice.best.spec))


def merge_command_line(adapters: dict[str, str], spec) -> str:
    parts = ["babeltune", "merge"]
    for label, path in adapters.items():
        parts += ["--adapter", f"{label}={path}"]
    parts += ["--method", spec.method, "--weights", ",".join(f"{w:g}" for w in spec.weights)]
    if spec.density is not None:
        parts += ["--density", f"{spec.density:g}"]
    return shlex.join(parts) + " --out DIR"


def run_advise_merge(args: list[str]) -> None:
    """`advise --merge ...`: `advise` hands the rest of its command line to this view (which exits)."""
    advise_merge_command.main(args=args, prog_name="babeltune advise --merge", standalone_mode=True)
