"""garrison's benchmarks: each module runs garrison and its peers side by side in one run.

``python -m bench`` runs them all, ``python -m bench NAME`` one pillar or one module; the
contract of a benchmark module and the runner are in :mod:`bench._harness`.
"""
