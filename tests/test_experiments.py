"""The comparison grid end to end: experiments/queue.py queues grid rows as DVC experiments of a tiny
project and runs them through DVC's queue; experiments/report.py tabulates them from `dvc exp show`
and from MLflow, in grid order, with each experiment's own numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from dgl.models.methods import METHODS
from experiments.queue import GRID, Row, load_grid
from experiments.report import Experiment, from_dvc_show, load_runs, save_runs, table
from helpers import ROOT, call_main, copy_project, merge, run, tiny_params

ROWS = ("zeroshot", "dgl_ulp")


def report_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The tables' rows as {method: {column header: cell}}, both tables' columns merged."""
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in markdown.split("\n\n")]
    rows: dict[str, dict[str, str]] = {}
    for lines in filter(None, tables):
        header = [h.strip() for h in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], {}).update(zip(header[1:], cells[1:]))
    return rows


def experiment_metrics(root: Path) -> dict[str, dict]:
    """Each experiment's metrics.json, read from its own commit (refs/exps/<baseline>/<name>)."""
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    prefix = f"refs/exps/{head[:2]}/{head[2:]}/"
    refs = run(["git", "for-each-ref", prefix, "--format=%(refname) %(objectname)"], root).stdout.split("\n")
    return {
        ref.removeprefix(prefix): json.loads(run(["git", "show", f"{sha}:metrics.json"], root).stdout)
        for ref, sha in (line.split() for line in refs if line)
    }


@pytest.fixture
def outside_repo(tmp_path, monkeypatch, capsys):
    """queue.py, in process, where a slip past its checks could not queue anything: in tmp_path, no git, no DVC."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: call_main("experiments.queue", list(args), monkeypatch, capsys)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_repro) -> tuple[Path, subprocess.CompletedProcess]:
    """The session's tiny project (a copy, without its MLflow store) committed with one training epoch
    instead of its two, and one queue run of a grid file holding the grid's ROWS and a row that fails
    in stage `params`: the rows find the data and the backbone in DVC's cache and run only their
    training and evaluation, each logging the store's only runs."""
    folder = tmp_path_factory.mktemp("grid")
    root = copy_project(tiny_repro, folder / "project", mlflow_store=False)
    (root / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params(), {"train": {"epochs": 1}}), sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(git + ["add", "-A"], root)
    run(git + ["commit", "-qm", "the tiny project's outputs; one epoch"], root)
    rows = [row for row in yaml.safe_load(GRID.read_text())["rows"] if row["name"] in ROWS]
    grid = folder / "rows.yaml"
    grid.write_text(yaml.safe_dump({"rows": [*rows, {"name": "broken", "set": ["model.method=nope"]}]}))
    out = run(["python", "-m", "experiments.queue", "--grid", str(grid), "--jobs", "1", "--wait"], root, check=False)
    return root, out


@pytest.mark.slow
def test_queue_runs_the_rows_and_report_shows_each_experiments_numbers(project):
    root, queued = project
    assert all(f"{name}: Success" in queued.stdout for name in ROWS), queued.stdout + queued.stderr
    metrics = experiment_metrics(root)
    assert set(metrics) == set(ROWS)
    out = run(["python", "-m", "experiments.report", "--out", "experiments/results/tiny.md"], root).stdout
    assert (root / "experiments/results/tiny.md").read_text() == out
    rows = report_rows(out)
    assert list(rows) == list(ROWS)  # grid order
    for name, cells in rows.items():
        m = metrics[name]
        assert int(cells["Params"].replace(",", "")) == m["trainable_params"]
        assert float(cells["Params %"]) == pytest.approx(100 * m["trainable_ratio"], rel=5e-3, abs=1e-12)
        for header, key in [
            ("t2v R@1", "t2v_R1"),
            ("t2v R@5", "t2v_R5"),
            ("t2v R@10", "t2v_R10"),
            ("t2v MdR", "t2v_MdR"),
            ("t2v MnR", "t2v_MnR"),
            ("v2t R@1", "v2t_R1"),
            ("R@1 static", "t2v_R1_static"),
            ("R@1 motion", "t2v_R1_motion"),
        ]:
            assert cells[header] == f"{m[key]:.1f}", (name, header)  # the experiment's own number, rounded
        assert cells["pair acc"] == f"{m['pair_acc']:.3f}"
        assert cells["pair acc motion"] == f"{m['pair_acc_motion']:.3f}"
    assert rows["zeroshot"]["Params"] == "0" and metrics["dgl_ulp"]["trainable_params"] > 0


