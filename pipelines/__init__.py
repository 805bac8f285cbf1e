"""One thin entry module per DVC stage: parse arguments and params, call dgl/, write outputs.

Importing this package first checks that `dgl` is this project's library, not the Deep Graph
Library (also imported as `dgl`): otherwise the first stage import would fail with a puzzling
`No module named 'dgl.cli'` or worse, run the wrong code (dgl_guard.py)."""

from dgl_guard import check_dgl

check_dgl()
