"""Run a dataset's paper recipe (experiments/recipes/<dataset>.yaml) as one DVC experiment.

    python -m experiments.recipe msrvtt                          # DGL with the paper's MSR-VTT settings
    python -m experiments.recipe msrvtt --method full            # a method whose paper states its rate
    python -m experiments.recipe msrvtt --method bias --sweep    # one whose paper does not: queue the sweep,
    python -m experiments.recipe msrvtt --method bias            # then train with the rate it chose
    python -m experiments.recipe vatex --queue                   # queue it (then `dvc queue start`)
    python -m experiments.recipe msrvtt --method vop --dry-run   # print the dvc commands only

A recipe sets exactly the keys its file lists (`set:`, and `methods: <method>:` for --method) with
`dvc exp run -S`; every other key keeps its params.yaml value. A method gets the rate its paper states
for the setting (the recipe's `methods:`, which cites it) or, where none does, a rate chosen on
validation (experiments/sweeps.yaml): `--sweep` queues one experiment per candidate value, named
`<recipe>-<method>-<key><value>`, with part of the training videos held out; the final run reads their
validation t2v R@1 from `dvc exp show` (or takes `--rate`) and trains on the whole training split.
Keys and values are checked against params.yaml's schema before DVC starts, so a typo is one line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.settings import METHOD_NAMES, Params
from dgl.typed_yaml import build, read_yaml
from experiments.queue import Row, dvc, expand, queue_command, yaml_value
from experiments.report import SEED_SUFFIX, SELECT_BY, Experiment, from_dvc_show, mean

RECIPES = Path(__file__).with_name("recipes")
SWEEPS = Path(__file__).with_name("sweeps.yaml")


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def _recipe(recipe: str) -> dict:
    path = RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        raise UserError(f"no recipe {recipe!r}; use one of: {', '.join(names())}")
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Plan:
    """What `--method` runs under a recipe: the keys of the final run and where its rate comes from."""

    name: str  # the final experiment's name, <recipe>-<method>
    keys: dict[str, object]  # without the swept key, when there is one
    sweep: Row | None = None  # the validation sweep that chooses the rate; None: the paper states it

    @property
    def sweep_key(self) -> str | None:
        return self.sweep.sweep_key if self.sweep else None


def plan(recipe: str, method: str | None = None) -> Plan:
    """The recipe's keys for `method` (default: the recipe's own, DGL), and the sweep where no paper
    states the method's rate."""
    spec = _recipe(recipe)
    keys = dict(spec["set"])
    method = method or keys["model.method"]
    if method not in METHOD_NAMES:
        raise UserError(f"--method {method!r} is not a method; use one of: {', '.join(METHOD_NAMES)}")
    stated = spec.get("methods") or {}
    keys["model.method"] = method
    if method == spec["set"]["model.method"] or method in stated:
        return Plan(f"{recipe}-{method}", keys | (stated.get(method) or {}))
    sweeps = yaml.safe_load(SWEEPS.read_text())
    if method not in sweeps["methods"]:
        raise UserError(
            f"recipe {recipe} states no rate for {method} and {SWEEPS.name} has no sweep for it; add one of them"
        )
    ((key, values),) = sweeps["methods"][method].items()
    keys.pop(key, None)  # the recipe's value for DGL, if any: the sweep's choice replaces it
    held_out = keys | sweeps["validation"]
    row = Row(
        f"{recipe}-{method}", tuple(f"{k}={yaml_value(v)}" for k, v in held_out.items()), False, key, tuple(values)
    )
    return Plan(f"{recipe}-{method}", keys, row)


def overrides(recipe: str, method: str | None = None) -> dict[str, object]:
    """The dotted keys a recipe sets for `method` (default: the recipe's own); a method whose rate is
    chosen on validation needs `rate`, see `chosen_rate`."""
    p = plan(recipe, method)
    if p.sweep is not None:
        raise UserError(
            f"{p.name}: {p.sweep_key} is chosen on validation; run `python -m experiments.recipe "
            f"{recipe} --method {method} --sweep` first, or give --rate"
        )
    return p.keys


