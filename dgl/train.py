"""The training loop and its step; nothing in here knows which method it trains. Which samples form
which batch is dgl.batch_order's; validation runs dgl.evaluation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dgl.batch_order import epoch_samples, into_batches
from dgl.cache.prefetch import device_batches
from dgl.checkpoint import rng_state, set_rng_state
from dgl.distributed import Dist, data_parallel, gather
from dgl.errors import UserError
from dgl.evaluation import evaluate_view
from dgl.models.loss import contrastive_loss
from dgl.models.methods import Method
from dgl.optim import adamw, unless_bias, warmup_cosine
from dgl.views import PREFETCH, SplitView

MAX_LOGIT_SCALE = math.log(100)  # CLIP4Clip clamps a trained logit scale to at most 100 after every step


class Features(nn.Module):
    """One training forward as a module, so that DDP can wrap it: the method's prompts (sample-
    independent, generated once per call), then L2-normalised float32 text and video features (b, E)."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, tokens: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        text_prompts, video_prompts = self.method.prompts()
        text = self.method.encode_text(tokens, text_prompts)
        video = self.method.encode_video(frames, video_prompts)
        return F.normalize(text.float(), dim=-1), F.normalize(video.float(), dim=-1)


def parallel_features(method: Method, device: torch.device) -> nn.Module:
    """Features, under DDP when a process group is up. The logit scale enters the loss outside the
    forward, so DDP leaves it out (see distributed.data_parallel)."""
    features = Features(method)
    return data_parallel(
        features, device, ignore=[n for n, p in features.named_parameters() if p is method.clip.logit_scale]
    )


@dataclass(frozen=True)
class Precision:
    """Mixed precision: autocast to `dtype` (None = float32); float16 also scales the loss (GradScaler)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[Tensor], grad_clip: float) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)  # clip the true gradients
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def pick_precision(name: str, device: torch.device) -> Precision:
    """train.amp: auto = bfloat16 on a CUDA device that supports it, else float32; CPU is float32."""
    if device.type != "cuda":
        if name in ("bf16", "fp16"):
            raise UserError(f"params: train.amp = {name!r} needs CUDA but training runs on {device}; use auto or off")
        return Precision(device.type)
    if name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "off"
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision("cuda", dtype, torch.amp.GradScaler("cuda") if dtype == torch.float16 else None)


def contrastive_step(
    model: nn.Module,
    tokens: Tensor,
    frames: Tensor,
    logit_scale: Callable[[], Tensor],
    *,
    accum_steps: int = 1,
    precision: Precision = Precision(),
) -> Tensor:
    """Loss of one step over the global batch, its gradients added to the parameters' .grad.

    `model` is a Features (or its DDP wrapper); tokens (b, L) and frames (b, T, 3, H, W) are this
    rank's slice of the global batch. The loss is over the global batch: `gather` brings every
    rank's features, only this rank's keeping their graph, and DDP sums the ranks' gradients
    (distributed.data_parallel), which gives the gradient of one process on the whole batch.

    accum_steps > 1 is GradCache (Gao et al., 2021). The contrastive loss of a batch is not a sum of
    its sub-batches' losses (each text's negatives are all the batch's videos), so averaging small-
    batch losses would train another objective. Instead: (1) encode every sub-batch without a graph,
    (2) take the loss of the whole batch and its gradient w.r.t. the features, (3) encode each
    sub-batch again with a graph and backpropagate those cached gradients into the weights. Loss and
    gradients equal the single pass's up to float rounding, at the memory of one sub-batch and the
    cost of one more forward. Features generates the prompts again in each re-encoding, so the
    prompt generators receive every sub-batch's share. Step (3) must reproduce the features of (1):
    true here, nothing in CLIP or the methods draws random numbers (no dropout); a model with
    dropout would need each sub-batch's RNG state saved and restored, as GradCache's RandContext does.
    """
    if accum_steps == 1:
        with precision.autocast():
            text, video = model(tokens, frames)
        loss = contrastive_loss(gather(text), gather(video), logit_scale())
        precision.backward(loss)
        return loss.detach()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    size = len(tokens) // accum_steps
    chunks = list(zip(tokens.split(size), frames.split(size)))
    with torch.no_grad(), precision.autocast():
        cached = [inner(t, f) for t, f in chunks]
    text = torch.cat([t for t, _ in cached]).requires_grad_()
    video = torch.cat([v for _, v in cached]).requires_grad_()
    loss = contrastive_loss(gather(text), gather(video), logit_scale())
    precision.backward(loss)  # fills text.grad, video.grad (scaled like the loss under fp16)
    for i, ((t, f), text_grad, video_grad) in enumerate(zip(chunks, text.grad.split(size), video.grad.split(size))):
        last = i == accum_steps - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with precision.autocast():
                sub_text, sub_video = model(t, f)
            torch.autograd.backward([sub_text, sub_video], [text_grad, video_grad])
    return loss.detach()


def optimizer_for(method: Method, params: list[tuple[str, nn.Parameter]], cfg) -> torch.optim.AdamW:
    """Two parameter groups, as CLIP4Clip trains (its `--lr` and `--coef_lr`): CLIP's own pretrained
    weights at train.clip_lr, everything a method adds (prompts, generators, adapters) at train.lr; in each,
    weight decay on every parameter whose name has no `bias`, as the reference scripts."""
    pretrained = {id(p) for p in method.clip.parameters()}
    group = {n: "clip" if id(p) in pretrained else "added" for n, p in params}
    return adamw(
        params,
        cfg.lr,
        cfg.weight_decay,
        group_of=group.__getitem__,
        rates={"added": cfg.lr, "clip": cfg.clip_lr},
        decays=unless_bias,
    )


def current_rates(optimizer: torch.optim.Optimizer, cfg) -> dict[str, float]:
    """The scheduled rates now: `lr` for added parameters, `lr_clip` where CLIP's weights train."""
    first = optimizer.param_groups[0]
    factor = first["lr"] / first["initial_lr"]
    rates = {"lr": factor * cfg.lr}
    if any(g["name"].startswith("clip/") for g in optimizer.param_groups):
        rates["lr_clip"] = factor * cfg.clip_lr
    return rates


