"""Nothing breaks, nothing is lost: every fault a user can cause is one line on stderr and exit code 2,
and what the user had is left as it was. All on real files: a tiny project after a real `dvc repro`,
damaged model files, a read-only folder and a full disk (in a private mount namespace), a killed
`dvc exp run` that DVC later restores from its run cache, a tracking server killed mid-run."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (
    ROOT,
    copy_project,
    free_port,
    make_project,
    merge,
    run,
    stage_cmd,
    stage_in_process,
    start_mlflow,
    stop_mlflow,
    tiny_params,
    venv_env,
)

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
SEED_RANGE = "is out of range; use a value in [0, 4294967295]"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_repro) -> Path:
    """The tiny project after one `dvc repro` (a copy of the session's: these tests change it),
    committed as a user would."""
    root = copy_project(tiny_repro, tmp_path_factory.mktemp("faults") / "project")
    run(GIT + ["add", "-A"], root)
    run(GIT + ["commit", "-qm", "repro"], root)
    return root


def digests(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), by path: what the user has there."""
    out = {}
    for path in paths:
        files = [root / path] if (root / path).is_file() else sorted(p for p in (root / path).rglob("*") if p.is_file())
        out.update({str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    assert out, f"nothing under {paths}"
    return out


def one_line(out: subprocess.CompletedProcess, *needles: str) -> str:
    """The stage failed with exit code 2 and one error line, its last on stderr, that holds every
    needle; no traceback. Before it only what the stage says as it goes (training's line per epoch)."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], out.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def stage(name: str, cwd: Path, code: Path = ROOT) -> subprocess.CompletedProcess:
    """The stage's own command, as dvc.yaml runs it, in `cwd` with the code under `code` (the
    project's copy where the inputs come from the project: what made them reads them)."""
    return run(stage_cmd(name), cwd, check=False, env={"PYTHONPATH": str(code), "DVC_ROOT": str(cwd)})


def write_params(path: Path, overrides: dict, base: Path | None = None) -> None:
    """Tiny params (or those of the params file `base`) with `overrides`."""
    params = yaml.safe_load(base.read_text()) if base else tiny_params()
    path.write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))


def mlflow_runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT run_uuid, status FROM runs ORDER BY start_time").fetchall()


def link_inputs(project: Path, dest: Path, *paths: str) -> None:
    """`paths` of the project (stage inputs) as symbolic links under `dest`, read where they lie."""
    for path in paths:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).symlink_to(project / path)


