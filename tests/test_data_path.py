"""The data path from the cache's frame store to the device: the prefetching reader hands out the
synchronous reader's batches byte for byte, on the CPU training gives the same bits with and
without it, its background thread ends however the loop ends; activation checkpointing gives the
gradients of the plain backward pass while it keeps less for it."""

from __future__ import annotations

import gc
import json
import threading
import time

import numpy as np
import open_clip
import pytest
import torch

from bench.memory import saved_for_backward
from dgl import evaluation as evaluation_module
from dgl import train as train_module
from dgl.cache.prefetch import Prefetcher, device_batches
from dgl.cache.read import CachedSplit, normalise
from dgl.errors import UserError
from dgl.evaluation import encode_view
from dgl.frames.store import RawCodec, write_arrays
from dgl.models.backbone import build_clip
from dgl.models.methods import build_method
from dgl.train import contrastive_step, parallel_features, train_method
from dgl.views import SplitView
from helpers import group

VIDEOS, FRAMES, CANDIDATES, SIZE = 10, 3, 3, 64
CPU = torch.device("cpu")


def random_frames(candidates: int = CANDIDATES) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (VIDEOS, FRAMES * candidates, 3, SIZE, SIZE), dtype=np.uint8)


def cache_split(tmp_path, candidates: int = CANDIDATES) -> CachedSplit:
    """A split whose frames are random bytes in a frame store (raw codec), as preprocess links it."""
    store, rows = write_arrays(tmp_path, random_frames(candidates), RawCodec())
    texts = [f"a video number {v} {k}" for v in range(VIDEOS) for k in range(2)]
    return CachedSplit(
        store=store,
        rows=rows,
        tokens=open_clip.get_tokenizer("tiny-synthetic")(texts, context_length=16).long(),
        caption_video=torch.arange(2 * VIDEOS) // 2,
        texts=texts,
        categories=["static"] * len(texts),
        twins=torch.full((VIDEOS,), -1),
        video_ids=[f"v{v}" for v in range(VIDEOS)],
        mean=torch.tensor([0.48145466, 0.4578275, 0.40821073]),
        std=torch.tensor([0.26862954, 0.26130258, 0.27577711]),
        candidates=candidates,
    )


def legacy_batch(split: CachedSplit, indices, picks=None) -> torch.Tensor:
    """The read before device_batches existed, verbatim: fancy indexing of the frames, then normalise."""
    indices = np.asarray(indices)
    if picks is None:
        picks = np.full((len(indices), split.num_frames), split.candidates // 2)
    frame = np.arange(split.num_frames) * split.candidates + picks
    x = (
        torch.from_numpy(np.ascontiguousarray(random_frames(split.candidates)[indices[:, None], frame]))
        .float()
        .div_(255)
    )
    return (x - split.mean[:, None, None]) / split.std[:, None, None]


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def training_jobs(split: CachedSplit, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(6):
        videos = rng.permutation(VIDEOS)[:4]
        jobs.append((videos, split.jitter(4, rng), 2 * videos + 1))
    return jobs


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dgl-prefetch"]


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    for thread in prefetch_threads():
        thread.join(timeout=5)
    assert not prefetch_threads(), "a prefetching thread outlived its loop"


# ---- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_the_prefetching_reader_yields_the_synchronous_batches_byte_for_byte(tmp_path, prefetch):
    split = cache_split(tmp_path)
    jobs = training_jobs(split) + [(np.arange(2, 6), None, None), (np.array([7, 1, 4]), None, None)]
    with device_batches(split, jobs, CPU, prefetch) as loader:
        got = list(loader)
    assert len(got) == len(jobs)
    for (frames, tokens), (videos, picks, captions) in zip(got, jobs):
        assert same_bytes(frames, legacy_batch(split, videos, picks))
        assert (tokens is None) == (captions is None)
        if captions is not None:
            assert torch.equal(tokens, split.tokens[captions])


@pytest.mark.cuda
@pytest.mark.parametrize("prefetch", [0, 1])
def test_on_cuda_the_frames_arrive_as_uint8_and_are_normalised_there(tmp_path, prefetch):
    """Pinned memory, a non_blocking copy on a side stream, normalised on the GPU: the CPU's values
    (a GPU may divide by 255 as a multiplication by its reciprocal: the last bit may differ)."""
    split = cache_split(tmp_path)
    jobs = training_jobs(split) + [(np.arange(2, 6), None, None)]
    with device_batches(split, jobs, torch.device("cuda"), prefetch) as loader:
        got = [(frames.cpu(), None if tokens is None else tokens.cpu()) for frames, tokens in loader]
    for (frames, tokens), (videos, picks, captions) in zip(got, jobs, strict=True):
        torch.testing.assert_close(frames, legacy_batch(split, videos, picks), rtol=1e-6, atol=1e-6)
        assert captions is None and tokens is None or torch.equal(tokens, split.tokens[captions])


def test_video_pixels_are_the_named_frames_into_out_if_given(tmp_path):
    split = cache_split(tmp_path)
    run = split.video_pixels(np.arange(3, 7))  # evaluation: the centres
    assert same_bytes(normalise(run, split.mean, split.std), legacy_batch(split, np.arange(3, 7)))
    picks = np.random.default_rng(1).integers(CANDIDATES, size=(3, FRAMES))
    gathered = split.video_pixels([5, 0, 9], picks)
    assert same_bytes(normalise(gathered, split.mean, split.std), legacy_batch(split, [5, 0, 9], picks))
    out = np.empty((3, FRAMES, 3, SIZE, SIZE), dtype=np.uint8)
    assert split.video_pixels([5, 0, 9], picks, out=out) is out and np.array_equal(out, gathered)
    with pytest.raises(IndexError):
        split.video_pixels([VIDEOS], picks[:1])


def test_normalise_gives_the_same_bits_from_an_array_a_memory_map_and_a_tensor(tmp_path):
    np.save(tmp_path / "frames.npy", random_frames(1))
    pixels = np.load(tmp_path / "frames.npy", mmap_mode="r")[2:4]  # a read-only memory map
    mean, std = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])
    from_map = normalise(pixels, mean, std)
    assert same_bytes(from_map, normalise(np.array(pixels), mean, std))
    assert same_bytes(from_map, normalise(torch.from_numpy(np.array(pixels)), mean, std))


