"""MLflow: one run per train+evaluate pair, in sqlite:///<repo>/mlflow.db unless told otherwise."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from dgl.errors import UserError
from dgl.settings import repo_root

# Fail fast with one clear line when a tracking server is down, instead of minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _git_commit(root: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


@contextlib.contextmanager
def mlflow_run(cfg, *, run_id: str | None = None, stage: str) -> Iterator["object"]:
    """Start (or resume, given `run_id`) the MLflow run; yields the mlflow module."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    try:
        if run_id is None:
            mlflow.set_experiment(cfg.experiment)
        name = os.environ.get("DVC_EXP_NAME") or None
        with mlflow.start_run(run_id=run_id, run_name=name) as run:
            mlflow.set_tags({"stage": stage, "git_commit": _git_commit(repo_root()),
                             **({"dvc_exp_name": name} if name else {}),
                             **({"dvc_baseline_rev": os.environ["DVC_EXP_BASELINE_REV"]}
                                if os.environ.get("DVC_EXP_BASELINE_REV") else {})})
            yield mlflow
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {str(e).splitlines()[0][:200]}; start the server or set "
                        "tracking.uri (or MLFLOW_TRACKING_URI)") from None


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id