def chosen_rate(p: Plan, experiments: list[Experiment]) -> tuple[object, dict[object, float]] | None:
    """The sweep value with the best mean validation t2v R@1 over its runs (a tie: the smaller value),
    and every value's score; None while a value has no finished run."""
    variants = {run.name: run.value for run in expand([p.sweep])}
    scores: dict[object, list[float]] = {}
    for e in experiments:
        value = variants.get(SEED_SUFFIX.sub("", e.name))
        if value is not None and SELECT_BY in e.metrics:
            scores.setdefault(value, []).append(e.metrics[SELECT_BY])
    if set(scores) != set(p.sweep.sweep_values):
        return None
    means = {v: mean(scores[v]) for v in sorted(scores)}
    return max(means, key=means.__getitem__), means


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


def _run(commands: list[list[str]], dry_run: bool) -> None:
    print(*map(shlex.join, commands), sep="\n", flush=True)
    for cmd in [] if dry_run else commands:
        code = subprocess.run(cmd).returncode
        if code:
            sys.exit(code)


def _experiments(dry_run: bool) -> list[Experiment]:
    """The finished DVC experiments of this repository (none, in a dry run where DVC cannot tell)."""
    try:
        return from_dvc_show(json.loads(dvc("exp", "show", "--json")))[0]
    except UserError:
        if dry_run:
            return []
        raise


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help=f"one of: {', '.join(names())}")
    ap.add_argument("--method", help="a method other than the recipe's (model.method)")
    ap.add_argument("--sweep", action="store_true", help="queue the validation sweep that chooses the method's rate")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="with --sweep: queue workers (dvc queue start -j)")
    ap.add_argument("--rate", type=float, help="the swept key's value for the final run, instead of the sweep's choice")
    ap.add_argument("--name", help="the experiment's name (default: <recipe>-<method>)")
    ap.add_argument("--queue", action="store_true", help="queue the experiment instead of running it now")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--dry-run", action="store_true", help="print the dvc commands, run nothing")
    args = ap.parse_args()
    p = plan(args.recipe, args.method)
    params = read_yaml(args.params)
    if args.sweep:
        if p.sweep is None:
            raise UserError(
                f"--sweep: {p.name}'s rate is stated in experiments/recipes/{args.recipe}.yaml; run it without --sweep"
            )
        runs = expand([p.sweep])
        for run in runs:  # every variant must be valid params
            build(Params, applied(params, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in run.overrides)}))
        _run(
            [queue_command(run, force=False) for run in runs] + [["dvc", "queue", "start", "-j", str(args.jobs)]],
            args.dry_run,
        )
        return
    keys = p.keys
    if p.sweep is not None:
        rate = args.rate
        if rate is None:
            choice = chosen_rate(p, _experiments(args.dry_run))
            if choice is None and not args.dry_run:
                raise UserError(
                    f"{p.name}: {p.sweep_key} is chosen on validation and the sweep has not finished "
                    f"(`dvc exp show`); run `python -m experiments.recipe {args.recipe} --method "
                    f"{keys['model.method']} --sweep` first, or give --rate"
                )
            if choice is not None:
                rate, scores = choice
                print(
                    f"# {p.sweep_key} = {rate:g}: the best {SELECT_BY} of "
                    + ", ".join(f"{v:g}: {s:.2f}" for v, s in scores.items()),
                    flush=True,
                )
        if rate is None:  # a dry run before the sweep: the plan
            print(
                f"# {p.sweep_key} is chosen on validation: `python -m experiments.recipe {args.recipe} --method "
                f"{keys['model.method']} --sweep` tries {', '.join(f'{v:g}' for v in p.sweep.sweep_values)}; "
                "then this runs with the best",
                flush=True,
            )
            build(Params, applied(params, keys))
            print(shlex.join(command(keys, args.name or p.name, args.queue)) + f" -S {p.sweep_key}=<chosen>")
            return
        keys = keys | {p.sweep_key: rate}
    build(Params, applied(params, keys))  # the whole result must be valid params
    _run([command(keys, args.name or p.name, args.queue)], args.dry_run)


if __name__ == "__main__":
    main()
