"""What things are called in MLflow: metric groups, tags, the artifact of the trained method, the
run's name outside `dvc exp run`, its URL in the UI. Pure functions: nothing here reaches a store."""

from __future__ import annotations

import os

WEIGHTS_TAG = "weights_sha256"  # how evaluate finds the training's run
# The UI's experiment kinds: "custom_model_development" is its "Machine learning" (runs, charts);
# MLflow 3.17 itself opens whichever workflow its sidebar switch (or ?workflowType=) says.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
UI_VIEW = "workflowType=machine_learning"  # the URL query that opens the model-training view
# Metric groups (one chart section each in the UI, in alphabetical order: curves first).
EPOCH, PARAMS, TEST = "epoch/", "params/", "test/"  # PARAMS: the counts, in runs logged before COUNT
COUNT = "count."  # the parameter counts, as params (count_params)
LEGACY_TEST = "test_"  # stores written before the groups
HEADLINE = (
    ("t2v R@1", "t2v_R1", ".1f"),
    ("content R@1", "content_R1", ".1f"),
    ("pair acc", "pair_acc", ".3f"),
    ("v2t R@1", "v2t_R1", ".1f"),
)  # the run description's numbers, from dgl.metrics' keys
MODEL_ARTIFACT = "model"  # the run's copy of models/trained (trainable weights and model.json): log_trained


def epoch_metrics(record: dict[str, float]) -> dict[str, float]:
    """One epoch of dgl.train's history (train_loss, lr, lr_clip, val_*) as MLflow names it."""
    return {EPOCH + (f"train_{k}" if k.startswith("lr") else k): v for k, v in record.items()}


def evaluation_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """dgl.metrics' results (t2v_R1, ...) as MLflow names them."""
    return {TEST + k: v for k, v in metrics.items()}


def count_params(counts: dict[str, float]) -> dict[str, float]:
    """count_parameters' counts (trainable, total, trainable_ratio, ...) as MLflow params: constants of
    the run, so they are columns and filters, not charts (older runs have them as `params/` metrics)."""
    return {COUNT + k: v for k, v in counts.items()}


def has_test_metrics(metrics) -> bool:
    return any(k.startswith((TEST, LEGACY_TEST)) for k in metrics)


def as_metrics_json(logged: dict[str, float], params: dict[str, str] | None = None) -> dict[str, float]:
    """A run's MLflow metrics (and the counts among its `params`) under metrics.json's keys (t2v_R1,
    trainable_params, trainable_ratio, trainable_clip, val_*: the last epoch's), from any naming the
    store holds (counts as params, as `params/` metrics, or the older flat names)."""
    out: dict[str, float] = {}
    counts = {"trainable": "trainable_params", "trainable_ratio": "trainable_ratio", "trainable_clip": "trainable_clip"}
    logged_counts = {k: float(v) for k, v in (params or {}).items() if k.startswith(COUNT)}
    for key, value in {**logged, **logged_counts}.items():
        for prefix in (TEST, LEGACY_TEST):
            if key.startswith(prefix):
                out[key.removeprefix(prefix)] = value
        for prefix in (COUNT, PARAMS, "params_"):
            if key.startswith(prefix) and key.removeprefix(prefix) in counts:
                out[counts[key.removeprefix(prefix)]] = value
        name = key.removeprefix(EPOCH)
        if name.startswith("val_"):
            out[name] = value
    return out


def run_label(model) -> str:
    """What a training is, for its run's name outside `dvc exp run`: the method (and DGL's generator)."""
    return f"dgl-{model.dgl.generator}" if model.method == "dgl" else model.method


def run_url(uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the UI shows a run, in its model-training view: on the tracking server, or for a SQLite store
    at `ui` (tracking.ui, where `mlflow ui` serves it; MLFLOW_UI_URL overrides)."""
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("MLFLOW_UI_URL") or ui
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"
