"""MLflow: one run per train+evaluate pair, in sqlite:///<repo>/mlflow.db unless told otherwise.

The train stage starts the run and tags it with the sha256 of the weights it saved
(`weights_sha256`); the evaluate stage finds the newest run with the weights it evaluates and
resumes it. No run id is written into a DVC output: training is deterministic, so the same params
give byte-identical outputs and the committed dvc.lock stays valid on every machine. Several stages may write one SQLite store at once (`dvc queue start -j 2`): a file
lock beside the database serialises its creation and the experiment's, which would otherwise
race through MLflow's schema migrations; later writes are short transactions that SQLite's
busy timeout (20 s, set by MLflow) queues (tests/test_tracking.py: 4 processes at once). With many
workers, route them through one server instead: `mlflow server --backend-store-uri
sqlite:///mlflow.db --port 5000`, then `MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dvc queue start -j N`
(the workers that command starts inherit the variable).

Only code that runs logs. A stage that DVC skips as unchanged, or restores from its run cache,
runs nothing, so an experiment made of such stages adds no MLflow run: its numbers are those of
the earlier run with the same `weights_sha256` tag (search `tags.weights_sha256 = '...'` in the
UI; the hash is that of models/trained/weights.pt). To log a fresh run anyway,
force the two tracked stages: `dvc exp run -f -s train evaluate` (see experiments/README.md).
When evaluate runs alone on a training whose run already holds test metrics (`dvc exp run -S
eval.dsl=true`), it logs a new run that names the training's in its `train_run_id` tag, and
leaves the first run's numbers as they were (`evaluation_run`).

What the MLflow UI shows (README, "Comparing runs in MLflow"):
- Run names: the DVC experiment's name under `dvc exp run`, else `<method>[-<generator>]-<time>`;
  a name already in the experiment gets `-2`, `-3`, ... (`run_name`).
- The experiment is tagged as a model-training one (`mlflow.experimentKind`), not a GenAI one.
- Metric names are grouped by prefix, one chart section each, sections in alphabetical order:
  `epoch/` (per-epoch train_loss, train_lr, val_*; step = epoch), then `test/` (the evaluation).
  The parameter counts are constants, so params (`count.trainable`, ...), not charts; runs logged
  before had them as `params/` metrics. metrics.json and plots/ keep their own, unprefixed keys;
  `as_metrics_json` reads every naming back (stores written before the prefixes have
  `train_loss`, `lr`, `val_*`, `params_*`, `test_*`).
- The run's description (`mlflow.note.content`, set by evaluate): the headline test numbers and
  the params that differ from the committed params.yaml. `mlflow.source.name` names the stage.
- The trained method (trainable weights and model.json) as the artifact `model/` (log_trained).
- Provenance: tags `git_commit` and `git_dirty` of the tree the stage ran in, and when that tree
  has uncommitted code (anything but params.yaml, dvc.lock and dvc.yaml's outputs) the diff as the
  artifact `git/<stage>.diff`. dvc.lock is not logged: DVC writes it after the stage has ended.
- With SQLite, artifacts go beside the database (`<dir of mlflow.db>/mlruns/<experiment>`). MLflow
  stores that location as an absolute path, so every run checks it and refuses in one line a store
  that was moved or copied from elsewhere; `python -m dgl.tracking relocate` points it here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import yaml
from filelock import FileLock

from dgl.errors import UserError
from dgl.settings import repo_root
from dgl.typed_yaml import flatten, read_yaml

SQLITE = "sqlite:///"
WEIGHTS_TAG = "weights_sha256"  # how evaluate finds the training's run
# The UI's experiment kinds: "custom_model_development" is its "Machine learning" (runs, charts);
# MLflow 3.17 itself opens whichever workflow its sidebar switch (or ?workflowType=) says.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
UI_VIEW = "workflowType=machine_learning"  # the URL query that opens the model-training view
# Metric groups (one chart section each in the UI, in alphabetical order: curves first).
EPOCH, PARAMS, TEST = "epoch/", "params/", "test/"  # PARAMS: the counts, in runs logged before COUNT
COUNT = "count."  # the parameter counts, as params (count_params)
LEGACY_TEST = "test_"  # stores written before the groups
HEADLINE = (("t2v R@1", "t2v_R1", ".1f"), ("content R@1", "content_R1", ".1f"), ("pair acc", "pair_acc", ".3f"),
            ("v2t R@1", "v2t_R1", ".1f"))  # the run description's numbers, from dgl.metrics' keys
ABSENT = object()
MODEL_ARTIFACT = "model"  # the run's copy of models/trained (trainable weights and model.json): log_trained


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"{SQLITE}{repo_root() / 'mlflow.db'}"


def epoch_metrics(record: dict[str, float]) -> dict[str, float]:
    """One epoch of dgl.train's history (train_loss, lr, lr_clip, val_*) as MLflow names it."""
    return {EPOCH + (f"train_{k}" if k.startswith("lr") else k): v for k, v in record.items()}


