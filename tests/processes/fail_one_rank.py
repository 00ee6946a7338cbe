"""One rank of a torchrun world raises inside the process group; the others end cleanly.

usage: python fail_one_rank.py FAILING_RANK
"""

from __future__ import annotations

import sys

import torch

from mi_pipeline.engine.distributed import process_group


def main() -> int:
    with process_group(torch.device("cpu")) as world:
        if world.rank == int(sys.argv[1]):
            raise RuntimeError(f"rank {world.rank} failed on purpose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
