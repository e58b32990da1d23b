"""Scoring a file in bounded memory: chunk by chunk into the output, with exact metrics."""

from __future__ import annotations

import array
import ctypes
import dataclasses
import functools

import numpy as np

from gin_jax import data, metrics
from gin_jax.data.encode import concat_splits
from gin_jax.scoring import writers
from gin_jax.scoring.errors import ScoringError


@dataclasses.dataclass
class ScoreSummary:
  """What score_file did: rows scored, rows skipped, and metrics when labelled."""

  rows: int
  bad: object  # data.BadRowReport (count and first examples; line numbers dropped)
  # {"auc", "logloss", "n"} when every scored row had a label; with group_by also
  # "gauc" and "gauc_groups" (metrics.grouped_auc).
  metrics: dict | None


# Text per chunk when scoring a file. Smaller than preparation's 8 MiB: the
# parse of a chunk needs ~4 KB per Criteo row for a moment, and at 1 MiB
# (~4k rows) that transient stays a few percent of the process's memory, so the
# peak does not drift with the file's length (benchmarks/score_memory.py).
SCORE_CHUNK_BYTES = 1 << 20


def score_file(
  scorer, path, out, *, fmt=None, schema=None, bad_rows: str = "error", group_by: str | None = None
) -> ScoreSummary:
  """Scores a raw file into `out` (.csv or .npy) chunk by chunk, in bounded memory.

  With `group_by` (a field of the model's data, e.g. a user column) the metrics
  include gAUC: the AUC within each group, weighted by rows (metrics.grouped_auc),
  at 9 bytes more per labelled row.

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
  column = None if group_by is None else scorer.meta.group_column(group_by)
  grouped = _GroupedRows() if column is not None else None
  rows = 0
  parts = data.iter_encode_file(
    scorer.meta, path, fmt, schema, bad_rows, report=bad, chunk_bytes=SCORE_CHUNK_BYTES
  )
  with writers.open_writer(out) as writer:
    for i, (part, skipped) in enumerate(_whole_batches(parts, scorer.batch_size, bad)):
      probs = scorer.predict_split(part)
      lines = np.asarray(part.line_numbers, np.int64)
      nonfinite = np.flatnonzero(~np.isfinite(probs))
      if len(nonfinite):
        raise ScoringError(
          f"{scorer.description} gave a non-finite probability for {path}:"
          f"{int(lines[nonfinite[0]])}; nothing written to {out}"
        )
      writer.write(lines, probs, skipped)
      metrics.add(np.asarray(part.labels, np.float32), probs)
      if grouped is not None:
        grouped.add(np.asarray(part.labels, np.float32), probs, np.asarray(part.ids[:, column]))
      rows += len(probs)
      del part, probs, lines
      if i % 8 == 7:  # every ~8 MiB of input
        _release_freed_memory()
    if rows == 0:
      raise ScoringError(
        f"no row of {path} could be scored ({bad.count} bad row(s) skipped; first: "
        f"{bad.examples[:3]}); nothing written to {out}"
      )
  result = metrics.result()
  if result is not None and grouped is not None:
    g = grouped.result()
    result |= {"gauc": g["gauc"], "gauc_groups": g["groups"], "group_by": group_by}
  return ScoreSummary(rows, bad, result)


class _GroupedRows:
  """The labels, probabilities and groups of the scored rows, for a gAUC at the end."""

  def __init__(self):
    self._labels, self._probs, self._groups = array.array("B"), array.array("f"), []

  def add(self, labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> None:
    if np.isnan(labels).any():
      return  # _StreamingMetrics turns the metrics off
    self._labels.frombytes(labels.astype(np.uint8).tobytes())
    self._probs.frombytes(np.asarray(probs, np.float32).tobytes())
    self._groups.append(np.asarray(groups, np.int32))

  def result(self) -> dict:
    labels = np.frombuffer(self._labels, np.uint8)
    probs = np.frombuffer(self._probs, np.float32)
    groups = np.concatenate(self._groups) if self._groups else np.zeros(0, np.int32)
    return metrics.grouped_auc(labels, probs, groups)


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
  with the length of the file. malloc_trim every few chunks keeps the peak
  flat; after every chunk it would cost a good share of the time, since it
  walks the whole heap (benchmarks/score_memory.py measures both).
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
    skipped += writers.skipped_rows(bad)
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
  by probability with ties kept together, and the AUC is metrics.auc's own
  rank sum (metrics.positive_rank_sum), block by block. Log loss is summed on the way. A row without
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
      rank_sum += metrics.positive_rank_sum(block >> np.uint64(1), block & np.uint64(1), a)
      a = end
    auc = metrics.auc_from_rank_sum(rank_sum, n_pos, n_neg)
    return {"auc": auc, "logloss": self._logloss / n, "n": n}