def evaluation_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """dgl.metrics' results (t2v_R1, ...) as MLflow names them."""
    return {TEST + k: v for k, v in metrics.items()}


def count_params(counts: dict[str, float]) -> dict[str, float]:
    """count_parameters' counts (trainable, total, trainable_ratio, ...) as MLflow params: constants of
    the run, so they are columns and filters, not charts (older runs have them as `params/` metrics)."""
    return {COUNT + k: v for k, v in counts.items()}


def has_test_metrics(metrics) -> bool:
    return any(k.startswith((TEST, LEGACY_TEST)) for k in metrics)


def as_metrics_json(logged: dict[str, float], params: dict[str, str] | None = None) -> dict[str, float]:
    """A run's MLflow metrics (and the counts among its `params`) under metrics.json's keys (t2v_R1,
    trainable_params, trainable_ratio, trainable_clip, val_*: the last epoch's), from any naming the
    store holds (counts as params, as `params/` metrics, or the older flat names)."""
    out: dict[str, float] = {}
    counts = {"trainable": "trainable_params", "trainable_ratio": "trainable_ratio", "trainable_clip": "trainable_clip"}
    logged_counts = {k: float(v) for k, v in (params or {}).items() if k.startswith(COUNT)}
    for key, value in {**logged, **logged_counts}.items():
        for prefix in (TEST, LEGACY_TEST):
            if key.startswith(prefix):
                out[key.removeprefix(prefix)] = value
        for prefix in (COUNT, PARAMS, "params_"):
            if key.startswith(prefix) and key.removeprefix(prefix) in counts:
                out[counts[key.removeprefix(prefix)]] = value
        name = key.removeprefix(EPOCH)
        if name.startswith("val_"):
            out[name] = value
    return out


