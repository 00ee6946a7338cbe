"""``python -m mi_pipeline.status``: kept as an entry point; the command lives in ``mi_pipeline/cli/status.py``."""

from mi_pipeline.cli.status import main

__all__ = ["main"]

if __name__ == "__main__":
    from mi_pipeline.cli.common import exit_process, run_main

    exit_process(run_main(main))
