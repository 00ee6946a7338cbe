"""Race the peers: the motion model trained by our engine, by PyTorch Lightning and by MONAI's
ignite-based ``SupervisedTrainer``, against a bare hand-written loop (issue 19).

Every tool trains the same model (same seed, same initial weights) on the same cached batches in the
same order (a batch is a pure function of seed, epoch and batch index: ``engine.trainer.epoch_order``
and ``batch_seed``), with the same AdamW, the same per-epoch LR schedule, the same validation
function every epoch and the same pinned threads. Each training run is its own process
(``worker.py``), so start-up, ``kill -9`` and resume are real. ``python -m benchmarks.peers`` runs
the race; docs/PERFORMANCE.md ("Against the peers") has the table and how to read it.

The peers (``lightning``, ``pytorch-ignite``) are benchmark dependencies only: the ``peers`` extra.
"""
