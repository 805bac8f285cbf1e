"""MLflow as the researcher sees it: the pipeline logging to a real `mlflow server`, read back over
its REST API; an experiment whose stages DVC skips, which logs nothing until forced; an evaluation
re-run alone, which gets a run of its own; `--temp` experiments that do not stack; several
processes writing one SQLite store at once. On fresh stores: `mlflow ui` serving a model-training
experiment with unique run names and grouped metrics, `git_dirty` and the diff, a moved store
refused until relocated, and the per-epoch log line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, copy_project, free_port, run, start_mlflow, stop_mlflow, tiny_params

EPOCHS = tiny_params()["train"]["epochs"]


class Rest:
    """The MLflow REST API, as any client in any language sees it."""

    def __init__(self, url: str, artifacts_dir: Path):
        self.url = url
        self.api = url + "/api/2.0/mlflow/"
        self.artifacts_dir = artifacts_dir  # where the server stores what clients upload

    def get(self, endpoint: str, **query) -> dict:
        with urllib.request.urlopen(self.api + endpoint + "?" + urllib.parse.urlencode(query), timeout=10) as r:
            return json.load(r)

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.api + endpoint, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def runs(self, experiment: str = "dgl") -> list[dict]:
        experiment_id = self.get("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
        return self.post("runs/search", {"experiment_ids": [experiment_id]}).get("runs", [])

    def artifacts(self, run_id: str, path: str = "") -> set[str]:
        files = self.get("artifacts/list", run_id=run_id, path=path).get("files", [])
        return {f["path"] for f in files}


@contextlib.contextmanager
def mlflow_ui(root: Path, command: str = "server", *options: str, store: str | None = None) -> Iterator[str]:
    """`mlflow <command>` (server or ui) on a free loopback port with the SQLite store root/mlflow.db (or
    the backend store `store`); yields its address once it answers. The server and its workers are
    stopped when the block ends, whatever happened in it."""
    port = free_port()
    proc = start_mlflow(
        command, port, store or f"sqlite:///{root / 'mlflow.db'}", *options, log=root / f"{command}.log"
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow(proc, signal.SIGTERM)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Rest]:
    """`mlflow server` on a free local port: SQLite backend, artifacts uploaded through the server."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_ui(root, "server", "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")) as url:
        yield Rest(url, root / "artifacts")


LOGS: dict[str, str] = {}  # what the project's first `dvc repro` printed
REPRO: dict[str, dict] = {}  # the MLflow run that `dvc repro` logged


@pytest.fixture(scope="module")
def project(tmp_path_factory, server, tiny_repro) -> Path:
    """The tests below share one project and one server, each starting from whatever the others
    left there (in any order): each looks only at the runs its own commands add. The project is the
    session's tiny one (a copy without its MLflow store, committed as a user would, with the .gitignore
    files DVC wrote) whose training and evaluation, the stages that log to MLflow, run again on the
    server (`dvc repro -f --downstream train`): the stages before them log nothing and are the
    session's build."""
    root = copy_project(tiny_repro, tmp_path_factory.mktemp("project") / "project", mlflow_store=False)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(git + ["add", "-A"], root)
    run(git + ["commit", "-qm", "repro"], root)
    LOGS["repro"] = dvc(root, server, "repro", "-f", "--downstream", "train")
    (REPRO["run"],) = server.runs()
    return root


def run_ids(server: Rest) -> set[str]:
    return {r["info"]["run_id"] for r in server.runs()}


def dvc(project: Path, server: Rest, *args: str) -> str:
    """DVC's output and the stages', stdout and stderr in the order printed."""
    return run(
        ["sh", "-c", 'exec dvc "$@" 2>&1', "dvc", *args], project, env={"MLFLOW_TRACKING_URI": server.url}
    ).stdout