def run_label(model) -> str:
    """What a training is, for its run's name outside `dvc exp run`: the method (and DGL's generator)."""
    return f"dgl-{model.dgl.generator}" if model.method == "dgl" else model.method


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def not_code(cwd: Path) -> list[str]:
    """What `dvc exp run` and the pipeline rewrite themselves, so not "dirty" code: params.yaml,
    dvc.lock and every output dvc.yaml declares (metrics.json, plots/...)."""
    paths = ["params.yaml", "dvc.lock"]
    try:
        stages = (yaml.safe_load((cwd / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        stages = {}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def git_state(cwd: Path) -> tuple[str, str] | None:
    """(commit, diff of the uncommitted code) of the git tree at `cwd`, or None outside git. The
    diff leaves out `not_code` and covers untracked files that git does not ignore; "" = clean."""
    head = _git(cwd, "rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    code = ["--", ".", *(f":(exclude,top){p}" for p in not_code(cwd))]
    diff = _git(cwd, "diff", "HEAD", *code).stdout
    for name in _git(cwd, "ls-files", "--others", "--exclude-standard", *code).stdout.splitlines():
        diff += _git(cwd, "diff", "--no-index", "--", "/dev/null", name).stdout  # exit code 1: differs
    return head.stdout.strip(), diff


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    if not uri.startswith(SQLITE):
        yield
        return
    lock = FileLock(uri.removeprefix(SQLITE) + ".lock")
    try:
        lock.acquire()
    except OSError as e:  # a read-only folder, ...
        raise UserError(f"MLflow store {uri.removeprefix(SQLITE)}: cannot create its lock file {lock.lock_file} "
                        f"({e.strerror}); make the folder writable, or set tracking.uri (or MLFLOW_TRACKING_URI) "
                        "to another store") from None
    try:
        yield
    finally:
        lock.release()


def artifacts_beside(uri: str, experiment: str) -> Path | None:
    """Where a SQLite store keeps an experiment's artifacts: <dir of the database>/mlruns/<experiment>
    (the repository's mlruns/ for the default store; not the working directory, which for a queued
    experiment is a temporary copy). None for a tracking server, which decides itself."""
    if not uri.startswith(SQLITE):
        return None
    return Path(uri.removeprefix(SQLITE)).resolve().parent / "mlruns" / experiment


def _stored_path(location: str) -> Path | None:
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    return Path(local_file_uri_to_path(location)).resolve() if is_local_uri(location) else None


def _experiment_id(mlflow, uri: str, name: str) -> str:
    """The experiment's id, created on first use as a model-training experiment with its artifacts
    beside the SQLite store. Call it holding the store's lock."""
    expected = artifacts_beside(uri, name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=expected.as_uri() if expected else None,
                                        tags={KIND_TAG: MODEL_TRAINING})
    if KIND_TAG not in experiment.tags:  # made before the tag, or by hand
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, MODEL_TRAINING)
    stored = _stored_path(experiment.artifact_location)
    if expected is not None and stored is not None and stored != expected:
        raise UserError(f"MLflow experiment {name!r} in {uri.removeprefix(SQLITE)} keeps its artifacts in {stored}, "
                        f"not beside the store ({expected}): the store was moved or copied; run "
                        f"`python -m dgl.tracking relocate` to point it (and its runs) at {expected}, "
                        "or set tracking.experiment to a new name")
    return experiment.experiment_id


def run_name(client, experiment_id: str, name: str) -> str:
    """`name`, or the first of `name-2`, `name-3`, ... that no run of the experiment has (deleted ones included)."""
    from mlflow.entities import ViewType

    like = name.replace("'", "").replace("%", "")
    taken = {r.info.run_name for r in client.search_runs([experiment_id], f"attributes.run_name LIKE '{like}%'",
                                                         run_view_type=ViewType.ALL, max_results=5000)}
    return next(n for n in (name, *(f"{name}-{i}" for i in range(2, len(taken) + 3))) if n not in taken)


def fail_fast() -> None:
    """Fail with one clear line when a tracking server is down, instead of minutes of retries: at most
    one retry and 10 s per request, unless the environment sets them (MLflow reads both at every
    request). Set here, where the store is first reached, rather than when this module is imported."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its retry warnings: the error says it once
    logging.getLogger("mlflow.store.db.utils").addFilter(_below_error)  # its database errors and their SQL, likewise


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _store_error(uri: str, error: Exception) -> str:
    """One line for an error of the store at `uri`: the database's own words where it gave them
    (`database is locked`), and advice that fits a SQLite file or a server."""
    text = str(error)
    database = re.search(r"\((?:sqlite3|psycopg2|pymysql|MySQLdb)\.\w+\) ([^\n]+)", text)
    reason = (database[1] if database else text.splitlines()[0] if text else type(error).__name__).strip()[:200]
    if not uri.startswith(SQLITE):
        return f"MLflow at {uri}: {reason}; start the server or set tracking.uri (or MLFLOW_TRACKING_URI)"
    db = uri.removeprefix(SQLITE)
    fix = ("another process holds it locked past SQLite's busy timeout: let it finish or stop it (many writers at "
           "once: serve the store with `mlflow server`, README)" if "locked" in reason else
           "check that the file and its folder are writable and the file is an MLflow database")
    return f"MLflow store {db}: {reason}; {fix}, or set tracking.uri (or MLFLOW_TRACKING_URI) to another store"


@contextlib.contextmanager
def _reported(uri: str) -> Iterator[None]:
    """Every call that reaches the store runs inside this: the fail-fast settings (`fail_fast`) hold,
    and an MLflow error (server down, store unreadable) becomes one line naming the store."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # MLflow raises it as it is opening a SQLite store

    fail_fast()
    try:
        yield
    except (MlflowException, SQLAlchemyError) as e:
        raise UserError(_store_error(uri, e)) from None


def run_url(uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the UI shows a run, in its model-training view: on the tracking server, or for a SQLite store
    at `ui` (tracking.ui, where `mlflow ui` serves it; MLFLOW_UI_URL overrides)."""
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("MLFLOW_UI_URL") or ui
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


@contextlib.contextmanager
def mlflow_run(cfg, *, run_id: str | None = None, stage: str, label: str = "run",
               tags: dict[str, str] | None = None) -> Iterator["object"]:
    """Start (or resume, given `run_id`) the MLflow run; yields the mlflow module.

    A new run is named after the DVC experiment (`dvc exp run`), else `<label>-<time>` (`run_label`),
    unique in the experiment (`run_name`). Tags: the stage that last wrote the run, `git_commit` and
    `git_dirty` (with the uncommitted code as `git/<stage>.diff`), and under DVC the experiment name
    and the baseline revision it branched from. A new run also gets `created_by_stage` and `tags`."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    dvc_name = os.environ.get("DVC_EXP_NAME") or None
    git = git_state(Path.cwd())
    tags = {**({} if run_id else {"created_by_stage": stage, **(tags or {})}),
            "stage": stage, "dvc_exp_name": dvc_name, "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
            # what ran, instead of MLflow's guess (the script's path: a deleted temporary copy under --temp)
            "mlflow.source.name": f"pipelines/{stage}.py (dvc stage {stage})", "mlflow.source.type": "LOCAL"}
    if git is not None:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = git[0]
        if git[1] or not run_id:  # a resumed run stays dirty once a stage ran uncommitted code
            tags["git_dirty"] = str(bool(git[1])).lower()
    with _reported(uri):
        if run_id:
            active = mlflow.start_run(run_id=run_id)
        else:
            with _store_lock(uri):
                experiment_id = _experiment_id(mlflow, uri, cfg.experiment)
                name = run_name(mlflow.MlflowClient(), experiment_id,
                                dvc_name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}")
                active = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        with active:
            mlflow.set_tags({k: v for k, v in tags.items() if v})
            if git is not None and git[1]:
                mlflow.log_text(git[1], f"git/{stage}.diff")
            yield mlflow
        info = active.info
    shown = re.sub(r"//[^/@]*@", "//", uri)  # no password from a database URI in a log
    print(f"MLflow: run {info.run_name!r} ({stage}) in {shown}: "
          f"{run_url(shown, info.experiment_id, info.run_id, cfg.ui)}", file=sys.stderr)


def log_training_setup(mlflow, params, method: str, counts: dict[str, float]) -> None:
    """What identifies a training in its run: every param flattened, the method, the parameter counts."""
    mlflow.log_params({**flatten(params), **count_params(counts)})
    mlflow.set_tag("method", method)


def changed_params(current: dict, committed: dict | None) -> list[tuple[str, object, object]]:
    """(key, committed value, current value) of every flat key in which two params mappings differ;
    `ABSENT` stands for a key one of them lacks."""
    if not isinstance(committed, dict):
        return []
    old, new = flatten(committed), flatten(current)
    return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
            if old.get(k, ABSENT) != new.get(k, ABSENT)]


def committed_params(cwd: Path, path: str = "params.yaml") -> dict | None:
    """params.yaml as the commit the run started from has it: DVC's baseline under `dvc exp run`, else HEAD."""
    from dgl.typed_yaml import Yaml12Loader

    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    shown = _git(cwd, "show", f"{rev}:./{path}")
    try:
        return yaml.load(shown.stdout, Loader=Yaml12Loader) if shown.returncode == 0 else None
    except yaml.YAMLError:
        return None


def description(metrics: dict[str, float], counts: dict[str, float], changes: list[tuple[str, object, object]]) -> str:
    """The run's description (`mlflow.note.content`, the top of its page in the UI): the headline
    numbers, then what differs from the committed params.yaml."""
    shown = [f"{label} {metrics[key]:{fmt}}" for label, key, fmt in HEADLINE if key in metrics]
    lines = [" · ".join(shown + [f"trainable {counts['trainable']:,.0f} ({100 * counts['trainable_ratio']:.3g} %)"])]
    if changes:
        lines.append("Changed from the committed params.yaml: " + ", ".join(
            f"`{k}` {'(none)' if old is ABSENT else old} → {'(none)' if new is ABSENT else new}"
            for k, old, new in changes))
    else:
        lines.append("The committed params.yaml, unchanged.")
    return "\n\n".join(lines)


def describe_run(mlflow, metrics: dict[str, float], counts: dict[str, float], path: str) -> None:
    """Set the run's description (`description`): headline numbers and the params changed from the commit."""
    changes = changed_params(read_yaml(Path(path)), committed_params(Path.cwd(), path))
    mlflow.set_tag("mlflow.note.content", description(metrics, counts, changes))


def _get_run(client, run_id: str):
    """The run `run_id` of this store, or None when the store lacks it (any other MLflow error is raised)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _claim_for_evaluation(client, run_id: str, test_metrics: dict[str, float]) -> str | None:
    """Log `test_metrics` to the training's run and return None; or, when that run already holds
    test metrics or is absent from this store or deleted, write nothing and return why not."""
    from mlflow.entities import Metric

    run = _get_run(client, run_id)
    if run is None:
        return "is not in this store"
    if run.info.lifecycle_stage == "deleted":
        return "is deleted"
    if has_test_metrics(run.data.metrics):
        return "already has test metrics"
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in test_metrics.items()])
    return None


@contextlib.contextmanager
def evaluation_run(params, train_run_id: str | None, test_metrics: dict[str, float], *, method: str,
                   counts: dict[str, float]) -> Iterator["object"]:
    """The run that evaluate writes to, with `test_metrics` (evaluation_metrics) already logged; yields
    the mlflow module, as `mlflow_run` does.

    Normally the training's run, `train_run_id`. When that run already holds test metrics, because
    evaluate re-ran alone (an `eval.*` change, with train skipped or restored from DVC's run cache),
    or when this store lacks it, a new run takes them instead, so the earlier numbers stay as they
    were. The new run carries what train would have logged (`log_training_setup`) and the tag
    `train_run_id`. The check and the first write share the store's lock, so two evaluations of
    one training at once cannot both take its run."""
    import mlflow

    cfg = params.tracking
    uri = tracking_uri(cfg)
    why_not = "is unknown"
    if train_run_id:
        with _reported(uri), _store_lock(uri):
            why_not = _claim_for_evaluation(mlflow.MlflowClient(uri), train_run_id, test_metrics)
    if why_not is None:
        with mlflow_run(cfg, run_id=train_run_id, stage="evaluate") as run:
            yield run
        return
    extra = {"train_run_id": train_run_id} if train_run_id else {}
    with mlflow_run(cfg, stage="evaluate", label=run_label(params.model), tags=extra) as run:
        log_training_setup(run, params, method, counts)
        run.log_metrics(test_metrics)
        print(f"MLflow: the training's run {train_run_id} {why_not}; this evaluation is logged as the new "
              f"run {active_run_id()}", file=sys.stderr)
        yield run


def training_run_of(cfg, weights_sha256: str) -> str | None:
    """The newest run that saved these exact weights (tag `weights_sha256`), or None."""
    import mlflow

    uri = tracking_uri(cfg)
    with _reported(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], f"tags.{WEIGHTS_TAG} = '{weights_sha256}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def log_files(mlflow, paths) -> None:
    """Log those of `paths` that exist."""
    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path))


def log_trained(mlflow, trained_dir: Path, max_mb: float) -> None:
    """The trained method (its trainable weights and model.json) as the run's artifact `model/`, when
    the weights are at most `max_mb` (tracking.max_weights_mb): what `python -m dgl.search --run`
    loads. Larger ones (full fine-tuning) are left out with a tag and a line that say how to keep them."""
    size_mb = sum(f.stat().st_size for f in Path(trained_dir).iterdir() if f.is_file()) / 2**20
    if size_mb <= max_mb:
        mlflow.log_artifacts(str(trained_dir), artifact_path=MODEL_ARTIFACT)
        return
    why = f"{size_mb:.0f} MB > tracking.max_weights_mb = {max_mb:g}"
    mlflow.set_tag("model_not_logged", why)
    print(f"MLflow: the trained weights are not logged with the run ({why}; raise it to keep them)", file=sys.stderr)


def named_run(cfg, name: str):
    """The newest run of the tracking experiment named `name` (its run name or DVC experiment name)."""
    import mlflow

    uri = tracking_uri(cfg)
    with _reported(uri):
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        runs = [] if experiment is None else [
            run for where in (f"attributes.run_name = '{name}'", f"tags.dvc_exp_name = '{name}'")
            for run in client.search_runs([experiment.experiment_id], where, order_by=["attributes.start_time DESC"])]
    if not runs:
        raise UserError(f"MLflow at {uri}: no run named {name!r} in experiment {cfg.experiment!r}; "
                        "the names are those the MLflow UI and `python -m experiments.show` list")
    return max(runs, key=lambda r: r.info.start_time)


def trained_of_run(cfg, name: str, dest: Path) -> Path:
    """Download the trained method (`model/`, log_trained) of the run named `name` (named_run) into
    `dest`; returns the folder load_trained reads."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar for a few MB is noise
    run = named_run(cfg, name)
    uri = tracking_uri(cfg)
    with _reported(uri):
        client = mlflow.MlflowClient(uri)
        logged = {f.path for f in client.list_artifacts(run.info.run_id, MODEL_ARTIFACT)}
        if f"{MODEL_ARTIFACT}/weights.pt" not in logged:
            why = run.data.tags.get("model_not_logged", "logged before runs kept their weights")
            raise UserError(f"MLflow run {name!r} ({run.info.run_id}) holds no trained weights ({why}); "
                            "use --trained DIR with the experiment's models/trained (`dvc exp apply` it)")
        client.download_artifacts(run.info.run_id, MODEL_ARTIFACT, str(dest))
    return Path(dest) / MODEL_ARTIFACT


def end_abandoned_run(cfg, run_id: str | None) -> None:
    """End as KILLED the MLflow run of a checkpoint no run will resume (dgl/checkpoint.py), when it is
    still RUNNING: its process was killed. A run this store lacks, or one that ended, is left alone."""
    if not run_id:
        return
    import mlflow

    uri = tracking_uri(cfg)
    with _reported(uri):
        client = mlflow.MlflowClient(uri)
        run = _get_run(client, run_id)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
            print(f"MLflow: run {run_id} of that checkpoint ended as KILLED", file=sys.stderr)


def resumable_run(cfg, run_id: str) -> str | None:
    """`run_id` when this store holds it (not deleted), so a resumed training goes on in its run;
    else None, with a notice: the training then logs a new run."""
    import mlflow

    uri = tracking_uri(cfg)
    with _reported(uri):
        run = _get_run(mlflow.MlflowClient(uri), run_id)
    if run is not None and run.info.lifecycle_stage != "deleted":
        return run_id
    print(f"MLflow: the checkpoint's run {run_id} is not in {uri}; the resumed training logs a new run",
          file=sys.stderr)
    return None


def log_missing_epochs(mlflow, history: list[dict]) -> None:
    """Log the epochs of a resumed training's `history` that its run lacks: a run killed after an
    epoch's checkpoint but before its metrics reached MLflow (or resumed in a new run) gets them here."""
    client = mlflow.MlflowClient()
    run_id = active_run_id()
    logged = {m.step for m in client.get_metric_history(run_id, EPOCH + "train_loss")}
    for epoch, record in enumerate(history, start=1):
        if epoch not in logged:
            mlflow.log_metrics(epoch_metrics(record), step=epoch)


def relocate(cfg) -> str:
    """Point a SQLite store's experiment, and its runs, at the artifacts folder beside the store
    (`artifacts_beside`): the fix for a project moved or copied with its mlflow.db, whose stored
    absolute paths still name the old tree. MLflow has no call that changes an experiment's
    artifact location, so this rewrites the two columns that hold it. Returns what was done."""
    import sqlite3

    import mlflow

    uri = tracking_uri(cfg)
    target = artifacts_beside(uri, cfg.experiment)
    if target is None:
        raise UserError(f"MLflow at {uri}: only a SQLite store is relocated; a server keeps its own artifact location")
    with _reported(uri), _store_lock(uri):
        experiment = mlflow.MlflowClient(uri).get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise UserError(f"MLflow at {uri}: no experiment {cfg.experiment!r} to relocate; check tracking.experiment")
        old, new = experiment.artifact_location.rstrip("/"), target.as_uri()
        if old == new:
            return f"experiment {cfg.experiment!r} already keeps its artifacts in {target}"
        with contextlib.closing(sqlite3.connect(uri.removeprefix(SQLITE), timeout=20)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        (new, int(experiment.experiment_id)))
            runs = con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                               "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                               (new, len(old) + 1, int(experiment.experiment_id), len(old), old)).rowcount
    return f"experiment {cfg.experiment!r} and {runs} runs now keep their artifacts in {target} (were in {old})"


if __name__ == "__main__":
    from dgl.cli import entry_point
    from dgl.settings import load_params

    @entry_point
    def main() -> None:
        import argparse

        ap = argparse.ArgumentParser(description="Point the MLflow store's experiment at the artifacts "
                                                 "beside it, after moving or copying the project.")
        ap.add_argument("command", choices=["relocate"])
        ap.add_argument("--params", default="params.yaml")
        args = ap.parse_args()
        print(relocate(load_params(args.params).tracking))

    main()

