"""Named recipes (experiments/recipes/*.yaml): each sets exactly the keys it lists, checked against
the params schema before DVC starts."""
from __future__ import annotations

import shlex

import pytest
import yaml

from conftest import ROOT, run
from dgl.errors import UserError
from dgl.settings import Params
from dgl.typed_yaml import build, flatten
from experiments.recipe import applied, names, overrides

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_dataset_has_a_recipe():
    assert names() == ["activitynet", "lsmdc", "msrvtt", "vatex"]


@pytest.mark.parametrize("recipe, method", [(n, None) for n in ("activitynet", "lsmdc", "msrvtt", "vatex")]
                         + [("msrvtt", "full"), ("vatex", "vop_fc")])
def test_a_recipe_applies_exactly_the_keys_it_lists(recipe, method):
    keys = overrides(recipe, method)
    before, after = flatten(build(Params, PARAMS)), flatten(build(Params, applied(PARAMS, keys)))
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= set(keys), f"changed beyond the recipe: {changed - set(keys)}"
    assert all(after[k] == v for k, v in keys.items()), "every listed value is applied as written"
    assert keys["data.dataset"] == recipe and (method is None or keys["model.method"] == method)


def test_the_paper_table_is_what_the_recipes_set():
    """docs/method.md, "Optimisation": generator, lr, epochs, global batch, frames / words per dataset."""
    table = {"msrvtt": ("upt", 2e-3, 5, 512, 12, 32), "vatex": ("ulp", 5e-3, 10, 512, 12, 32),
             "lsmdc": ("ulp", 1e-2, 10, 512, 12, 32), "activitynet": ("upt", 1e-2, 10, 128, 64, 64)}
    for recipe, row in table.items():
        k = overrides(recipe)
        assert (k["model.dgl.generator"], k["train.lr"], k["train.epochs"], k["train.batch_size"],
                k["frames.num_frames"], k["preprocess.context_length"]) == row
        assert k["train.captions"] == "all" and k["train.val_fraction"] == 0.0


def test_a_key_the_params_file_lacks_is_refused():
    with pytest.raises(UserError, match="recipe key train.lrr is not in params.yaml"):
        applied(PARAMS, {"train.lrr": 0.1})


def test_the_command_line_prints_the_dvc_experiment_it_runs(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = run(["python", "-m", "experiments.recipe", "msrvtt", "--method", "full", "--queue", "--dry-run"],
              tmp_path, env={"PYTHONPATH": str(ROOT)}).stdout
    argv = shlex.split(out.strip())
    assert argv[:6] == ["dvc", "exp", "run", "--queue", "-n", "msrvtt-full"]
    sets = dict(a.split("=", 1) for a in argv[7::2])
    keys = overrides("msrvtt", "full")
    assert set(sets) == set(keys)
    assert {k: yaml.safe_load(v) for k, v in sets.items()} == keys  # as DVC will parse each -S value
    bad = run(["python", "-m", "experiments.recipe", "msrvt"], tmp_path, check=False, env={"PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: no recipe 'msrvt'; use one of: activitynet, lsmdc, msrvtt, vatex"
