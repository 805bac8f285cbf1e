"""The check that pipelines/, experiments/ and bench/ run first, in their __init__.py: that `dgl` is
this project's dgl/, not the Deep Graph Library, which installs a package of the same import name.

It asks only where `dgl` would be imported from and imports nothing of it, so another package of that
name can neither crash nor run here. It lives beside dgl/, not in it: importing any module under dgl/
imports whichever `dgl` comes first on the path, the very thing to check."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def check_dgl() -> None:
    """Exit with one line (code 2, like every stage's errors) unless `dgl` resolves to ROOT/dgl/."""
    spec = importlib.util.find_spec("dgl")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == ROOT / "dgl" / "__init__.py":
        return
    where = (spec.origin or ", ".join(spec.submodule_search_locations or [])) if spec else None
    found = f"`dgl` resolves to {where}" if where else "no `dgl` package is importable"
    print(
        f"error: {found}, not this project's dgl/ (the Deep Graph Library also installs as `dgl`); "
        "run the stages from the repository root (dvc repro does), or uninstall the other package "
        'from this environment (README, "The name dgl")',
        file=sys.stderr,
    )
    sys.exit(2)
