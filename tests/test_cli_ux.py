"""What a newcomer sees at the command line (issue 14): help, hints, full numbers in logs, plot titles."""

from __future__ import annotations

from types import SimpleNamespace

from click.testing import CliRunner

from babeltune.cli import cli


def test_bare_babeltune_prints_help_and_exits_zero():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0, result.output
    assert "Commands" in result.output and "advise" in result.output and "train" in result.output


def test_train_and_eval_help_show_example_commands():
    for command, example in (("train", "train --config advised.yaml --resume"),
                             ("eval", "babeltune eval --model smollm2-135m --corpus mr=")):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Examples:" in result.output and example in result.output, command


def test_previously_undocumented_flags_have_help_and_readme_mentions():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for flag in ("--seed", "--max-documents", "--max-length", "--batch-size", "babeltune demo"):
        assert flag in readme, flag
    for command, flags in (("advise", ["--seed"]), ("eval", ["--max-documents", "--max-length", "--batch-size"])):
        output = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
        for flag in flags:
            line = next(line for line in output.splitlines() if line.strip().startswith(flag))
            assert len(line.split(None, 2)) == 3, line       # the flag, its metavar/type and a help text


# --------------------------------------------------------------------------- advise: next step, full numbers

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from babeltune.advisor.cli import advise  # noqa: E402

MARATHI = Path(__file__).parent / "data" / "text" / "mr.txt"


