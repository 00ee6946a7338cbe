"""The pipeline's stages: the graph (``graph.py``), the three trained stages behind the one
``TrainTask`` interface (``motion``, ``registration``, ``segmentation``; see ``engine/task.py``),
and the one registry that train, evaluate, predict and the benchmarks ask (``registry.py``).

Kept free of imports so ``stages.graph`` loads without torch.
"""
