"""MLflow: one run per train+evaluate pair, in sqlite:///<repo>/mlflow.db unless told otherwise.

The train stage starts the run and stores its id in models/trained/model.json; the evaluate stage
resumes it. Several stages may write one SQLite store at once (`dvc queue start -j 2`): a file
lock beside the database serialises its creation and the experiment's, which would otherwise
race through MLflow's schema migrations; later writes are short transactions that SQLite's
busy timeout (20 s, set by MLflow) queues (tests/test_tracking.py: 4 processes at once). With many
workers, route them through one server instead: `mlflow server --backend-store-uri
sqlite:///mlflow.db --port 5000`, then `MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dvc queue start -j N`
(the workers that command starts inherit the variable).

Only code that runs logs. A stage that DVC skips as unchanged, or restores from its run cache,
runs nothing, so an experiment made of such stages adds no MLflow run: its numbers are those of
the earlier run named by `mlflow_run_id` in models/trained/model.json. To log a fresh run anyway,
force the two tracked stages: `dvc exp run -f -s train evaluate` (see experiments/README.md).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from dgl.errors import UserError
from dgl.settings import repo_root

# Fail fast with one clear line when a tracking server is down, instead of minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

SQLITE = "sqlite:///"


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"{SQLITE}{repo_root() / 'mlflow.db'}"


def _git_commit(root: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    return FileLock(uri.removeprefix(SQLITE) + ".lock") if uri.startswith(SQLITE) else contextlib.nullcontext()


def _experiment_id(mlflow, uri: str, name: str) -> str:
    """The experiment's id, created on first use. With SQLite its artifacts go to <repo>/mlruns/<name>,
    not under the working directory, which for a queued experiment is a temporary copy."""
    with _store_lock(uri):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = (repo_root() / "mlruns" / name).as_uri() if uri.startswith(SQLITE) else None
        return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def mlflow_run(cfg, *, run_id: str | None = None, stage: str) -> Iterator["object"]:
    """Start (or resume, given `run_id`) the MLflow run; yields the mlflow module.

    Tags: the stage that last wrote the run, the git commit, and under DVC the experiment name (also
    the run name) and the baseline revision it branched from."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("DVC_EXP_NAME") or None
    tags = {"stage": stage, "git_commit": _git_commit(repo_root()),
            "dvc_exp_name": name, "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    try:
        experiment_id = None if run_id else _experiment_id(mlflow, uri, cfg.experiment)
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name):
            mlflow.set_tags({k: v for k, v in tags.items() if v})
            yield mlflow
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {str(e).splitlines()[0][:200]}; start the server or set "
                        "tracking.uri (or MLFLOW_TRACKING_URI)") from None


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def log_files(mlflow, paths) -> None:
    """Log those of `paths` that exist (dvc.lock is absent before the first `dvc repro`)."""
    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path))