@pytest.mark.slow
def test_pipeline_run_is_complete_on_a_tracking_server(project, server):
    found = REPRO["run"]
    run_id, data = found["info"]["run_id"], found["data"]
    assert found["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["model.dgl.generator"] == "ulp" and params["train.epochs"] == str(EPOCHS)
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    counts = {k: float(v) for k, v in params.items() if k.startswith("count.")}  # constants: params, not charts
    assert counts["count.trainable"] > 0 and counts["count.total"] > counts["count.trainable"]
    assert counts["count.trainable_ratio"] == pytest.approx(counts["count.trainable"] / counts["count.total"], rel=1e-3)
    assert {"test/t2v_R1", "test/v2t_R1", "epoch/val_t2v_R1", "epoch/train_lr"} <= metrics.keys()
    assert all(k.startswith(("epoch/", "test/")) for k in metrics), sorted(metrics)
    history = server.get("metrics/get-history", run_id=run_id, metric_key="epoch/train_loss")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, EPOCHS + 1))
    tags = {t["key"]: t["value"] for t in data["tags"]}
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert tags["method"] == "dgl" and tags["git_commit"] == head and tags["stage"] == "evaluate"
    # Not under `dvc exp run`: named for the method, generator and time. The tree holds only what
    # the pipeline writes itself (dvc.lock, metrics.json, plots/): not dirty, so no diff.
    assert re.fullmatch(r"dgl-ulp-\d{8}-\d{6}", found["info"]["run_name"]), found["info"]["run_name"]
    assert tags["git_dirty"] == "false" and "git" not in server.artifacts(run_id)
    # dvc.lock is written by DVC after evaluate ends: a copy logged by evaluate would be stale.
    assert {"metrics.json", "params.yaml", "plots"} <= server.artifacts(run_id)
    assert "dvc.lock" not in server.artifacts(run_id)
    experiment = server.get("experiments/get-by-name", experiment_name="dgl")["experiment"]
    assert values(experiment["tags"])["mlflow.experimentKind"] == "custom_model_development"
    # Off a terminal (CI=1 here), train prints one line per epoch, and where to see the run.
    lines = [line for line in LOGS["repro"].splitlines() if line.startswith("epoch ")]
    assert len(lines) == EPOCHS and all(
        re.fullmatch(
            rf"epoch {i}/{EPOCHS}  loss \d+\.\d{{4}}  val R@1 \d+\.\d t2v / \d+\.\d v2t  [\dmh]+s?  ETA [\dmh]+s?", line
        )
        for i, line in enumerate(lines, start=1)
    ), lines
    assert f"/#/experiments/{experiment['experiment_id']}/runs/{run_id}?workflowType=machine_learning" in LOGS["repro"]
    stages = dict(re.findall(r"Running stage '(\w+)':\n(.*?)(?=Running stage|\Z)", LOGS["repro"], re.S))
    for stage in ("train", "evaluate"):  # they load the backbone stage's weights: not random
        assert "No pretrained weights loaded" not in stages[stage], stages[stage]
    assert {"plots/train.json", "plots/recall.json", "plots/figures"} <= server.artifacts(run_id, "plots")
    assert "plots/figures/retrieval.png" in server.artifacts(run_id, "plots/figures")
    # Uploaded through the server, not written beside the project.
    assert any(server.artifacts_dir.rglob("metrics.json")) and not (project / "mlruns").exists()


@pytest.mark.slow
def test_unchanged_experiment_logs_no_run_until_forced(project, server):
    before = run_ids(server)
    out = dvc(project, server, "exp", "run")
    assert "Stage 'train' didn't change, skipping" in out
    assert run_ids(server) == before, "nothing ran, so nothing was logged"

    out = dvc(project, server, "exp", "run", "-f", "-s", "train", "evaluate")
    name = out.split("Ran experiment(s): ")[1].split()[0]
    (forced,) = [r for r in server.runs() if r["info"]["run_id"] not in before]
    assert forced["info"]["status"] == "FINISHED"
    assert forced["info"]["run_name"] == name  # the run is named after the DVC experiment
    assert {"key": "dvc_exp_name", "value": name} in forced["data"]["tags"]
    first = values(REPRO["run"]["data"]["tags"])["weights_sha256"]
    assert values(forced["data"]["tags"])["weights_sha256"] == first, "training is deterministic"


