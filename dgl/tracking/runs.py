"""A run's life: start or resume it (`mlflow_run`, `evaluation_run`), log to it, describe it, find
it again (`training_run_of`, `named_run`), end one that its process left running (`end_abandoned_run`)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dgl.errors import UserError
from dgl.tracking.names import (
    EPOCH,
    HEADLINE,
    MODEL_ARTIFACT,
    WEIGHTS_TAG,
    count_params,
    epoch_metrics,
    has_test_metrics,
    run_label,
    run_url,
)
from dgl.tracking.provenance import ABSENT, changed_params, committed_params, git_state
from dgl.tracking.store import ensure_experiment, reported, store_lock, tracking_uri
from dgl.typed_yaml import flatten, read_yaml


def run_name(client, experiment_id: str, name: str) -> str:
    """`name`, or the first of `name-2`, `name-3`, ... that no run of the experiment has (deleted ones included)."""
    from mlflow.entities import ViewType

    like = name.replace("'", "").replace("%", "")
    taken = {
        r.info.run_name
        for r in client.search_runs(
            [experiment_id], f"attributes.run_name LIKE '{like}%'", run_view_type=ViewType.ALL, max_results=5000
        )
    }
    return next(n for n in (name, *(f"{name}-{i}" for i in range(2, len(taken) + 3))) if n not in taken)


@contextlib.contextmanager
def mlflow_run(
    cfg, *, run_id: str | None = None, stage: str, label: str = "run", tags: dict[str, str] | None = None
) -> Iterator[object]:
    """Start (or resume, given `run_id`) the MLflow run; yields the mlflow module.

    A new run is named after the DVC experiment (`dvc exp run`), else `<label>-<time>` (`run_label`),
    unique in the experiment (`run_name`). Tags: the stage that last wrote the run, `git_commit` and
    `git_dirty` (with the uncommitted code as `git/<stage>.diff`), and under DVC the experiment name
    and the baseline revision it branched from. A new run also gets `created_by_stage` and `tags`."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    dvc_name = os.environ.get("DVC_EXP_NAME") or None
    git = git_state(Path.cwd())
    tags = {
        **({} if run_id else {"created_by_stage": stage, **(tags or {})}),
        "stage": stage,
        "dvc_exp_name": dvc_name,
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
        # what ran, instead of MLflow's guess (the script's path: a deleted temporary copy under --temp)
        "mlflow.source.name": f"pipelines/{stage}.py (dvc stage {stage})",
        "mlflow.source.type": "LOCAL",
    }
    if git is not None:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = git[0]
        if git[1] or not run_id:  # a resumed run stays dirty once a stage ran uncommitted code
            tags["git_dirty"] = str(bool(git[1])).lower()
    with reported(uri):
        if run_id:
            active = mlflow.start_run(run_id=run_id)
        else:
            with store_lock(uri):
                experiment_id = ensure_experiment(mlflow, uri, cfg.experiment)
                name = run_name(
                    mlflow.MlflowClient(), experiment_id, dvc_name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
                )
                active = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        with active:
            mlflow.set_tags({k: v for k, v in tags.items() if v})
            if git is not None and git[1]:
                mlflow.log_text(git[1], f"git/{stage}.diff")
            yield mlflow
        info = active.info
    shown = re.sub(r"//[^/@]*@", "//", uri)  # no password from a database URI in a log
    print(
        f"MLflow: run {info.run_name!r} ({stage}) in {shown}: "
        f"{run_url(shown, info.experiment_id, info.run_id, cfg.ui)}",
        file=sys.stderr,
    )


def log_training_setup(mlflow, params, method: str, counts: dict[str, float]) -> None:
    """What identifies a training in its run: every param flattened, the method, the parameter counts."""
    mlflow.log_params({**flatten(params), **count_params(counts)})
    mlflow.set_tag("method", method)


def description(metrics: dict[str, float], counts: dict[str, float], changes: list[tuple[str, object, object]]) -> str:
    """The run's description (`mlflow.note.content`, the top of its page in the UI): the headline
    numbers, then what differs from the committed params.yaml."""
    shown = [f"{label} {metrics[key]:{fmt}}" for label, key, fmt in HEADLINE if key in metrics]
    lines = [" · ".join(shown + [f"trainable {counts['trainable']:,.0f} ({100 * counts['trainable_ratio']:.3g} %)"])]
    if changes:
        lines.append(
            "Changed from the committed params.yaml: "
            + ", ".join(
                f"`{k}` {'(none)' if old is ABSENT else old} → {'(none)' if new is ABSENT else new}"
                for k, old, new in changes
            )
        )
    else:
        lines.append("The committed params.yaml, unchanged.")
    return "\n\n".join(lines)


def describe_run(mlflow, metrics: dict[str, float], counts: dict[str, float], path: str) -> None:
    """Set the run's description (`description`): headline numbers and the params changed from the commit."""
    changes = changed_params(read_yaml(Path(path)), committed_params(Path.cwd(), path))
    mlflow.set_tag("mlflow.note.content", description(metrics, counts, changes))


