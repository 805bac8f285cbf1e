"""MLflow: one run per train+evaluate pair, in sqlite:///<repo>/mlflow.db unless told otherwise.

The train stage starts the run and tags it with the sha256 of the weights it saved
(`weights_sha256`); the evaluate stage finds the newest run with the weights it evaluates and
resumes it. No run id is written into a DVC output: training is deterministic, so the same params
give byte-identical outputs and the committed dvc.lock stays valid on every machine. Several stages may write one SQLite store at once (`dvc queue start -j 2`): a file
lock beside the database serialises its creation and the experiment's, which would otherwise
race through MLflow's schema migrations; later writes are short transactions that SQLite's
busy timeout (20 s, set by MLflow) queues (tests/test_tracking.py: 4 processes at once). With many
workers, route them through one server instead: `mlflow server --backend-store-uri
sqlite:///mlflow.db --port 5000`, then `MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dvc queue start -j N`
(the workers that command starts inherit the variable).

Only code that runs logs. A stage that DVC skips as unchanged, or restores from its run cache,
runs nothing, so an experiment made of such stages adds no MLflow run: its numbers are those of
the earlier run with the same `weights_sha256` tag (search `tags.weights_sha256 = '...'` in the
UI; the hash is that of models/trained/weights.pt). To log a fresh run anyway,
force the two tracked stages: `dvc exp run -f -s train evaluate` (see experiments/README.md).
When evaluate runs alone on a training whose run already holds test metrics (`dvc exp run -S
eval.dsl=true`), it logs a new run that names the training's in its `train_run_id` tag, and
leaves the first run's numbers as they were (`evaluation_run`).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from dgl.config import flatten
from dgl.errors import UserError
from dgl.settings import repo_root

# Fail fast with one clear line when a tracking server is down, instead of minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

SQLITE = "sqlite:///"
TEST_PREFIX = "test_"  # the metrics evaluate logs; train logs train_*, val_* and params_*
WEIGHTS_TAG = "weights_sha256"  # how evaluate finds the training's run


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
def _reported(uri: str) -> Iterator[None]:
    """An MLflow error (server down, store unreadable) becomes one line naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        raise UserError(f"MLflow at {uri}: {str(e).splitlines()[0][:200]}; start the server or set "
                        "tracking.uri (or MLFLOW_TRACKING_URI)") from None


@contextlib.contextmanager
def mlflow_run(cfg, *, run_id: str | None = None, stage: str,
               tags: dict[str, str] | None = None) -> Iterator["object"]:
    """Start (or resume, given `run_id`) the MLflow run; yields the mlflow module.

    Tags: the stage that last wrote the run, the git commit, and under DVC the experiment name (also
    the run name) and the baseline revision it branched from. A new run also gets `created_by_stage`
    and the given `tags`."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    name = os.environ.get("DVC_EXP_NAME") or None
    tags = {**({} if run_id else {"created_by_stage": stage, **(tags or {})}),
            "stage": stage, "git_commit": _git_commit(repo_root()),
            "dvc_exp_name": name, "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV")}
    with _reported(uri):
        experiment_id = None if run_id else _experiment_id(mlflow, uri, cfg.experiment)
        with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name):
            mlflow.set_tags({k: v for k, v in tags.items() if v})
            yield mlflow


def log_training_setup(mlflow, params, method: str, counts: dict[str, float]) -> None:
    """What identifies a training in its run: every param flattened, the method, the parameter counts."""
    mlflow.log_params(flatten(params))
    mlflow.set_tag("method", method)
    mlflow.log_metrics({f"params_{k}": v for k, v in counts.items()})


def _claim_for_evaluation(client, run_id: str, test_metrics: dict[str, float]) -> str | None:
    """Log `test_metrics` to the training's run and return None; or, when that run already holds
    test metrics or is absent from this store or deleted, write nothing and return why not."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return "is not in this store"
        raise
    if run.info.lifecycle_stage == "deleted":
        return "is deleted"
    if any(k.startswith(TEST_PREFIX) for k in run.data.metrics):
        return "already has test metrics"
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in test_metrics.items()])
    return None


@contextlib.contextmanager
def evaluation_run(params, train_run_id: str | None, test_metrics: dict[str, float], *, method: str,
                   counts: dict[str, float]) -> Iterator["object"]:
    """The run that evaluate writes to, with `test_metrics` (keys test_*) already logged; yields
    the mlflow module, as `mlflow_run` does.

    Normally the training's run, `train_run_id`. When that run already holds test metrics, because
    evaluate re-ran alone (an `eval.*` change, with train skipped or restored from DVC's run cache),
    or when this store lacks it, a new run takes them instead, so the earlier numbers stay as they
    were. The new run carries what train would have logged (`log_training_setup`) and the tag
    `train_run_id`. The check and the first write share the store's lock, so two evaluations of
    one training at once cannot both take its run."""
    import mlflow

    cfg = params.tracking
    uri = tracking_uri(cfg)
    why_not = "is unknown"
    if train_run_id:
        with _reported(uri), _store_lock(uri):
            why_not = _claim_for_evaluation(mlflow.MlflowClient(uri), train_run_id, test_metrics)
    if why_not is None:
        with mlflow_run(cfg, run_id=train_run_id, stage="evaluate") as run:
            yield run
        return
    extra = {"train_run_id": train_run_id} if train_run_id else {}
    with mlflow_run(cfg, stage="evaluate", tags=extra) as run:
        log_training_setup(run, params, method, counts)
        run.log_metrics(test_metrics)
        print(f"MLflow: the training's run {train_run_id} {why_not}; this evaluation is logged as the new "
              f"run {active_run_id()}", file=sys.stderr)
        yield run


def training_run_of(cfg, weights_sha256: str) -> str | None:
    """The newest run that saved these exact weights (tag `weights_sha256`), or None."""
    import mlflow

    uri = tracking_uri(cfg)
    with _reported(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], f"tags.{WEIGHTS_TAG} = '{weights_sha256}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def log_files(mlflow, paths) -> None:
    """Log those of `paths` that exist (dvc.lock is absent before the first `dvc repro`)."""
    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path))
