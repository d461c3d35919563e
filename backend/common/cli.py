"""What every backend command shares: one-line errors with exit status 2 for bad input, argparse
types that name the bad value, and the log function (stderr, flushed)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from blender_addon.core.errors import InputError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error_exit(prog: str, run: Callable[[], int | None], codes: dict[type, int] | None = None) -> int:
    """Run a command: InputError (and any class in `codes`) becomes `prog: error: message` on stderr
    and its exit status (2 for bad input)."""
    codes = {InputError: 2, **(codes or {})}
    try:
        return run() or 0
    except tuple(codes) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return next(code for cls, code in codes.items() if isinstance(e, cls))


def at_least(low, kind=int, strict=False):
    """An argparse type that names the bad value: counts below `low` (rates not above it) are refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > low if strict else value >= low) or value == float("inf"):  # nan fails the comparison
            raise argparse.ArgumentTypeError(f"{text}: must be {'>' if strict else '>='} {low}")
        return value
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals on one line (exit status 2), without the usage block; --help still shows it.
    Sub-command parsers are made of the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