@pytest.mark.slow
def test_evaluate_alone_logs_a_new_run_and_keeps_the_first(project, server):
    """Only an eval.* value changes: DVC skips train, whose run already holds test metrics, so
    evaluate logs a run of its own that names the training's, and the first run keeps its numbers."""
    before = {r["info"]["run_id"]: r for r in server.runs()}
    weights = hashlib.sha256((project / "models/trained/weights.pt").read_bytes()).hexdigest()
    trained = [r for r in before.values() if values(r["data"]["tags"]).get("weights_sha256") == weights]
    train_run_id = max(trained, key=lambda r: r["info"]["start_time"])["info"]["run_id"]  # evaluate takes the newest
    first = values(before[train_run_id]["data"]["metrics"])
    assert "test/t2v_R1" in first

    out = dvc(project, server, "exp", "run", "-S", "eval.dsl=true")
    assert "Stage 'train' didn't change, skipping" in out and "Running stage 'evaluate'" in out
    runs = {r["info"]["run_id"]: r for r in server.runs()}
    (new_id,) = runs.keys() - before.keys()
    new = runs[new_id]
    assert new["info"]["status"] == "FINISHED"
    tags, params = values(new["data"]["tags"]), values(new["data"]["params"])
    assert tags["train_run_id"] == train_run_id and tags["created_by_stage"] == "evaluate"
    assert tags["method"] == "dgl" and params["eval.dsl"] == "True" and params["model.dgl.generator"] == "ulp"
    assert values(before[train_run_id]["data"]["params"])["eval.dsl"] == "False"
    metrics, shown = values(new["data"]["metrics"]), json.loads((project / "metrics.json").read_text())
    assert metrics["test/t2v_R1"] == pytest.approx(shown["t2v_R1"], abs=1e-4)
    assert params["count.trainable"] == values(before[train_run_id]["data"]["params"])["count.trainable"]
    assert "epoch/train_loss" not in metrics  # the training's curves stay with the training's run
    assert len({r["info"]["run_name"] for r in runs.values()}) == len(runs), "run names are unique"
    assert "metrics.json" in server.artifacts(new_id) and "plots/recall.json" in server.artifacts(new_id, "plots")

    original = runs[train_run_id]
    assert values(original["data"]["metrics"]) == first
    assert values(original["data"]["tags"])["created_by_stage"] == "train"
    history = server.get("metrics/get-history", run_id=train_run_id, metric_key="test/t2v_R1")["metrics"]
    assert len(history) == 1, "the first evaluation's numbers were not overwritten"


@pytest.mark.slow
def test_an_ablation_reruns_training_only_and_temp_experiments_do_not_stack(project, server):
    """The READMEs' ablations: `dvc exp run --temp -S ...` reruns training and evaluation only (DVC
    restores the data and the backbone), is an experiment with a run of its own, and leaves the
    workspace's params.yaml as it was, so the next experiment changes the baseline, not the previous
    experiment: the second changes only an eval.* value (one no other test sets: DVC's run cache
    would restore evaluate), so had the first's generator stayed, training would run again and log it."""
    before, runs_before = (project / "params.yaml").read_text(), run_ids(server)
    out = dvc(project, server, "exp", "run", "--temp", "-n", "upt-temp", "-S", "model.dgl.generator=upt")
    assert "Running stage 'train'" in out and "Running stage 'download'" not in out
    assert (project / "params.yaml").read_text() == before
    out = dvc(project, server, "exp", "run", "--temp", "-n", "eval-temp", "-S", "eval.batch_size=3")
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    assert len(run_ids(server) - runs_before) == 2  # one run per experiment
    logged = {r["info"]["run_name"]: r for r in server.runs()}
    assert logged["upt-temp"]["info"]["status"] == logged["eval-temp"]["info"]["status"] == "FINISHED"
    runs = {name: values(r["data"]["params"]) for name, r in logged.items()}
    first = values(REPRO["run"]["data"]["params"])
    assert runs["upt-temp"]["model.dgl.generator"] == "upt"
    assert runs["upt-temp"]["count.trainable"] != first["count.trainable"]
    assert (runs["eval-temp"]["model.dgl.generator"], runs["eval-temp"]["eval.batch_size"]) == ("ulp", "3")
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert {"upt-temp", "eval-temp"} <= {e["name"] for commit in shown for e in commit.get("experiments") or []}


def values(entries: list[dict]) -> dict:
    """MLflow's REST lists of {key, value} as a dict."""
    return {e["key"]: e["value"] for e in entries}


WORKER = """
import sys
from dgl.settings import TrackingConfig
from dgl.tracking.runs import mlflow_run

uri, worker, runs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for r in range(runs):
    cfg = TrackingConfig(uri=uri, experiment="concurrent", ui="http://127.0.0.1:5000", max_weights_mb=100)
    with mlflow_run(cfg, stage="train") as mlflow:
        mlflow.log_params({"worker": worker, "run": r, **{f"p{i}": i for i in range(20)}})
        for step in range(1, steps + 1):
            mlflow.log_metrics({"train_loss": 1.0 / step, "val_R1": step}, step=step)
"""


