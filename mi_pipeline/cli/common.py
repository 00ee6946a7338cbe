"""What every command line shares: common options and the one-line error contract."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mi_pipeline.config import Config, load_config
from mi_pipeline.errors import InputError, UserError

DEFAULT_CONFIG_HELP = "YAML config (default: built-in defaults)"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line (exit 2), like every other user error.

    The stock parser prints its whole usage block first, which buries the line that says what was wrong.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def command_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m mi_pipeline.<module>``, described by the first line of its docstring."""
    return OneLineErrorParser(prog=f"python -m mi_pipeline.{module}", description=(doc or "").splitlines()[0])


def add_run_options(parser: argparse.ArgumentParser, *, config_help: str = DEFAULT_CONFIG_HELP) -> None:
    """``--config``, ``--run-dir`` and ``--set``: what every command that reads a run shares."""
    add_config_options(parser, config_help=config_help)
    add_run_dir_option(parser)


def add_config_options(parser: argparse.ArgumentParser, *, config_help: str = DEFAULT_CONFIG_HELP) -> None:
    parser.add_argument("--config", type=Path, default=None, help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set motion.epochs=5")


def add_run_dir_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                       default: Path | None = Path(".")) -> None:
    help_text = "run root (default: current directory)" if default == Path(".") else "run root"
    parser.add_argument("--run-dir", type=Path, default=default, help=help_text)


def confirm_delete(paths: list[Path], assume_yes: bool) -> bool:
    """Mode fresh: list what would be deleted, then ask (the seed's warning); True to go ahead."""
    targets = [p for p in paths if p.exists()]
    print("mode fresh will delete:" if targets else "mode fresh: nothing to delete")
    for path in targets:
        print(f"  {path}")
    if not targets or assume_yes:
        return True
    if not sys.stdin.isatty():
        raise UserError("mode fresh deletes the paths listed above: pass --yes to confirm when not on a terminal")
    try:
        return input("delete them? [y/N]: ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def load_run_config(args: argparse.Namespace) -> Config:
    """``--config`` with ``--set`` applied; without ``--config``, the run's own ``config.yaml`` when the
    run has one (``args.config`` then names it, so the jobs a command starts read the same file)."""
    if args.config is None and getattr(args, "run_dir", None) is not None:
        from mi_pipeline.layout import RunLayout

        stored = RunLayout(Path(args.run_dir).resolve()).config_file
        if stored.is_file():
            print(f"note: using this run's config {stored} (--config FILE to change it)", file=sys.stderr)
            args.config = stored
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main``; a UserError becomes one line on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `status --json | head`: the reader has what it wanted; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 0


def exit_process(code: int) -> NoReturn:
    """``sys.exit`` for a command run as a process (``__main__`` only, never in-process callers).

    Why: at exit Python runs one last garbage collection over every live object; with torch and
    MONAI loaded that walk takes 1-1.5 s (measured), paid by each stage of every pipeline run.
    ``gc.freeze()`` skips it; files, atexit handlers and threads are still finalised as usual.
    """
    gc.freeze()
    sys.exit(code)


def model_source(run_dir: Path | None, checkpoints: Path | None, fold: int | None = None) -> tuple[Path, list[Path]]:
    """Where ``predict``'s models come from: the checkpoints folder whose stored config applies, and
    the folds' checkpoints folders to ensemble ([] when one model predicts: ``--checkpoints``,
    ``--fold k``, or a run without folds)."""
    from mi_pipeline.data.folds import fold_roots
    from mi_pipeline.inference import fold_checkpoints
    from mi_pipeline.layout import RunLayout
    from mi_pipeline.orchestration.fold_setup import check_fold

    if checkpoints is not None:
        return checkpoints, []
    run = RunLayout(run_dir if run_dir is not None else Path("."))
    if fold is not None:
        check_fold(fold, len(fold_roots(run.root)), str(run.root))
        return run.fold(fold).checkpoints, []
    folds = fold_checkpoints(run.root)
    return (folds[0] if folds else run.checkpoints), folds


def parse_ed(value: str) -> int | None:
    """``--ed``: a 0-based frame index, or None for 'auto' (found from the images)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--ed: expected a frame index or 'auto', got {value!r}") from None