# ---- damaged or missing files ----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "name,damage,what",
    [
        ("weights.pt", _truncate, "damaged"),
        ("weights.pt", lambda p: p.write_bytes(b""), "damaged"),
        ("weights.pt", Path.unlink, "missing"),
        ("model.json", Path.unlink, "missing"),
        ("model.json", _truncate, "damaged"),
    ],
)
def test_evaluate_with_a_damaged_or_missing_model_file_names_it_and_the_command_that_rebuilds_it(
    project, tmp_path, name, damage, what, monkeypatch, capsys
):
    link_inputs(project, tmp_path, "data/cache", "models/backbone")
    shutil.copytree(project / "models/trained", tmp_path / "models/trained")
    shutil.copytree(project / "plots", tmp_path / "plots")
    for path in ("params.yaml", "metrics.json"):
        shutil.copy(project / path, tmp_path / path)
    damage(tmp_path / "models/trained" / name)
    before = digests(tmp_path, "metrics.json", "plots", "models/trained")
    out = stage_in_process("evaluate", tmp_path, monkeypatch, capsys)
    one_line(out, f"models/trained/{name}: {what}", "rebuild it with `dvc repro train`")
    assert digests(tmp_path, "metrics.json", "plots", "models/trained") == before
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_train_or_evaluate_before_preprocess_says_to_run_it(tmp_path, name, monkeypatch, capsys):
    write_params(tmp_path / "params.yaml", {})
    out = stage_in_process(name, tmp_path, monkeypatch, capsys)
    one_line(out, "data/cache: no preprocessed cache here", "run `dvc repro preprocess` first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def _tiny_clip_state() -> dict[str, torch.Tensor]:
    from dgl.models.backbone import build_clip

    return build_clip("tiny-synthetic").state_dict()


def _wider(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tiny backbone's weights with one tensor a row longer than the architecture's."""
    pos = state["positional_embedding"]
    return {**state, "positional_embedding": torch.zeros(pos.shape[0] + 1, *pos.shape[1:])}


@pytest.mark.parametrize("case", ["tensor-only", "wrong-shapes"])
def test_a_pretrained_backbone_file_that_does_not_fit_is_one_line(tmp_path, case, monkeypatch, capsys):
    checkpoint = tmp_path / "pretrained.pt"
    state = _tiny_clip_state()
    if case == "tensor-only":
        torch.save(torch.zeros(3, 4), checkpoint)
        needle = "holds a Tensor, not a state dict of named tensors; save it with torch.save(model.state_dict())"
    else:
        torch.save(_wider(state), checkpoint)
        rows, width = state["positional_embedding"].shape
        needle = (
            f"1 tensors have other shapes than the backbone's, e.g. positional_embedding ({rows + 1}, {width}) "
            f"where ({rows}, {width}) is needed; check backbone.name"
        )
    write_params(tmp_path / "params.yaml", {"backbone": {"pretrained": str(checkpoint)}})
    (tmp_path / "models/backbone").mkdir(parents=True)
    (tmp_path / "models/backbone/backbone.json").write_text('{"kept": 1}')
    out = stage_in_process("backbone", tmp_path, monkeypatch, capsys)
    one_line(out, f"error: {checkpoint}: {needle}")
    assert (tmp_path / "models/backbone/backbone.json").read_text() == '{"kept": 1}'
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["backbone"]


# ---- params out of range, checked by the params stage and by the stage that reads them ---------------


@pytest.mark.parametrize(
    "key,value,reader",
    [
        ("train.seed", -1, "train"),
        ("train.seed", 2**32, None),
        ("backbone.pretrain.seed", -1, "backbone"),
        ("data.synthetic.seed", -1, "download"),
        ("data.synthetic.seed", 2**32, None),
    ],
)
def test_a_seed_out_of_range_is_one_line(tmp_path, key, value, reader, monkeypatch, capsys):
    *parents, last = key.split(".")
    override: dict = {last: value}
    for part in reversed(parents):
        override = {part: override}
    write_params(tmp_path / "params.yaml", override)
    for name in ("params", reader) if reader else ("params",):
        one_line(stage_in_process(name, tmp_path, monkeypatch, capsys), f"params: {key} = {value} {SEED_RANGE}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ---- an unwritable output folder: refused before any work ---------------------------------------------


def with_mounts(setup: str, cmd: list[str], after: str = "") -> list[str]:
    """`cmd` in a private mount namespace (`unshare`, no privileges needed) after the shell `setup`;
    `after` runs once it exits (its output goes to stdout), and the exit code is the command's."""
    script = f'{setup} || exit 97; "$@"; rc=$?; {after or ":"}; exit $rc'
    return ["unshare", "-rm", "sh", "-c", script, "sh", *cmd]


@functools.cache
def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(with_mounts("true", ["true"]), capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="no unprivileged mount namespaces (unshare -rm)")


def run_read_only(folder: Path, cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`cmd` with `folder` read-only. Root is not stopped by file modes, so for root (and for
    everyone where namespaces work) the folder becomes a read-only bind mount instead."""
    if namespaces_work():
        bind = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}"'
        return run(with_mounts(bind, cmd), cwd, check=False, env=env)
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes and mount namespaces are not available")
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        return run(cmd, cwd, check=False, env=env)
    finally:
        folder.chmod(mode)


@pytest.mark.parametrize(
    "name,folder,output",
    [
        ("train", "models", "models/trained"),
        ("evaluate", "plots", "plots/recall.json"),
        ("preprocess", "data", "data/cache"),
    ],
)
def test_an_unwritable_output_folder_is_refused_before_any_work(project, tmp_path, name, folder, output):
    before = digests(project, "models/trained", "plots", "metrics.json", "data/cache")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "DVC_ROOT": str(tmp_path)}
    out = run_read_only(project / folder, stage_cmd(name), project, env)
    one_line(out, f"{output}: cannot be written, {folder} is not writable; make it writable (chmod u+w {folder})")
    assert not (tmp_path / "mlflow.db").exists()  # stopped before training started a run
    assert not (project / "models/checkpoints/train.pt").exists()
    assert digests(project, "models/trained", "plots", "metrics.json", "data/cache") == before


# ---- a full disk: one line, the partial output removed ------------------------------------------------


@needs_namespaces
@pytest.mark.parametrize(
    "full_one,needle",
    [
        ("out", "trained: No space left on device while writing it; the partial output was removed and"),
        ("checkpoint", "train.pt: No space left on device while writing it; the previous checkpoint is kept"),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_no_partial_output(project, tmp_path, full_one, needle):
    full, spare = tmp_path / "full", tmp_path / "spare"  # a 64 kB file system, and the ordinary disk
    full.mkdir()
    paths = {"out": spare / "trained", "plot": spare / "train.json", "checkpoint": spare / "ckpt/train.pt"}
    paths[full_one] = full / ("trained" if full_one == "out" else "ckpt/train.pt")
    cmd = stage_cmd("train")
    for flag, path in paths.items():
        cmd[cmd.index(f"--{flag}") + 1] = str(path)
    setup = (
        f'mount -t tmpfs -o size=64k tmpfs "{full}" && mkdir "{full}/trained" && echo mine > "{full}/trained/kept.txt"'
    )
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "DVC_ROOT": str(tmp_path)}
    out = run(
        with_mounts(setup, cmd, after=f'cd "{full}" && find . | sort && cat trained/kept.txt'),
        project,
        check=False,
        env=env,
    )
    one_line(out, needle, "Free some space and run again")
    left = out.stdout.split()
    assert left[-1] == "mine", out.stdout  # the user's file on the full disk is kept
    # beside the checkpoint, its run's id written as the run started (dgl/checkpoint.py): not a partial output
    kept = ["./ckpt", "./ckpt/train.pt.run"] if full_one == "checkpoint" else []
    assert ".partial" not in out.stdout and left[:-1] == sorted([".", "./trained", "./trained/kept.txt"] + kept), (
        out.stdout
    )
    assert not (spare / "trained").exists()
    assert [status for _, status in mlflow_runs(tmp_path / "mlflow.db")] == ["FAILED"]


# ---- through DVC: the params stage runs first, so a bad value deletes nothing --------------------------

OUTPUTS = ("models/trained", "plots", "metrics.json", "data/cache", "models/backbone")


def test_every_stage_runs_after_the_params_check():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {
        next(iter(o)) if isinstance(o, dict) else o: name
        for name, s in stages.items()
        for o in s.get("outs", []) + s.get("metrics", []) + s.get("plots", [])
    }

    def upstream(name: str) -> set[str]:
        parents = {outs[d] for d in stages[name]["deps"] if d in outs}
        return parents.union(*(upstream(p) for p in parents))

    assert stages["params"]["params"] == [{"params.yaml": None}]  # the whole file
    assert all("params" in upstream(name) for name in stages if name != "params")


def test_the_params_check_knows_the_backbones_open_clip_builds():
    """Stage `params` reads the architecture names from the config files, without importing open_clip:
    the same names as open_clip's own list once ours are registered."""
    import open_clip

    from dgl.models.backbone import register_configs
    from dgl.settings import backbone_names

    register_configs()
    assert backbone_names() == set(open_clip.list_models())


def committed(project: Path, key: str) -> str:
    """`key: value` as the project's committed params.yaml has it (repr of the value)."""
    value = yaml.safe_load(run(["git", "show", "HEAD:params.yaml"], project).stdout)
    for part in key.split("."):
        value = value[part]
    return f"{key}: {value!r}"


def stages_run(out: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage '")]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["exp", "run", "-S", "train.lr=-1"], "params: train.lr = -1.0 is out of range"),
        (["exp", "run", "-S", "train.seed=-1"], f"params: train.seed = -1 {SEED_RANGE}"),
        (
            ["exp", "run", "-S", "backbone.name=bogus"],
            "params: backbone.name = 'bogus' is not an open_clip model; "
            "use e.g. ViT-B-32, ViT-B-16 or one of tiny-synthetic",
        ),
        (["repro"], "params: unknown key trian (did you mean train?); known keys here:"),
    ],
    ids=["train.lr", "train.seed", "backbone.name", "unknown key"],
)
def test_a_bad_params_value_or_key_fails_before_dvc_deletes_any_output(project, args, needle):
    before = digests(project, *OUTPUTS)
    params = (project / "params.yaml").read_text()
    if args == ["repro"]:
        (project / "params.yaml").write_text(params + "trian:\n  lr: 0.01\n")
    try:
        out = run(["dvc", *args], project, check=False)
        assert out.returncode != 0
        assert "Traceback" not in out.stdout + out.stderr
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and needle in errors[0], out.stdout + out.stderr
        assert stages_run(out) == ["params"], out.stdout
        assert digests(project, *OUTPUTS) == before
        if args[:2] == ["exp", "run"]:  # DVC leaves the value in params.yaml; the line says what was there
            key = args[-1].split("=")[0]
            assert (project / "params.yaml").read_text() != params
            assert errors[0].endswith(
                f"; `dvc exp run` left the new value in params.yaml (the last commit has "
                f"{committed(project, key)}): `git show HEAD:./params.yaml > params.yaml` "
                "restores the committed file"
            ), errors[0]
            run(["bash", "-c", advice(errors[0])], project)  # as the line says
            assert (project / "params.yaml").read_text() == params
    finally:
        (project / "params.yaml").write_text(params)
    assert "changed" not in run(["dvc", "status", "params", "train", "evaluate"], project).stdout


def advice(error: str) -> str:
    """The shell line an error's restore hint names."""
    return re.search(r"`([^`]+)` restores the committed file", error).group(1)


def pin_stat_cache(project: Path, path: str) -> None:
    """Leave git's index as a workspace `dvc exp run` often does: its entry for `path` (the committed
    blob) stat-matches the rewritten file, so git takes it for unchanged without reading it. That
    happens when DVC rewrites the file within the second git refreshed the index in and the size is
    the same; here it is made certain: only size and mtime seconds compared (core.checkStat), the
    file's mtime set to the entry's, the index written after it (not "racily clean")."""
    run(["git", "config", "core.checkStat", "minimal"], project)
    entry = run(["git", "ls-files", "--debug", path], project).stdout
    mtime = int(re.search(r"mtime: (\d+):", entry).group(1))
    os.utime(project / path, (mtime, mtime))
    index = project / ".git" / "index"
    os.utime(index, (mtime + 10, mtime + 10))


@pytest.mark.slow
def test_the_advice_after_a_failed_exp_run_restores_params_yaml_byte_for_byte(tmp_path):
    """The issue's case: `dvc exp run -S model.dgl.local_prompt_len=100` over the project's own
    params.yaml (aligned comments: 4 and 100 give a file of the same size) fails in stage `params`,
    before anything expensive runs. `git status` then shows nothing and `git checkout params.yaml`
    restores nothing; the line the error prints must restore the committed bytes anyway."""
    project = make_project(tmp_path / "p", tiny_params())
    committed_text = (ROOT / "params.yaml").read_text()
    (project / "params.yaml").write_text(committed_text)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "the project's params.yaml"], project)
    out = run(["dvc", "exp", "run", "-S", "model.dgl.local_prompt_len=100"], project, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error: ")]
    assert out.returncode != 0 and len(errors) == 1, out.stdout + out.stderr
    assert stages_run(out) == ["params"], out.stdout
    assert (project / "params.yaml").stat().st_size == len(committed_text.encode())  # same width
    pin_stat_cache(project, "params.yaml")
    assert run(["git", "status", "--porcelain", "params.yaml"], project).stdout == ""  # git cannot see it
    run(["bash", "-c", advice(errors[0])], project)
    assert run(["git", "diff", "--exit-code", "params.yaml"], project, check=False).returncode == 0
    assert (project / "params.yaml").read_text() == committed_text


def test_the_restore_hint_survives_a_params_file_that_is_not_a_mapping(tmp_path, monkeypatch):
    """A workspace `dvc exp run` over a params.yaml whose top level is a list: the hint cannot name
    keys, so it says only how to restore the file (it used to fail inside the error's own message)."""
    from pipelines.params import restore_hint

    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.01\n")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "params.yaml"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params"], tmp_path)
    (tmp_path / "params.yaml").write_text("- train\n- lr\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "HEAD")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert restore_hint("params.yaml") == (
        "; `dvc exp run` left the value in params.yaml: "
        "`git show HEAD:./params.yaml > params.yaml` restores the committed file"
    )
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.02\n")
    assert restore_hint("params.yaml").startswith(
        "; `dvc exp run` left the new value in params.yaml (the last commit has train.lr: 0.01)"
    )


