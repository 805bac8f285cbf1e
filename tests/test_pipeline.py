"""The real pipeline: `dvc repro` in a temporary git repository, MLflow in a real SQLite store, and
bad params rejected with one line before any output is touched. `dvc exp run -S` (an ablation, which
reruns training and evaluation only) is in test_tracking.py, on a tracking server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from helpers import BIN, ROOT, make_project, run, stage_in_process, tiny_params


def mlflow_runs(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT run_uuid, status FROM runs ORDER BY start_time").fetchall()


def test_dvc_repro_runs_every_stage_and_logs_one_mlflow_run(tiny_repro):
    project = tiny_repro
    metrics = json.loads((project / "metrics.json").read_text())
    for key in (
        "t2v_R1",
        "t2v_R5",
        "t2v_R10",
        "t2v_MdR",
        "t2v_MnR",
        "v2t_R1",
        "pair_acc",
        "trainable_params",
        "val_t2v_R1",
        "val_v2t_R1",
    ):
        assert key in metrics
    assert metrics["test_split"] == "synthetic test (MSRVTT_JSFUSION_test.csv)"
    assert (metrics["test_videos"], metrics["test_captions"], metrics["test_skipped_videos"]) == (10, 20, 0)
    assert (project / "dvc.lock").exists()
    assert json.loads((project / "plots/train.json").read_text())[-1]["epoch"] == 2
    runs = mlflow_runs(project / "mlflow.db")
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    with sqlite3.connect(project / "mlflow.db") as con:
        keys = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics")}
        params = dict(con.execute("SELECT key, value FROM params"))
        steps = [s for (s,) in con.execute("SELECT step FROM metrics WHERE key='epoch/train_loss' ORDER BY step")]
        tags = dict(con.execute("SELECT key, value FROM tags"))
    # the run's page leads with its numbers; the tiny project runs its committed params.yaml
    assert tags["mlflow.note.content"] == (
        f"t2v R@1 {metrics['t2v_R1']:.1f} · content R@1 {metrics['content_R1']:.1f}"
        f" · pair acc {metrics['pair_acc']:.3f} · v2t R@1 {metrics['v2t_R1']:.1f}"
        f" · trainable {metrics['trainable_params']:,} "
        f"({100 * metrics['trainable_ratio']:.3g} %)\n\n"
        "The committed params.yaml, unchanged."
    )
    assert tags["mlflow.source.name"] == "pipelines/evaluate.py (dvc stage evaluate)"
    assert "test/t2v_R1" in keys and not any(k.startswith("params/") for k in keys)  # counts: params (tracking.names)
    assert {"count.trainable", "count.total", "count.trainable_ratio"} <= params.keys()
    assert params["model.dgl.generator"] == "ulp"
    assert steps == [1, 2]
    status = run(["dvc", "status"], project).stdout
    assert "changed" not in status


def lock_outputs(lock: Path) -> dict[str, str]:
    """Every output's hash in a dvc.lock, by path."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def test_same_params_give_identical_outputs_on_a_second_machine_run(tiny_repro, tmp_path):
    """A second clone of the same project, run with Python's bytecode caching on (a user's default):
    every stage output, the weights and metrics.json are bit-identical, and dvc status is clean."""
    first = tiny_repro
    second = make_project(tmp_path, tiny_params())
    bytecode_on = {"PYTHONDONTWRITEBYTECODE": None}
    run(["dvc", "repro"], second, env=bytecode_on)
    assert list((second / "dgl").rglob("__pycache__")), "the stages wrote bytecode caches"
    assert (second / "metrics.json").read_text() == (first / "metrics.json").read_text()
    assert lock_outputs(second / "dvc.lock") == lock_outputs(first / "dvc.lock")
    status = run(["dvc", "status"], second, env=bytecode_on).stdout
    assert "up to date" in status and "changed" not in status, status


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.method=nope", "model.method = 'nope' is not allowed"),
        ("model.dgl.generator=xyz", "model.dgl.generator = 'xyz' is not allowed; use one of: ulp, upt"),
        ("train.lr=-1", "train.lr = -1.0 is out of range"),
    ],
)
def test_bad_params_fail_with_one_line_and_touch_nothing(tmp_path, override, needle, monkeypatch, capsys):
    key, value = override.split("=")
    params = tiny_params()
    section = params
    *path, last = key.split(".")
    for part in path:
        section = section[part]
    section[last] = int(value) if value.lstrip("-").isdigit() else value
    root = tmp_path  # what the stages read and would write: params.yaml, and the outputs beside it
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "metrics.json").write_text('{"kept": 1}')
    for stage in ("download", "train"):
        out = stage_in_process(stage, root, monkeypatch, capsys)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert not (root / "data").exists() and not (root / "models").exists()
    assert json.loads((root / "metrics.json").read_text()) == {"kept": 1}


@pytest.mark.parametrize(
    "edit,needle",
    [
        (
            lambda p: p["train"].pop("lr"),
            "params: missing key train.lr; train needs: epochs, batch_size, captions, sampler, lr, clip_lr,",
        ),
        (
            lambda p: p["train"].update(lrr=0.1),
            "params: unknown key train.lrr (did you mean lr?); known keys here: accum_steps,",
        ),
        (lambda p: p.pop("ffmpeg"), "params: missing key ffmpeg; the file needs: ffmpeg, data,"),
    ],
)
def test_a_missing_or_unknown_params_key_is_one_line(tmp_path, edit, needle, monkeypatch, capsys):
    params = tiny_params()
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = stage_in_process("download", tmp_path, monkeypatch, capsys)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip().removeprefix('error: ')}"]
    assert needle in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()


def test_a_system_ffmpeg_that_is_absent_is_one_line_before_any_output(tmp_path, monkeypatch, capsys):
    params = tiny_params()
    params["ffmpeg"] = "system"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("PATH", str(BIN))  # no system ffmpeg, whatever this machine has
    for stage in ("download", "frames"):
        out = stage_in_process(stage, tmp_path, monkeypatch, capsys)
        assert out.returncode == 2
        assert out.stderr.strip() == (
            "error: params: ffmpeg = system but there is no ffmpeg on PATH; install one or use ffmpeg: pinned"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_numbers_as_dvc_writes_them_back_are_numbers(tmp_path):
    """`dvc exp run -S train.clip_lr=1e-6` leaves `clip_lr: 1e-06` in params.yaml (YAML 1.2)."""
    from dgl.settings import load_params

    text = (
        (ROOT / "params.yaml").read_text().replace("clip_lr: 1.0e-7", "clip_lr: 1e-06").replace("lr: 0.005", "lr: 5E-3")
    )
    assert "clip_lr: 1e-06" in text and "lr: 5E-3" in text
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.train.clip_lr == 1e-6 and params.train.lr == 5e-3 and params.train.epochs == 4
    assert isinstance(params.train.epochs, int) and params.tracking.uri == ""
