"""Offline scoring from checkpoints, and export for serving.

  python -m gin_jax.score --checkpoint WORKDIR [--step N | --best] --data FILE --out FILE
  python -m gin_jax.score --checkpoint WORKDIR --export DIR
  python -m gin_jax.score --exported DIR --data FILE --out FILE

Loading reads orbax arrays and JSON only: no pickle, no eval, and only from a
checkpoint that matches its seal and holds finite values (gin_jax/checkpointing.py).
An exported directory holds the StableHLO of the scoring function (`jax.export`),
its parameters as a plain .npz (read with allow_pickle=False) and the dataset
metadata; running it needs jax and numpy, not the model code. The command line
streams .csv and .npy output chunk by chunk (`score_file`), so its memory does
not grow with the file.
"""

from __future__ import annotations

import argparse
import array
import csv
import ctypes
import dataclasses
import functools
import itertools
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax import checkpointing, data, partitioning, stages, training
from gin_jax import model as model_lib
from gin_jax.config import Config
from gin_jax.data import pipeline
from gin_jax.data.encode import concat_splits
from gin_jax.stages import Workdir

EXPORT_FILES = ("score.stablehlo", "params.npz", "dataset.json", "export.json")


class ScoringError(RuntimeError):
  """A checkpoint or export directory that cannot be used, with the reason."""


def _batched(split, batch_size: int, score_batch):
  """Probabilities for every row of `split`, in order."""
  out = []
  for batch in pipeline.eval_batches(split, batch_size):
    probs = np.asarray(score_batch(batch["ids"], batch["values"]))
    out.append(probs[batch["weights"] > 0])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


