"""click commands that keep babeltune's error contract for click's own errors too: a usage error (a
missing or unknown option, a bad value) is one ``error:`` line and exit 2, not click's "Usage: ... /
Try ... / Error: ..." block. Values in the line are escaped like every other error line."""

from __future__ import annotations

import sys

import click

from babeltune.errors import EXIT_USAGE, print_error


def _run_one_line(command: click.Command, main, args, prog_name, complete_var, standalone_mode, extra):
    if not standalone_mode:
        return main(args, prog_name, complete_var, False, **extra)
    try:
        result = main(args, prog_name, complete_var, False, **extra)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()   # `babeltune` alone: the help text is the answer, not an error line
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else (prog_name or command.name)
        message = exc.format_message()
        print_error(f"{message[:-1] if message.endswith('.') else message} (see `{path} --help`)")
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        print_error(exc.format_message())
        sys.exit(EXIT_USAGE)
    except click.Abort:
        print_error("interrupted")
        sys.exit(130)
    # without standalone mode click returns ctx.exit()'s code (--help, --version) or the command's value
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


class Command(click.Command):
    """A click command whose usage errors are one ``error:`` line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        return _run_one_line(self, super().main, args, prog_name, complete_var, standalone_mode, extra)


class Group(click.Group):
    """A click group whose usage errors (and its subcommands') are one ``error:`` line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        return _run_one_line(self, super().main, args, prog_name, complete_var, standalone_mode, extra)