@pytest.mark.slow
def test_report_from_mlflow_agrees_with_dvc(project):
    root, _ = project
    from_dvc = run(["python", "-m", "experiments.report"], root).stdout
    from_mlflow = run(["python", "-m", "experiments.report", "--mlflow"], root).stdout
    assert report_rows(from_mlflow) == report_rows(from_dvc)


@pytest.mark.slow
def test_saved_runs_give_the_same_table_without_dvc(project, tmp_path):
    root, _ = project
    runs = tmp_path / "tiny.runs.json"
    from_dvc = run(["python", "-m", "experiments.report", "--save-runs", str(runs)], root).stdout
    saved = json.loads(runs.read_text())["experiments"]
    assert [e["name"] for e in saved] == sorted(ROWS)
    assert saved[0]["metrics"] == experiment_metrics(root)[saved[0]["name"]]
    assert saved[0]["params"]["model.method"] != saved[1]["params"]["model.method"]  # what tells them apart
    assert saved[0]["baseline"] == run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert saved[0]["inputs"] == saved[1]["inputs"] and set(saved[0]["inputs"]) == {"data/cache", "models/backbone"}
    again = run(["python", "-m", "experiments.report", "--runs", str(runs)], tmp_path, env={"PYTHONPATH": str(root)})
    assert again.stdout == from_dvc


