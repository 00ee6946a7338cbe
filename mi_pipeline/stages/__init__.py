"""The pipeline's three trained stages behind the one ``TrainTask`` interface (``motion``,
``registration``, ``segmentation``; see ``engine/task.py``), and the one registry that train,
evaluate, predict and the benchmarks ask (``registry.py``). Their names and dependencies are
``mi_pipeline/graph.py``, a foundation every layer may import.
"""
