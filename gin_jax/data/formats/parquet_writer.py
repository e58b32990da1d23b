"""The streaming Parquet writer of scores (needs pyarrow, like Parquet input)."""

from __future__ import annotations

import os

import numpy as np

from gin_jax.data.formats.parquet import pyarrow_modules


class ParquetScoreWriter:
  """Writes scores to a Parquet file chunk by chunk: one row group per write().

  Columns as the csv output of scoring: `line` (int64), `probability` (float64, null
  for a skipped row) and `status` ("ok" or "skipped: <reason>"). Use as a context
  manager, or call close() to write the footer; leaving the `with` block by an
  exception deletes the partial file, which would otherwise read as complete.
  """

  def __init__(self, path: str | os.PathLike):
    self._pa, _, pq = pyarrow_modules()
    pa = self._pa
    self.path = os.fspath(path)
    self.schema = pa.schema(
      [("line", pa.int64()), ("probability", pa.float64()), ("status", pa.string())]
    )
    self._writer = pq.ParquetWriter(self.path, self.schema)
    self.rows = 0

  def write(self, lines, probs, status: list[str]) -> None:
    """Appends one chunk of rows as one row group.

    Args:
      lines: int64 [n] row (line) numbers.
      probs: float [n] probabilities, NaN for skipped rows (written as null).
      status: n strings: "ok", or "skipped: <reason>".
    """
    pa = self._pa
    probs = np.asarray(probs, np.float64)
    if not len(lines) == len(probs) == len(status):
      raise ValueError(f"lengths differ: {len(lines)} lines, {len(probs)} probs, {len(status)}")
    if not len(probs):
      return
    table = pa.table(
      [
        pa.array(np.asarray(lines, np.int64)),
        pa.array(probs, mask=np.isnan(probs)),
        pa.array(list(status), pa.string()),
      ],
      schema=self.schema,
    )
    self._writer.write_table(table, row_group_size=len(probs))
    self.rows += len(probs)

  def close(self) -> None:
    """Writes the footer; the file is complete after this."""
    self._writer.close()

  def __enter__(self) -> ParquetScoreWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close()
    if exc_type is not None:
      os.remove(self.path)
