"""Trainable parameters of a method on a backbone, counted as the papers count them.

Counts need only the architecture: the backbone is built with random weights, nothing is
downloaded.

    python -m dgl.param_counts --backbone ViT-B-32 --method dgl --generator ulp
    python -m dgl.param_counts --backbone ViT-B-32 --method vop_fc --frames 12
    python -m dgl.param_counts --backbone ViT-B-16 --all          # a markdown table of every method

Ratios are given to the whole model and to CLIP4Clip's fine-tuned set (CLIP minus its input
embeddings: 123,540,993 at ViT-B/32, the DGL paper's denominator). The VoP paper's own "Full"
(119.8M) matches no clear subset of CLIP's parameters, so it is not offered as a denominator.
"""

from __future__ import annotations

import argparse

from dgl.cli import entry_point
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method, count_parameters
from dgl.settings import METHOD_NAMES, load_group

# What the papers print for ViT-B/32 with 12 frames, in M: the DGL and VoP tables.
PUBLISHED_M = {
    "zeroshot": 0.0,
    "full": 123.54,
    "bias": 0.1,
    "proj": 0.7,
    "partial": 7.7,
    "adapter_attn": 2.0,
    "adapter_ffn": 2.0,
    "vop": 0.1,
    "vop_p": 0.5,
    "vop_c": 14.3,
    "vop_f": 0.1,
    "vop_fp": 0.4,
    "vop_fc": 14.1,
    "dgl/ulp": 0.83,
    "dgl/upt": 9.57,
}


# params.yaml's `model` group sizes some prompts for the tiny default; these are the papers' ViT-B values.
PAPER_MODEL = {"vop": {"shallow_layers": 8}}  # VoP Sec. 4.1: K^s = 8 of ViT-B's 12 layers


def method_counts(clip, method: str, generator: str = "ulp", frames: int = 12) -> dict[str, int | float]:
    cfg = load_group("model", {**PAPER_MODEL, "method": method, "dgl": {"generator": generator}})
    return count_parameters(build_method(method, clip, cfg, num_frames=frames))


def describe(counts: dict[str, int | float]) -> list[str]:
    rows = [
        (k.removeprefix("trainable_"), f"{v:,}")
        for k, v in counts.items()
        if k.startswith("trainable_") and not k.startswith("trainable_ratio")
    ]
    rows += [
        ("trainable", f"{counts['trainable']:,}"),
        ("total", f"{counts['total']:,}"),
        ("trainable / total", f"{100 * counts['trainable_ratio']:.3f} %"),
        (
            f"trainable / CLIP4Clip's {counts['clip4clip_denominator']:,}",
            f"{100 * counts['trainable_ratio_clip4clip']:.3f} %",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"  {k:<{width}}  {v:>15}" for k, v in rows]


def table(clip, backbone: str, frames: int) -> list[str]:
    lines = [
        f"Trainable parameters, {backbone}, {frames} frames (paper: ViT-B/32, 12 frames)",
        "",
        "| method | trainable | M | paper (M) | % of total | % of CLIP4Clip |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = [(m, "ulp") for m in METHOD_NAMES if m != "dgl"] + [("dgl", "ulp"), ("dgl", "upt")]
    for method, generator in rows:
        key = f"dgl/{generator}" if method == "dgl" else method
        c = method_counts(clip, method, generator, frames)
        paper = PUBLISHED_M.get(key, "")
        lines.append(
            f"| {key} | {c['trainable']:,} | {c['trainable'] / 1e6:.2f} | {paper} | "
            f"{100 * c['trainable_ratio']:.3f} | {100 * c['trainable_ratio_clip4clip']:.3f} |"
        )
    return lines


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-B-32", help="open_clip model: ViT-B-32, ViT-B-16, tiny-synthetic")
    ap.add_argument("--method", default="dgl", choices=METHOD_NAMES)
    ap.add_argument("--generator", default="ulp", choices=("ulp", "upt"), help="DGL's prompt generator")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--all", action="store_true", help="a markdown table of every method")
    args = ap.parse_args()
    if args.frames < 1:
        ap.error("--frames must be at least 1")
    clip = build_clip(args.backbone)
    if args.all:
        print("\n".join(table(clip, args.backbone, args.frames)))
        return
    counts = method_counts(clip, args.method, args.generator, args.frames)
    what = f"{args.method} (generator {args.generator})" if args.method == "dgl" else args.method
    print(f"{what} on {args.backbone}, {args.frames} frames")
    print("\n".join(describe(counts)))


if __name__ == "__main__":
    main()