@pytest.mark.slow
def test_queueing_an_existing_experiment_again_is_refused_in_one_line(project):
    root, _ = project
    out = run(["python", "-m", "experiments.queue", "--rows", "zeroshot"], root, check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "experiments already exist: zeroshot" in out.stderr and "--force" in out.stderr
    assert "Queued" not in run(["dvc", "queue", "status"], root).stdout


@pytest.mark.slow
def test_a_failing_row_is_reported_with_its_log_and_left_out_of_the_table(project):
    root, queued = project
    assert queued.returncode == 2
    assert "broken: Failed" in queued.stdout
    assert "model.method = 'nope' is not allowed" in queued.stderr  # the tail of the task's log
    assert queued.stderr.strip().splitlines()[-1] == f"error: 1 of {len(ROWS) + 1} experiments failed: broken"
    report = run(["python", "-m", "experiments.report"], root)
    assert list(report_rows(report.stdout)) == list(ROWS)
    assert "left out, no metrics.json: broken (failed)" in report.stderr


def test_grid_rows_name_registered_methods_and_existing_params():
    grid = load_grid()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert len({row.name for row in grid}) == len(grid)
    for row in grid:
        for override in row.overrides:
            key, value = override.split("=", 1)
            section = params
            for part in key.split("."):
                assert isinstance(section, dict) and part in section, f"{row.name}: {key} is not in params.yaml"
                section = section[part]
        method = dict(o.split("=", 1) for o in row.overrides)["model.method"]
        assert method in METHODS, f"{row.name}: {method} is not a registered method"
    paper_rows = [dict(o.split("=", 1) for o in row.overrides) for row in grid if not row.extension]
    assert {r["model.method"] for r in paper_rows} == set(METHODS)
    assert {r.get("model.dgl.generator") for r in paper_rows if r["model.method"] == "dgl"} == {"ulp", "upt"}
    assert all(row.extension for row in grid if "model.dgl.temporal_pos=true" in row.overrides)


def test_unknown_row_is_one_line_and_nonzero(outside_repo):
    out = outside_repo("--rows", "zeroshot,nope")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown grid row(s): nope" in out.stderr and "dgl_ulp" in out.stderr


def test_dry_run_prints_the_dvc_commands(outside_repo):
    out = outside_repo("--rows", "dgl_upt,zeroshot", "--jobs", "2", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "dvc exp run --queue -n zeroshot -S model.method=zeroshot",
        "dvc exp run --queue -n dgl_upt -S model.method=dgl -S model.dgl.generator=upt",
        "dvc queue start -j 2",
    ]


def test_table_orders_grid_rows_first_then_others_by_name_and_marks_extensions():
    grid = load_grid()
    metrics = {"t2v_R1": 12.34, "trainable_params": 10, "trainable_ratio": 0.5}
    experiments = [
        Experiment(n, {"data.dataset": "synthetic"}, metrics)
        for n in ("zz-mine", "dgl_ulp_temporal", "ab-mine", "dgl_upt", "zeroshot")
    ]
    experiments.append(Experiment("partial", {}, {"t2v_R1": 1.0}))
    markdown = table(experiments, grid)
    rows = report_rows(markdown)
    assert list(rows) == ["zeroshot", "partial", "dgl_upt", "dgl_ulp_temporal (extension)", "ab-mine", "zz-mine"]
    assert rows["zeroshot"]["t2v R@1"] == "12.3" and rows["zeroshot"]["Params %"] == "50"
    assert rows["partial"]["Params"] == "–"
    assert markdown.startswith("dataset: synthetic\n")


def test_a_sweep_keeps_the_value_best_on_validation_and_seeds_are_averaged():
    grid = [
        Row("zeroshot", ("model.method=zeroshot",)),
        Row("bias", ("model.method=bias",), sweep_key="train.clip_lr", sweep_values=(1e-4, 1e-3)),
    ]

    def exp(name, clip_lr, val, test):
        params = {"train.lr": 0.005, "train.clip_lr": clip_lr}
        return Experiment(
            name,
            params,
            {
                "val_t2v_R1": val,
                "t2v_R1": test,
                "trainable_params": 10,
                "trainable_clip": 10 if clip_lr else 0,
                "trainable_ratio": 0.1,
            },
        )

    experiments = [
        exp("zeroshot-s0", 0, 5.0, 20.0),
        exp("zeroshot-s1", 0, 5.0, 20.0),
        exp("bias-clip_lr0.0001-s0", 1e-4, 10.0, 50.0),
        exp("bias-clip_lr0.0001-s1", 1e-4, 12.0, 52.0),
        exp("bias-clip_lr0.001-s0", 1e-3, 20.0, 30.0),
        exp("bias-clip_lr0.001-s1", 1e-3, 22.0, 32.0),
    ]
    rows = report_rows(table(experiments, grid))
    assert list(rows) == ["zeroshot", "bias"]
    bias = rows["bias"]
    assert bias["clip lr"] == "[0.001] of 0.0001, 0.001"  # chosen on validation, though test is worse
    assert bias["lr"] == "–" and bias["seeds"] == "2"
    assert bias["t2v R@1"] == "31.0 ± 1.4"
    assert bias["Δ zeroshot"] == "+11.0*"  # 11 points apart, seed spread 1.4 + 0
    assert rows["zeroshot"]["t2v R@1"] == "20.0" and rows["zeroshot"]["clip lr"] == "–"  # no spread, no ±
    assert bias["Params"] == "10"


def test_seeds_added_to_the_chosen_value_do_not_move_the_choice():
    grid = [Row("bias", ("model.method=bias",), sweep_key="train.clip_lr", sweep_values=(1e-4, 1e-3))]

    def exp(name, clip_lr, seed, val):
        return Experiment(
            name,
            {"train.clip_lr": clip_lr, "train.seed": seed},
            {"val_t2v_R1": val, "t2v_R1": val, "trainable_params": 10, "trainable_clip": 10},
        )

    # Chosen on seed 42 (20 > 15); seeds 1 and 2 of the chosen value then score lower on validation,
    # as seeds do: compared over all its runs (10) it would lose to the value with one seed (15).
    experiments = [
        exp("bias-clip_lr0.0001", 1e-4, 42, 15.0),
        exp("bias-clip_lr0.001", 1e-3, 42, 20.0),
        exp("bias-clip_lr0.001-s1", 1e-3, 1, 5.0),
        exp("bias-clip_lr0.001-s2", 1e-3, 2, 5.0),
    ]
    bias = report_rows(table(experiments, grid))["bias"]
    assert bias["clip lr"] == "[0.001] of 0.0001, 0.001" and bias["seeds"] == "3"


def test_a_validation_tie_goes_to_the_smaller_value_in_any_order():
    grid = [Row("proj", ("model.method=proj",), sweep_key="train.clip_lr", sweep_values=(1e-5, 1e-3, 0.3))]

    def exp(clip_lr, val):
        return Experiment(
            f"proj-clip_lr{clip_lr:g}",
            {"train.clip_lr": clip_lr, "train.seed": 42},
            {"val_t2v_R1": val, "t2v_R1": val, "trainable_params": 10, "trainable_clip": 10},
        )

    # A validation split of 183 captions ties often; DVC lists experiments in no fixed order.
    experiments = [exp(0.3, 36.0656), exp(1e-3, 30.0), exp(1e-5, 36.0656)]
    for order in (experiments, experiments[::-1]):
        assert report_rows(table(order, grid))["proj"]["clip lr"] == "[1e-05] of 1e-05, 0.001, 0.3"


def test_sweeps_and_seeds_expand_into_named_experiments(tmp_path, outside_repo):
    (tmp_path / "grid.yaml").write_text(
        yaml.safe_dump(
            {"rows": [{"name": "bias", "set": ["model.method=bias"], "sweep": {"train.clip_lr": [1e-4, 1e-3]}}]}
        )
    )
    out = outside_repo("--grid", "grid.yaml", "--seeds", "0,1", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [
        "dvc exp run --queue -n bias-clip_lr0.0001-s0 -S model.method=bias -S train.clip_lr=0.0001 -S train.seed=0",
        "dvc exp run --queue -n bias-clip_lr0.0001-s1 -S model.method=bias -S train.clip_lr=0.0001 -S train.seed=1",
    ]
    assert len(out.stdout.splitlines()) == 5
    bad = outside_repo("--grid", "grid.yaml", "--seeds", "a,b")
    assert bad.returncode == 2 and "--seeds 'a,b': give integers" in bad.stderr
    one_value = outside_repo("--grid", "grid.yaml", "--rows", "bias-clip_lr0.001", "--dry-run")
    assert one_value.stdout.splitlines() == [  # a sweep variant's name queues that value alone
        "dvc exp run --queue -n bias-clip_lr0.001 -S model.method=bias -S train.clip_lr=0.001",
        "dvc queue start -j 1",
    ]


def test_samplers_expand_into_named_experiments_and_report_one_line_each(tmp_path, outside_repo):
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"rows": [{"name": "dgl_upt", "set": ["model.method=dgl"]}]}))
    out = outside_repo("--grid", "grid.yaml", "--samplers", "random,twins", "--seeds", "0", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [
        "dvc exp run --queue -n dgl_upt-random-s0 -S model.method=dgl -S train.sampler=random -S train.seed=0",
        "dvc exp run --queue -n dgl_upt-twins-s0 -S model.method=dgl -S train.sampler=twins -S train.seed=0",
    ]
    bad = outside_repo("--grid", "grid.yaml", "--samplers", "twin")
    assert bad.returncode == 2 and "--samplers: unknown twin; choose from random, twins" in bad.stderr

    def exp(name, sampler, words):
        return Experiment(
            name,
            {"train.sampler": sampler},
            {"t2v_R1": 40.0, "pair_acc_words": words, "content_R1": 90.0, "trainable_params": 1},
        )

    experiments = [
        exp(f"dgl_upt-{s}-s{i}", s, w)
        for s, ws in (("random", (0.50, 0.52)), ("twins", (0.90, 0.94)))
        for i, w in enumerate(ws)
    ]
    markdown = table(experiments, load_grid())
    lines = [line for line in markdown.splitlines() if line.startswith("| dgl_upt")]
    assert [line.split("|")[2].strip() for line in lines] == ["random", "twins"] * 2  # both tables
    time_header = next(line for line in markdown.splitlines() if "pair acc words" in line).split("|")
    twins_cells = dict(zip([h.strip() for h in time_header], [c.strip() for c in lines[3].split("|")]))
    assert twins_cells["Δ random"] == "+0.410*" and twins_cells["pair acc words"] == "0.920 ± 0.028"


def test_an_experiment_still_running_is_left_out_not_shown_with_the_baselines_numbers():
    def exp(name, executor):
        data = {
            "metrics": {"metrics.json": {"data": {"t2v_R1": 40.7}}},
            "params": {"params.yaml": {"data": {}}},
            "outs": {"models/backbone": {"hash": "307ce532.dir"}, "models/trained": {"hash": "0f6edc59.dir"}},
        }
        return {"name": name, "executor": executor, "revs": [{"rev": name[0] * 40, "data": data}]}

    shown = [
        {
            "rev": "f" * 40,
            "experiments": [exp("done", {"state": "success"}), exp("busy", {"state": "running"}), exp("kept", None)],
        }
    ]  # a finished one from an earlier session has none
    found, without = from_dvc_show(shown)
    assert [e.name for e in found] == ["done", "kept"] and without == ["busy (running)"]
    assert found[0].inputs == {"models/backbone": "307ce532.dir"} and found[0].baseline == "f" * 40


def test_the_committed_table_is_its_committed_runs_tabulated():
    """experiments/results/synthetic.md is what the report makes of synthetic.runs.json, on one backbone."""
    results = ROOT / "experiments/results"
    runs = load_runs([results / "synthetic.runs.json"])
    assert len({json.dumps(e.inputs, sort_keys=True) for e in runs}) == 1
    assert table(runs, load_grid()) == (results / "synthetic.md").read_text()


def test_runs_files_merge_with_the_later_file_winning_and_a_broken_one_is_one_line(tmp_path, monkeypatch, capsys):
    def exp(name, r1, seed=42):
        return Experiment(name, {"train.seed": seed, "model.method": "bias", "train.threads": 1}, {"t2v_R1": r1})

    save_runs([exp("bias-s1", 10.0, 1), exp("bias", 20.0)], tmp_path / "a.json")
    save_runs([exp("bias-s1", 11.0, 1), exp("bias-s2", 12.0, 2)], tmp_path / "b.json")
    saved = json.loads((tmp_path / "a.json").read_text())["experiments"]
    assert saved[0]["params"] == {"train.seed": 42}  # what differs or what the table reads; not threads
    merged = {e.name: e.metrics["t2v_R1"] for e in load_runs([tmp_path / "a.json", tmp_path / "b.json"])}
    assert merged == {"bias-s1": 11.0, "bias": 20.0, "bias-s2": 12.0}
    other = Experiment("bias-s3", {"train.seed": 3}, {"t2v_R1": 13.0}, {"models/backbone": "e1e2e3e4e5.dir"}, "b" * 40)
    same = Experiment("bias-s4", {"train.seed": 4}, {"t2v_R1": 14.0}, {"models/backbone": "a1a2a3a4a5.dir"}, "c" * 40)
    save_runs([same], tmp_path / "c.json")
    save_runs([other], tmp_path / "d.json")
    assert load_runs([tmp_path / "c.json"])[0] == same  # provenance survives the round trip
    monkeypatch.chdir(tmp_path)

    def report(*args: str):
        return call_main("experiments.report", list(args), monkeypatch, capsys)

    assert report("--runs", "c.json").returncode == 0
    mixed = report("--runs", "c.json", "--runs", "d.json", "--out", "t.md")
    assert mixed.returncode == 2 and len(mixed.stderr.strip().splitlines()) == 1, mixed.stderr
    assert "bias-s4 and bias-s3 were trained on a different models/backbone (a1a2a3a4 / e1e2e3e4)" in mixed.stderr
    assert not (tmp_path / "t.md").exists()
    (tmp_path / "broken.json").write_text('{"experiments": [{"name": "x"}')
    out = report("--runs", "broken.json")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "broken.json: not a runs file of `python -m experiments.report --save-runs`" in out.stderr
    typo = report("--runs", "brokn.json")
    assert typo.returncode == 2 and typo.stderr.strip() == (
        "error: brokn.json: no such file; --runs takes a file written by `python -m experiments.report --save-runs`"
    )


def shown_experiments(changes: dict[str, dict[str, object]]) -> list[dict]:
    """`dvc exp show --json` for the committed params.yaml (baseline `main`, t2v R@1 40.0) and one
    experiment per entry of `changes` (flat key: value), each with its own numbers."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())

    def data(params: dict, r1: float) -> dict:
        metrics = {
            "t2v_R1": r1,
            "content_R1": r1 + 20,
            "pair_acc": 0.5 + r1 / 1000,
            "trainable_params": 827392,
            "t2v_R5": 90.0,
            "v2t_R1": 41.0,
            "val_t2v_R1": 39.0,
        }
        return {"params": {"params.yaml": {"data": params}}, "metrics": {"metrics.json": {"data": metrics}}}

    def changed(flat: dict[str, object]) -> dict:
        params = json.loads(json.dumps(base))
        for key, value in flat.items():
            *path, last = key.split(".")
            node = params
            for part in path:
                node = node[part]
            node[last] = value
        return params

    experiments = [
        {"name": name, "executor": None, "revs": [{"rev": f"{i:040d}", "data": data(changed(flat), 41.0 + i)}]}
        for i, (name, flat) in enumerate(changes.items())
    ]
    return [
        {"rev": "workspace", "data": data(base, 40.0)},
        {"rev": "a" * 40, "name": "main", "data": data(base, 40.0), "experiments": experiments},
    ]


def test_show_prints_the_changed_params_and_headline_metrics_of_three_experiments_in_120_columns(monkeypatch, capsys):
    import experiments.show as show

    shown = shown_experiments(
        {
            "upt-one-epoch": {"model.dgl.generator": "upt", "train.epochs": 1},
            "local8": {"model.dgl.local_prompt_len": 8},
            "twins-seed1": {"train.sampler": "twins", "train.seed": 1},
        }
    )
    monkeypatch.setattr(show, "dvc", lambda *args: json.dumps(shown))
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr("sys.argv", ["show"])
    show.main()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "…" not in out and max(map(len, lines)) <= 120, out
    header = lines[0].split()
    assert header[:6] == ["experiment", "generator", "local_prompt_len", "epochs", "sampler", "seed"], out
    assert " ".join(header[6:]) == "t2v R@1 content R@1 pair acc trainable"
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["main"] == ["ulp", "4", "4", "random", "42", "40.0", "60.0", "0.540", "827,392"]
    assert rows["upt-one-epoch"] == ["upt", "4", "1", "random", "42", "41.0", "61.0", "0.541", "827,392"]
    assert rows["local8"][:5] == ["ulp", "8", "4", "random", "42"]
    assert rows["twins-seed1"][:5] == ["ulp", "4", "4", "twins", "1"]


def test_show_turns_the_table_when_the_params_are_too_many_for_the_width():
    """Many differing params: one column per experiment, in blocks, each line within the width, no cell cut."""
    from experiments.show import render

    runs = [
        Experiment(f"run{i}", {f"model.vop.knob_{k}": i * k for k in range(12)}, {"t2v_R1": 10.0 * i})
        for i in range(1, 8)
    ]
    out = render(runs, 30)
    assert max(map(len, out.splitlines())) <= 30 and "…" not in out
    blocks = out.split("\n\n")
    assert len(blocks) > 1 and all(block.splitlines()[0].startswith("experiment") for block in blocks)
    cells = [block.splitlines()[12].split()[2:] for block in blocks]  # the t2v R@1 row (knob_0 never differs)
    assert sum(cells, []) == [f"{10.0 * i:.1f}" for i in range(1, 8)]
    assert "knob_11" in out and "60.0" in out  # the last param and the last experiment: nothing left out
