"""A research group: two people's clones of one project sharing a Git remote, a DVC remote and one
MLflow server whose store is PostgreSQL (a private cluster started here) with artifacts proxied by
the server. The second clone pulls every output instead of recomputing it; each person runs an
experiment, pushes it and pulls the other's; both runs meet in the server.

One scenario, run once (`group`), read by the tests below; the server stays up while they run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_tracking import Rest, mlflow_ui

from experiments.report import from_dvc_show
from helpers import ROOT, copy_project, free_port, run

DB_USER = "nobody"  # initdb refuses root: as root, the cluster runs as this user


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: Debian keeps them off PATH, in /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        pytest.fail("PostgreSQL is not installed (no initdb): `apt-get install -y postgresql`, as .ci/run does")
    return versions[-1].parent


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster on a free loopback port, in a fresh temporary folder (pytest's are
    private to their owner, and the cluster's user must reach it); yields the URI of its database
    `mlflow`. Stopped and removed when the block ends, whatever happened in it."""
    programs = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="dgl-postgres-"))
    as_user = []
    if os.geteuid() == 0:
        user = pwd.getpwnam(DB_USER)
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", DB_USER, "--"]
    data, port = folder / "data", free_port()

    def pg(program: str, *args: str, check: bool = True) -> None:
        out = subprocess.run([*as_user, str(programs / program), *args], capture_output=True, text=True)
        assert out.returncode == 0 or not check, f"{program} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"

    try:
        pg("initdb", "-D", str(data), "-U", "dgl", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        )
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dgl", "mlflow")
        yield f"postgresql://dgl@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders) of `root`, by relative path."""
    files = [f for p in paths for f in ([root / p] if (root / p).is_file() else sorted((root / p).rglob("*")))]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def outputs() -> list[str]:
    """Every output dvc.yaml declares."""
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            found += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind) or []]
    return found


EXPERIMENTS = {"alice": ("alice-1epoch", "train.epochs=1"), "bob": ("bob-lr", "train.lr=0.01")}


@dataclass
class Group:
    clones: dict[str, Path]
    server: Rest
    db: str
    said: dict[str, str] = field(default_factory=dict)  # what the commands printed
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # digests before any experiment
    shown: dict[str, dict] = field(default_factory=dict)  # `dvc exp show --json` per clone, experiments by name
    reports: dict[str, str] = field(default_factory=dict)  # `python -m experiments.report` per clone


def exp_show(clone: Path) -> dict[str, dict]:
    """The experiments of `dvc exp show --json` as experiments/report.py reads them: name -> params, metrics."""
    found, _ = from_dvc_show(json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout))
    return {e.name: {"params": e.params, "metrics": e.metrics} for e in found}


@pytest.fixture(scope="module")
def group(tmp_path_factory, tiny_repro) -> Iterator[Group]:
    base = tmp_path_factory.mktemp("group")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q", "--bare", str(base / "shared.git")], base)
    alice = copy_project(tiny_repro, base / "alice", mlflow_store=False)  # the group logs to its server
    run(["dvc", "remote", "add", "-d", "shared", str(base / "dvc-remote")], alice)  # README, "A DVC remote"
    run(git + ["add", "-A"], alice)  # dvc.lock, metrics.json, plots: what `dvc repro` made, and the remote
    run(git + ["commit", "-qm", "results, and the group's DVC remote"], alice)
    run(["git", "remote", "add", "origin", str(base / "shared.git")], alice)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], alice)
    run(["dvc", "push"], alice)
    run(["git", "clone", "-q", "-b", "main", str(base / "shared.git"), str(base / "bob")], base)
    bob = base / "bob"
    with (
        postgres() as db,
        mlflow_ui(
            base, "server", "--serve-artifacts", "--artifacts-destination", str(base / "artifacts"), store=db
        ) as url,
    ):
        found = Group({"alice": alice, "bob": bob}, Rest(url, base / "artifacts"), db)
        found.said["pull"] = run(["dvc", "pull"], bob).stdout
        found.outputs = {who: digests(clone, outputs()) for who, clone in found.clones.items()}
        found.said["status"] = run(["dvc", "status"], bob).stdout
        found.said["repro"] = run(["dvc", "repro"], bob).stdout
        for who, (name, change) in EXPERIMENTS.items():  # one after the other, into the same server
            run(["dvc", "exp", "run", "-n", name, "-S", change], found.clones[who], env={"MLFLOW_TRACKING_URI": url})
            run(["dvc", "exp", "push", "origin", name], found.clones[who])
        for who, other in (("alice", "bob"), ("bob", "alice")):
            run(["dvc", "exp", "pull", "origin", EXPERIMENTS[other][0]], found.clones[who])
        for who, clone in found.clones.items():
            found.shown[who] = exp_show(clone)
            found.reports[who] = run([sys.executable, "-m", "experiments.report"], clone).stdout
        yield found


