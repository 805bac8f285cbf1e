"""Ablation grids, paper-table reports and run comparisons: `python -m experiments.<module>`.

Importing this package first checks that `dgl` is this project's library, not the Deep Graph
Library (also imported as `dgl`), as pipelines/ does (dgl_guard.py)."""

from dgl_guard import check_dgl

check_dgl()
