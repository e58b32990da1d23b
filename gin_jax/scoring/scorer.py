"""The Scorer: probabilities for raw rows, files or prepared splits with a trained model.

Loading reads orbax arrays and JSON only: no pickle, no eval, and only from a
checkpoint that matches its seal and holds finite values
(gin_jax/training/checkpointing.py; scoring/checkpoints.py), or from an
exported directory (scoring/export.py).
"""

from __future__ import annotations

import numpy as np

from gin_jax import data
from gin_jax.scoring import checkpoints
from gin_jax.scoring.export import load_export
from gin_jax.training import predict


class Scorer:
  """Scores raw rows, files or preprocessed batches with a trained model.

  Build with `Scorer.from_checkpoint(workdir)` (or `Scorer.from_export(dir)`).
  """

  def __init__(
    self, dataset_meta, score_fn, batch_size: int, description: str, batch_multiple: int = 1
  ):
    self.meta = dataset_meta
    self._score = score_fn
    self.batch_size = batch_size  # The largest batch: a call of more rows is cut into these.
    self.description = description
    self._multiple = batch_multiple  # Every batch a multiple of it (the devices it shards over).

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_checkpoint(
    cls,
    workdir,
    *,
    step: int | None = None,
    best: bool = False,
    stage: str | None = None,
    devices=None,
  ) -> Scorer:
    """Loads params, masks, config and dataset metadata from a training workdir.

    A run of train.ensemble = K scores as the average of its K models'
    probabilities (the members delivered.json lists), unless `step` picks one
    checkpoint of the run itself.

    Args:
      workdir: a `python -m train` workdir.
      step: a specific checkpoint step (default: the newest, the finished run's: the
        model it delivers, whichever stage validated best).
      best: the best checkpoint of the delivered stage instead.
      stage: the best checkpoint of this stage instead (e.g. "retrain": the pruned
        model, when the search stage validated better and was delivered).
      devices: devices to score on (default: all local devices).

    Returns:
      A Scorer. Raises ScoringError naming what is missing or wrong.
    """
    models = checkpoints.load_models(workdir, step=step, best=best, stage=stage, devices=devices)
    scores = [_checkpoint_score_fn(m) for m in models]

    def score(ids, values):
      if len(scores) == 1:
        return scores[0](ids, values)
      return predict.average_probabilities([f(ids, values) for f in scores]).astype(np.float32)

    first = models[0]
    devices = first.mesh.devices.size
    return cls(
      first.dataset_meta, score, first.cfg.train.eval_batch_size, checkpoints.describe(models),
      batch_multiple=devices,
    )  # fmt: skip

  @classmethod
  def from_export(cls, directory) -> Scorer:
    """Loads an exported scorer (see `export`) without the model code.

    Every file is checked against the others before anything is scored: a bad
    one raises ScoringError naming it and the problem.
    """
    meta, score, batch_size = load_export(directory)
    return cls(meta, score, batch_size, f"export {directory}")

  # ------------------------------------------------------------------ scoring
  def predict_batch(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Probabilities for preprocessed arrays ids/values [n, f] (any n)."""
    split = data.Split(
      ids=np.asarray(ids, np.int32),
      values=np.asarray(values, np.float32),
      labels=np.full(len(ids), np.nan, np.float32),
      line_numbers=None,
    )
    return self._predict(split)

  def batch_for(self, rows: int) -> int:
    """The batch size a call of `rows` rows runs at.

    A call of fewer rows than batch_size pads to the smallest power of two from 16
    that holds them (a multiple of the devices), not to batch_size: one row costs
    a 16-row batch, not a 4,096-row one. Each size compiles on its first use.
    """
    if rows >= self.batch_size:
      return self.batch_size
    size = 16
    while size < rows:
      size *= 2
    size = -(-size // self._multiple) * self._multiple
    return min(size, self.batch_size)

  def _predict(self, split) -> np.ndarray:
    def score_batch(batch):
      probs = np.asarray(self._score(batch["ids"], batch["values"]))
      return {"probs": probs, "labels": batch["labels"], "weights": batch["weights"]}

    size = self.batch_for(len(split.ids))
    return predict.predict_split(split, size, score_batch)[1]

  def predict_split(self, split: data.Split) -> np.ndarray:
    """Probabilities for every row of a prepared split (from data.prepare), in order."""
    return self._predict(split)

  def predict_rows(self, rows: list[str], **kwargs) -> np.ndarray:
    """Probabilities for raw text rows of the training format (see data.encode_rows)."""
    split = data.encode_rows(self.meta, rows, **kwargs)
    return self._predict(split)

  def predict_file(self, path, *, fmt: str | None = None, schema=None, bad_rows: str = "error"):
    """Scores a raw file with the saved vocabulary, streaming it chunk by chunk.

    Returns:
      (probs [n], labels [n] (NaN where the file has none), line_numbers [n],
      bad_row_report): probs in input order for the rows that were scored.
    """
    bad = data.BadRowReport()
    probs, labels, lines = [], [], []
    for part in data.iter_encode_file(self.meta, path, fmt, schema, bad_rows, report=bad):
      probs.append(self._predict(part))
      labels.append(np.asarray(part.labels, np.float32))
      lines.append(np.asarray(part.line_numbers, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros((0,), dt)
    return cat(probs, np.float32), cat(labels, np.float32), cat(lines, np.int64), bad


def _checkpoint_score_fn(loaded: checkpoints.LoadedCheckpoint):
  """(ids, values) -> probabilities of one restored checkpoint, on its mesh."""
  score_batch = predict.state_score_fn(loaded.fns, loaded.state, loaded.mesh)
  return lambda ids, values: score_batch({"ids": ids, "values": values})["probs"]
