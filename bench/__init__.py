"""Benchmarks (not tests) of speed, memory and quality, each printing JSON: `python -m bench.<module>`.

Importing this package first checks that `dgl` is this project's library, not the Deep Graph
Library (also imported as `dgl`), as pipelines/ does (dgl_guard.py). Being a package, with this
file, it is also this folder that `bench` names, not a package of that name installed elsewhere."""

from dgl_guard import check_dgl

check_dgl()
