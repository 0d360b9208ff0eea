"""`babeltune eval`: bits per character per language, before and after an adapter.

Heavy libraries (torch, transformers, peft) load inside the command, so `--help` stays instant."""

from __future__ import annotations

import sys

import click

from babeltune.errors import BabeltuneError, handle_errors
from babeltune.atomic import check_writable


def parse_corpus_option(value: str) -> tuple[str, str]:
    """'LANG=PATH' -> (LANG, PATH); anything else is a one-line error with the fix."""
    language, sep, path = value.partition("=")
    language, path = language.strip(), path.strip()
    if not sep or not language or not path:
        raise BabeltuneError(f"--corpus {value!r}: expected LANG=PATH, e.g. --corpus mr=data/mr.txt "
                             "(repeat --corpus for more languages)")
    return language, path


def resolve_corpora(values: tuple[str, ...]) -> dict[str, str]:
    """LANG=PATH options -> {language code: path}. Languages are resolved by name, ISO code or native name
    when the language profiles are installed; the same language twice is an error."""
    corpora: dict[str, str] = {}
    for value in values:
        language, path = parse_corpus_option(value)
        code = _language_code(language, value)
        if code in corpora:
            raise BabeltuneError(f"--corpus {value!r}: language {code!r} is given twice; "
                                 "pass one corpus per language (a folder holds several files)")
        corpora[code] = path
    return corpora


def _language_code(language: str, option: str) -> str:
    from babeltune.languages.language import resolve_language

    try:
        return resolve_language(language, note=lambda line: click.echo(line, err=True)).code
    except BabeltuneError as error:
        # resolve_language names its own option (--lang); point at the --corpus value instead.
        reason = str(error).strip().removeprefix("--lang:").strip()
        raise BabeltuneError(f"--corpus {option!r}: {reason}") from None


EVAL_EXAMPLES = """
\b
Examples:
  babeltune eval --model smollm2-135m --corpus mr=eval.txt --corpus en=english.txt
  babeltune eval --model smollm2-135m --adapter runs/mr/adapter --corpus mr=eval.txt --json --out eval.json
  babeltune eval --model ./my-model --corpus hi=hi.txt --max-documents 200 --max-length 512 --batch-size 8
"""


@click.command("eval", epilog=EVAL_EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_spec", required=True, metavar="M",
              help="Built-in model name, Hugging Face folder or GGUF file.")
@click.option("--adapter", default=None, metavar="DIR",
              help="PEFT adapter folder written by `train`; scores before and after it.")
@click.option("--corpus", "corpus_options", multiple=True, required=True, metavar="LANG=PATH",
              help="Held-out text per language (repeatable): text, JSONL, CSV, parquet, or a folder.")
@click.option("--max-documents", type=int, default=None, metavar="N", help="Score at most N documents per language.")
@click.option("--max-length", type=int, default=1024, show_default=True, metavar="N",
              help="Tokens per forward pass; longer documents are scored with a sliding window.")
@click.option("--batch-size", type=int, default=4, show_default=True, metavar="N", help="Windows per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--out", "out_file", default=None, metavar="FILE", help="Also write the JSON report to FILE.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow Python code that a model/adapter folder names in auto_map to run (off: such folders are refused).")
@click.option("--task", type=click.Choice(["bits", "classify"]), default="bits", show_default=True,
              help="bits = bits per character; classify = accuracy and macro-F1 on labelled CSV/JSONL/parquet, "
                   "predicting the label whose text the model finds most likely (--corpus NAME=PATH: a language or domain).")
@click.option("--label-column", default=None, metavar="C", help="classify: column/field with the labels (default: the adapter's, else 'label').")
@click.option("--text-column", default=None, metavar="C", help="classify: CSV/parquet column with the text (default: the adapter's, else 'text').")
@click.option("--labels", "labels_option", default=None, metavar="L=TEXT,...",
              help="classify: label -> verbaliser, e.g. \"-1=negative,0=neutral,1=positive\" (default: the adapter's, else each label's own text).")
@click.option("--prompt", default=None, metavar="TEMPLATE", help="classify: prompt with {text} (default: the adapter's, else '{text}\\nLabel:').")
@click.option("--report", "report_dir", default=None, metavar="DIR", help="classify: also write DIR/confusion.png and DIR/classify.json.")
@handle_errors
def eval_command(model_spec, adapter, corpus_options, max_documents, max_length, batch_size, as_json, out_file,
                 trust_remote_code, task, label_column, text_column, labels_option, prompt, report_dir):
    """Bits per character per language (total nats / ln 2 / characters): comparable across
    tokenizers, so it shows what an adapter gained on its language and what English lost.
    With --task classify: accuracy and macro-F1 per language or domain, base model vs adapter."""
    if task == "classify":
        return _classify(model_spec, adapter, corpus_options, max_documents, max_length, batch_size, as_json,
                         out_file, trust_remote_code, label_column, text_column, labels_option, prompt, report_dir)
    corpora = resolve_corpora(corpus_options)
    if out_file:
        check_writable(out_file, "--out")   # before minutes of loading and scoring
    from babeltune.console import CountProgress, quiet_libraries
    from babeltune.models.safety import allow_remote_code
    from babeltune.trainer.evaluate import evaluate_corpora

    with allow_remote_code(trust_remote_code), quiet_libraries():
        report = evaluate_corpora(model_spec, corpora, adapter=adapter, max_documents=max_documents,
                                  max_length=max_length, batch_size=batch_size, echo=_echo_stderr,
                                  progress=CountProgress)
    if out_file:
        path = report.write_json(out_file)
        _echo_stderr(f"eval: report written to {path}")
    if as_json:
        click.echo(report.to_json(), nl=False)
    else:
        from babeltune.console import table_console
        table_console().print(report.render_table())


def _classify(model_spec, adapter, corpus_options, max_documents, max_length, batch_size, as_json, out_file,
              trust_remote_code, label_column, text_column, labels_option, prompt, report_dir):
    from babeltune.trainer.classify_eval import corpora_by_name, parse_labels_option

    corpora = corpora_by_name(corpus_options)
    labels = parse_labels_option(labels_option) if labels_option else None
    for path, what in ((out_file, "--out"), (report_dir, "--report")):
        if path:
            check_writable(path, what, folder=what == "--report")
    from babeltune.console import CountProgress, quiet_libraries
    from babeltune.models.safety import allow_remote_code
    from babeltune.trainer.classify_eval import evaluate_classify

    with allow_remote_code(trust_remote_code), quiet_libraries():
        report = evaluate_classify(model_spec, corpora, adapter=adapter, label_column=label_column,
                                   text_column=text_column, labels=labels, prompt=prompt, max_examples=max_documents,
                                   batch_size=batch_size, max_length=min(max_length, 1024), echo=_echo_stderr,
                                   progress=CountProgress)
    if out_file:
        _echo_stderr(f"eval: report written to {report.write_json(out_file)}")
    if report_dir:
        from pathlib import Path

        report.write_json(Path(report_dir) / "classify.json")
        _echo_stderr(f"eval: confusion matrices written to {report.write_confusion_png(report_dir)}")
    if as_json:
        click.echo(report.to_json(), nl=False)
    else:
        from babeltune.console import table_console
        table_console().print(report.render_table())


def _echo_stderr(message: str) -> None:
    click.echo(message, file=sys.stderr)
