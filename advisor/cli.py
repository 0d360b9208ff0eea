"""`advise`: measure a corpus under the model's own tokenizer and write a config whose every value has
a reason. Only click is imported at module level so that `advise --help` answers instantly."""

from __future__ import annotations

import click

from babeltune.cli_errors import Command
from babeltune.errors import handle_errors

EXAMPLES = """
\b
Examples:
  advise --lang marathi --corpus ./data
  advise --lang mr --corpus tweets.csv --text-column tweet --model smollm2-135m --out mr.yaml
  advise --lang hi --corpus hi.txt --compare --tokenizer cl100k --tokenizer qwen --model smollm2-135m
"""


class RecordingCommand(Command):
    """Keeps the raw arguments, so the config header can show the exact command."""

    def parse_args(self, ctx, args):
        ctx.meta["babeltune.argv"] = list(args)
        if "--merge" in args:   # `advise --merge`: a view with its own options (trainer/merge_cli.py)
            from babeltune.trainer.merge_cli import run_advise_merge

            run_advise_merge([arg for arg in args if arg != "--merge"])
        return super().parse_args(ctx, args)


def command_line() -> str:
    """The command as the user typed it (for the config header)."""
    import shlex

    ctx = click.get_current_context()
    return " ".join([ctx.command_path, shlex.join(ctx.meta.get("babeltune.argv", []))]).strip()


def check_single(models: tuple[str, ...], tokenizers: tuple[str, ...], compare: bool, out, report) -> None:
    from babeltune.errors import BabeltuneError

    if compare and (out or report):
        flag = "--out" if out else "--report"
        raise BabeltuneError(f"{flag}: --compare only measures and writes no config; drop {flag} or --compare")
    for flag, values in (("--model", models), ("--tokenizer", tokenizers)):
        if len(values) > 1 and not compare:
            raise BabeltuneError(f"{flag}: given {len(values)} times ({', '.join(values)}); only --compare takes "
                                 f"several, otherwise pass one")


def check_outputs(out, report) -> None:
    """--out/--report must be writable: fail before measuring, not after."""
    from babeltune.atomic import check_writable

    if out:
        check_writable(out, "--out")
    if report:
        check_writable(report, "--report", folder=True)


def run_compare(lang, spec, models, tokenizers, *, full, seed, as_json, echo) -> None:
    import json

    from babeltune.advisor.advise import compare
    from babeltune.advisor.render import compare_verdict, render_compare
    from babeltune.console import table_console

    profile, candidates, best = compare(lang, spec, models=list(models), tokenizers=list(tokenizers),
                                        full=full, seed=seed, echo=echo)
    from babeltune.corpus.readlog import report_lines

    for line in report_lines(candidates[0].measurements.skipped if candidates else []):   # same corpus for all
        echo(line)
    if as_json:
        click.echo(json.dumps({"language": profile.code, "candidates": [c.to_dict() for c in candidates],
                               "best": best.spec, "verdict": compare_verdict(candidates, best)},
                              ensure_ascii=False, indent=2))
    else:
        render_compare(profile, candidates, best, table_console())


def backend_kernels(backend: str, echo) -> str:
    """The kernels `train --backend BACKEND` runs with here (liger-kernel only on a GPU where it is
    installed), so the memory estimate is the one of the run that will happen."""
    from babeltune.trainer.plugins import kernels_for

    kernels, note = kernels_for(backend)
    if note:
        echo(note)
    elif kernels != "plain":
        echo(f"memory sized for backend {backend}'s {kernels} kernels")
    return kernels


