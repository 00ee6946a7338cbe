"""``python -m mi_pipeline.clean``: kept as an entry point; the command lives in ``mi_pipeline/cli/clean.py``."""

from mi_pipeline.cli.clean import main

__all__ = ["main"]

if __name__ == "__main__":
    from mi_pipeline.cli.common import exit_process, run_main

    exit_process(run_main(main))
