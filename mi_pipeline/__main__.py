"""``python -m mi_pipeline <command> ...``: one entry point for containers (submit, train, status, ...)."""

from __future__ import annotations

import importlib
import sys

from mi_pipeline.cli import COMMANDS


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m mi_pipeline <command> [options]   (or python -m mi_pipeline.<command>)", "",
             "commands:"]
    lines += [f"  {name:{width}}  {summary}" for name, summary in COMMANDS.items()]
    lines += ["", "python -m mi_pipeline <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from mi_pipeline.cli.common import run_main

    module = importlib.import_module(f"mi_pipeline.cli.{argv[0]}")
    return int(run_main(module.main, argv[1:]) or 0)


if __name__ == "__main__":
    from mi_pipeline.cli.common import exit_process

    exit_process(main())