class Scorer:
  """Scores raw rows, files or preprocessed batches with a trained model.

  Build with `Scorer.from_checkpoint(workdir)` (or `Scorer.from_export(dir)`).
  """

  def __init__(self, dataset_meta, score_fn, batch_size: int, description: str):
    self.meta = dataset_meta
    self._score = score_fn
    self.batch_size = batch_size
    self.description = description

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_checkpoint(
    cls, workdir, *, step: int | None = None, best: bool = False, devices=None
  ) -> Scorer:
    """Loads params, masks, config and dataset metadata from a training workdir.

    A run of train.ensemble = K scores as the average of its K models'
    probabilities (the members delivered.json lists), unless `step` picks one
    checkpoint of the run itself.

    Args:
      workdir: a `python -m train` workdir.
      step: a specific checkpoint step (default: the newest).
      best: use the best (validation AUC) checkpoint of the last stage instead.
      devices: devices to score on (default: all local devices).

    Returns:
      A Scorer. Raises ScoringError naming what is missing or wrong.
    """
    models = load_models(workdir, step=step, best=best, devices=devices)
    scores = [_checkpoint_score_fn(m) for m in models]

    def score(ids, values):
      if len(scores) == 1:
        return scores[0](ids, values)
      return np.mean([f(ids, values) for f in scores], axis=0, dtype=np.float64).astype(np.float32)

    first = models[0]
    return cls(first.dataset_meta, score, first.cfg.train.eval_batch_size, _describe(models))

  @classmethod
  def from_export(cls, directory) -> Scorer:
    """Loads an exported scorer (see `export`) without the model code.

    Every file is checked against the others before anything is scored: a bad
    one raises ScoringError naming it and the problem.
    """
    directory = Path(directory)
    missing = [f for f in EXPORT_FILES if not (directory / f).exists()]
    if missing:
      raise ScoringError(f"{directory} is not an export directory: missing {missing}")
    info = _export_info(directory / "export.json")
    path = directory / "score.stablehlo"
    try:
      exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as e:  # noqa: BLE001 - any undecodable artifact is reported the same way
      raise ScoringError(f"{path}: not a serialized jax.export function ({e})") from None
    weights = [jnp.asarray(x) for x in _export_params(directory / "params.npz", exported)]
    path = directory / "dataset.json"
    try:
      dataset_meta = data.DatasetMeta.from_json(path.read_text())
    except data.DataError as e:
      raise ScoringError(f"{path}: {e}") from None
    ids_aval = exported.in_avals[len(weights)]
    if dataset_meta.num_fields != ids_aval.shape[1]:
      raise ScoringError(
        f"{path}: {dataset_meta.num_fields} fields, but the exported function takes "
        f"{ids_aval.shape[1]}"
      )
    if info.get("num_table_rows", dataset_meta.num_table_rows) != dataset_meta.num_table_rows:
      raise ScoringError(
        f"{path}: num_table_rows={dataset_meta.num_table_rows}, but the exported table "
        f"has {info['num_table_rows']} (export.json)"
      )

    def score(ids, values):
      return np.asarray(exported.call(weights, jnp.asarray(ids), jnp.asarray(values)))

    return cls(dataset_meta, score, info["batch_size"], f"export {directory}")

  # ------------------------------------------------------------------ scoring
  def predict_batch(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Probabilities for preprocessed arrays ids/values [n, f] (any n)."""
    split = data.Split(
      ids=np.asarray(ids, np.int32),
      values=np.asarray(values, np.float32),
      labels=np.full(len(ids), np.nan, np.float32),
      line_numbers=None,
    )
    return _batched(split, self.batch_size, self._score)

  def predict_split(self, split: data.Split) -> np.ndarray:
    """Probabilities for every row of a prepared split (from data.prepare), in order."""
    return _batched(split, self.batch_size, self._score)

  def predict_rows(self, rows: list[str], **kwargs) -> np.ndarray:
    """Probabilities for raw text rows of the training format (see data.encode_rows)."""
    split = data.encode_rows(self.meta, rows, **kwargs)
    return _batched(split, self.batch_size, self._score)

  def predict_file(self, path, *, fmt: str | None = None, schema=None, bad_rows: str = "error"):
    """Scores a raw file with the saved vocabulary, streaming it chunk by chunk.

    Returns:
      (probs [n], labels [n] (NaN where the file has none), line_numbers [n],
      bad_row_report): probs in input order for the rows that were scored.
    """
    bad = data.BadRowReport()
    probs, labels, lines = [], [], []
    for part in data.iter_encode_file(self.meta, path, fmt, schema, bad_rows, report=bad):
      probs.append(_batched(part, self.batch_size, self._score))
      labels.append(np.asarray(part.labels, np.float32))
      lines.append(np.asarray(part.line_numbers, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros((0,), dt)
    return cat(probs, np.float32), cat(labels, np.float32), cat(lines, np.int64), bad


def _export_info(path: Path) -> dict:
  """export.json, checked: an object whose batch_size is a positive integer."""
  try:
    info = json.loads(path.read_text())
  except ValueError as e:
    raise ScoringError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(info, dict):
    raise ScoringError(f"{path}: must be a JSON object")
  size = info.get("batch_size")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ScoringError(f"{path}: batch_size must be a positive integer, got {size!r}")
  return info


def _export_params(path: Path, exported) -> list[np.ndarray]:
  """params.npz, checked: exactly the arrays leaf_0.. the exported function takes, finite."""
  avals = exported.in_avals[:-2]  # then ids and values
  names = [f"leaf_{i}" for i in range(len(avals))]
  try:
    with np.load(path, allow_pickle=False) as z:
      extra, absent = sorted(set(z.files) - set(names)), sorted(set(names) - set(z.files))
      if extra or absent:
        raise ScoringError(
          f"{path}: the exported function takes exactly {names[0]}..{names[-1]}; "
          + (f"unexpected {extra}" if extra else f"missing {absent}")
        )
      leaves = [z[name] for name in names]
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ScoringError(f"{path}: unreadable ({e})") from None
  for name, x, aval in zip(names, leaves, avals):
    if x.shape != aval.shape or x.dtype != aval.dtype:
      raise ScoringError(
        f"{path}: {name} is {x.dtype}{list(x.shape)}, the exported function takes "
        f"{aval.dtype}{list(aval.shape)}"
      )
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
      raise ScoringError(f"{path}: {name} holds NaN or Inf")
  return leaves


def _checkpoint_score_fn(loaded):
  fns, state, mesh = loaded.fns, loaded.state, loaded.mesh
  params, stats, masks = state["params"], state["batch_stats"], state["masks"]

  def score(ids, values):
    batch = partitioning.shard_batch(mesh, {"ids": ids, "values": values})
    return np.asarray(fns.eval_step(params, stats, masks, batch))

  return score


def _describe(models) -> str:
  if len(models) == 1:
    return models[0].description
  return f"the average of {len(models)} models ({', '.join(m.description for m in models)})"


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
  cfg: Config
  dataset_meta: object
  fns: training.StepFns
  state: dict
  mesh: object
  description: str


def load_checkpoint(
  workdir, *, step=None, best=False, devices=None, report=None
) -> LoadedCheckpoint:
  """Restores a usable training checkpoint onto `devices` (see Scorer.from_checkpoint).

  Usable means sealed, every file matching its seal and every parameter finite
  (gin_jax.checkpointing). An explicit `step` that is unusable is refused.
  Without one, the newest usable checkpoint is used, and each newer one that
  is skipped is reported. With `best`, the final stage's best checkpoint; if
  it is unusable, the newest usable regular checkpoint of that stage (or of
  the finished run, which holds the restored best weights), saying so.

  Args:
    workdir: a `python -m train` workdir.
    step: a specific checkpoint step (default: the newest usable).
    best: the best checkpoint of the last stage instead.
    devices: devices to restore onto (default: all local devices).
    report: called with each warning (default: printed to stderr).

  Returns:
    The LoadedCheckpoint. Raises ScoringError naming what is missing or wrong.
  """
  layout = Workdir(workdir)
  report = report or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
  if step is None and layout.delivered() != layout:  # train.beat_linear chose a second model
    layout = layout.delivered()
    report(f"{workdir}: the run delivered the model in {layout.root} (delivered.json); using it")
    workdir = layout.root
  if not layout.config.exists():
    raise ScoringError(f"{workdir} is not a training workdir (no config.json)")
  regular = [(layout.checkpoints, s) for s in checkpointing.all_steps(layout.checkpoints)]
  stages_wanted = None
  if best:
    final = stages.final(_read_config(layout.config).train.stages)
    directory = layout.best(final)
    candidates = [(directory, s) for s in checkpointing.all_steps(directory)]
    if not candidates:
      raise ScoringError(f"{directory} holds no checkpoint")
    candidates += regular
    stages_wanted = {final.name, stages.DONE}
  elif step is not None:
    have = [s for _, s in regular]
    if step not in have:
      raise ScoringError(f"no checkpoint step {step} in {layout.checkpoints}; have {sorted(have)}")
    candidates = [(layout.checkpoints, step)]
  else:
    candidates = regular
    if not candidates:
      raise ScoringError(f"{layout.checkpoints} holds no checkpoint")
  skipped = []
  for directory, s in candidates:
    try:
      loaded = _restore_checkpoint(directory, s, devices, stages_wanted if skipped else None)
    except checkpointing.UnusableCheckpoint as e:
      if step is not None:
        raise ScoringError(
          f"{e}; refusing to score with it (omit --step to use the newest usable checkpoint)"
        ) from None
      report(f"{e}; trying the previous one")
      skipped.append(e)
      continue
    except checkpointing.CheckpointError as e:
      raise ScoringError(str(e)) from None
    if loaded is None:
      continue  # a regular checkpoint of an earlier stage: not a stand-in for --best
    if skipped:
      report(f"using {loaded.description} instead")
    return dataclasses.replace(
      loaded, description=loaded.description + (" (best)" if best and not skipped else "")
    )
  raise ScoringError(
    f"no usable checkpoint in {workdir}"
    + (f" for the {'/'.join(sorted(stages_wanted))} stage" if stages_wanted else "")
    + f" ({'; '.join(str(e) for e in skipped[:3])})"
  )


def load_models(workdir, *, step=None, best=False, devices=None, report=None):
  """The models a workdir delivers: [LoadedCheckpoint], several for train.ensemble.

  Without `step`, each model that delivered.json lists (load_checkpoint of
  each; `best` applies to each). With `step`, that checkpoint of the workdir
  alone, saying so when the run delivers an ensemble. All members must share
  the dataset (its vocabulary and fields), else ScoringError.
  """
  layout = Workdir(workdir)
  report = report or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
  members = layout.ensemble()
  if step is not None or len(members) == 1:
    if step is not None and len(members) > 1:
      report(f"{workdir} delivers the average of {len(members)} models; --step {step} "
             "scores this run's own checkpoint alone")  # fmt: skip
    return [load_checkpoint(workdir, step=step, best=best, devices=devices, report=report)]
  models = [load_checkpoint(m.root, best=best, devices=devices, report=report) for m in members]
  first = models[0].dataset_meta
  for m in models[1:]:
    meta = m.dataset_meta
    if (meta.fields, meta.vocab, meta.options) != (first.fields, first.vocab, first.options):
      raise ScoringError(
        f"{m.description}: an ensemble member encodes its input unlike "
        f"{models[0].description} (other fields or vocabulary)"
      )
  return models


def _read_config(path: Path) -> Config:
  try:
    return Config.from_dict(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise ScoringError(f"{path}: cannot parse the run's config ({e})") from None


def _restore_checkpoint(directory: Path, step: int, devices, stages_wanted) -> LoadedCheckpoint:
  """Checkpoint `step` of `directory`; None if its stage is not in `stages_wanted`."""
  mngr = checkpointing.manager(directory, None)
  checkpointing.verify_seal(checkpointing.step_dir(mngr, step))
  meta = checkpointing.read_meta(mngr, step, verify=False)
  try:
    if stages_wanted is not None and meta["progress"]["stage"] not in stages_wanted:
      return None
    cfg = Config.from_dict(meta.get("effective_config") or meta["config"])
    dataset_meta = data.DatasetMeta.from_dict(meta["dataset"])
    rows = meta["model"]
  except Exception as e:  # noqa: BLE001 - report any malformed metadata the same way
    raise ScoringError(
      f"{directory}/{step}: unreadable checkpoint metadata ({type(e).__name__}: {e})"
    ) from e
  devices = list(devices or jax.local_devices())
  if rows["padded_rows"] % len(devices):  # the table's rows must split evenly
    devices = devices[:1]
  mesh = partitioning.make_mesh(devices)
  spec = model_lib.ModelSpec(
    cfg.model, dataset_meta.num_fields, rows["num_rows"], rows["padded_rows"]
  )
  fns = training.build(spec, cfg.train, mesh)
  state, _ = checkpointing.restore(mngr, step, fns.abstract_state, verify=False)
  return LoadedCheckpoint(cfg, dataset_meta, fns, state, mesh, f"{directory}/{step}")


def export(workdir, out_dir, *, step: int | None = None, best: bool = False) -> Path:
  """Serialises the scoring function and its parameters with jax.export.

  The exported function takes `(weights, ids [b, f] int32, values [b, f]
  float32)` with a symbolic batch size b, and is lowered for CPU and CUDA.
  """
  out_dir = Path(out_dir)
  models = load_models(workdir, step=step, best=best, devices=jax.local_devices()[:1])
  loaded = models[0]
  weights = [
    jax.tree.map(
      lambda x: np.asarray(jax.device_get(x)),
      (m.state["params"], m.state["batch_stats"], m.state["masks"]),
    )
    for m in models
  ]
  graphdefs = [m.fns.graphdef for m in models]
  leaves, treedef = jax.tree.flatten(weights)

  def score(leaves_, ids, values):
    probs = []
    for graphdef, (p, s, m) in zip(graphdefs, jax.tree.unflatten(treedef, leaves_)):
      logits, _ = model_lib.apply_model(graphdef, p, s, ids, values, m, train=False)
      probs.append(jax.nn.sigmoid(logits))
    return sum(probs) / len(probs)  # an ensemble's average of probabilities

  b = jax.export.symbolic_shape("b")[0]
  f = loaded.dataset_meta.num_fields
  args = (
    [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
    jax.ShapeDtypeStruct((b, f), jnp.int32),
    jax.ShapeDtypeStruct((b, f), jnp.float32),
  )
  exported = jax.export.export(jax.jit(score), platforms=("cpu", "cuda"))(*args)
  info = {
    "batch_size": loaded.cfg.train.eval_batch_size,
    "num_fields": f,
    "num_table_rows": loaded.dataset_meta.num_table_rows,
    "field_names": loaded.dataset_meta.field_names,
    "source": _describe(models),
    "models": len(models),
    "platforms": list(exported.platforms),
  }
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "score.stablehlo").write_bytes(exported.serialize())
    np.savez(out_dir / "params.npz", **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    (out_dir / "dataset.json").write_text(loaded.dataset_meta.to_json())
    (out_dir / "export.json").write_text(json.dumps(info, indent=2))
  except OSError as e:
    raise ScoringError(f"{e.filename or out_dir}: cannot write the export ({e.strerror})") from None
  return out_dir


# ---------------------------------------------------------------------- output


@dataclasses.dataclass
class ScoreSummary:
  """What score_file did: rows scored, rows skipped, and metrics when labelled."""

  rows: int
  bad: object  # data.BadRowReport (count and first examples; line numbers dropped)
  metrics: dict | None  # {"auc", "logloss", "n"} when every scored row had a label


# Text per chunk when scoring a file. Smaller than preparation's 8 MiB: the
# parse of a chunk needs ~4 KB per Criteo row for a moment, and at 1 MiB
# (~4k rows) that transient stays a few percent of the process's memory, so the
# peak does not drift with the file's length (benchmarks/score_memory.py).
SCORE_CHUNK_BYTES = 1 << 20


def score_file(
  scorer: Scorer, path, out, *, fmt=None, schema=None, bad_rows: str = "error"
) -> ScoreSummary:
  """Scores a raw file into `out` (.csv or .npy) chunk by chunk, in bounded memory.

  The input is read, encoded and scored in small chunks, regrouped into whole
  batches, and each group is appended to the output in input order (skipped
  rows interleaved) before more is read; AUC and log loss need 8 bytes per
  labelled row (see _StreamingMetrics). The output appears under its name only
  when complete (temp file + rename).

  Returns:
    A ScoreSummary.

  Raises:
    ScoringError: a non-finite probability (nothing is written), or no row
      could be scored.
  """
  bad = data.BadRowReport()
  metrics = _StreamingMetrics()
  rows = 0
  parts = data.iter_encode_file(
    scorer.meta, path, fmt, schema, bad_rows, report=bad, chunk_bytes=SCORE_CHUNK_BYTES
  )
  with _open_writer(out) as writer:
    for i, (part, skipped) in enumerate(_whole_batches(parts, scorer.batch_size, bad)):
      probs = _batched(part, scorer.batch_size, scorer._score)
      lines = np.asarray(part.line_numbers, np.int64)
      nonfinite = np.flatnonzero(~np.isfinite(probs))
      if len(nonfinite):
        raise ScoringError(
          f"{scorer.description} gave a non-finite probability for {path}:"
          f"{int(lines[nonfinite[0]])}; nothing written to {out}"
        )
      writer.write(lines, probs, skipped)
      metrics.add(np.asarray(part.labels, np.float32), probs)
      rows += len(probs)
      del part, probs, lines
      if i % 8 == 7:  # every ~8 MiB of input
        _release_freed_memory()
    if rows == 0:
      raise ScoringError(
        f"no row of {path} could be scored ({bad.count} bad row(s) skipped; first: "
        f"{bad.examples[:3]}); nothing written to {out}"
      )
  return ScoreSummary(rows, bad, metrics.result())


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL(None).malloc_trim  # glibc
  except (AttributeError, OSError):
    return None


def _release_freed_memory() -> None:
  """Returns the heap memory freed by the last chunk to the OS (glibc; else a no-op).

  Every chunk allocates and frees some MB of numpy temporaries. glibc serves
  them from its heap once its adaptive mmap threshold has risen, keeps what
  was freed, and the heap's fragmentation lets the resident size creep up
  with the length of the file (~10% from 50k to 500k rows, measured).
  malloc_trim every few chunks keeps the peak flat (benchmarks/score_memory.py);
  after every chunk it would cost ~20% of the time (it walks the whole heap).
  """
  trim = _malloc_trim()
  if trim is not None:
    trim(0)


def _whole_batches(parts, batch_size: int, bad):
  """Regroups encoded chunks into runs of whole batches (the last may be partial).

  Yields (rows, skipped (line, reason) among and just before them), in input
  order, so that no chunk boundary costs a padded batch. Takes the skipped
  rows' line numbers out of `bad` as it goes (it keeps the count and examples).
  """
  held, skipped = [], []
  for part in parts:
    skipped += _skipped(bad)
    bad.line_numbers.clear()
    held.append(part)
    n = sum(len(p) for p in held)
    if n < batch_size:
      continue
    rows = concat_splits(held, part.ids.shape[1])
    cut = n - n % batch_size
    rest = _rows(rows, slice(cut, n))
    held = [rest]
    before = int(rest.line_numbers[0]) if len(rest) else float("inf")
    yield _rows(rows, slice(0, cut)), [s for s in skipped if s[0] < before]
    skipped = [s for s in skipped if s[0] >= before]
  if held and (sum(len(p) for p in held) or skipped):
    yield concat_splits(held, held[0].ids.shape[1]), skipped


def _rows(split, rows: slice):
  return data.Split(
    split.ids[rows], split.values[rows], split.labels[rows], split.line_numbers[rows]
  )


class _StreamingMetrics:
  """Exact AUC and log loss over a stream of (labels, probabilities) in 8 bytes a row.

  Each row is kept as one uint64 key, (float32 bits of p) << 1 | label: for
  p >= 0 the bits order like the values, so sorting the keys in place sorts
  by probability with ties kept together, and tied groups give average ranks
  exactly as metrics.auc does. Log loss is summed on the way. A row without
  a label (NaN) turns the metrics off.
  """

  def __init__(self):
    self._keys = array.array("Q")
    self._logloss = 0.0
    self.labelled = True

  def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
    if not self.labelled or not len(labels):
      return
    if np.isnan(labels).any():
      self.labelled, self._keys = False, array.array("Q")
      return
    bits = np.asarray(probs, np.float32).view(np.uint32).astype(np.uint64)
    self._keys.frombytes(((bits << np.uint64(1)) | labels.astype(np.uint64)).tobytes())
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)  # as metrics.log_loss
    y = labels.astype(np.float64)
    self._logloss -= float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))

  def result(self) -> dict | None:
    n = len(self._keys)
    if not self.labelled or not n:
      return None
    keys = np.frombuffer(self._keys, np.uint64)
    keys.sort()  # in place, in the array's own buffer
    n_pos = int(np.count_nonzero(keys & np.uint64(1)))
    n_neg = n - n_pos
    rank_sum, a = 0.0, 0
    while a < n:  # blocks of whole tie groups bound the temporaries
      end = min(a + (1 << 18), n)
      if end < n:
        value = keys[end - 1] >> np.uint64(1)
        end = int(np.searchsorted(keys, (value + np.uint64(1)) << np.uint64(1)))
      block = keys[a:end]
      value = block >> np.uint64(1)
      starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
      ends = np.r_[starts[1:], len(block)]
      positives = np.add.reduceat((block & np.uint64(1)).astype(np.float64), starts)
      rank_sum += float(positives @ (a + (starts + ends + 1) / 2.0))
      a = end
    auc = (
      (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else float("nan")
    )
    return {"auc": auc, "logloss": self._logloss / n, "n": n}


class _ScoreWriter:
  """One probability per input row, in input order, appended chunk by chunk.

  Written to a temporary file beside `path`, renamed over it by close(); on an
  error the temporary file is removed and `path` is left as it was.
  """

  suffixes: tuple[str, ...] = ()

  def __init__(self, path):
    self.path = Path(path)
    self._tmp = {}  # final path -> temporary path
    self.rows = 0

  def _open(self, path: Path, mode: str):
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
      f = open(tmp, mode)  # noqa: SIM115 - closed in close()/abort()
    except OSError as e:
      raise ScoringError(f"{path}: cannot write the scores ({e.strerror})") from None
    self._tmp[path] = tmp
    return f

  def write(self, lines: np.ndarray, probs: np.ndarray, skipped: list[tuple[int, str]]) -> None:
    """Rows `lines` scored `probs`, and the skipped (line, reason) pairs among them."""
    all_lines = np.concatenate([lines, np.array([n for n, _ in skipped], np.int64)])
    order = np.argsort(all_lines, kind="stable")
    reasons = [None] * len(lines) + [r for _, r in skipped]
    self._write_rows(
      all_lines[order],
      np.concatenate([probs, np.full(len(skipped), np.nan, np.float32)])[order],
      [reasons[i] for i in order] if skipped else None,
    )
    self.rows += len(order)

  def __enter__(self):
    return self

  def __exit__(self, kind, *_):
    if kind is None:
      self.close()
    else:
      self.abort()

  def close(self) -> None:
    self._finish()
    for path, tmp in self._tmp.items():
      os.replace(tmp, path)

  def abort(self) -> None:
    self._finish()
    for tmp in self._tmp.values():
      tmp.unlink(missing_ok=True)


class _CsvWriter(_ScoreWriter):
  """`line,probability,status`; a skipped row has no probability and says why."""

  def __init__(self, path):
    super().__init__(path)
    self._f = self._open(self.path, "w")
    self._csv = csv.writer(self._f)
    self._csv.writerow(["line", "probability", "status"])

  def _write_rows(self, lines, probs, reasons) -> None:
    text = [f"{p:.8f}" for p in probs.tolist()]
    if reasons is None:
      self._csv.writerows(zip(lines.tolist(), text, itertools.repeat("ok")))
      return
    self._csv.writerows(
      (n, "", "skipped: " + r) if r is not None else (n, t, "ok")
      for n, t, r in zip(lines.tolist(), text, reasons)
    )

  def _finish(self) -> None:
    self._f.close()


class _NpyWriter(_ScoreWriter):
  """float32 .npy, NaN at skipped rows; PATH.skipped.json lists those rows.

  The .npy header is written first with room to spare and rewritten with the
  real row count at the end (same length), so the rows stream straight out.
  """

  HEADER_BYTES = 128  # magic, version, length and the padded dict; keeps data 64-aligned

  def __init__(self, path):
    super().__init__(path)
    self._f = self._open(self.path, "wb")
    self._f.write(self._header(0))
    self._skipped = self._open(Path(f"{self.path}.skipped.json"), "w")
    self._skipped.write("[")
    self._first = True

  @classmethod
  def _header(cls, n: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}"
    body = text.ljust(cls.HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")

  def _write_rows(self, lines, probs, reasons) -> None:
    self._f.write(np.asarray(probs, "<f4").tobytes())
    for n, r in zip(lines.tolist(), reasons or ()):
      if r is not None:
        self._skipped.write(("\n" if self._first else ",\n") + json.dumps({"line": n, "reason": r}))
        self._first = False

  def _finish(self) -> None:
    if not self._f.closed:
      self._f.seek(0)
      self._f.write(self._header(self.rows))
      self._f.close()
    if not self._skipped.closed:
      self._skipped.write("\n]\n")
      self._skipped.close()


class _ParquetWriter(_ScoreWriter):
  """Columns `line`, `probability` (null at skipped rows) and `status`, as the csv;
  one row group per chunk (data.ParquetScoreWriter; needs the [parquet] extra)."""

  def __init__(self, path):
    super().__init__(path)
    from gin_jax.data import ParquetScoreWriter

    tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
    try:
      self._w = ParquetScoreWriter(tmp)
    except OSError as e:
      raise ScoringError(f"{self.path}: cannot write the scores ({e.strerror})") from None
    self._tmp[self.path] = tmp
    self._open_file = True

  def _write_rows(self, lines, probs, reasons) -> None:
    if reasons is None:
      status = ["ok"] * len(lines)
    else:
      status = ["ok" if r is None else "skipped: " + r for r in reasons]
    self._w.write(lines, probs, status)

  def _finish(self) -> None:
    if self._open_file:
      self._w.close()
      self._open_file = False


def _open_writer(path) -> _ScoreWriter:
  suffix = Path(path).suffix
  if suffix == ".npy":
    return _NpyWriter(path)
  if suffix == ".parquet":
    return _ParquetWriter(path)
  return _CsvWriter(path)


def write_scores(path, probs: np.ndarray, line_numbers, bad) -> None:
  """One probability per input row, in input order; skipped rows are named.

  .csv: `line,probability,status` with a row for every input line (skipped
  ones carry an empty probability and the reason). .npy: float32 with NaN at
  skipped rows, plus PATH.skipped.json listing them. .parquet: the csv's
  columns, the probability null at skipped rows. The same writers as the
  streaming `score_file`.
  """
  line_numbers = np.arange(1, len(probs) + 1) if line_numbers is None else line_numbers
  with _open_writer(path) as writer:
    writer.write(np.asarray(line_numbers, np.int64), np.asarray(probs, np.float32), _skipped(bad))


def _skipped(bad):
  """(line, reason) of every skipped row; reasons are kept for the first few only."""
  if bad is None:
    return []
  reasons = {row.line: row.reason for row in bad.rows}
  return [(n, reasons.get(n, "bad row")) for n in bad.line_numbers]


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m gin_jax.score", description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="training workdir")
  src.add_argument("--exported", help="directory written by --export")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--step", type=int, help="checkpoint step (default: newest)")
  which.add_argument("--best", action="store_true", help="best checkpoint of the last stage")
  p.add_argument("--data", help="file to score (any supported format, may be .gz)")
  p.add_argument(
    "--format", choices=["criteo", "csv", "libfm", "parquet"], help="default: training's"
  )
  p.add_argument("--schema", help="CSV schema (default: training's)")
  p.add_argument("--bad-rows", choices=["error", "skip"], default="error")
  p.add_argument("--out", help="output .csv, .npy or .parquet")
  p.add_argument("--export", help="write a jax.export directory here (with --checkpoint)")
  args = p.parse_args(argv)
  from gin_jax.cli import fail, init_runtime

  init_runtime()
  try:
    if args.export:
      if not args.checkpoint:
        p.error("--export needs --checkpoint")
      out = export(args.checkpoint, args.export, step=args.step, best=args.best)
      print(f"exported to {out}")
      if not args.data:
        return
    if not args.data or not args.out:
      p.error("scoring needs --data and --out")
    if args.checkpoint:
      scorer = Scorer.from_checkpoint(args.checkpoint, step=args.step, best=args.best)
    else:
      scorer = Scorer.from_export(args.exported)
    options = {"fmt": args.format, "schema": args.schema, "bad_rows": args.bad_rows}
    summary = score_file(scorer, args.data, args.out, **options)
    print(f"scored {summary.rows} rows with {scorer.description} -> {args.out}")
    if summary.bad.count:
      print(
        f"skipped {summary.bad.count} bad rows (listed in {args.out}); "
        f"first: {summary.bad.examples[:3]}"
      )
    if summary.metrics is not None:
      m = summary.metrics
      print(f"AUC {m['auc']:.6f}  logloss {m['logloss']:.6f}  (n={m['n']})")
  except (ScoringError, checkpointing.CheckpointError, data.DataError, ValueError, OSError) as e:
    fail(e)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
