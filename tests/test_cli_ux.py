"""What a newcomer sees at the command line (issue 14): help, hints, full numbers in logs, plot titles."""

from __future__ import annotations

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
