"""``python -m mi_pipeline.cancel``: kept as an entry point; the command lives in ``mi_pipeline/cli/cancel.py``."""

from mi_pipeline.cli.cancel import main

__all__ = ["main"]

if __name__ == "__main__":
    from mi_pipeline.cli.common import exit_process, run_main

    exit_process(run_main(main))