@pytest.mark.slow
def test_a_second_clone_pulls_every_output_and_recomputes_nothing(group):
    assert group.outputs["bob"] == group.outputs["alice"]
    assert {
        "models/trained/weights.pt",
        "models/backbone/clip.pt",
        "data/cache/frames-00000.bin",
        "plots/figures/retrieval.png",
        "metrics.json",
    } <= set(group.outputs["bob"])  # not only what git holds
    assert "Data and pipelines are up to date." in group.said["status"]
    assert "Running stage" not in group.said["repro"] and "Data and pipelines are up to date." in group.said["repro"]


@pytest.mark.slow
def test_experiments_pushed_by_one_clone_are_pulled_by_the_other_with_their_metrics(group):
    alice, bob = group.shown["alice"], group.shown["bob"]
    assert set(alice) == set(bob) == {name for name, _ in EXPERIMENTS.values()}
    assert alice == bob
    assert alice["alice-1epoch"]["params"]["train.epochs"] == 1 and bob["bob-lr"]["params"]["train.lr"] == 0.01
    assert alice["alice-1epoch"]["metrics"] != alice["bob-lr"]["metrics"]
    assert group.reports["alice"] == group.reports["bob"]
    assert "alice-1epoch" in group.reports["alice"] and "bob-lr" in group.reports["alice"]


@pytest.mark.slow
def test_both_runs_meet_in_one_tracking_server_on_postgresql(group):
    import psycopg

    runs = {r["info"]["run_name"]: r for r in group.server.runs()}
    assert set(runs) == {name for name, _ in EXPERIMENTS.values()}
    for who, (name, change) in EXPERIMENTS.items():
        found = runs[name]
        assert found["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in found["data"]["params"]}
        key, value = change.split("=")
        assert params[key] == value and params["model.method"] == "dgl"
        metrics = {m["key"]: m["value"] for m in found["data"]["metrics"]}
        shown = group.shown[who][name]["metrics"]
        assert metrics["test/t2v_R1"] == pytest.approx(shown["t2v_R1"])
        curve = group.server.get("metrics/get-history", run_id=found["info"]["run_id"], metric_key="epoch/train_loss")
        assert len(curve["metrics"]) == group.shown[who][name]["params"]["train.epochs"]
        run_id = found["info"]["run_id"]
        assert {"metrics.json", "params.yaml", "plots"} <= group.server.artifacts(run_id)
        assert "plots/figures/retrieval.png" in group.server.artifacts(run_id, "plots/figures")
    assert len(list(group.server.artifacts_dir.rglob("retrieval.png"))) == 2  # uploaded through the server
    assert not (group.clones["bob"] / "mlruns").exists()
    with psycopg.connect(group.db) as con:  # the store is PostgreSQL
        assert [name for (name,) in con.execute("SELECT name FROM runs ORDER BY name")] == sorted(runs)


def test_mlflow_tracking_uri_wins_over_params(monkeypatch):
    from dgl.settings import TrackingConfig
    from dgl.tracking.store import tracking_uri

    cfg = TrackingConfig(
        uri="http://params-server:5000", experiment="dgl", ui="http://127.0.0.1:5000", max_weights_mb=100
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://group-server:5000")
    assert tracking_uri(cfg) == "http://group-server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert tracking_uri(cfg) == "http://params-server:5000"