def write_outputs(advice, *, out, as_json, report, echo) -> None:
    import json

    from babeltune.advisor.render import estimate_lines, memory_line, render_table, render_yaml
    from babeltune.config import parse_yaml, validate_config
    from babeltune.atomic import atomic_write_text

    if out:
        text = render_yaml(advice, command_line())
        validate_config(parse_yaml(text, str(out)), source=str(out))   # the file must load exactly as advised
        atomic_write_text(out, text)
        echo(f"wrote {out}")
    if report:
        from babeltune.advisor.report import write_report

        echo(f"wrote {write_report(advice, report)}")
    if as_json:
        click.echo(json.dumps(advice.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        from babeltune.console import table_console

        render_table(advice, table_console(), header=not out)   # with --out the header lines go to stderr
    if out or as_json:
        from babeltune.corpus.readlog import report_lines

        for line in report_lines(advice.measurements.skipped):   # the table shows these; here stderr does
            echo(line)
        echo(memory_line(advice))
        for line in estimate_lines(advice):
            echo(line)
        for note in advice.notes:
            echo(note)
    echo(next_step_hint(out))


def next_step_hint(out) -> str:
    """What to run next: save the advice, or train on the saved file."""
    import shlex

    if out:
        return f"next: babeltune train --config {shlex.quote(str(out))}"
    return (f"next: save this config with the same command plus --out FILE:\n"
            f"  {command_line()} --out advised.yaml\n"
            f"then train it: babeltune train --config advised.yaml")


@click.command(cls=RecordingCommand, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lang", required=True, help="Language: name, ISO 639-1/3 code or native name (marathi, mr, mar, मराठी).")
@click.option("--corpus", required=True, help="File or folder: .txt, .jsonl, .csv/.tsv, .parquet.")
@click.option("--model", "models", multiple=True, help="Built-in name, Hugging Face folder or GGUF file (default: the installed built-in that fits best).")
@click.option("--tokenizer", "tokenizers", multiple=True, help="Tokenizer override: tiktoken name, SentencePiece .model, tokenizer.json or a named tokenizer.")
@click.option("--gpu-memory", default=None, help="GPU memory, e.g. 24GB (default: 24 GB).")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs of one machine the run will use (train --gpus N): with several, a copy per GPU (DDP) or the "
                   "model sharded over them (FSDP), whichever the memory model says fits.")
@click.option("--goal", type=click.Choice(["cpt", "sft", "classify"]), default="cpt", show_default=True, help="cpt = continued pretraining on raw text; sft = instruction tuning; classify = labelled text (--text-column, --label-column).")
@click.option("--label-column", default="label", show_default=True, help="--goal classify: column/field with the labels.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the explained YAML config here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (measurements, parameters, memory).")
@click.option("--report", type=click.Path(file_okay=False), default=None, help="Write a PNG histogram of document token lengths into this folder.")
@click.option("--compare", is_flag=True, help="Compare tokens/char and premium across several --model/--tokenizer.")
@click.option("--full", is_flag=True, help="Tokenize every document (exact count) instead of a sample.")
@click.option("--strict", is_flag=True, help="Fail on a binary or undecodable file instead of skipping it.")
@click.option("--doc-split", type=click.Choice(["line", "paragraph", "file"]), default="line", show_default=True, help=".txt: one document per line, per blank-line paragraph, or per file.")
@click.option("--text-field", default="text", show_default=True, help=".jsonl/.parquet field with the text.")
@click.option("--text-column", default=None, help=".csv/.tsv column with the text (default: 'text', else the first).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the measurement sample.")
@click.option("--backend", default="hf-peft", show_default=True,
              help="Training backend the config is for (see `babeltune plugins`); memory is sized for its kernels.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow Python code that a model/tokenizer folder names in auto_map to run (off: such folders are refused).")
@click.option("--gpu", default=None, help="Target GPU (h100, h200, a100, l40s, a10, l4, rtx4090, rtx3090, t4) for "
              "GPU-efficient shapes and the run-time estimate, or cpu for a CPU-sized run timed on this machine.")
@click.option("--minutes", type=click.FloatRange(min=0.5), default=None,
              help="With --gpu cpu: size the run to finish in about this many minutes here (measured probe).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Plan exactly this many optimizer steps.")
@click.option("--no-probe", is_flag=True, help="Do not time the model on this CPU (no CPU run-time estimate).")
@click.option("--merge", is_flag=True, expose_value=False,
              help="Instead of a config: which merge of trained adapters keeps every language within X% of its own "
                   "adapter, measured (see `advise --merge --help`).")
@handle_errors
def advise(lang, corpus, models, tokenizers, gpu_memory, gpus, goal, label_column, out, as_json, report, compare, full, strict,
           doc_split, text_field, text_column, seed, backend, trust_remote_code, gpu, minutes, max_steps, no_probe):
    """Measure CORPUS under the model's own tokenizer and advise every LoRA training parameter, each with a
    reason that cites the measured number."""
    from babeltune.advisor.advise import advise as run_advise
    from babeltune.corpus.reader import CorpusSpec

    check_single(models, tokenizers, compare, out, report)
    check_outputs(out, report)
    from babeltune.models.safety import allow_remote_code

    click.get_current_context().with_resource(allow_remote_code(trust_remote_code))   # until the command ends
    echo = lambda line: click.echo(line, err=True)  # noqa: E731 - progress goes to stderr, stdout stays clean
    spec = CorpusSpec(path=corpus, doc_split=doc_split, text_field=text_field, text_column=text_column, strict=strict)
    if compare:
        run_compare(lang, spec, models, tokenizers, full=full, seed=seed, as_json=as_json, echo=echo)
        return
    kernels = backend_kernels(backend, echo)
    advice = run_advise(lang, spec, model=models[0] if models else None,
                        tokenizer=tokenizers[0] if tokenizers else None, gpu_memory=gpu_memory, goal=goal,
                        full=full, seed=seed, backend=backend, kernels=kernels, gpus=gpus, gpu=gpu, minutes=minutes,
                        max_steps=max_steps, probe=not no_probe, command=command_line(), label_column=label_column,
                        echo=echo)
    write_outputs(advice, out=out, as_json=as_json, report=report, echo=echo)


def main():
    advise()
