"""The command line's argument parser: argparse, less what surprises a newcomer."""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse without its surprises for a newcomer: no prefix matching (``--epoch 1``
    silently taken as ``--epochs``), one usage line before an error instead of every flag
    (or the top-level usage for a mistake in one command's flags), and the closest flag
    suggested for an unknown one."""

    def __init__(self, *args, **kwargs) -> None:
        # Filled by add_argument, which the base __init__ already calls for --help.
        self.flags: list[str] = []
        self.commands: dict[str, Parser] = {}
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.extend(action.option_strings)
        return action

    def add_command(self, commands, name: str, **kwargs) -> Parser:
        """``commands.add_parser(name, ...)``, remembered so that main() can report an
        unknown flag with this command's usage and flags."""
        parser = commands.add_parser(name, allow_abbrev=False, **kwargs)
        self.commands[name] = parser
        return parser

    def short_usage(self) -> str:
        """``usage: dlsys train [options]``: the command and its positional arguments."""
        parts = [self.prog, "[options]"]
        for action in self._get_positional_actions():
            name = action.metavar or action.dest.upper()
            if action.nargs == argparse.PARSER:
                parts.append(f"{name} ...")
            else:
                parts.append(f"{name} [{name} ...]" if action.nargs == "+" else name)
        return f"usage: {' '.join(parts)}  ({self.prog} --help lists the options)"

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.short_usage()}\n{self.prog}: error: {message}\n")

    def unknown_arguments(self, extras: list[str]) -> NoReturn:
        """Refuse arguments no flag takes, suggesting the closest flag for a misspelt one."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], self.flags, n=1)
                if close:
                    message += f"; did you mean {close[0]}?"
                    break
        self.error(message)
