"""Batches read ahead of the one in use: a generic background-thread prefetcher (`Prefetcher`),
and `device_batches`, which reads a cached split's batches with it and moves them to the device
(CUDA: pinned memory, a side stream, normalised there).
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import numpy as np
import torch

from dgl.cache.read import CachedSplit, normalise

J, T = TypeVar("J"), TypeVar("T")
_END = object()


class Prefetcher(Generic[J, T]):
    """`make(job)` for every job in order, computed up to `depth` jobs ahead of the consumer by one
    background thread (depth 0: in the consumer's thread, when it asks: the synchronous path).

    Use it in a `with` block (or call `close`): closing stops and joins the thread, whether the loop
    ended, broke off or raised; a Prefetcher dropped unclosed stops its thread too. An exception in
    `make` is raised in the consumer at the job that raised it. `finish(item)`, if given, runs in the
    consumer's thread on every item before it is handed out. `waited`: seconds the consumer spent
    blocked on the next item. Jobs are taken from `jobs` in the background thread: give a list (or
    anything that draws no random numbers)."""

    def __init__(
        self, make: Callable[[J], T], jobs: Iterable[J], depth: int = 1, finish: Callable[[T], T] | None = None
    ):
        self.depth, self.waited = depth, 0.0
        self._make, self._finish, self._jobs = make, finish, iter(jobs)
        self._done = False
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue: queue.Queue = queue.Queue()
            self._slots = threading.Semaphore(depth)  # items made and not yet handed out
            self._stop = threading.Event()
            # The thread holds the queue, the slots and the stop flag, never `self`: an unclosed
            # Prefetcher is still garbage, and __del__ stops the thread.
            self._thread = threading.Thread(
                target=_produce,
                name="dgl-prefetch",
                daemon=True,
                args=(make, self._jobs, self._queue, self._slots, self._stop),
            )
            self._thread.start()

    def __iter__(self) -> Prefetcher[J, T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        if self._thread is None:
            job = next(self._jobs, _END)
            ok, item = (True, self._make(job)) if job is not _END else (False, None)
        else:
            ok, item = self._queue.get()
            self._slots.release()
        self.waited += time.perf_counter() - start
        if not ok:
            self.close()
            if item is None:
                raise StopIteration
            raise item
        return self._finish(item) if self._finish else item

    def close(self) -> None:
        """Stop the background thread and drop what it prepared; safe to call more than once."""
        self._done = True
        if self._thread is not None:
            self._stop.set()
            self._slots.release()  # wakes a thread waiting for a free slot
            self._thread.join()
            self._thread = None
            while not self._queue.empty():
                self._queue.get_nowait()

    def __enter__(self) -> Prefetcher[J, T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self.close()


def _produce(make, jobs, out: queue.Queue, slots: threading.Semaphore, stop: threading.Event) -> None:
    """Prefetcher's thread: (True, make(job)) per job while slots allow, then (False, None) at the
    end or (False, exception)."""
    try:
        for job in jobs:
            slots.acquire()
            if stop.is_set():
                return
            out.put((True, make(job)))
        out.put((False, None))
    except BaseException as e:  # handed to the consumer, raised there
        out.put((False, e))


# One batch to read: video indices (B,), candidate picks (B, T) or None for the centres, caption indices or None.
Job = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def device_batches(
    split: CachedSplit, jobs: Iterable[Job], device: torch.device, prefetch: int = 1
) -> Prefetcher[Job, tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches `jobs` name, read from a cached split and ready on `device`: frames (B, T, 3, S, S)
    float32, normalised there, and tokens (b, L) (None for a job without captions), `prefetch`
    batches ahead of the one in use (0 = each read when asked, in the caller's thread).

    CPU: `split.video_batch` (normalised where it is read). CUDA: uint8 frames decoded into pinned
    memory, copied to the GPU (non_blocking) on a side stream and normalised
    there; the consumer's stream waits for that stream's event before it uses them, so the copy of
    batch k + 1 overlaps the step on batch k."""
    device = torch.device(device)
    if device.type != "cuda":
        return Prefetcher(functools.partial(_read_batch, split, device), jobs, prefetch)
    stream = torch.cuda.Stream(device)
    mean, std = split.mean.to(device), split.std.to(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # mean and std are there first
    return Prefetcher(
        functools.partial(_read_batch_cuda, split, device, stream, mean, std),
        jobs,
        prefetch,
        finish=functools.partial(_on_current_stream, device),
    )


def _read_batch(split: CachedSplit, device: torch.device, job: Job) -> tuple[torch.Tensor, torch.Tensor | None]:
    videos, picks, captions = job
    frames = split.video_batch(videos, picks).to(device)
    return frames, None if captions is None else split.tokens[captions].to(device)


def _read_batch_cuda(
    split: CachedSplit, device: torch.device, stream, mean: torch.Tensor, std: torch.Tensor, job: Job
) -> tuple[torch.Tensor, torch.Tensor | None, torch.cuda.Event]:
    videos, picks, captions = job
    with torch.cuda.stream(stream):
        pixels = torch.empty((len(videos), split.num_frames, *split.frame_shape), dtype=torch.uint8, pin_memory=True)
        split.video_pixels(videos, picks, out=pixels.numpy())
        # `pixels` may be freed when this returns: the caching host allocator keeps a pinned block
        # until the copies that read it have run
        frames = normalise(pixels.to(device, non_blocking=True), mean, std)
        tokens = None if captions is None else split.tokens[captions].pin_memory().to(device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(stream)
    return frames, tokens, ready


def _on_current_stream(device: torch.device, item) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In the consumer's thread: its stream waits for the side stream's copy and normalisation; the
    tensors, made on the side stream, are marked as used on this one (for the allocator)."""
    frames, tokens, ready = item
    stream = torch.cuda.current_stream(device)
    stream.wait_event(ready)
    for t in (frames, tokens):
        if t is not None:
            t.record_stream(stream)
    return frames, tokens