def test_a_single_stage_run_rejects_a_bad_value_itself_before_any_work(project):
    """`dvc repro -s train` runs train alone, without stage `params`: train rejects the value in its
    one line before training starts, but DVC removed train's outputs before running it (it always
    does); `dvc checkout` and git bring them back, as README says."""
    before, params = digests(project, *OUTPUTS), (project / "params.yaml").read_text()
    runs_before = mlflow_runs(project / "mlflow.db")
    write_params(project / "params.yaml", {"train": {"lr": -1}}, base=project / "params.yaml")
    try:
        out = run(["dvc", "repro", "-s", "train"], project, check=False)
        assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error: ")]
        assert errors == ["error: params: train.lr = -1.0 is out of range; use a value in [0.0, 1.0]"], out.stderr
        assert stages_run(out) == ["train"], out.stdout
        assert mlflow_runs(project / "mlflow.db") == runs_before  # no training started
        assert not (project / "models/checkpoints/train.pt").exists()
        assert not (project / "models/trained").exists()  # DVC's doing, before the stage ran
    finally:
        (project / "params.yaml").write_text(params)
    run(["dvc", "checkout", "models/trained"], project)
    run(["git", "checkout", "plots"], project)
    assert digests(project, *OUTPUTS) == before
    assert "changed" not in run(["dvc", "status", "train"], project).stdout


