"""Shared test helpers: tiny params, the project in a temporary git + DVC repo, and one session-wide
`dvc repro` of that tiny project (`tiny_repro`) for every test that needs its data, cache or models.

Tests that take more than a few seconds (a `dvc` run, a stage or an MLflow server in a subprocess,
a ViT-B backbone) are marked `slow`: explicitly, or here for every test that uses `tiny_repro`, so
`make test-quick` (`-m "not slow"`) never builds it. `make test` runs them all."""
from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `make test` runs 2 pytest-xdist workers: each gets its share of the cores for torch in it and in
    # the stages it runs (one thread per core in each worker would have the workers' threads contend).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0))
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from dgl.settings import merge  # noqa: E402,F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for the whole pipeline to run in seconds on 2 CPU cores.
TINY_OVERRIDES = {
    "data": {"synthetic": {"train_videos": 24, "test_videos": 10, "resolution": 32, "seconds": 1.0,
                           "captions_per_video": 2}},
    "frames": {"num_frames": 4, "size": 32},
    "backbone": {"pretrain": {"images": 256, "eval_images": 64, "warmup_steps": 2, "warmup_batch_size": 64, "epochs": 1,
                              "batch_size": 64}},
    "train": {"epochs": 2, "batch_size": 8, "val_fraction": 0.2},
    "eval": {"batch_size": 8},
}


# The modules that take minutes, longest first (`pytest --durations`): `make test` hands whole modules
# to its 2 workers in collection order, and the rehearsal (the longest test) must not start last.
LONGEST_MODULES = ("test_rehearse.py", "test_faults.py", "test_tracking.py", "test_group.py", "test_experiments.py",
                   "test_pipeline.py", "test_scale.py")


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


def tiny_params() -> dict:
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


def group(key: str, **overrides):
    """One group of the project's params.yaml (`model.dgl`, `train`) with `overrides`, checked."""
    from dgl.settings import load_group

    return load_group(key, overrides, ROOT / "params.yaml")


def stage_cmd(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name`, as an argv."""
    return shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"])


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` with the venv first on PATH; a None value in `env` unsets that variable."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CI": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def dvc_cache_type() -> str:
    """The project's `cache.type` (.dvc/config): how DVC links outputs into its cache."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config["cache"]["type"].strip('"')


def make_project(dest: Path, params: dict) -> Path:
    """The project's pipeline files in a fresh git repo with DVC initialised and one commit."""
    for name in ("dgl", "pipelines", "experiments"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dgl_guard.py", dest / "dgl_guard.py")  # what the packages above run first
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    shutil.copy(ROOT / ".dvcignore", dest / ".dvcignore")
    run(["dvc", "config", "core.analytics", "false"], dest)
    run(["dvc", "config", "cache.type", dvc_cache_type()], dest)  # as the project links its outputs
    run(git + ["add", "-A"], dest)
    run(git + ["commit", "-qm", "tiny project"], dest)
    return dest


def copy_project(source: Path, dest: Path) -> Path:
    """A copy of a project made by make_project, git, DVC and MLflow state included, that runs as the
    original would: its mlflow.db is pointed at the copy's mlruns/ (`python -m dgl.tracking relocate`),
    since a copied store still names the original's folder and every run refuses it until relocated."""
    shutil.copytree(source, dest, symlinks=True)
    if (dest / "mlflow.db").exists():
        run([sys.executable, "-m", "dgl.tracking", "relocate"], dest,
            env={"PYTHONPATH": str(dest), "DVC_ROOT": str(dest), "MLFLOW_TRACKING_URI": None})
    return dest


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
