"""Stage `evaluate`: metrics.json, plots/recall.json and plots/figures/, logged to the training's
MLflow run together with params.yaml and every plot; to a new run that names the training's (tag
`train_run_id`) when that run already holds test metrics (dgl.tracking.runs.evaluation_run). dvc.lock is
not logged: DVC writes it after this stage ends; the run's `git_commit`, `git_dirty` and params say
what ran (dgl/tracking/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dgl.artifacts import load_trained
from dgl.cache.read import CachedSplit, gallery_counts
from dgl.cli import StageArguments, entry_point, show_progress
from dgl.data.adapters import name_of_test_split
from dgl.devices import pick_device
from dgl.evaluation import encode_view, score_view
from dgl.figures import method_title, write_figures
from dgl.files import atomic_dir, atomic_write, check_writable
from dgl.models.backbone import backbone_info, check_preprocessing
from dgl.settings import load_params
from dgl.tracking.names import evaluation_metrics
from dgl.tracking.runs import describe_run, evaluation_run, log_files, training_run_of
from dgl.views import SplitView


@entry_point
def main() -> None:
    ap = StageArguments("evaluate", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--trained", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--recall", type=Path, required=True)
    ap.add_argument("--figures", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.metrics, args.recall, args.figures)
    gallery = gallery_counts(args.cache, "test", params.eval.max_missing)
    split = CachedSplit.load(args.cache, "test")
    check_preprocessing(backbone_info(args.backbone), split.preprocessing(), args.cache)
    method, info = load_trained(args.trained, args.backbone, params.model, num_frames=split.num_frames)
    device = pick_device(params.train.device)
    view = SplitView(split, np.arange(split.num_videos))
    encoded = encode_view(method, view, device, params.eval.batch_size, progress=show_progress())
    result = score_view(method, view, encoded, dsl=params.eval.dsl, chunk_size=params.eval.chunk_size)
    text, video = encoded[:2]  # the figures draw from the same features
    metrics = {k: round(v, 4) for k, v in result.metrics.items()}
    # R@1 on the training videos train held out, measured by train on the final weights: what a
    # learning-rate sweep chooses by (experiments/README.md), never the test split
    metrics.update({k: round(v, 4) for k, v in info["validation"].items() if k in ("val_t2v_R1", "val_v2t_R1")})
    metrics.update(
        {
            "trainable_params": info["parameters"]["trainable"],
            "trainable_ratio": info["parameters"]["trainable_ratio"],
            "trainable_clip": info["parameters"].get("trainable_clip", 0),
            "test_split": name_of_test_split(params.data.dataset, params.data.vatex_split),
            **{f"test_{k}": v for k, v in gallery.items()},
        }
    )
    curves = [
        {"K": k + 1, "t2v": t, "v2t": v} for k, (t, v) in enumerate(zip(result.curves["t2v"], result.curves["v2t"]))
    ]
    atomic_write(args.metrics, json.dumps(metrics, indent=2))
    atomic_write(args.recall, json.dumps(curves, indent=1))
    with atomic_dir(args.figures) as work:
        write_figures(
            work, method, split, text, video, device, title=f"{method_title(params.model)} on {metrics['test_split']}"
        )
    with evaluation_run(
        params,
        training_run_of(params.tracking, info["weights_sha256"]),
        evaluation_metrics(result.metrics),
        method=info["method"],
        counts=info["parameters"],
    ) as mlflow:
        describe_run(mlflow, result.metrics, info["parameters"], args.params)
        log_files(mlflow, [args.metrics, args.params])
        mlflow.log_artifact(str(args.recall), artifact_path="plots")
        mlflow.log_artifacts(str(args.figures), artifact_path=f"plots/{args.figures.name}")
    print(
        f"evaluate: t2v R@1 {metrics['t2v_R1']:.1f}, content R@1 {metrics.get('content_R1', float('nan')):.1f}, "
        f"pair_acc {metrics.get('pair_acc', float('nan')):.3f}, v2t R@1 {metrics['v2t_R1']:.1f} on "
        f"{metrics['test_videos']} test videos (all in {args.metrics})"
    )


if __name__ == "__main__":
    main()
