"""``python -m mi_pipeline.bench [--quick] [--json PATH] [--device cpu|cuda] [--config PATH] [--work-dir DIR]``."""

import sys

from mi_pipeline.bench.runner import main
from mi_pipeline.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
