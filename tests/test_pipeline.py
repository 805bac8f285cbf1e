"""The real pipeline: `dvc repro` and `dvc exp run -S` in a temporary git repository, MLflow in
a real SQLite store, and bad params rejected with one line before any output is touched."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import make_project, run, tiny_params


def mlflow_runs(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT run_uuid, status FROM runs ORDER BY start_time").fetchall()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("project"), tiny_params())
    run(["dvc", "repro"], root)
    return root


def test_dvc_repro_runs_every_stage_and_logs_one_mlflow_run(project):
    metrics = json.loads((project / "metrics.json").read_text())
    for key in ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "t2v_MnR", "v2t_R1", "pair_acc", "trainable_params"):
        assert key in metrics
    assert (project / "dvc.lock").exists()
    assert json.loads((project / "plots/train.json").read_text())[-1]["epoch"] == 2
    runs = mlflow_runs(project / "mlflow.db")
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    with sqlite3.connect(project / "mlflow.db") as con:
        keys = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics")}
        params = dict(con.execute("SELECT key, value FROM params"))
        steps = [s for (s,) in con.execute("SELECT step FROM metrics WHERE key='train_loss' ORDER BY step")]
    assert {"test_t2v_R1", "params_trainable", "params_total", "params_trainable_ratio"} <= keys
    assert params["model.dgl.generator"] == "ulp"
    assert steps == [1, 2]
    status = run(["dvc", "status"], project).stdout
    assert "changed" not in status


def test_dvc_exp_run_with_set_param_reruns_training_only(project):
    before = json.loads((project / "metrics.json").read_text())
    out = run(["dvc", "exp", "run", "-S", "model.dgl.generator=upt"], project)
    assert "Running stage 'train'" in out.stdout and "Running stage 'download'" not in out.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    assert exps, "the experiment is recorded"
    runs = mlflow_runs(project / "mlflow.db")
    assert len(runs) == 2
    with sqlite3.connect(project / "mlflow.db") as con:
        generators = [v for (v,) in con.execute("SELECT value FROM params WHERE key='model.dgl.generator'")]
    assert sorted(generators) == ["ulp", "upt"]
    upt = dict(sqlite3.connect(project / "mlflow.db").execute(
        "SELECT m.key, m.value FROM metrics m JOIN params p ON m.run_uuid = p.run_uuid "
        "WHERE p.key='model.dgl.generator' AND p.value='upt'"))
    assert upt["params_trainable"] != before["trainable_params"]


@pytest.mark.parametrize("override,needle", [
    ("model.method=nope", "model.method = 'nope' is not allowed"),
    ("model.dgl.generator=xyz", "model.dgl.generator = 'xyz' is not allowed; use one of: ulp, upt"),
    ("train.lr=-1", "train.lr = -1.0 is out of range"),
])
def test_bad_params_fail_with_one_line_and_touch_nothing(tmp_path, override, needle):
    key, value = override.split("=")
    params = tiny_params()
    section = params
    *path, last = key.split(".")
    for part in path:
        section = section[part]
    section[last] = int(value) if value.lstrip("-").isdigit() else value
    root = make_project(tmp_path, params)
    (root / "metrics.json").write_text('{"kept": 1}')
    for stage in ("download", "train"):
        out = run(["python", "-m", f"pipelines.{stage}"], root, check=False)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert not (root / "data").exists() and not (root / "models").exists()
    assert json.loads((root / "metrics.json").read_text()) == {"kept": 1}
