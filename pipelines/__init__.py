"""One thin entry module per DVC stage: parse arguments and params, call dgl/, write outputs.

Importing this package first checks that `dgl` is this project's library, not the Deep Graph
Library (also imported as `dgl`): otherwise the first stage import would fail with a puzzling
`No module named 'dgl.cli'` or worse, run the wrong code."""
from __future__ import annotations

import importlib.util
import sys


def _check_dgl() -> None:
    """Exit with one line (code 2, like every stage's errors) unless `dgl` carries the project's marker."""
    spec = importlib.util.find_spec("dgl")
    where = (spec.origin or ", ".join(spec.submodule_search_locations or [])) if spec else None
    try:
        import dgl
        ours = getattr(dgl, "PROMPT_TUNING", False) is True
    except Exception:  # another package of that name may fail its own import
        ours = False
    if not ours:
        found = f"`dgl` resolves to {where}" if where else "no `dgl` package is importable"
        print(f"error: {found}, not this project's dgl/ (the Deep Graph Library also installs as `dgl`); "
              "run the stages from the repository root (dvc repro does), or uninstall the other package "
              "from this environment (README, \"The name dgl\")", file=sys.stderr)
        sys.exit(2)


_check_dgl()