@pytest.mark.slow
def test_concurrent_processes_share_one_sqlite_store(tmp_path):
    """What `dvc queue start -j 4` does: workers create the store, the experiment and their runs
    at the same moment. None may be lost to 'database is locked'."""
    workers, runs, steps = 4, 3, 4
    db = tmp_path / "mlflow.db"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_ROOT": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"sqlite:///{db}", str(w), str(runs), str(steps)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
    with sqlite3.connect(db) as con:
        statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
        per_run = con.execute(
            "SELECT run_uuid, group_concat(step) FROM (SELECT run_uuid, step FROM metrics "
            "WHERE key = 'train_loss' ORDER BY step) GROUP BY run_uuid"
        ).fetchall()
        pairs = set(
            con.execute(
                "SELECT a.value, b.value FROM params a JOIN params b USING (run_uuid) "
                "WHERE a.key = 'worker' AND b.key = 'run'"
            )
        )
    assert statuses == ["FINISHED"] * workers * runs
    assert [s for _, s in per_run] == [",".join(map(str, range(1, steps + 1)))] * workers * runs
    assert pairs == {(str(w), str(r)) for w in range(workers) for r in range(runs)}


# ---- names, groups and provenance on a fresh store, without the pipeline ---------------------------

COUNTS = {"trainable": 10, "total": 1000, "trainable_ratio": 0.01, "trainable_clip": 0}
HISTORY = [
    {"train_loss": 2.0, "lr": 1e-3, "val_t2v_R1": 10.0, "val_v2t_R1": 12.0},
    {"train_loss": 1.5, "lr": 5e-4, "val_t2v_R1": 20.0, "val_v2t_R1": 22.0},
]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A folder standing for a repository (DVC_ROOT, the working directory) whose default store
    mlflow.db is not made yet; not under `dvc exp run`."""
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # unset (mlflow.set_tracking_uri sets it; undone after the test)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def log_training(stage: str = "train", run_id: str | None = None) -> str:
    """What the train and evaluate stages log, through the same calls; the run's id."""
    from dgl.settings import load_params
    from dgl.tracking.names import epoch_metrics, evaluation_metrics, run_label
    from dgl.tracking.runs import active_run_id, log_training_setup, mlflow_run

    params = load_params(ROOT / "params.yaml")
    with mlflow_run(params.tracking, run_id=run_id, stage=stage, label=run_label(params.model)) as mlflow:
        if run_id is None:
            log_training_setup(mlflow, params, params.model.method, COUNTS)
            for epoch, record in enumerate(HISTORY, start=1):
                mlflow.log_metrics(epoch_metrics(record), step=epoch)
        mlflow.log_metrics(evaluation_metrics({"t2v_R1": 30.0, "v2t_R1": 31.0, "pair_acc": 0.5}))
        return active_run_id()


@pytest.mark.slow
def test_the_ui_opens_a_training_experiment_with_unique_names_and_grouped_metrics(store):
    """Two trainings of one method in one store, then `mlflow ui` on that store, read over its REST API."""
    from dgl.tracking.names import as_metrics_json

    first, second = log_training(), log_training()
    with mlflow_ui(store, "ui") as url:
        rest = Rest(url, store / "mlruns")
        experiment = rest.get("experiments/get-by-name", experiment_name="dgl")["experiment"]
        runs = rest.runs()
        history = rest.get("metrics/get-history", run_id=first, metric_key="epoch/train_loss")["metrics"]
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "<html" in page.read().decode().lower()  # the UI itself is served
    assert values(experiment["tags"])["mlflow.experimentKind"] == "custom_model_development"
    assert experiment["artifact_location"] == (store / "mlruns" / "dgl").as_uri()
    names = [r["info"]["run_name"] for r in runs]
    assert {r["info"]["run_id"] for r in runs} == {first, second}
    assert len(set(names)) == 2 and all(re.fullmatch(r"dgl-ulp-\d{8}-\d{6}(-2)?", n) for n in names), names
    for found in runs:
        metrics, params = values(found["data"]["metrics"]), values(found["data"]["params"])
        assert sorted(metrics) == sorted(
            [
                "epoch/train_loss",
                "epoch/train_lr",
                "epoch/val_t2v_R1",
                "epoch/val_v2t_R1",
                "test/t2v_R1",
                "test/v2t_R1",
                "test/pair_acc",
            ]
        )  # charts: the curves, then the test results
        assert {k: v for k, v in params.items() if k.startswith("count.")} == {
            "count.trainable": "10",
            "count.total": "1000",
            "count.trainable_ratio": "0.01",
            "count.trainable_clip": "0",
        }
        # report.py reads them back under metrics.json's keys, as it does an older store's names
        assert as_metrics_json(metrics, params) == {
            "t2v_R1": 30.0,
            "v2t_R1": 31.0,
            "pair_acc": 0.5,
            "trainable_params": 10,
            "trainable_ratio": 0.01,
            "trainable_clip": 0,
            "val_t2v_R1": 20.0,
            "val_v2t_R1": 22.0,
        }
        assert as_metrics_json({"params/trainable": 10.0, "test/t2v_R1": 1.0}) == {
            "trainable_params": 10.0,
            "t2v_R1": 1.0,
        }
    assert [(m["step"], m["value"]) for m in sorted(history, key=lambda m: m["step"])] == [(1, 2.0), (2, 1.5)]
    old = {
        "test_t2v_R1": 1.0,
        "params_trainable": 2,
        "params_trainable_ratio": 0.1,
        "val_t2v_R1": 3.0,
        "lr": 0.1,
        "train_loss": 4.0,
    }
    assert as_metrics_json(old) == {"t2v_R1": 1.0, "trainable_params": 2, "trainable_ratio": 0.1, "val_t2v_R1": 3.0}


