"""``python -m mi_pipeline <command> ...``: one entry point for containers (submit, train, status, ...)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("submit", "train", "status", "cancel", "phantom", "evaluate", "predict", "bench")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: python -m mi_pipeline {{{','.join(COMMANDS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from mi_pipeline.cli import run_main

    module = importlib.import_module(f"mi_pipeline.{argv[0]}")
    return int(run_main(module.main, argv[1:]) or 0)


if __name__ == "__main__":
    from mi_pipeline.cli import exit_process

    exit_process(main())
