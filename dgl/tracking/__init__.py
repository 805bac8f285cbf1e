"""MLflow: one run per train+evaluate pair, in sqlite:///<repo>/mlflow.db unless told otherwise.

- `names`: what things are called in MLflow (metric groups, tags, the run's URL), pure functions;
- `provenance`: the git commit and uncommitted code a stage ran, and the params changed from the commit;
- `store`: reaching the store (its URI, lock, one-line errors) and administering it (`relocate`);
- `runs`: a run's life: start or resume it, log to it, describe it, find it again, end it.

The train stage starts the run and tags it with the sha256 of the weights it saved
(`weights_sha256`); the evaluate stage finds the newest run with the weights it evaluates and
resumes it. No run id is written into a DVC output: training is deterministic, so the same params
give byte-identical outputs and the committed dvc.lock stays valid on every machine.

Only code that runs logs. A stage that DVC skips as unchanged, or restores from its run cache,
runs nothing, so an experiment made of such stages adds no MLflow run: its numbers are those of
the earlier run with the same `weights_sha256` tag (search `tags.weights_sha256 = '...'` in the
UI; the hash is that of models/trained/weights.pt). To log a fresh run anyway,
force the two tracked stages: `dvc exp run -f -s train evaluate` (see experiments/README.md).
When evaluate runs alone on a training whose run already holds test metrics (`dvc exp run -S
eval.dsl=true`), it logs a new run that names the training's in its `train_run_id` tag, and
leaves the first run's numbers as they were (`runs.evaluation_run`).

What the MLflow UI shows (README, "Comparing runs in MLflow"):
- Run names: the DVC experiment's name under `dvc exp run`, else `<method>[-<generator>]-<time>`;
  a name already in the experiment gets `-2`, `-3`, ... (`runs.run_name`).
- The experiment is tagged as a model-training one (`mlflow.experimentKind`), not a GenAI one.
- Metric names are grouped by prefix, one chart section each, sections in alphabetical order:
  `epoch/` (per-epoch train_loss, train_lr, val_*; step = epoch), then `test/` (the evaluation).
  The parameter counts are constants, so params (`count.trainable`, ...), not charts; runs logged
  before had them as `params/` metrics. metrics.json and plots/ keep their own, unprefixed keys;
  `names.as_metrics_json` reads every naming back (stores written before the prefixes have
  `train_loss`, `lr`, `val_*`, `params_*`, `test_*`).
- The run's description (`mlflow.note.content`, set by evaluate): the headline test numbers and
  the params that differ from the committed params.yaml. `mlflow.source.name` names the stage.
- The trained method (trainable weights and model.json) as the artifact `model/` (`runs.log_trained`).
- Provenance: tags `git_commit` and `git_dirty` of the tree the stage ran in, and when that tree
  has uncommitted code (anything but params.yaml, dvc.lock and dvc.yaml's outputs) the diff as the
  artifact `git/<stage>.diff`. dvc.lock is not logged: DVC writes it after the stage has ended.
- With SQLite, artifacts go beside the database (`<dir of mlflow.db>/mlruns/<experiment>`). MLflow
  stores that location as an absolute path, so every run checks it and refuses in one line a store
  that was moved or copied from elsewhere; `python -m dgl.tracking relocate` points it here.
"""