@pytest.mark.slow
def test_a_taken_name_gets_a_number_and_dvc_names_the_run(store, monkeypatch):
    import mlflow

    from dgl.tracking.runs import run_name

    monkeypatch.setenv("DVC_EXP_NAME", "upt")
    first, second = log_training(), log_training()  # `dvc exp run -n upt` twice (the second with -f)
    client = mlflow.MlflowClient()
    assert [client.get_run(r).info.run_name for r in (first, second)] == ["upt", "upt-2"]
    assert client.get_run(second).data.tags["dvc_exp_name"] == "upt"
    assert run_name(client, client.get_run(first).info.experiment_id, "upt") == "upt-3"
    assert run_name(client, client.get_run(first).info.experiment_id, "up") == "up"


def git(cwd: Path, *args: str) -> None:
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd)


@pytest.mark.slow
def test_runs_say_whether_the_code_was_committed_and_log_the_diff(store):
    import mlflow

    git(store, "init", "-q")
    shutil.copy(ROOT / ".gitignore", store / ".gitignore")  # the store: mlflow.db, mlruns/
    (store / "model.py").write_text("LAYERS = 4\n")
    (store / "params.yaml").write_text("lr: 1\n")
    (store / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: python -m evaluate\n    metrics:\n"
        "      - metrics.json:\n          cache: false\n"
    )
    git(store, "add", "-A")
    git(store, "commit", "-qm", "code")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store, capture_output=True, text=True).stdout.strip()
    (store / "model.py").write_text("LAYERS = 8\n")  # uncommitted code
    (store / "extra.py").write_text("NEW = 1\n")  # a new file, not ignored
    (store / "params.yaml").write_text("lr: 2\n")  # what `dvc exp run -S` does: not code
    (store / "metrics.json").write_text("{}\n")  # an output dvc.yaml declares: not code

    dirty = log_training()
    client = mlflow.MlflowClient()
    tags = client.get_run(dirty).data.tags
    assert tags["git_commit"] == head and tags["git_dirty"] == "true"
    diff = mlflow.artifacts.load_text(f"runs:/{dirty}/git/train.diff")
    assert "+LAYERS = 8" in diff and "+NEW = 1" in diff and "lr: 2" not in diff and "metrics.json" not in diff

    git(store, "add", "model.py", "extra.py")
    git(store, "commit", "-qm", "more code")
    log_training("evaluate", run_id=dirty)  # evaluate, clean, resumes the run: it stays dirty
    assert client.get_run(dirty).data.tags["git_dirty"] == "true"
    clean = log_training()
    assert client.get_run(clean).data.tags["git_dirty"] == "false"
    assert [a.path for a in client.list_artifacts(clean)] == []


