"""`make rehearse` (experiments/rehearse.py): the real-data route at the paper's shapes, through DVC and
MLflow, on CPU. The slow test runs the rehearsal of one dataset (REHEARSED, its cheapest: `make rehearse`
runs them all) and then reads what DVC and MLflow hold; the others check every dataset against the adapters
and the download stage without running a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from dgl.data.adapters import load_annotations, name_of_test_split
from dgl.data.sources import prepare_raw
from experiments.recipe import overrides
from experiments.rehearse import BACKBONE, DATASETS, plan_videos
from helpers import ROOT, call_main, run

# VATEX: its recipe (DGL-ULP, 12 frames at 3 fps, 32 tokens), the official split and every caption a query,
# through DVC to metrics and MLflow in about a minute. The others' recipes: their annotation files below,
# their keys in test_recipes.py, DGL-UPT through DVC in test_pipeline.py and test_tracking.py.
REHEARSED = ["vatex"]
EXPERIMENTS = [(dataset, generator) for dataset in REHEARSED for generator in DATASETS[dataset].generators]


def dvc_experiments(project: Path) -> dict[str, tuple[dict, dict]]:
    """`dvc exp show`'s view: experiment name -> (its params.yaml, its metrics.json)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    return {
        exp["name"]: (
            exp["revs"][0]["data"]["params"]["params.yaml"]["data"],
            exp["revs"][0]["data"]["metrics"]["metrics.json"]["data"],
        )
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }


# First in its module: under `make test` (pytest-xdist, --dist loadfile) a worker is handed its next
# module once two of its tests are left, and that module would wait behind the rehearsal.
@pytest.mark.slow
def test_the_rehearsal_runs_a_recipe_through_dvc_to_metrics_and_a_finished_mlflow_run(tmp_path):
    out = run(["python", "-m", "experiments.rehearse", "--datasets", *REHEARSED, "--keep", str(tmp_path)], ROOT)
    assert out.returncode == 0 and f"rehearsal passed: {', '.join(REHEARSED)}" in out.stdout.splitlines()[-1]
    project, checkpoint = tmp_path / "project", tmp_path / "checkpoints" / f"{BACKBONE}-random.pt"
    experiments = dvc_experiments(project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("dgl").experiment_id
    for dataset, generator in EXPERIMENTS:
        name, recipe = f"{dataset}-{generator}", overrides(dataset)
        params, metrics = experiments[name]
        assert params["data"]["dataset"] == dataset and params["model"]["dgl"]["generator"] == generator
        assert params["train"]["epochs"] == 1 and params["backbone"]["pretrained"] == str(checkpoint)
        assert params["frames"]["num_frames"] == recipe["frames.num_frames"]
        assert params["preprocess"]["context_length"] == recipe["preprocess.context_length"]
        assert metrics["test_split"] == name_of_test_split(dataset, params["data"]["vatex_split"])
        assert {"t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "t2v_MnR", "v2t_R1", "v2t_MnR"} <= metrics.keys()
        assert metrics["test_videos"] == DATASETS[dataset].test_videos and metrics["test_skipped_videos"] == 0

        (mlflow_run,) = client.search_runs([experiment_id], f"attributes.run_name = '{name}'")
        assert mlflow_run.info.status == "FINISHED"
        logged = mlflow_run.data.params
        for key in (
            "frames.num_frames",
            "frames.size",
            "frames.reencode_fps",
            "preprocess.context_length",
            "train.captions",
        ):
            assert yaml.safe_load(logged[key]) == recipe[key], key
        assert logged["backbone.name"] == BACKBONE and logged["backbone.pretrained"] == str(checkpoint)
        assert logged["model.dgl.generator"] == generator
        assert round(mlflow_run.data.metrics["test/t2v_R1"], 4) == metrics["t2v_R1"]
        assert int(mlflow_run.data.params["count.trainable"]) == metrics["trainable_params"]
    shutil.rmtree(tmp_path)  # GBs (the weights in the backbone stage and DVC's cache): kept only on a failure


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_is_written_as_its_adapter_reads_it_and_placed_by_hand_downloads_nothing(dataset, tmp_path):
    """Every caption written is read back in its split, and nothing is fetched: for VATEX too, whose
    official caption files placed by hand once sent the download stage to the network."""
    spec = DATASETS[dataset]
    manual = tmp_path / "manual" / dataset
    manual.mkdir(parents=True)
    videos, _ = plan_videos(spec, seed=0)
    texts = spec.write(manual, videos)
    (manual / spec.videos_folder).mkdir(parents=True)
    for video in videos:  # the download stage only finds them; the frames stage would decode them
        (manual / spec.videos_folder / f"{video.video_id}.mp4").touch()
    # manual/ and downloads/ beside raw/; VATEX as the rehearsal runs it (HGR's split needs its 1,500 videos)
    summary = prepare_raw(dataset, tmp_path / "raw", progress=False, vatex_split="official_val")
    assert summary["downloaded"] == [] and summary["videos"] == len(videos) and summary["videos_absent"] == 0
    annotations = load_annotations(dataset, tmp_path / "raw")
    for split in ("train", "test"):
        assert sorted(c.text for c in annotations.split(split)) == sorted(texts[split])
    assert len(annotations.split_videos("test")) == spec.test_videos


def test_a_keep_folder_that_is_not_empty_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "old").write_text("")
    out = call_main("experiments.rehearse", ["--keep", str(tmp_path)], monkeypatch, capsys)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"error: --keep {tmp_path}: not an empty folder; give a new or empty one\n"
