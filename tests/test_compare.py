"""experiments.compare: two MLflow runs' retrievals on one offline page, checked in a real headless
Chromium (tests/headless.py): it renders, every image loads, and it asks the network for nothing."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest

from headless import browser, chromium
from helpers import copy_project


@pytest.fixture(scope="module")
def two_runs(tiny_repro, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the tiny project whose store holds its DGL run and a second run, `zeroshot-probe`: a
    zero-shot method on the same backbone, logged as a training logs its trained method."""
    from dgl.artifacts import save_trained
    from dgl.cache.read import CachedSplit
    from dgl.models.backbone import load_backbone
    from dgl.models.methods import build_method, count_parameters
    from dgl.settings import load_params
    from dgl.tracking.runs import log_trained

    root = copy_project(tiny_repro, tmp_path_factory.mktemp("compare") / "p")
    params = load_params(root / "params.yaml")
    clip, backbone = load_backbone(root / "models/backbone")
    method = build_method(
        "zeroshot", clip, params.model, num_frames=CachedSplit.load(root / "data/cache", "test").num_frames
    )
    folder = root / "zeroshot"
    folder.mkdir()
    save_trained(
        method,
        folder,
        {
            "method": "zeroshot",
            "backbone": backbone["name"],
            "backbone_sha256": backbone["sha256"],
            "parameters": count_parameters(method),
            "validation": {},
        },
        params.model,
    )
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("dgl")
    dgl_run = mlflow.MlflowClient().search_runs([experiment.experiment_id], order_by=["attributes.start_time"])[0]
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="zeroshot-probe"):
        log_trained(mlflow, folder, 100)
    return root, dgl_run.info.run_name, "zeroshot-probe"


def figures(page: str) -> list[tuple[str, str, str]]:
    """(class, video id, caption) of every ranked video on the page, in order."""
    return re.findall(
        r'<figure class="(\w*)"><img src="data:image/png;base64,[^"]+" alt="([^"]+)">'
        r"<figcaption>([^<]+)</figcaption>",
        page,
    )


@pytest.mark.slow
def test_the_page_shows_each_runs_own_ranking_with_the_correct_video_and_its_twin_marked(two_runs, monkeypatch, capsys):
    from dgl.search import Gallery
    from dgl.settings import load_params
    from dgl.tracking.runs import trained_of_run
    from experiments.compare import main, query_captions

    root, first, second = two_runs
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("sys.argv", ["compare", first, second, "--queries", "3", "--k", "4", "--out", "page.html"])
    main()
    assert "page.html: " in capsys.readouterr().err
    page = (root / "page.html").read_text()
    shown = figures(page)
    assert len(shown) == 3 * 2 * 4
    params = load_params("params.yaml")
    for side, name in enumerate((first, second)):  # each run's block: what its own logged method ranks
        gallery = Gallery.load(
            trained_of_run(params.tracking, name, root / f"dl{side}"),
            Path("models/backbone"),
            Path("data/cache"),
            params,
        )
        split = gallery.split
        index = {video: i for i, video in enumerate(split.video_ids)}
        for q, caption in enumerate(query_captions(split, 3)):
            scores = gallery.scores([split.texts[caption]])[0]
            fifth = float(scores.sort(descending=True).values[4])
            block = shown[(2 * q + side) * 4 : (2 * q + side + 1) * 4]
            answer = int(split.caption_video[caption])
            twin = int(split.twins[answer])
            shown_scores = []
            for rank, (kind, video, text) in enumerate(block, start=1):
                v = index[video]
                score = float(text.split()[2])
                assert text.startswith(f"#{rank} {video} ") and abs(score - float(scores[v])) < 6e-4
                assert float(scores[v]) >= fifth - 1e-5  # in the top 4 (a twin pair may tie in the last bits)
                assert kind == ("correct" if v == answer else "twin" if v == twin >= 0 else "")
                shown_scores.append(score)
            assert shown_scores == sorted(shown_scores, reverse=True)
    assert {kind for kind, _, _ in shown} >= {"correct", "twin"}
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for name in (first, second):
        run = client.search_runs(
            [client.get_experiment_by_name("dgl").experiment_id], f"attributes.run_name = '{name}'"
        )[0]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "compare")] == ["compare/page.html"]


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (.ci/run installs Debian's)")
def test_the_page_renders_offline_in_headless_chromium(two_runs, monkeypatch, tmp_path):
    from experiments.compare import main

    root, first, second = two_runs
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "page.html"
    monkeypatch.setattr("sys.argv", ["compare", first, second, "--queries", "2", "--out", str(out)])
    main()
    with browser() as page:
        page.open(out.as_uri())
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
        visible = page.evaluate("document.body.getBoundingClientRect().height")
        requests = page.requests()
    assert len(images) == 2 * 2 * 5 and all(done and w > 0 and h > 0 for done, w, h in images), images
    assert len(headings) == 2 and all(h.startswith("“") for h in headings)
    assert visible > 400
    assert [url for url in requests if not url.startswith("data:image/png;base64,")] == [out.as_uri()], requests
