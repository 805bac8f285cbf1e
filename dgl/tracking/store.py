"""The MLflow store: its URI, its lock, its errors as one line, and its administration.

Several stages may write one SQLite store at once (`dvc queue start -j 2`): a file
lock beside the database serialises its creation and the experiment's, which would otherwise
race through MLflow's schema migrations; later writes are short transactions that SQLite's
busy timeout (20 s, set by MLflow) queues (tests/test_tracking.py: 4 processes at once). With many
workers, route them through one server instead: `mlflow server --backend-store-uri
sqlite:///mlflow.db --port 5000`, then `MLFLOW_TRACKING_URI=http://127.0.0.1:5000 dvc queue start -j N`
(the workers that command starts inherit the variable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from dgl.errors import UserError
from dgl.settings import repo_root
from dgl.tracking.names import KIND_TAG, MODEL_TRAINING

SQLITE = "sqlite:///"


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"{SQLITE}{repo_root() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the lock file beside a SQLite store (nothing for a server): see the module's docstring."""
    if not uri.startswith(SQLITE):
        yield
        return
    lock = FileLock(uri.removeprefix(SQLITE) + ".lock")
    try:
        lock.acquire()
    except OSError as e:  # a read-only folder, ...
        raise UserError(
            f"MLflow store {uri.removeprefix(SQLITE)}: cannot create its lock file {lock.lock_file} "
            f"({e.strerror}); make the folder writable, or set tracking.uri (or MLFLOW_TRACKING_URI) "
            "to another store"
        ) from None
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


def ensure_experiment(mlflow, uri: str, name: str) -> str:
    """The experiment's id, created on first use as a model-training experiment with its artifacts
    beside the SQLite store. Call it holding the store's lock."""
    expected = artifacts_beside(uri, name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(
            name, artifact_location=expected.as_uri() if expected else None, tags={KIND_TAG: MODEL_TRAINING}
        )
    if KIND_TAG not in experiment.tags:  # made before the tag, or by hand
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, MODEL_TRAINING)
    stored = _stored_path(experiment.artifact_location)
    if expected is not None and stored is not None and stored != expected:
        raise UserError(
            f"MLflow experiment {name!r} in {uri.removeprefix(SQLITE)} keeps its artifacts in {stored}, "
            f"not beside the store ({expected}): the store was moved or copied; run "
            f"`python -m dgl.tracking relocate` to point it (and its runs) at {expected}, "
            "or set tracking.experiment to a new name"
        )
    return experiment.experiment_id


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
    fix = (
        "another process holds it locked past SQLite's busy timeout: let it finish or stop it (many writers at "
        "once: serve the store with `mlflow server`, README)"
        if "locked" in reason
        else "check that the file and its folder are writable and the file is an MLflow database"
    )
    return f"MLflow store {db}: {reason}; {fix}, or set tracking.uri (or MLFLOW_TRACKING_URI) to another store"


@contextlib.contextmanager
def reported(uri: str) -> Iterator[None]:
    """Every call that reaches the store runs inside this: the fail-fast settings (`fail_fast`) hold,
    and an MLflow error (server down, store unreadable) becomes one line naming the store."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # MLflow raises it as it is opening a SQLite store

    fail_fast()
    try:
        yield
    except (MlflowException, SQLAlchemyError) as e:
        raise UserError(_store_error(uri, e)) from None


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
    with reported(uri), store_lock(uri):
        experiment = mlflow.MlflowClient(uri).get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise UserError(f"MLflow at {uri}: no experiment {cfg.experiment!r} to relocate; check tracking.experiment")
        old, new = experiment.artifact_location.rstrip("/"), target.as_uri()
        if old == new:
            return f"experiment {cfg.experiment!r} already keeps its artifacts in {target}"
        with contextlib.closing(sqlite3.connect(uri.removeprefix(SQLITE), timeout=20)) as con, con:
            con.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (new, int(experiment.experiment_id)),
            )
            runs = con.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                (new, len(old) + 1, int(experiment.experiment_id), len(old), old),
            ).rowcount
    return f"experiment {cfg.experiment!r} and {runs} runs now keep their artifacts in {target} (were in {old})"
