"""Plain helpers the tests import (`from helpers import ...`): tiny params, one group of params.yaml,
a stage's command, running a command with the venv on PATH, and the project in a temporary git + DVC repo
(`make_project`, `copy_project`). Fixtures and hooks stay in conftest.py."""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from dgl.settings import merge  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for the whole pipeline to run in seconds on 2 CPU cores.
TINY_OVERRIDES = {
    "data": {
        "synthetic": {"train_videos": 24, "test_videos": 10, "resolution": 32, "seconds": 1.0, "captions_per_video": 2}
    },
    "frames": {"num_frames": 4, "size": 32},
    "backbone": {
        "pretrain": {
            "images": 256,
            "eval_images": 64,
            "warmup_steps": 2,
            "warmup_batch_size": 64,
            "epochs": 1,
            "batch_size": 64,
        }
    },
    "train": {"epochs": 2, "batch_size": 8, "val_fraction": 0.2},
    "eval": {"batch_size": 8},
}


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    """The pinned ffmpeg, quiet and overwriting its output, with `args` (`stdin` piped in); an error fails the test."""
    from dgl.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], input=stdin, check=True)


def tiny_params() -> dict:
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


def group(key: str, **overrides):
    """One group of the project's params.yaml (`model.dgl`, `train`) with `overrides`, checked."""
    from dgl.settings import load_group

    return load_group(key, overrides, ROOT / "params.yaml")


def stage_cmd(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name`, as an argv."""
    return shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"])


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(env: dict | None = None) -> dict[str, str]:
    """This environment with the venv first on PATH and CI set, then `env`; a None value unsets a variable."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CI": "1", **(env or {})}
    return {k: v for k, v in full_env.items() if v is not None}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` with the venv first on PATH (`venv_env`)."""
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=venv_env(env))
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def start_mlflow(command: str, port: int, store: str, *options: str, log: Path) -> subprocess.Popen:
    """`mlflow <command>` (server or ui) on loopback `port` with the backend store `store` (a URI), its
    output appended to `log`; returned once it answers. Its workers share its process group (`stop_mlflow`).
    MLflow's job runner (a dozen huey processes for GenAI jobs, which nothing here uses) stays off."""
    with log.open("a") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            + ["--backend-store-uri", store, *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=venv_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
        )
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"mlflow {command} exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return proc
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # starting, or slow on a busy machine
                assert time.monotonic() < deadline, (
                    f"mlflow {command} did not answer in 120 s:\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.2)
    except BaseException:
        stop_mlflow(proc)  # its workers too, which may outlive it
        raise


def stop_mlflow(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal `mlflow server`/`ui` and its workers, its process group (SIGKILL: a crash, not a shutdown),
    and reap it; what a SIGTERM leaves after 10 s is killed."""
    with contextlib.suppress(ProcessLookupError):  # none left: it exited, or failed to start
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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


MLFLOW_STORE = ("mlflow.db", "mlflow.db.lock", "mlruns")  # the default SQLite store beside a project


def copy_project(source: Path, dest: Path, mlflow_store: bool = True) -> Path:
    """A copy of a project made by make_project, git, DVC and MLflow state included, that runs as the
    original would: its mlflow.db is pointed at the copy's mlruns/ (`python -m dgl.tracking relocate`),
    since a copied store still names the original's folder and every run refuses it until relocated.
    Without `mlflow_store` the copy has no store (mlflow.db, mlruns/), for tests that log elsewhere or anew."""

    shutil.copytree(source, dest, symlinks=True, ignore=None if mlflow_store else shutil.ignore_patterns(*MLFLOW_STORE))
    if (dest / "mlflow.db").exists():
        run(
            [sys.executable, "-m", "dgl.tracking", "relocate"],
            dest,
            env={"PYTHONPATH": str(dest), "DVC_ROOT": str(dest), "MLFLOW_TRACKING_URI": None},
        )
    return dest


def call_main(module: str, args: list[str], monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`python -m module *args` in this process: its main() with sys.argv set as `-m` sets it, the exit
    code and what it printed, as `run` gives them. For a one-line error, where a subprocess adds
    nothing but its start (a test about the process itself, its signals or its exit through DVC, runs it)."""
    import importlib

    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [sys.modules[module].__file__, *args])
    torch = sys.modules.get("torch")  # what a stage sets for its process is put back for the next test
    if torch is not None:
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    capsys.readouterr()  # what came before is not this command's
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([module, *args], code, out.out, out.err)


def stage_in_process(name: str, cwd: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """Stage `name`'s main() with dvc.yaml's arguments, in this process, in `cwd` (also DVC_ROOT): for a
    refusal before any work, where a new process adds only its start. The stages' exit codes and
    stderr through a real process are checked where that is the point (test_faults.py's unwritable
    folders, full disk and killed trainings, and `dvc` runs that fail in stage `params`)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DVC_ROOT", str(cwd))
    cmd = stage_cmd(name)
    return call_main(cmd[2], cmd[3:], monkeypatch, capsys)
