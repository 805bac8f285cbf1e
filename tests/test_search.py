"""dgl.search: a free-text query against the test videos, from the workspace's trained method or from the
one an MLflow run logged; it must rank as evaluate's features do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dgl.checksums import sha256_of
from dgl.evaluation import encode_view
from dgl.search import Gallery, main
from dgl.settings import load_params
from dgl.tracking.names import WEIGHTS_TAG
from dgl.tracking.runs import trained_of_run
from dgl.views import SplitView


@pytest.fixture
def in_project(tiny_repro, monkeypatch):
    """Run in the tiny project, its own MLflow store (read only)."""
    monkeypatch.chdir(tiny_repro)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tiny_repro


def the_run(root):
    """The tiny project's one MLflow run (its training and evaluation)."""
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dgl")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_a_query_is_tokenised_and_scored_as_evaluate_encodes_the_test_captions(in_project):
    params = load_params("params.yaml")
    gallery = Gallery.load(
        in_project / "models/trained", in_project / "models/backbone", in_project / "data/cache", params
    )
    split = gallery.split
    caption = 3
    tokens = gallery.tokenizer([split.texts[caption]], context_length=split.tokens.shape[1]).long()[0]
    assert torch.equal(tokens, split.tokens[caption])  # the cache's tokenizer and context length
    text, video, _, _ = encode_view(
        gallery.method, SplitView(split, np.arange(split.num_videos)), torch.device("cpu"), 4
    )
    expected = text[caption] @ video.t()
    assert torch.allclose(gallery.scores([split.texts[caption]])[0], expected, atol=1e-6)
    hits = gallery.search(split.texts[caption], split.num_videos)
    assert sorted(h.video for h in hits) == list(range(split.num_videos))  # every video once, best first
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert all(abs(h.score - float(expected[h.video])) < 1e-6 for h in hits)  # a batch of one: last bits may differ
    twinned = [h for h in hits if h.twin >= 0]
    assert twinned and all(
        hits[h.twin_rank - 1].video == h.twin and hits[h.twin_rank - 1].score == h.twin_score for h in twinned
    )


def test_the_run_alone_gives_the_workspace_models_answer(in_project, tmp_path, monkeypatch, capsys):
    """--run NAME loads the weights the run logged (model/), which compute what models/trained does."""
    run = the_run(in_project)
    artifacts = mlflow.MlflowClient(f"sqlite:///{in_project / 'mlflow.db'}").list_artifacts(run.info.run_id, "model")
    assert {os.path.basename(a.path) for a in artifacts} == {"weights.pt", "model.json"}
    query = "a red circle moves to the left"
    answers = []
    for source in (["--trained", "models/trained"], ["--run", run.info.run_name]):
        monkeypatch.setattr("sys.argv", ["search", query, "--k", "4", *source, "--strip", str(tmp_path / "s.png")])
        main()
        out, err = capsys.readouterr()
        answers.append(out)
        assert "searched 10 test videos with dgl from" in err and (tmp_path / "s.png").stat().st_size > 0
    lines = answers[0].splitlines()
    assert lines[0].split() == ["rank", "video", "score", "time-reversed", "twin"] and len(lines) == 5
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert answers[0] == answers[1]
    downloaded = trained_of_run(load_params("params.yaml").tracking, run.info.run_name, tmp_path / "dl")
    assert sha256_of(downloaded / "weights.pt") == run.data.tags[WEIGHTS_TAG]  # the weights the run names


def test_a_folder_of_videos_ranks_as_the_cache_ranks_the_same_videos(in_project, tmp_path, monkeypatch, capsys):
    """--videos DIR goes through the frames stage's sampling and cropping: the same videos score as
    their cached frames do; a file that cannot be sampled is named and left out."""
    params = load_params("params.yaml")
    cached = Gallery.load(Path("models/trained"), Path("models/backbone"), Path("data/cache"), params)
    chosen = cached.split.video_ids[:4]
    folder = tmp_path / "clips"
    folder.mkdir()
    for video in chosen:
        shutil.copy(in_project / "data/raw/videos" / f"{video}.mp4", folder)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not a video either")
    gallery = Gallery.of_folder(folder, Path("models/trained"), Path("models/backbone"), params)
    assert gallery.videos.ids == sorted(f"{video}.mp4" for video in chosen) and gallery.split is None
    order = [cached.split.video_ids.index(name.removesuffix(".mp4")) for name in gallery.videos.ids]
    query = cached.split.texts[0]
    torch.testing.assert_close(gallery.scores([query])[0], cached.scores([query])[0][order], rtol=0, atol=1e-5)
    assert "left out broken.mp4: " in capsys.readouterr().err

    strip = tmp_path / "s.png"
    monkeypatch.setattr("sys.argv", ["search", query, "--videos", str(folder), "--k", "3", "--strip", str(strip)])
    main()
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4 and out.splitlines()[1].split()[1] in gallery.videos.ids
    assert f"searched 4 videos of {folder} with dgl" in err and strip.stat().st_size > 0


def test_a_folder_without_videos_is_one_line(in_project, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.setattr("sys.argv", ["search", "a query", "--videos", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--videos {tmp_path}: no video files" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["a query", "--run", "no-such-run"], "no run named 'no-such-run' in experiment 'dgl'"),
        (["   "], "the query is empty"),
        (["a query", "--k", "0"], "--k 0: give at least 1"),
    ],
)
def test_a_bad_search_is_one_line(in_project, monkeypatch, capsys, argv, needle):
    monkeypatch.setattr("sys.argv", ["search", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_weights_over_the_limit_stay_out_of_the_run_which_says_why(tmp_path, capsys):
    from dgl.tracking.runs import log_trained

    class Run:  # what log_trained asks of the mlflow module
        def __init__(self):
            self.artifacts, self.tags = [], {}

        def log_artifacts(self, folder, artifact_path):
            self.artifacts.append((folder, artifact_path))

        def set_tag(self, key, value):
            self.tags[key] = value

    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "weights.pt").write_bytes(bytes(2**20))
    (trained / "model.json").write_text("{}")
    small, large = Run(), Run()
    log_trained(small, trained, 2)
    log_trained(large, trained, 0.5)
    assert small.artifacts == [(str(trained), "model")] and small.tags == {}
    assert large.artifacts == [] and large.tags == {"model_not_logged": "1 MB > tracking.max_weights_mb = 0.5"}
    assert "(1 MB > tracking.max_weights_mb = 0.5; raise it to keep them)" in capsys.readouterr().err
