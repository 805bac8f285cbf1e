"""Named recipes (experiments/recipes/*.yaml): each sets exactly the keys it lists, checked against
the params schema before DVC starts."""

from __future__ import annotations

import shlex
import sys

import pytest
import yaml

from dgl.errors import UserError
from dgl.settings import METHOD_NAMES, Params
from dgl.typed_yaml import build, flatten
from experiments import recipe as recipe_cli
from experiments.recipe import applied, chosen_rate, names, overrides, plan
from experiments.report import Experiment
from helpers import ROOT, call_main

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_dataset_has_a_recipe():
    assert names() == ["activitynet", "lsmdc", "msrvtt", "vatex"]


@pytest.mark.parametrize(
    "recipe, method",
    [(n, None) for n in ("activitynet", "lsmdc", "msrvtt", "vatex")]
    + [("msrvtt", "full"), ("lsmdc", "full"), ("vatex", "zeroshot")],
)
def test_a_recipe_applies_exactly_the_keys_it_lists(recipe, method):
    keys = overrides(recipe, method)
    before, after = flatten(build(Params, PARAMS)), flatten(build(Params, applied(PARAMS, keys)))
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= set(keys), f"changed beyond the recipe: {changed - set(keys)}"
    assert all(after[k] == v for k, v in keys.items()), "every listed value is applied as written"
    assert keys["data.dataset"] == recipe and (method is None or keys["model.method"] == method)


def test_the_paper_table_is_what_the_recipes_set():
    """docs/method.md, "Optimisation": generator, lr, epochs, global batch, frames / words per dataset."""
    table = {
        "msrvtt": ("upt", 2e-3, 5, 512, 12, 32),
        "vatex": ("ulp", 5e-3, 10, 512, 12, 32),
        "lsmdc": ("ulp", 1e-2, 10, 512, 12, 32),
        "activitynet": ("upt", 1e-2, 10, 128, 64, 64),
    }
    for recipe, row in table.items():
        k = overrides(recipe)
        assert (
            k["model.dgl.generator"],
            k["train.lr"],
            k["train.epochs"],
            k["train.batch_size"],
            k["frames.num_frames"],
            k["preprocess.context_length"],
        ) == row
        assert k["train.captions"] == "all" and k["train.val_fraction"] == 0.0


def test_the_reference_threshold_for_clipping_is_1_on_a_gradient_averaged_over_its_gpus():
    """The reference scripts clip at 1.0 the gradient DDP averages over their GPUs (1/GPUs of our global-batch
    gradient, tests/test_scale.py): the same threshold on ours is 1.0 x the GPU count of each recipe's runs."""
    gpus = {"msrvtt": 4, "vatex": 8, "lsmdc": 8, "activitynet": 8}  # DGL's scripts: batch per GPU x GPUs
    for recipe, n in gpus.items():
        assert overrides(recipe)["train.grad_clip"] == n
    assert overrides("msrvtt", "full")["train.grad_clip"] == overrides("lsmdc", "full")["train.grad_clip"] == 4
    assert overrides("activitynet", "full")["train.grad_clip"] == 8  # CLIP4Clip's README: 4 GPUs, ActivityNet 8


def test_every_method_has_a_stated_rate_or_a_validation_sweep_on_msrvtt():
    stated = {"dgl": {"train.lr": 2e-3}, "zeroshot": {}, "full": {"train.lr": 1e-4, "train.clip_lr": 1e-7}}
    for method in METHOD_NAMES:
        p = plan("msrvtt", method)
        assert p.keys["model.method"] == method and p.keys["train.val_fraction"] == 0.0  # final: all 9k videos
        if method in stated:
            assert p.sweep is None and stated[method].items() <= p.keys.items()
            continue
        assert p.sweep_key == ("train.clip_lr" if method in ("bias", "proj", "partial") else "train.lr")
        assert len(p.sweep.sweep_values) >= 3 and p.sweep_key not in p.keys
        held_out = dict(o.split("=", 1) for o in p.sweep.overrides)
        assert held_out["train.val_fraction"] == "0.1" and held_out["model.method"] == method
        with pytest.raises(UserError, match=f"--method {method} --sweep` first, or give --rate"):
            overrides("msrvtt", method)


