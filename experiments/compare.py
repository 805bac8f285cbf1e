"""Two runs' retrievals side by side, as one page that needs nothing but a browser.

    python -m experiments.compare upt ulp-local8                  # compare-upt-vs-ulp-local8.html
    python -m experiments.compare upt ulp-local8 --queries 12 --k 5 --out /tmp/page.html

The same test captions (spread evenly over the test split) go to both runs' trained methods, which
come from the MLflow runs themselves (artifact `model/`, as `python -m dgl.search --run` loads them);
the backbone and the test videos from the workspace. For every caption, each run's top k videos as
frame strips (first, middle and last frame, time running left to right), the correct video framed in
green and its time-reversed twin (the same frames in reverse order) in orange: a twin ranked above
the correct video is a model that misses the order of frames. Images are inline PNG data, the page
has no script and no link: it opens offline and can be mailed. It is also logged to both runs as
`compare/<page>`.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.figures import mark, strip
from dgl.files import atomic_write
from dgl.search import Gallery
from dgl.settings import load_params

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 1.6em 0 0.4em; }
table { border-collapse: collapse; } td, th { padding: 0.15em 0.8em; text-align: left; }
.run { display: flex; align-items: flex-start; gap: 0.5em; margin: 0.3em 0; }
.name { flex: 0 0 10em; font-weight: bold; padding-top: 1em; overflow-wrap: anywhere; }
figure { flex: 0 0 auto; margin: 0; padding: 3px; border: 4px solid #ddd; }
figure.correct { border-color: #2ca02c; } figure.twin { border-color: #ff7f0e; }
figure img { display: block; height: 54px; image-rendering: pixelated; }
figcaption { font-size: 0.8em; }
.correct figcaption { color: #2ca02c; font-weight: bold; } .twin figcaption { color: #c25e00; font-weight: bold; }
.legend span { padding: 0 0.5em; border-left: 1em solid; margin-right: 1em; }
"""
SHOWN = "first, middle and last frame"


@dataclass(frozen=True)
class Side:
    name: str
    gallery: Gallery
    headline: str  # the run's test numbers, for the page's header


def png(pixels: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a data URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def headline(metrics: dict[str, float]) -> str:
    parts = [
        (label, metrics.get(key))
        for label, key in (
            ("t2v R@1", "test/t2v_R1"),
            ("content R@1", "test/content_R1"),
            ("pair acc", "test/pair_acc"),
        )
    ]
    return ", ".join(f"{label} {value:.3g}" for label, value in parts if value is not None) or "no test metrics"


def query_captions(split, count: int) -> np.ndarray:
    """`count` captions spread evenly over the split (as the evaluate stage's retrieval figure picks them)."""
    return np.unique(np.linspace(0, len(split.texts) - 1, count).round().astype(int))


def page(sides: list[Side], count: int, k: int) -> str:
    """The comparison page: for each of `count` test captions, each side's top k videos."""
    split = sides[0].gallery.split
    frames_shown = [0, split.num_frames // 2, split.num_frames - 1]
    images: dict[int, str] = {}

    def cell(rank: int, video: int, score: float, answer: int) -> str:
        if video not in images:
            images[video] = png(strip(split.video_pixels([video])[0, frames_shown]))
        kind = mark(video, answer, int(split.twins[answer]))
        note = {"correct": " correct", "twin": " twin of the correct"}.get(kind, "")
        return (
            f'<figure class="{kind}"><img src="{images[video]}" alt="{html.escape(split.video_ids[video])}">'
            f"<figcaption>#{rank} {html.escape(split.video_ids[video])} {score:.3f}{note}</figcaption></figure>"
        )

    captions = query_captions(split, count)
    texts = [split.texts[c] for c in captions]
    scores = [side.gallery.scores(texts) for side in sides]  # (Q, V) each
    body = []
    for q, caption in enumerate(captions):
        answer = int(split.caption_video[caption])
        body.append(
            f"<h2>&ldquo;{html.escape(texts[q])}&rdquo; <small>({html.escape(split.categories[caption])}, "
            f"correct video {html.escape(split.video_ids[answer])})</small></h2>"
        )
        for side, score in zip(sides, scores):
            order = score[q].argsort(descending=True, stable=True)
            rank = int((order == answer).nonzero()[0, 0]) + 1
            cells = "".join(cell(r, v, float(score[q, v]), answer) for r, v in enumerate(order[:k].tolist(), start=1))
            body.append(
                f'<div class="run"><div class="name">{html.escape(side.name)}<br>'
                f"<small>correct at #{rank}</small></div>{cells}</div>"
            )
    runs = "".join(
        f"<tr><th>{html.escape(s.name)}</th><td>{html.escape(s.gallery.info['method'])}</td>"
        f"<td>{html.escape(s.headline)}</td></tr>"
        for s in sides
    )
    title = " vs ".join(s.name for s in sides)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: retrievals</title>
<style>{STYLE}</style></head><body>
<h1>Text-to-video retrieval: {html.escape(title)}</h1>
<table>{runs}</table>
<p>The same {len(captions)} test captions; each run's top {k} of {split.num_videos} test videos ({SHOWN},
time running left to right) with their cosine scores.</p>
<p class="legend"><span style="border-color:#2ca02c">the correct video</span>
<span style="border-color:#ff7f0e">its time-reversed twin</span></p>
{chr(10).join(body)}
</body></html>
"""


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs=2, metavar="RUN", help="two MLflow run names (DVC experiment names)")
    ap.add_argument("--queries", type=int, default=8, help="test captions to compare on (default 8)")
    ap.add_argument("--k", type=int, default=5, help="videos per run and caption (default 5)")
    ap.add_argument("--out", type=Path, help="the page (default: compare-RUN_A-vs-RUN_B.html)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"))
    ap.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    args = ap.parse_args()
    if args.queries < 1 or args.k < 1:
        raise UserError(f"--queries {args.queries} --k {args.k}: give at least 1 of each")
    import mlflow

    from dgl.tracking.runs import named_run, trained_of_run
    from dgl.tracking.store import tracking_uri

    params = load_params(args.params)
    out = args.out or Path(f"compare-{args.runs[0]}-vs-{args.runs[1]}.html".replace("/", "_"))
    sides, run_ids = [], []
    for name in args.runs:
        run = named_run(params.tracking, name)
        with tempfile.TemporaryDirectory() as tmp:
            gallery = Gallery.load(trained_of_run(params.tracking, name, Path(tmp)), args.backbone, args.cache, params)
        sides.append(Side(name, gallery, headline(run.data.metrics)))
        run_ids.append(run.info.run_id)
    atomic_write(out, page(sides, min(args.queries, len(sides[0].gallery.split.texts)), args.k))
    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    for run_id in dict.fromkeys(run_ids):
        client.log_artifact(run_id, str(out), artifact_path="compare")
    print(
        f"{out}: {args.runs[0]} and {args.runs[1]} on the same test captions; also in both runs' "
        f"artifacts under compare/",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
