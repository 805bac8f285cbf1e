"""Run a dataset's paper recipe (experiments/recipes/<dataset>.yaml) as one DVC experiment.

    python -m experiments.recipe msrvtt                   # DGL with the paper's MSR-VTT settings
    python -m experiments.recipe msrvtt --method full     # another method under the same recipe
    python -m experiments.recipe vatex --queue            # queue it (then `dvc queue start`)
    python -m experiments.recipe msrvtt --dry-run         # print the dvc command only

A recipe sets exactly the keys its file lists (`set:`, and `methods: <method>:` for --method) with
`dvc exp run -S`; every other key keeps its params.yaml value. The keys and values are checked
against params.yaml's schema before DVC starts, so a typo is one line, not a failed stage.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.settings import METHOD_NAMES, Params
from dgl.typed_yaml import build, read_yaml
from experiments.queue import yaml_value

RECIPES = Path(__file__).with_name("recipes")


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def overrides(recipe: str, method: str | None = None) -> dict[str, object]:
    """The dotted keys a recipe sets, with the method's own keys (and model.method) when given."""
    path = RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        raise UserError(f"no recipe {recipe!r}; use one of: {', '.join(names())}")
    spec = yaml.safe_load(path.read_text())
    keys = dict(spec["set"])
    if method is not None:
        if method not in METHOD_NAMES:
            raise UserError(f"--method {method!r} is not a method; use one of: {', '.join(METHOD_NAMES)}")
        keys |= {"model.method": method, **(spec.get("methods") or {}).get(method, {})}
    return keys


def applied(params: dict, keys: dict[str, object]) -> dict:
    """`params` (params.yaml as a tree) with `keys` set; each key must already exist there."""
    out = yaml.safe_load(yaml.safe_dump(params))  # a deep copy
    for dotted, value in keys.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise UserError(f"recipe key {dotted} is not in params.yaml; fix the recipe file")
        node[last] = value
    return out


def command(keys: dict[str, object], name: str, queue: bool) -> list[str]:
    sets = [arg for k, v in keys.items() for arg in ("-S", f"{k}={yaml_value(v)}")]
    return ["dvc", "exp", "run", *(["--queue"] if queue else []), "-n", name, *sets]


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help=f"one of: {', '.join(names())}")
    ap.add_argument("--method", help="a method other than the recipe's (model.method)")
    ap.add_argument("--name", help="the experiment's name (default: <recipe>-<method>)")
    ap.add_argument("--queue", action="store_true", help="queue the experiment instead of running it now")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--dry-run", action="store_true", help="print the dvc command, run nothing")
    args = ap.parse_args()
    keys = overrides(args.recipe, args.method)
    build(Params, applied(read_yaml(args.params), keys))  # the whole result must be valid params
    cmd = command(keys, args.name or f"{args.recipe}-{keys['model.method']}", args.queue)
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