@pytest.mark.slow
def test_a_moved_store_is_refused_in_one_line_until_relocated(store, monkeypatch, tmp_path_factory):
    """A project copied with its mlflow.db: MLflow's stored absolute artifact paths name the old
    tree, where the copy's runs would write. Every run checks; `python -m dgl.tracking relocate`
    points the store at the copy's mlruns/."""
    import mlflow

    from dgl.errors import UserError

    first = log_training()
    copy = tmp_path_factory.mktemp("moved") / "project"
    shutil.copytree(store, copy)
    monkeypatch.setenv("DVC_ROOT", str(copy))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.chdir(copy)
    with pytest.raises(UserError) as refused:
        log_training()
    message = str(refused.value)
    assert "\n" not in message and str(store / "mlruns" / "dgl") in message and str(copy / "mlruns" / "dgl") in message
    assert "python -m dgl.tracking relocate" in message

    shutil.copy(ROOT / "params.yaml", copy / "params.yaml")
    out = run(
        [sys.executable, "-m", "dgl.tracking", "relocate"],
        copy,
        env={"PYTHONPATH": str(ROOT), "DVC_ROOT": str(copy), "MLFLOW_TRACKING_URI": None},
    )
    assert f"and 1 runs now keep their artifacts in {copy / 'mlruns' / 'dgl'}" in out.stdout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    second = log_training()
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    for run_id in (first, second):
        assert client.get_run(run_id).info.artifact_uri == (copy / "mlruns" / "dgl" / run_id / "artifacts").as_uri()
    with mlflow.start_run(run_id=second):
        mlflow.log_text("x", "probe.txt")
    assert (copy / "mlruns" / "dgl" / second / "artifacts" / "probe.txt").is_file()
    assert not (store / "mlruns" / "dgl" / second).exists(), "nothing written into the old tree"


def test_one_line_per_epoch_off_a_terminal():
    from dgl.cli import EpochLog, duration

    log = io.StringIO()  # not a terminal, as a log file or `dvc queue logs`
    report = EpochLog(epochs=10, first=3, stream=log)
    report(3, {"train_loss": 1.23456, "lr": 1e-3, "val_t2v_R1": 45.04, "val_v2t_R1": 40.0})
    report(4, {"train_loss": 1.1, "lr": 1e-3})  # no validation split
    lines = log.getvalue().splitlines()
    assert re.fullmatch(r"epoch 3/10  loss 1\.2346  val R@1 45\.0 t2v / 40\.0 v2t  0s  ETA 0s", lines[0]), lines
    assert re.fullmatch(r"epoch 4/10  loss 1\.1000  0s  ETA 0s", lines[1]), lines
    assert [duration(s) for s in (7.4, 65, 3725)] == ["7s", "1m05s", "1h02m"]


def test_the_run_description_leads_with_the_numbers_and_names_what_changed():
    from dgl.tracking.provenance import ABSENT, changed_params
    from dgl.tracking.runs import description

    committed = {"model": {"dgl": {"generator": "ulp", "local_prompt_len": 4}}, "train": {"epochs": 4}}
    current = {"model": {"dgl": {"generator": "upt", "local_prompt_len": 4}}, "train": {"epochs": 1, "new": True}}
    changes = changed_params(current, committed)
    assert changes == [("model.dgl.generator", "ulp", "upt"), ("train.epochs", 4, 1), ("train.new", ABSENT, True)]
    text = description(
        {"t2v_R1": 47.6123, "content_R1": 65.0, "pair_acc": 0.6741, "v2t_R1": 43.0, "t2v_R5": 9.0},
        {"trainable": 285184, "trainable_ratio": 0.0342},
        changes,
    )
    assert text == (
        "t2v R@1 47.6 · content R@1 65.0 · pair acc 0.674 · v2t R@1 43.0 · trainable 285,184 "
        "(3.42 %)\n\nChanged from the committed params.yaml: `model.dgl.generator` ulp → upt, "
        "`train.epochs` 4 → 1, `train.new` (none) → True"
    )


def test_the_printed_link_goes_where_mlflow_ui_serves(monkeypatch):
    from dgl.tracking.names import run_url

    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    db = "sqlite:////tmp/mlflow.db"
    link = run_url(db, "1", "abc", "http://127.0.0.1:5055")
    assert link.startswith("http://127.0.0.1:5055/#/experiments/1/runs/abc?")
    monkeypatch.setenv("MLFLOW_UI_URL", "http://gpu-box:8080/")
    assert run_url(db, "1", "abc", "http://127.0.0.1:5055").startswith("http://gpu-box:8080/#/experiments/1/runs/abc?")
    assert run_url("http://server:5000", "1", "abc").startswith("http://server:5000/#/")  # a server is its own UI
