"""``python -m benchmarks.perf [--quick] [--json PATH] [--device cpu|cuda] [--config PATH] [--work-dir DIR]``."""

import sys

from benchmarks.perf.runner import main
from mi_pipeline.cli.common import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