def test_training_gives_the_same_bits_with_and_without_prefetching(tmp_path, monkeypatch):
    split = cache_split(tmp_path)
    view = SplitView(split, np.arange(VIDEOS))
    cfg = group("train", epochs=2, batch_size=4, val_fraction=0.0, device="cpu")

    def trained(prefetch: int):
        monkeypatch.setattr(train_module, "PREFETCH", prefetch)
        monkeypatch.setattr(evaluation_module, "PREFETCH", prefetch)
        method = tiny(name="dgl", frames=FRAMES)
        history = train_method(method, view, None, cfg, CPU, on_epoch=lambda *_: None, progress=False)
        return method, history, encode_view(method, view, CPU, batch_size=4)

    (before, history_before, encoded_before), (after, history_after, encoded_after) = trained(0), trained(1)
    assert history_before == history_after
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        assert same_bytes(a, b), name
    for a, b in zip(encoded_before[:2], encoded_after[:2]):
        assert same_bytes(a, b)


# ---- the background thread ----------------------------------------------------------------------


def test_the_thread_ends_when_the_loop_breaks_off_or_raises():
    with Prefetcher(lambda job: job * 2, range(100), depth=2) as loader:
        for item in loader:
            if item == 4:
                break
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="step failed"):
        with Prefetcher(lambda job: job, range(100)) as loader:
            for item in loader:
                raise RuntimeError("step failed")
    assert not prefetch_threads()


def test_an_error_while_reading_reaches_the_consumer_at_its_batch():
    def make(job: int) -> int:
        if job == 3:
            raise OSError("damaged page")
        return job

    seen = []
    with pytest.raises(OSError, match="damaged page"):
        with Prefetcher(make, range(10)) as loader:
            seen.extend(loader)
    assert seen == [0, 1, 2]
    assert not prefetch_threads()


def test_an_unclosed_prefetcher_that_is_dropped_ends_its_thread():
    loader = Prefetcher(lambda job: job, range(100))
    assert next(loader) == 0 and prefetch_threads()
    del loader
    gc.collect()
    for thread in prefetch_threads():
        thread.join(timeout=5)
    assert not prefetch_threads()


def test_the_reader_stays_at_most_depth_batches_ahead():
    made = []

    def make(job: int) -> int:
        made.append(job)
        return job

    with Prefetcher(make, range(20), depth=2) as loader:
        for item in loader:
            time.sleep(0.01)  # the step; the reader has time to run ahead
            assert len(made) <= item + 1 + 2
    assert made == list(range(20))


def test_a_diverging_training_leaves_no_thread(tmp_path, monkeypatch):
    split = cache_split(tmp_path)
    monkeypatch.setattr(train_module, "contrastive_step", lambda *a, **k: torch.tensor(float("nan")))
    cfg = group("train", epochs=1, batch_size=4, val_fraction=0.0, device="cpu")
    with pytest.raises(UserError, match="training diverged"):
        train_method(
            tiny("dgl", FRAMES),
            SplitView(split, np.arange(VIDEOS)),
            None,
            cfg,
            CPU,
            on_epoch=lambda *_: None,
            progress=False,
        )
    assert not prefetch_threads()


