"""Stage `backbone`: models/backbone/ — real CLIP weights, or the small CLIP pretrained here on
single synthetic frames with static captions (it never sees time)."""

from __future__ import annotations

from pathlib import Path

from dgl.cli import StageArguments, entry_point, show_progress
from dgl.errors import UserError
from dgl.files import atomic_dir, check_writable
from dgl.models.backbone import build_clip, recipe_for, save_backbone
from dgl.pretrain import pretrain_clip
from dgl.settings import load_params


@entry_point
def main() -> None:
    ap = StageArguments("backbone", __doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    params = load_params(args.params)
    check_writable(args.out)
    cfg = params.backbone
    recipe = recipe_for(cfg.name, cfg.pretrained)  # what every later stage rebuilds (dgl/models/backbone.py)
    if cfg.pretrained:
        clip, report = build_clip(cfg.name, cfg.pretrained), {"pretrained": cfg.pretrained}
    elif params.data.dataset == "synthetic":
        clip, report = pretrain_clip(
            cfg.name, cfg.pretrain, params.data.synthetic, params.preprocess.context_length, progress=show_progress()
        )
    else:
        raise UserError(
            f"params: backbone.pretrained is empty for dataset {params.data.dataset!r}; "
            "set it to an open_clip tag (e.g. openai) or a local checkpoint path"
        )
    with atomic_dir(args.out) as work:
        save_backbone(clip, recipe, work, report)
    shown = {
        k: v
        for k, v in report.items()
        if k in ("zeroshot_class_acc", "text_twin_words_own_closer", "final_loss", "pretrained")
    }
    figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    print(f"backbone: {cfg.name} saved to {args.out}; {figures} (all in {args.out / 'backbone.json'})")


if __name__ == "__main__":
    main()
