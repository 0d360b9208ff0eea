"""How the commands talk when the input is wrong (issue 17, item 17): click's own usage errors are one
`error:` line and exit 2 like babeltune's; a newline or other control character in a value the user
typed (--lang, a file name) is shown escaped, so it cannot forge a second `error:` line; and a language
name matched only approximately is said ("taking 'marathii' as Marathi"), not silently replaced."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from babeltune.cli import cli
from babeltune.errors import BabeltuneError, handle_errors

from conftest import DATA

MARATHI = DATA / "text" / "mr.txt"


def invoke(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def only_error_line(result) -> str:
    """The single line on stderr, which must be an `error:` line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["train"], "error: Missing option '--config' (see `babeltune train --help`)"),
    (["train", "--config", "c.yaml", "--bogus"],
     "error: No such option '--bogus'. Did you mean '--gpus'? (see `babeltune train --help`)"),
    (["train", "--config", "c.yaml", "--gpus", "0"],
     "error: Invalid value for '--gpus': 0 is not in the range x>=1 (see `babeltune train --help`)"),
    (["advise", "--lang", "mr"], "error: Missing option '--corpus' (see `babeltune advise --help`)"),
    (["nosuch"], "error: No such command 'nosuch' (see `babeltune --help`)"),
    (["eval", "--model", "m", "--corpus", "mr=x", "--batch-size", "many"],
     "error: Invalid value for '--batch-size': 'many' is not a valid integer (see `babeltune eval --help`)"),
])
def test_click_usage_errors_are_one_error_line_exit_2(args, expected):
    result = invoke(*args, prog_name="babeltune")
    assert result.exit_code == 2
    assert only_error_line(result) == expected


def test_the_console_scripts_keep_the_one_line_usage_errors():
    for module in ("babeltune.trainer.cli", "babeltune.advisor.cli"):
        code = f"import sys; from {module} import main; sys.argv[0] = 'prog'; main()"
        done = subprocess.run([sys.executable, "-c", code, "--no-such-flag"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: No such option"), done.stderr


def test_help_and_version_still_exit_0():
    assert invoke("--version").exit_code == 0
    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--config" in result.output and result.stderr == ""


def test_a_newline_in_lang_cannot_forge_a_second_error_line():
    result = invoke("advise", "--lang", "mar\nerror: all good, nothing to see", "--corpus", MARATHI)
    assert result.exit_code == 2
    line = only_error_line(result)
    assert line.startswith("error: --lang: unknown language 'mar\\nerror: all good, nothing to see'")


def test_a_newline_in_a_file_name_cannot_forge_a_second_error_line(tmp_path):
    name = tmp_path / "c\nerror: forged.yaml"
    result = invoke("train", "--config", name)
    assert result.exit_code == 2
    assert only_error_line(result) == (f"error: {tmp_path}/c\\nerror: forged.yaml: config file not found; write one "
                                       f"with `advise --out {tmp_path}/c\\nerror: forged.yaml`")
    escape = invoke("train", "--config", tmp_path / "a\x1b[2Jb\u2028.yaml")   # terminal escape, line separator
    assert "\\x1b[2J" in only_error_line(escape) and "\\u2028" in escape.stderr


def test_error_lines_are_the_errors_arguments_each_escaped(capsys):
    @handle_errors
    def fails(*lines):
        raise BabeltuneError(*lines)

    with pytest.raises(SystemExit) as exit_info:
        fails("key: bad value 'a\nerror: b'", "other.key: second problem")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: key: bad value 'a\\nerror: b'",
                                                    "error: other.key: second problem"]
    assert str(BabeltuneError("one", "two")) == "one\ntwo"


def test_an_approximate_language_name_is_said_not_silently_replaced():
    from babeltune.languages.language import resolve_language

    notes: list[str] = []
    assert resolve_language("marathii", note=notes.append).code == "mr"
    assert notes == ["taking 'marathii' as Marathi"]
    for exact in ("Marathi", "mr", "mar", "मराठी", "Deutsch", "pt-BR"):
        resolve_language(exact, note=notes.append)
    assert notes == ["taking 'marathii' as Marathi"]


@pytest.mark.slow   # ~15 s in the fast lane (over ~10 s: slow)
def test_advise_says_which_language_it_took(tiny_model_dir):
    result = invoke("advise", "--lang", "marathii", "--corpus", MARATHI, "--model", tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    assert "taking 'marathii' as Marathi" in result.stderr.splitlines()
    assert '"language": "mr"' in result.stdout


def test_eval_says_which_language_it_took():
    from babeltune.trainer.evaluate_cli import resolve_corpora

    runner = CliRunner()
    with runner.isolation() as (_, err, *rest):
        assert resolve_corpora(("marathii=data/mr.txt",)) == {"mr": "data/mr.txt"}
        assert err.getvalue().decode().splitlines() == ["taking 'marathii' as Marathi"]