# ---- activation checkpointing ----------------------------------------------------------------------


def tiny(name: str, frames: int = 2):
    torch.manual_seed(0)
    return build_method(name, build_clip("tiny-synthetic"), group("model", method=name), num_frames=frames)


def one_step(name: str, checkpointing: bool) -> tuple[float, dict, int]:
    """Loss, gradients and activation bytes saved for the backward pass of one step on 4 videos."""
    method = tiny(name)
    method.encoder.activation_checkpointing = checkpointing
    torch.manual_seed(1)
    frames, tokens = torch.randn(4, 2, 3, SIZE, SIZE), torch.randint(1, 400, (4, 12))
    tokens[:, -1] = 49407  # the EOT token
    model = parallel_features(method, CPU)
    with saved_for_backward(exclude=method.parameters()) as saved:
        model(tokens, frames)
    loss = contrastive_step(model, tokens, frames, method.logit_scale)
    return loss.item(), {n: p.grad for n, p in method.named_parameters() if p.requires_grad}, saved["bytes"]


@pytest.mark.parametrize("name", ["dgl", "full", "adapter_attn", "vop_f", "vop_c"])
def test_checkpointing_gives_the_same_gradients_and_keeps_less(name):
    loss, grads, kept = one_step(name, checkpointing=False)
    loss_ckpt, grads_ckpt, kept_ckpt = one_step(name, checkpointing=True)
    assert loss_ckpt == loss
    assert grads_ckpt.keys() == grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    assert kept_ckpt < kept / 2


def test_checkpointing_is_a_training_param_that_trains_the_same_bits_on_the_cpu(tmp_path):
    split = cache_split(tmp_path)
    view = SplitView(split, np.arange(VIDEOS))
    weights = []
    for on in (False, True):
        cfg = group("train", epochs=1, batch_size=4, val_fraction=0.0, device="cpu", activation_checkpointing=on)
        method = tiny("dgl", FRAMES)
        train_method(method, view, None, cfg, CPU, on_epoch=lambda *_: None, progress=False)
        assert method.encoder.activation_checkpointing is on
        weights.append({n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad})
    for name, w in weights[0].items():  # the same bits: the same operations recomputed, summed in the same order
        assert same_bytes(weights[1][name], w), name
    with pytest.raises(UserError, match="activation_checkpointing"):
        group("train", activation_checkpointing="yes")


def test_gpu_check_without_cuda_skips_in_one_line(monkeypatch, capsys):
    from bench import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run", lambda *a: pytest.fail("nothing runs without CUDA"))
    gpu_check.main()  # returns: exit code 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu-check: skipped, no CUDA device")


def test_gpu_check_summarises_its_three_parts_in_one_json(monkeypatch, capsys):
    """The summary's parsing, on the shapes bench.train_speed and bench.eval_speed print (no GPU here)."""
    from bench import gpu_check

    setting = {"step_s": 0.5, "activation_mib_per_video": 246.0, "cuda_peak_mib_per_video": 300.0}
    train = {
        "device": "H100",
        "amp": "torch.bfloat16",
        "batch": 32,
        "runs": {
            m: {"checkpointing_off": {**setting, "step_s": s}, "checkpointing_on": {**setting, "step_s": 2 * s}}
            for m, s in (("dgl", 0.5), ("full", 1.0))
        },
        "data_path": {"wait": {"after": {"wait_share": 0.01}}},
        "checks": {"data_wait_share": {"within": True}},
    }
    evaluation = {
        "runs": [
            {"videos": 1000, "ratio_to_matmul": 1.1, "seconds": 0.01, "limit": 1.3},
            {"videos": 100000, "ratio_to_matmul": 1.2, "seconds": 2.0, "limit": 1.3},
        ]
    }
    outputs = {
        "pytest": "4 passed in 3.1s",
        "bench.train_speed": json.dumps(train),
        "bench.eval_speed": json.dumps(evaluation),
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "H100")
    monkeypatch.setattr(gpu_check, "run", lambda args, limit: (0, outputs[args[1]]))
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    summary = json.loads(capsys.readouterr().out)
    assert exit_.value.code == 0 and summary["ok"]
    assert summary["cuda_tests"] == {"rc": 0, "passed": 4}
    assert summary["train"]["dgl_over_full_step_time"] == 0.5 and summary["train"]["data_wait_share"] == 0.01
    assert summary["train"]["step_s"] == {"dgl": 0.5, "dgl_checkpointing": 1.0, "full": 1.0, "full_checkpointing": 2.0}
    assert summary["eval"]["ratio_to_matmul"] == {"1000": 1.1, "100000": 1.2}  # JSON keys are strings