def test_the_sweep_chooses_the_best_validation_r1_a_tie_the_smaller_value():
    p = plan("msrvtt", "bias")
    values = p.sweep.sweep_values
    scores = {values[0]: 30.0, values[1]: 41.0, values[2]: 41.0, values[3]: 12.0}
    runs = [
        Experiment(f"msrvtt-bias-clip_lr{v:g}", {}, {"val_t2v_R1": r, "t2v_R1": 99.0 - r}) for v, r in scores.items()
    ]
    runs += [
        Experiment("msrvtt-proj-clip_lr0.001", {}, {"val_t2v_R1": 90.0}),  # another method's sweep
        Experiment(f"msrvtt-bias-clip_lr{values[0]:g}-s1", {}, {"val_t2v_R1": 40.0}),
    ]  # a seed: averaged in
    assert chosen_rate(p, runs) == (values[1], {values[0]: 35.0, values[1]: 41.0, values[2]: 41.0, values[3]: 12.0})
    assert chosen_rate(p, [r for r in runs if r.name != f"msrvtt-bias-clip_lr{values[3]:g}"]) is None  # unfinished


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_dry_run_prints_the_keys_of_every_method(method, monkeypatch, capsys):
    monkeypatch.setattr(recipe_cli, "_experiments", lambda dry_run: [])
    monkeypatch.setattr(
        sys, "argv", ["recipe", "msrvtt", "--method", method, "--dry-run", "--params", str(ROOT / "params.yaml")]
    )
    recipe_cli.main()
    out = capsys.readouterr().out
    command = out.strip().splitlines()[-1]
    assert command.startswith(f"dvc exp run -n msrvtt-{method} ") and f"-S model.method={method}" in command
    p = plan("msrvtt", method)
    assert (p.sweep is None) == ("<chosen>" not in command)
    if p.sweep is not None:
        assert f"--method {method} --sweep` tries" in out


def test_a_swept_method_runs_with_the_sweeps_choice_and_never_before_it(monkeypatch, capsys):
    p = plan("msrvtt", "adapter_ffn")
    runs = [
        Experiment(f"msrvtt-adapter_ffn-lr{v:g}", {}, {"val_t2v_R1": 10.0 + i})
        for i, v in enumerate(p.sweep.sweep_values)
    ]
    argv = ["recipe", "msrvtt", "--method", "adapter_ffn", "--dry-run", "--params", str(ROOT / "params.yaml")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(recipe_cli, "_experiments", lambda dry_run: runs)
    recipe_cli.main()
    assert f"-S train.lr={yaml.safe_dump(p.sweep.sweep_values[-1]).split()[0]}" in capsys.readouterr().out
    monkeypatch.setattr(recipe_cli, "_experiments", lambda dry_run: runs[:-1])
    monkeypatch.setattr(sys, "argv", [a for a in argv if a != "--dry-run"])
    with pytest.raises(SystemExit) as exit_:
        recipe_cli.main()
    assert exit_.value.code == 2
    assert "the sweep has not finished" in capsys.readouterr().err


def test_a_key_the_params_file_lacks_is_refused():
    with pytest.raises(UserError, match="recipe key train.lrr is not in params.yaml"):
        applied(PARAMS, {"train.lrr": 0.1})


def test_the_command_line_prints_the_dvc_experiment_it_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    done = call_main("experiments.recipe", ["msrvtt", "--method", "full", "--queue", "--dry-run"], monkeypatch, capsys)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    argv = shlex.split(out.strip())
    assert argv[:6] == ["dvc", "exp", "run", "--queue", "-n", "msrvtt-full"]
    sets = dict(a.split("=", 1) for a in argv[7::2])
    keys = overrides("msrvtt", "full")
    assert set(sets) == set(keys)
    assert {k: yaml.safe_load(v) for k, v in sets.items()} == keys  # as DVC will parse each -S value
    bad = call_main("experiments.recipe", ["msrvt"], monkeypatch, capsys)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: no recipe 'msrvt'; use one of: activitynet, lsmdc, msrvtt, vatex"
