"""Stage `train`: models/trained/ (trainable weights only) and plots/train.json; one MLflow run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dgl.artifacts import load_backbone, save_trained
from dgl.cache import CachedSplit
from dgl.cli import atomic_dir, atomic_write, entry_point, show_progress
from dgl.config import flatten
from dgl.models.methods import build_method, count_parameters
from dgl.settings import load_params
from dgl.tracking import active_run_id, mlflow_run
from dgl.train import pick_device, seed_everything, train_method, train_val_views


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    ap.add_argument("--out", type=Path, default=Path("models/trained"))
    ap.add_argument("--plot", type=Path, default=Path("plots/train.json"))
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    split = CachedSplit.load(args.cache, "train")
    clip, backbone = load_backbone(args.backbone)
    method = build_method(params.model.method, clip, params.model, num_frames=split.frames.shape[1])
    counts = count_parameters(method)
    train_view, val_view = train_val_views(split, cfg.val_fraction, cfg.seed)
    with mlflow_run(params.tracking, stage="train") as mlflow:
        mlflow.log_params(flatten(params))
        mlflow.set_tag("method", params.model.method)
        mlflow.log_metrics({f"params_{k}": v for k, v in counts.items()})
        history = train_method(method, train_view, val_view, cfg, device,
                               on_epoch=lambda epoch, record: mlflow.log_metrics(record, step=epoch),
                               progress=show_progress())
        run_id = active_run_id()
    info = {"method": params.model.method, "backbone": backbone["name"], "backbone_sha256": backbone["sha256"],
            "parameters": counts, "mlflow_run_id": run_id, "epochs": len(history)}
    with atomic_dir(args.out) as work:
        save_trained(method.cpu(), work, info)
    atomic_write(args.plot, json.dumps([{"epoch": i + 1, **r} for i, r in enumerate(history)], indent=1))
    print(json.dumps({"method": info["method"], "trainable": counts["trainable"],
                      **(history[-1] if history else {})}))


if __name__ == "__main__":
    main()