def _get_run(client, run_id: str):
    """The run `run_id` of this store, or None when the store lacks it (any other MLflow error is raised)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _claim_for_evaluation(client, run_id: str, test_metrics: dict[str, float]) -> str | None:
    """Log `test_metrics` to the training's run and return None; or, when that run already holds
    test metrics or is absent from this store or deleted, write nothing and return why not."""
    from mlflow.entities import Metric

    run = _get_run(client, run_id)
    if run is None:
        return "is not in this store"
    if run.info.lifecycle_stage == "deleted":
        return "is deleted"
    if has_test_metrics(run.data.metrics):
        return "already has test metrics"
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in test_metrics.items()])
    return None


@contextlib.contextmanager
def evaluation_run(
    params, train_run_id: str | None, test_metrics: dict[str, float], *, method: str, counts: dict[str, float]
) -> Iterator[object]:
    """The run that evaluate writes to, with `test_metrics` (evaluation_metrics) already logged; yields
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
        with reported(uri), store_lock(uri):
            why_not = _claim_for_evaluation(mlflow.MlflowClient(uri), train_run_id, test_metrics)
    if why_not is None:
        with mlflow_run(cfg, run_id=train_run_id, stage="evaluate") as run:
            yield run
        return
    extra = {"train_run_id": train_run_id} if train_run_id else {}
    with mlflow_run(cfg, stage="evaluate", label=run_label(params.model), tags=extra) as run:
        log_training_setup(run, params, method, counts)
        run.log_metrics(test_metrics)
        print(
            f"MLflow: the training's run {train_run_id} {why_not}; this evaluation is logged as the new "
            f"run {active_run_id()}",
            file=sys.stderr,
        )
        yield run


def training_run_of(cfg, weights_sha256: str) -> str | None:
    """The newest run that saved these exact weights (tag `weights_sha256`), or None."""
    import mlflow

    uri = tracking_uri(cfg)
    with reported(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.{WEIGHTS_TAG} = '{weights_sha256}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return runs[0].info.run_id if runs else None


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def log_files(mlflow, paths) -> None:
    """Log those of `paths` that exist."""
    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path))


def log_trained(mlflow, trained_dir: Path, max_mb: float) -> None:
    """The trained method (its trainable weights and model.json) as the run's artifact `model/`, when
    the weights are at most `max_mb` (tracking.max_weights_mb): what `python -m dgl.search --run`
    loads. Larger ones (full fine-tuning) are left out with a tag and a line that say how to keep them."""
    size_mb = sum(f.stat().st_size for f in Path(trained_dir).iterdir() if f.is_file()) / 2**20
    if size_mb <= max_mb:
        mlflow.log_artifacts(str(trained_dir), artifact_path=MODEL_ARTIFACT)
        return
    why = f"{size_mb:.0f} MB > tracking.max_weights_mb = {max_mb:g}"
    mlflow.set_tag("model_not_logged", why)
    print(f"MLflow: the trained weights are not logged with the run ({why}; raise it to keep them)", file=sys.stderr)


def named_run(cfg, name: str):
    """The newest run of the tracking experiment named `name` (its run name or DVC experiment name)."""
    import mlflow

    uri = tracking_uri(cfg)
    with reported(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        runs = (
            []
            if experiment is None
            else [
                run
                for where in (f"attributes.run_name = '{name}'", f"tags.dvc_exp_name = '{name}'")
                for run in client.search_runs(
                    [experiment.experiment_id], where, order_by=["attributes.start_time DESC"]
                )
            ]
        )
    if not runs:
        raise UserError(
            f"MLflow at {uri}: no run named {name!r} in experiment {cfg.experiment!r}; "
            "the names are those the MLflow UI and `python -m experiments.show` list"
        )
    return max(runs, key=lambda r: r.info.start_time)


def trained_of_run(cfg, name: str, dest: Path) -> Path:
    """Download the trained method (`model/`, log_trained) of the run named `name` (named_run) into
    `dest`; returns the folder load_trained reads."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar for a few MB is noise
    run = named_run(cfg, name)
    uri = tracking_uri(cfg)
    with reported(uri):
        client = mlflow.MlflowClient(uri)
        logged = {f.path for f in client.list_artifacts(run.info.run_id, MODEL_ARTIFACT)}
        if f"{MODEL_ARTIFACT}/weights.pt" not in logged:
            why = run.data.tags.get("model_not_logged", "logged before runs kept their weights")
            raise UserError(
                f"MLflow run {name!r} ({run.info.run_id}) holds no trained weights ({why}); "
                "use --trained DIR with the experiment's models/trained (`dvc exp apply` it)"
            )
        client.download_artifacts(run.info.run_id, MODEL_ARTIFACT, str(dest))
    return Path(dest) / MODEL_ARTIFACT


def end_abandoned_run(cfg, run_id: str | None) -> None:
    """End as KILLED the MLflow run of a checkpoint no run will resume (dgl/checkpoint.py), when it is
    still RUNNING: its process was killed. A run this store lacks, or one that ended, is left alone."""
    if not run_id:
        return
    import mlflow

    uri = tracking_uri(cfg)
    with reported(uri):
        client = mlflow.MlflowClient(uri)
        run = _get_run(client, run_id)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
            print(f"MLflow: run {run_id} of that checkpoint ended as KILLED", file=sys.stderr)


def resumable_run(cfg, run_id: str) -> str | None:
    """`run_id` when this store holds it (not deleted), so a resumed training goes on in its run;
    else None, with a notice: the training then logs a new run."""
    import mlflow

    uri = tracking_uri(cfg)
    with reported(uri):
        run = _get_run(mlflow.MlflowClient(uri), run_id)
    if run is not None and run.info.lifecycle_stage != "deleted":
        return run_id
    print(
        f"MLflow: the checkpoint's run {run_id} is not in {uri}; the resumed training logs a new run", file=sys.stderr
    )
    return None


def log_missing_epochs(mlflow, history: list[dict]) -> None:
    """Log the epochs of a resumed training's `history` that its run lacks: a run killed after an
    epoch's checkpoint but before its metrics reached MLflow (or resumed in a new run) gets them here."""
    client = mlflow.MlflowClient()
    run_id = active_run_id()
    logged = {m.step for m in client.get_metric_history(run_id, EPOCH + "train_loss")}
    for epoch, record in enumerate(history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(epoch_metrics(record), step=epoch)
