"""A command's whole docstring in its ``--help``: the first line as the description, the rest after the
options, with its line breaks kept, so the help needs no file outside the installed package to be read."""

from __future__ import annotations

import argparse
import textwrap


def full_help(parser: argparse.ArgumentParser, doc: str | None) -> argparse.ArgumentParser:
    """Give ``parser`` (from ``common.command_parser``) the rest of ``doc`` as its epilog; returns it."""
    parser.epilog = textwrap.dedent("\n".join((doc or "").splitlines()[1:])).strip("\n").replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