# ---- tracking: no epoch lost, no run left RUNNING, no orphan checkpoint --------------------------------


def test_a_killed_experiment_restored_from_the_run_cache_leaves_no_orphan(project):
    """`dvc exp run` killed mid-training, then an experiment whose `train` DVC restores from its run
    cache (so train never runs): the params stage ends the killed run and removes its checkpoint."""
    checkpoint = project / "models/checkpoints/train.pt"
    before = digests(project, *OUTPUTS)
    db = project / "mlflow.db"
    runs_before = mlflow_runs(db)
    params = yaml.safe_load((project / "params.yaml").read_text())["train"]
    env = venv_env()
    proc = subprocess.Popen(
        ["dvc", "exp", "run", "-S", "train.lr=0.01", "-S", "train.epochs=50"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # DVC and the stage under it, as a closed terminal would
        proc.communicate()
    killed = [r for r in mlflow_runs(db) if r not in runs_before]
    assert [status for _, status in killed] == ["RUNNING"]

    out = run(
        ["dvc", "exp", "run", "-S", f"train.lr={params['lr']}", "-S", f"train.epochs={params['epochs']}"], project
    )
    assert "Stage 'train' is cached - skipping run" in out.stdout, out.stdout
    assert f"{checkpoint.relative_to(project)}: left by a killed training" in out.stderr + out.stdout
    assert not checkpoint.exists()
    assert dict(mlflow_runs(db))[killed[0][0]] == "KILLED"
    assert "RUNNING" not in dict(mlflow_runs(db)).values()
    assert digests(project, *OUTPUTS) == before


def kill_train_once(project: Path, cwd: Path, written: Path) -> None:
    """Run the train stage in `cwd` (the project's code) and kill it as soon as `written` exists."""
    env = venv_env({"PYTHONPATH": str(project), "DVC_ROOT": str(cwd)})
    proc = subprocess.Popen(
        stage_cmd("train"), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while not written.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.communicate()


def test_a_training_with_other_params_ends_the_killed_runs_checkpoint(project, tmp_path):
    """The train stage itself, on a checkpoint another training left when it was killed: that run
    ends KILLED, the checkpoint is removed, and the new run is the only one left open until it ends."""
    link_inputs(project, tmp_path, "data/cache", "models/backbone")
    write_params(tmp_path / "params.yaml", {"train": {"epochs": 50}}, base=project / "params.yaml")
    checkpoint = tmp_path / "models/checkpoints/train.pt"
    kill_train_once(project, tmp_path, checkpoint)
    write_params(tmp_path / "params.yaml", {"train": {"lr": 0.01}}, base=project / "params.yaml")
    out = stage("train", tmp_path, code=project)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ignored, training starts afresh" in out.stderr and "ended as KILLED" in out.stderr
    assert not checkpoint.exists()
    assert [status for _, status in mlflow_runs(tmp_path / "mlflow.db")] == ["KILLED", "FINISHED"]


def test_a_training_killed_before_its_first_checkpoint_leaves_no_run_running(project, tmp_path):
    """Killed once its MLflow run has started but before the first checkpoint: only the run's id is
    left beside where the checkpoint would be, and the params stage ends that run as KILLED."""
    link_inputs(project, tmp_path, "data/cache", "models/backbone")
    write_params(tmp_path / "params.yaml", {"train": {"epochs": 50}}, base=project / "params.yaml")
    checkpoint = tmp_path / "models/checkpoints/train.pt"
    marker = checkpoint.with_name("train.pt.run")
    kill_train_once(project, tmp_path, marker)
    assert not checkpoint.exists()  # the first epoch had not ended
    ((run_id, status),) = mlflow_runs(tmp_path / "mlflow.db")
    assert status == "RUNNING" and marker.read_text().strip() == run_id
    out = stage("params", tmp_path, code=project)
    assert out.returncode == 0 and f"run {run_id} of that checkpoint ended as KILLED" in out.stderr, out.stderr
    assert mlflow_runs(tmp_path / "mlflow.db") == [(run_id, "KILLED")] and not marker.exists()


def train_loss_steps(store: Path) -> dict[str, list[int]]:
    with sqlite3.connect(store / "mlflow.db") as con:
        rows = con.execute("SELECT run_uuid, step FROM metrics WHERE key = 'epoch/train_loss' ORDER BY step").fetchall()
    out: dict[str, list[int]] = {}
    for run_id, step in rows:
        out.setdefault(run_id, []).append(step)
    return out


def test_a_tracking_server_killed_mid_run_loses_no_epoch(project, tmp_path):
    """The server dies while train runs: train stops in one line when logging fails, with that epoch
    already checkpointed; once the server is back the rerun resumes after it, in the same run, and
    the run ends FINISHED holding every epoch exactly once."""
    epochs = 8
    link_inputs(project, tmp_path, "data/cache", "models/backbone")
    write_params(tmp_path / "params.yaml", {"train": {"epochs": epochs}}, base=project / "params.yaml")
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    serve = functools.partial(
        start_mlflow,
        "server",
        port,
        f"sqlite:///{store / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(store / "artifacts"),
        log=store / "server.log",
    )  # the same server on the same store and port, started again after its crash
    uri = f"http://127.0.0.1:{port}"
    env = venv_env({"PYTHONPATH": str(project), "DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": uri})
    checkpoint = tmp_path / "models/checkpoints/train.pt"
    server = serve()
    try:
        proc = subprocess.Popen(
            stage_cmd("train"), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while not checkpoint.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        stop_mlflow(server)  # a crash, not a shutdown
        _, err = proc.communicate(timeout=300)
        one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), f"error: MLflow at {uri}: ")
        saved = torch.load(checkpoint, weights_only=True)["epoch"]
        assert saved < epochs
        server = serve()
        ((run_id, status),) = mlflow_runs(store / "mlflow.db")
        assert status == "RUNNING"  # the server could not hear the end
        logged = train_loss_steps(store).get(run_id, [])
        assert logged in (list(range(1, saved)), list(range(1, saved + 1))), (logged, saved)

        out = run(
            stage_cmd("train"), tmp_path, env={k: env[k] for k in ("PYTHONPATH", "DVC_ROOT", "MLFLOW_TRACKING_URI")}
        )
        assert f"resuming after epoch {saved}" in out.stderr
        assert train_loss_steps(store) == {run_id: list(range(1, epochs + 1))}  # the lost epoch is logged once
        with sqlite3.connect(store / "mlflow.db") as con:
            assert con.execute("SELECT status FROM runs").fetchall() == [("FINISHED",)]
        assert not checkpoint.exists()
    finally:
        stop_mlflow(server)
