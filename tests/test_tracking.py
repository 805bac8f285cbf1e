"""MLflow as the researcher sees it: the pipeline logging to a real `mlflow server`, read back over
its REST API; an experiment whose stages DVC skips, which logs nothing until forced; an evaluation
re-run alone, which gets a run of its own; and several processes writing one SQLite store at once."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, ROOT, make_project, run, tiny_params

EPOCHS = tiny_params()["train"]["epochs"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        request = urllib.request.Request(self.api + endpoint, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def runs(self, experiment: str = "dgl") -> list[dict]:
        experiment_id = self.get("experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
        return self.post("runs/search", {"experiment_ids": [experiment_id]}).get("runs", [])

    def artifacts(self, run_id: str, path: str = "") -> set[str]:
        files = self.get("artifacts/list", run_id=run_id, path=path).get("files", [])
        return {f["path"] for f in files}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Rest:
    """`mlflow server` on a free local port: SQLite backend, artifacts uploaded through the server."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{(root / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
                time.sleep(0.5)
        yield Rest(url, root / "artifacts")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's workers are in its process group
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, server) -> Path:
    root = make_project(tmp_path_factory.mktemp("project"), tiny_params())
    dvc(root, server, "repro")
    return root


def dvc(project: Path, server: Rest, *args: str) -> str:
    return run(["dvc", *args], project, env={"MLFLOW_TRACKING_URI": server.url}).stdout


def test_pipeline_run_is_complete_on_a_tracking_server(project, server):
    (found,) = server.runs()
    run_id, data = found["info"]["run_id"], found["data"]
    assert found["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["model.dgl.generator"] == "ulp" and params["train.epochs"] == str(EPOCHS)
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert metrics["params_trainable"] > 0 and metrics["params_total"] > metrics["params_trainable"]
    assert metrics["params_trainable_ratio"] == pytest.approx(metrics["params_trainable"] / metrics["params_total"],
                                                              rel=1e-3)
    assert {"test_t2v_R1", "test_v2t_R1", "val_t2v_R1"} <= metrics.keys()
    history = server.get("metrics/get-history", run_id=run_id, metric_key="train_loss")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, EPOCHS + 1))
    tags = {t["key"]: t["value"] for t in data["tags"]}
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert tags["method"] == "dgl" and tags["git_commit"] == head and tags["stage"] == "evaluate"
    assert {"metrics.json", "params.yaml", "dvc.lock", "plots"} <= server.artifacts(run_id)
    assert {"plots/train.json", "plots/recall.json", "plots/figures"} <= server.artifacts(run_id, "plots")
    assert "plots/figures/retrieval.png" in server.artifacts(run_id, "plots/figures")
    # Uploaded through the server, not written beside the project.
    assert any(server.artifacts_dir.rglob("metrics.json")) and not (project / "mlruns").exists()


def test_unchanged_experiment_logs_no_run_until_forced(project, server):
    out = dvc(project, server, "exp", "run")
    assert "Stage 'train' didn't change, skipping" in out
    assert len(server.runs()) == 1, "nothing ran, so nothing was logged"

    out = dvc(project, server, "exp", "run", "-f", "-s", "train", "evaluate")
    name = out.split("Ran experiment(s): ")[1].split()[0]
    runs = server.runs()
    assert len(runs) == 2 and all(r["info"]["status"] == "FINISHED" for r in runs)
    (forced,) = [r for r in runs if r["info"]["run_name"] == name]  # the run is named after the DVC experiment
    assert {"key": "dvc_exp_name", "value": name} in forced["data"]["tags"]


def test_evaluate_alone_logs_a_new_run_and_keeps_the_first(project, server):
    """Only an eval.* value changes: DVC skips train, whose run already holds test metrics, so
    evaluate logs a run of its own that names the training's, and the first run keeps its numbers."""
    before = {r["info"]["run_id"]: r for r in server.runs()}
    weights = hashlib.sha256((project / "models/trained/weights.pt").read_bytes()).hexdigest()
    trained = [r for r in before.values() if values(r["data"]["tags"]).get("weights_sha256") == weights]
    assert len(trained) == 2, "the forced rerun trained the very same weights (training is deterministic)"
    train_run_id = max(trained, key=lambda r: r["info"]["start_time"])["info"]["run_id"]  # evaluate takes the newest
    first = values(before[train_run_id]["data"]["metrics"])
    assert "test_t2v_R1" in first

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
    assert metrics["test_t2v_R1"] == pytest.approx(shown["t2v_R1"], abs=1e-4)
    assert metrics["params_trainable"] == first["params_trainable"]
    assert "train_loss" not in metrics  # the training's curves stay with the training's run
    assert "metrics.json" in server.artifacts(new_id) and "plots/recall.json" in server.artifacts(new_id, "plots")

    original = runs[train_run_id]
    assert values(original["data"]["metrics"]) == first
    assert values(original["data"]["tags"])["created_by_stage"] == "train"
    history = server.get("metrics/get-history", run_id=train_run_id, metric_key="test_t2v_R1")["metrics"]
    assert len(history) == 1, "the first evaluation's numbers were not overwritten"


def values(entries: list[dict]) -> dict:
    """MLflow's REST lists of {key, value} as a dict."""
    return {e["key"]: e["value"] for e in entries}


WORKER = """
import sys
from dgl.settings import TrackingConfig
from dgl.tracking import mlflow_run

uri, worker, runs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for r in range(runs):
    with mlflow_run(TrackingConfig(uri=uri, experiment="concurrent"), stage="train") as mlflow:
        mlflow.log_params({"worker": worker, "run": r, **{f"p{i}": i for i in range(20)}})
        for step in range(1, steps + 1):
            mlflow.log_metrics({"train_loss": 1.0 / step, "val_R1": step}, step=step)
"""


def test_concurrent_processes_share_one_sqlite_store(tmp_path):
    """What `dvc queue start -j 4` does: workers create the store, the experiment and their runs
    at the same moment. None may be lost to 'database is locked'."""
    workers, runs, steps = 4, 3, 4
    db = tmp_path / "mlflow.db"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_ROOT": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, str(script), f"sqlite:///{db}", str(w), str(runs), str(steps)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for w in range(workers)]
    for proc in procs:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
    with sqlite3.connect(db) as con:
        statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
        per_run = con.execute("SELECT run_uuid, group_concat(step) FROM (SELECT run_uuid, step FROM metrics "
                              "WHERE key = 'train_loss' ORDER BY step) GROUP BY run_uuid").fetchall()
        pairs = set(con.execute("SELECT a.value, b.value FROM params a JOIN params b USING (run_uuid) "
                                "WHERE a.key = 'worker' AND b.key = 'run'"))
    assert statuses == ["FINISHED"] * workers * runs
    assert [s for _, s in per_run] == [",".join(map(str, range(1, steps + 1)))] * workers * runs
    assert pairs == {(str(w), str(r)) for w in range(workers) for r in range(runs)}