def run_advise(*args):
    return CliRunner().invoke(advise, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow   # ~11 s in the fast lane (over ~10 s: slow)
def test_advise_without_out_ends_with_how_to_save_and_train(tiny_model_dir):
    result = run_advise("--lang", "mr", "--corpus", MARATHI, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    hint = result.stderr[result.stderr.index("next:"):]
    assert f"--model {tiny_model_dir} --out advised.yaml" in hint
    assert "babeltune train --config advised.yaml" in hint


@pytest.mark.slow   # ~10 s in the fast lane (over ~10 s: slow)
def test_advise_with_out_also_prints_the_table_and_the_train_command(tmp_path, tiny_model_dir):
    out = tmp_path / "mr.yaml"
    result = run_advise("--lang", "mr", "--corpus", MARATHI, "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "learning_rate" in result.stdout and "q_proj" in result.stdout
    assert f"next: babeltune train --config {out}" in result.stderr


def test_tables_off_a_terminal_keep_every_number_whole(monkeypatch, tiny_model_dir):
    # CliRunner's output is not a terminal, as in a log or CI; rich would assume 80 columns and cut cells.
    monkeypatch.delenv("COLUMNS", raising=False)
    args = ["--lang", "mr", "--corpus", MARATHI, "--compare", "--model", tiny_model_dir, "--tokenizer", "smollm2"]
    data = json.loads(run_advise(*args, "--json").stdout)
    table = run_advise(*args).stdout
    assert "…" not in table
    for candidate in data["candidates"]:
        assert f"{candidate['tokens']:,}" in table and f"{candidate['tokens_per_char']:.3f}" in table
        assert candidate["spec"] in table


# --------------------------------------------------------------------------- train progress bar


def bar_with_terminal():
    import io

    from rich.console import Console

    from babeltune.trainer.callbacks import progress_callback

    bar = progress_callback(echo=lambda line: None)
    bar.console = Console(file=io.StringIO(), force_terminal=True)
    return bar


def shown_loss(bar) -> str:
    return bar.progress.tasks[0].fields["loss"]


# what the progress callback reads from TrainingArguments (its step plan and estimate lines)
TRAIN_ARGS = SimpleNamespace(max_steps=-1, num_train_epochs=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                             eval_strategy="no", eval_steps=None)


def test_progress_bar_shows_the_latest_logged_loss_and_a_dash_before_any():
    from transformers import TrainerState

    bar, state = bar_with_terminal(), TrainerState(max_steps=4, global_step=0)
    bar.on_train_begin(TRAIN_ARGS, state, None)
    assert shown_loss(bar) == "-"
    for step, loss in ((1, 2.5), (2, 1.25)):
        state.global_step = step
        bar.on_step_end(TRAIN_ARGS, state, None)       # the Trainer calls on_step_end, then logs that step
        bar.on_log(TRAIN_ARGS, state, None, logs={"loss": loss})
        assert shown_loss(bar) == f"{loss:.4f}"
    bar.on_train_end(TRAIN_ARGS, state, None)


def test_progress_bar_after_resume_shows_the_checkpoints_last_loss_not_nan():
    from transformers import TrainerState

    bar = bar_with_terminal()
    state = TrainerState(max_steps=10, global_step=6, log_history=[{"loss": 3.0, "step": 3}, {"eval_loss": 2.9, "step": 3},
                                                                    {"loss": 2.75, "step": 6}])
    bar.on_train_begin(TRAIN_ARGS, state, None)
    state.global_step = 7
    bar.on_step_end(TRAIN_ARGS, state, None)
    assert shown_loss(bar) == "2.7500"
    bar.on_train_end(TRAIN_ARGS, state, None)


# --------------------------------------------------------------------------- plots


def test_loss_png_has_a_title_naming_run_model_and_language(tmp_path):
    import yaml

    from babeltune.config import TrainConfig
    from babeltune.trainer import callbacks as cb
    from babeltune.trainer.run import core_callbacks

    config = TrainConfig.model_validate(yaml.safe_load("""
language: mr
model: {name: /models/smollm2-135m/, max_seq_length: 64}
data: {train: tests/data/text/mr.txt}
training: {per_device_train_batch_size: 2, learning_rate: 2.0e-4, max_steps: 2}
eval: {evaluation_strategy: "no"}
"""))
    title = core_callbacks(config, tmp_path / "mr-run", ["lora_A"], echo=print)["plot"].title
    assert title == "run mr-run: smollm2-135m on mr"
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n', encoding="utf-8")
    png = cb.plot_losses(metrics, tmp_path / "loss.png", title=title)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cb.loss_figure(cb.read_metrics(metrics), title).axes[0].get_title() == title


def test_report_legend_does_not_cover_the_max_seq_length_line():
    from babeltune.advisor.report import histogram_figure

    lengths = [20 + (i * 37) % 100 for i in range(500)]           # 20..119 tokens, flat
    figure = histogram_figure(lengths, 110, title="t")            # the line near the right edge
    figure.canvas.draw()
    axes = figure.axes[0]
    legend = (figure.legends or [axes.get_legend()])[0].get_window_extent()
    plot_area = axes.get_window_extent()
    line_x = axes.transData.transform((110, 0))[0]
    covers_line = legend.x0 <= line_x <= legend.x1 and legend.y1 > plot_area.y0 and legend.y0 < plot_area.y1
    assert not covers_line
    assert not legend.overlaps(plot_area)                          # nothing of the histogram is hidden


# --------------------------------------------------------------------------- quiet libraries, eval progress


def test_quiet_libraries_hides_loading_bar_and_future_warnings_then_restores(tiny_model_dir, capfd):
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from babeltune.console import quiet_libraries

    AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert "Loading weights" in capfd.readouterr().err             # what every run printed before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            warnings.warn("`torch_dtype` is deprecated", FutureWarning)
        warnings.warn("outside", FutureWarning)
    assert "Loading weights" not in capfd.readouterr().err
    assert [str(w.message) for w in caught] == ["outside"]         # scoped to the command, then restored
    assert hf_logging.is_progress_bar_enabled()


def test_eval_counts_every_document_in_its_progress(tiny_model_dir, marathi_lines):
    from babeltune.trainer.evaluate import evaluate_loaded

    counted = {}

    class Recorder:
        def __init__(self, description, total):
            self.description, self.total, self.done = description, total, 0

        def __enter__(self):
            counted[self.description] = self
            return self

        def advance(self, n):
            self.done += n

        def __exit__(self, *exc):
            return None

    model, tokenizer = tiny_pair(tiny_model_dir)
    texts = marathi_lines[:7] + ["x"]                               # long texts span several windows
    evaluate_loaded(model, tokenizer, {"mr": texts}, max_length=16, batch_size=3, echo=None, progress=Recorder)
    assert counted["eval mr"].total == len(texts) == counted["eval mr"].done


def test_eval_cli_off_a_terminal_prints_progress_lines(tiny_model_dir):
    from babeltune.trainer.evaluate_cli import eval_command

    corpus = Path(__file__).parent / "data" / "text" / "mr.txt"
    result = CliRunner().invoke(eval_command, ["--model", str(tiny_model_dir), "--corpus", f"mr={corpus}",
                                               "--max-documents", "30", "--max-length", "64"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("eval mr: ")]
    assert lines[-1] == "eval mr: 30/30" and len(lines) >= 5       # a heartbeat, not minutes of silence


def tiny_pair(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)
