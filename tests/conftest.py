"""Fixtures and hooks shared by the tests: one session-wide `dvc repro` of the tiny project
(`tiny_repro`) for every test that needs its data, cache or models, and one ViT-B/32 and one ViT-B/16
(`vit_b32`, `vit_b16`). The plain helpers (tiny params, the project in a temporary git + DVC repo) are in helpers.py.

Tests that take more than a few seconds (a `dvc` run, a stage or an MLflow server in a subprocess,
a ViT-B backbone) are marked `slow`: explicitly, or here for every test that uses `tiny_repro`, so
`make test-quick` (`-m "not slow"`) never builds it. `make test` runs them all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `make test` runs 2 pytest-xdist workers: each gets its share of the cores for torch in it and in
    # the stages it runs (one thread per core in each worker would have the workers' threads contend).
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

from helpers import make_project, run, tiny_params  # noqa: E402

# The modules that take minutes, longest first (`pytest --durations`): `make test` hands whole modules
# to its 2 workers in collection order, and the rehearsal (the longest test) must not start last.
LONGEST_MODULES = (
    "test_rehearse.py",
    "test_faults.py",
    "test_tracking.py",
    "test_group.py",
    "test_experiments.py",
    "test_pipeline.py",
    "test_scale.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tiny_repro" in item.fixturenames:  # directly or through a fixture of its module
            item.add_marker(pytest.mark.slow)
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_tests:
        import torch  # here, not at the top: the thread settings above must come first

        if not torch.cuda.is_available():
            for item in cuda_tests:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (`make gpu-check` runs it on one)"))
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory) -> Path:
    """The tiny project after one `dvc repro`: data, cache, backbone, trained model, metrics.json,
    plots and mlflow.db, built once per session. Read it, never change it: a test that runs DVC or
    a stage in it, or changes any file, works on `copy_project(tiny_repro, ...)` instead.

    Under pytest-xdist (`make test` runs 2 workers) the workers share one build: the first to need
    it builds it under a lock in the folder their temporary folders share, the others wait for it.
    A build that failed is removed, so the next worker tries again and reports its own failure."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, built = shared / "tiny_repro", shared / "tiny_repro.built"
    with FileLock(shared / "tiny_repro.lock"):
        if not built.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            try:
                make_project(root, tiny_params())
                run(["dvc", "repro"], root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            built.touch()
    return root


def _random_clip(name: str):
    import torch

    from dgl.models.backbone import build_clip

    torch.manual_seed(0)
    return build_clip(name)


@pytest.fixture(scope="session")
def vit_b32():
    """One ViT-B/32 with random weights (seed 0), built once per worker for every test that counts or
    runs a method on it: build_method sets each of its parameters' requires_grad anew and no test
    changes its weights or leaves a gradient on them."""
    return _random_clip("ViT-B-32")


@pytest.fixture(scope="session")
def vit_b16():
    """One ViT-B/16 with random weights (seed 0), as `vit_b32`."""
    return _random_clip("ViT-B-16")