def batch_size_used(cfg, videos: int, world: int) -> int:
    """The global batch training uses: train.batch_size, or all `videos` where there are fewer (a
    batch holds each video once), rounded down to split evenly over `world` processes x accum_steps."""
    parts = world * cfg.accum_steps
    used = min(cfg.batch_size, videos) // parts * parts
    if used < 2:
        raise UserError(
            f"{videos} training videos cannot fill a batch split over {world} processes "
            f"x {cfg.accum_steps} sub-batches; lower train.nproc or train.accum_steps"
        )
    return used


@torch.no_grad()
def clamp_logit_scale(method: Method) -> None:
    """Where a method trains CLIP's logit scale (full fine-tuning), keep exp(logit_scale) <= 100 as
    CLIP4Clip does after each step (its main_task_retrieval.py); a frozen one is left as it is."""
    if method.clip.logit_scale.requires_grad:
        method.clip.logit_scale.clamp_(max=MAX_LOGIT_SCALE)


def train_method(
    method: Method,
    train: SplitView,
    val: SplitView | None,
    cfg,
    device: torch.device,
    on_epoch: Callable[[int, dict], None],
    progress: bool = True,
    *,
    dist: Dist = Dist(),
    resume: dict | None = None,
    save_checkpoint: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Contrastive training of the method's trainable parameters; returns per-epoch history.

    train.batch_size is the global contrastive batch: every rank draws the same batches and encodes
    its 1/world slice in accum_steps sub-batches, so neither changes the result. `resume` is a
    checkpoint's state (dgl.checkpoint) to go on from; only the main rank calls `on_epoch` and
    `save_checkpoint`, after each epoch."""
    params = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    if not params or cfg.epochs == 0:  # zeroshot trains nothing: no optimizer, no DDP
        return []
    rng = np.random.default_rng(cfg.seed)
    parts = dist.world * cfg.accum_steps
    batch_size = batch_size_used(cfg, len(train.videos), dist.world)
    samples = len(train.videos) if cfg.captions == "one" else len(train.captions()[0])
    steps_per_epoch = math.ceil(samples / batch_size)
    history: list[dict] = []
    optimizer = optimizer_for(method, params, cfg)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    method.to(device)
    method.encoder.activation_checkpointing = cfg.activation_checkpointing
    precision = pick_precision(cfg.amp, device)
    model = parallel_features(method, device)
    first = 1
    if resume is not None:
        method.load_state_dict(resume["weights"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if precision.scaler:
            precision.scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"], rng)
        history, first = list(resume["history"]), resume["epoch"] + 1
    for epoch in range(first, cfg.epochs + 1):
        method.train()
        losses = []
        batches = into_batches(epoch_samples(train, cfg.captions, rng, cfg.sampler), batch_size, parts)
        jobs = []  # this rank's slice of every batch; the draws in the order the synchronous loop made them
        for videos, captions in batches:
            picks = train.split.jitter(len(videos), rng)  # drawn for the global batch: every rank agrees
            local = slice(dist.rank * len(videos) // dist.world, (dist.rank + 1) * len(videos) // dist.world)
            jobs.append((videos[local], None if picks is None else picks[local], captions[local]))
        with device_batches(train.split, jobs, device, PREFETCH) as loader:  # reads batch k + 1 during step k
            bar = tqdm(
                loader,
                total=len(jobs),
                desc=f"train epoch {epoch}/{cfg.epochs}",
                disable=not (progress and dist.main),
                unit="batch",
            )
            for frames, tokens in bar:
                optimizer.zero_grad(set_to_none=True)
                loss = contrastive_step(
                    model, tokens, frames, method.logit_scale, accum_steps=cfg.accum_steps, precision=precision
                ).item()
                if not math.isfinite(loss):
                    raise UserError(
                        f"training diverged at epoch {epoch} (loss {loss}); "
                        "lower train.lr or raise train.warmup_fraction"
                    )
                precision.step(optimizer, [p for _, p in params], cfg.grad_clip)
                clamp_logit_scale(method)
                scheduler.step()
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.3f}")
        record = {"train_loss": float(np.mean(losses)), **current_rates(optimizer, cfg)}
        if val is not None:  # on every rank: cheaper than making the others wait for rank 0
            record.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate_view(method, val, device, batch_size).metrics.items()
                    if k in ("t2v_R1", "v2t_R1", "t2v_R5")
                }
            )
        history.append(record)
        if dist.main:  # checkpoint first: a logging failure (tracking server down) then loses no epoch
            if save_checkpoint is not None:
                trainable = {n for n, _ in params}
                save_checkpoint(
                    {
                        "epoch": epoch,
                        "history": history,
                        "rng": rng_state(rng),
                        "weights": {n: t.detach().cpu() for n, t in method.state_dict().items() if n in trainable},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": precision.scaler.state_dict() if precision.scaler else None,
                    }
                )
            on_epoch(epoch, record)
    return history
