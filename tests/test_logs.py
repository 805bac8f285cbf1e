"""What a log file holds (a stage under `dvc queue logs`, `make repro > log`): progress lines where no
bar can show, and one human line at the end of each stage, not a JSON dump."""

from __future__ import annotations

import io
import json

import pytest

from dgl.cli import LogLines, progress_bar


def test_a_long_loop_logs_lines_with_counts_and_eta_and_a_short_one_stays_quiet():
    out = io.StringIO()
    items = list(LogLines(range(4), desc="pretrain backbone", unit="step", every=0, stream=out))
    assert items == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("pretrain backbone: 1/4 step (25%)  0s  ETA 0s")
    assert lines[-1].startswith("pretrain backbone: 4/4 step (100%)") and "ETA" not in lines[-1]
    quiet = io.StringIO()
    with LogLines(total=3, desc="frames", stream=quiet) as bar:
        for _ in range(3):
            bar.update()
    assert quiet.getvalue() == ""  # shorter than LOG_EVERY
    sized = io.StringIO()
    with LogLines(total=2**22, desc="msrvtt.zip", unit="B", unit_scale=True, every=0, stream=sized) as bar:
        bar.set_postfix(epoch=1)
        bar.update(2**21)
    assert sized.getvalue().splitlines()[0].startswith("msrvtt.zip: 2.0 MiB/4.0 MiB (50%)")
    assert sized.getvalue().splitlines()[0].endswith("epoch=1")


def test_a_terminal_gets_tqdms_bar():
    from tqdm import tqdm

    assert isinstance(progress_bar(True, range(2), disable=True), tqdm)
    assert isinstance(progress_bar(False, range(2)), LogLines)


def test_a_stage_ends_with_one_human_line(tiny_repro, tmp_path, monkeypatch, capsys):
    from pipelines.frames import main

    monkeypatch.setattr(
        "sys.argv",
        [
            "frames",
            "--params",
            str(tiny_repro / "params.yaml"),
            "--raw",
            str(tiny_repro / "data/raw"),
            "--out",
            str(tmp_path / "frames"),
        ],
    )
    main()
    out = capsys.readouterr().out.splitlines()
    # the frames are stored at the backbone's input size (64 px), not at frames.size
    assert len(out) == 1 and out[0].startswith("frames: 34 of 34 videos sampled, 4 frames of 64 px each"), out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out[0])


@pytest.mark.parametrize("stage", ["params", "download", "frames", "preprocess", "backbone", "train", "evaluate"])
def test_a_stage_run_by_hand_without_its_paths_names_the_dvc_command(stage, monkeypatch, capsys):
    import importlib

    main = importlib.import_module(f"pipelines.{stage}").main
    monkeypatch.setattr("sys.argv", [stage])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and err[0].startswith(f"usage: python -m pipelines.{stage} ")
    assert err[-1].startswith("error: the following arguments are required: ")
    assert err[-1].endswith(f"run it with `dvc repro -s {stage}` (`dvc repro` runs the whole chain)")
