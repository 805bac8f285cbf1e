"""Stage `train`: models/trained/ (trainable weights only) and plots/train.json; one MLflow run.

With more than one process (train.nproc, train.nnodes, or a scheduler's environment: dgl/launch.py)
the stage re-launches itself under torchrun (DDP), on every machine of a SLURM job through srun; only
rank 0 logs and writes. After every epoch it checkpoints to --checkpoint, so a killed run resumes there, in the
same MLflow run, and ends with the same results (dgl/checkpoint.py)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from dgl import distributed, launch
from dgl.artifacts import save_trained
from dgl.batch_order import train_val_views
from dgl.cache.read import CachedSplit
from dgl.checkpoint import Checkpoint, fingerprint
from dgl.cli import EpochLog, StageArguments, entry_point, show_progress
from dgl.determinism import seed_everything
from dgl.devices import pick_device
from dgl.files import atomic_dir, atomic_write, check_writable
from dgl.models.backbone import check_preprocessing, load_backbone
from dgl.models.methods import build_method, count_parameters
from dgl.settings import load_params
from dgl.tracking.names import WEIGHTS_TAG, epoch_metrics, run_label
from dgl.tracking.runs import (
    active_run_id,
    end_abandoned_run,
    log_missing_epochs,
    log_trained,
    log_training_setup,
    mlflow_run,
    resumable_run,
)
from dgl.train import batch_size_used, train_method


@entry_point
def main() -> None:
    ap = StageArguments("train", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--backbone", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out, args.plot, args.checkpoint)
    cfg = params.train
    if not launch.under_torchrun():
        run = launch.resolve(cfg)
        if run.world > 1:
            if not run.srun:  # under SLURM the job's allocation is the machines' (other nodes, their GPUs)
                distributed.check_nproc(run.nproc, pick_device(cfg.device))
            sys.exit(launch.run_nodes(run, "pipelines.train", sys.argv[1:]))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    with distributed.process_group(pick_device(cfg.device), cfg.dist_timeout) as (dist, device):
        split = CachedSplit.load(args.cache, "train")
        clip, backbone = load_backbone(args.backbone)
        check_preprocessing(backbone, split.preprocessing(), args.cache)
        method = build_method(params.model.method, clip, params.model, num_frames=split.num_frames)
        counts = count_parameters(method)
        train_view, val_view = train_val_views(split, cfg.val_fraction, cfg.seed)
        batch_size = batch_size_used(cfg, len(train_view.videos), dist.world)
        if dist.main and batch_size != cfg.batch_size:
            print(
                f"train.batch_size = {cfg.batch_size}: the training set has {len(train_view.videos)} videos, "
                f"so batches of {batch_size} are used (MLflow param train.batch_size_used)",
                file=sys.stderr,
            )
        checkpoint = Checkpoint(args.checkpoint, fingerprint(params, backbone["sha256"]))
        resume = checkpoint.load(verbose=dist.main)
        if dist.main and checkpoint.abandoned:  # no run will resume it: its run, killed with it, ends first
            end_abandoned_run(params.tracking, checkpoint.abandoned_run_id)
            checkpoint.remove()
        run_id = resumable_run(params.tracking, resume["mlflow_run_id"]) if resume and dist.main else None
        tracking = (
            mlflow_run(params.tracking, run_id=run_id, stage="train", label=run_label(params.model))
            if dist.main
            else contextlib.nullcontext()
        )
        with tracking as mlflow:
            if dist.main:
                log_training_setup(mlflow, params, params.model.method, counts)
                mlflow.log_param("train.batch_size_used", batch_size)
                run_id = active_run_id()
                checkpoint.claim(run_id)  # a kill before the first checkpoint leaves the run's id to end it
                if resume:  # the epochs its run may lack: killed between checkpoint and logging
                    log_missing_epochs(mlflow, resume["history"])
            log_line = None if show_progress() else EpochLog(cfg.epochs, first=resume["epoch"] + 1 if resume else 1)

            def on_epoch(epoch: int, record: dict) -> None:  # main rank only; off a terminal, one line each
                mlflow.log_metrics(epoch_metrics(record), step=epoch)
                if log_line:
                    log_line(epoch, record)

            history = train_method(
                method,
                train_view,
                val_view,
                cfg,
                device,
                on_epoch=on_epoch,
                progress=show_progress(),
                dist=dist,
                resume=resume,
                save_checkpoint=lambda state: checkpoint.save({**state, "mlflow_run_id": run_id}),
            )
            if dist.main:  # no run id in the outputs: the same params give the same bytes (dgl/tracking.py)
                info = {
                    "method": params.model.method,
                    "backbone": backbone["name"],
                    "backbone_sha256": backbone["sha256"],
                    "parameters": counts,
                    "epochs": len(history),
                    "validation": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("val_")},
                }
                with atomic_dir(args.out) as work:
                    mlflow.set_tag(WEIGHTS_TAG, save_trained(method.cpu(), work, info, params.model))
                log_trained(mlflow, args.out, params.tracking.max_weights_mb)
                atomic_write(args.plot, json.dumps([{"epoch": i + 1, **r} for i, r in enumerate(history)], indent=1))
                mlflow.log_artifact(str(args.plot), artifact_path="plots")
    if not dist.main:
        return
    checkpoint.remove()  # the outputs hold everything now
    last = history[-1] if history else {}
    val = f", val R@1 {last['val_t2v_R1']:.1f} t2v" if "val_t2v_R1" in last else ""
    loss = f", final loss {last['train_loss']:.4f}" if "train_loss" in last else ""
    print(
        f"train: {params.model.method} ({counts['trainable']:,} trainable parameters), {len(history)} epochs{loss}"
        f"{val}; weights in {args.out}"
    )


if __name__ == "__main__":
    main()
