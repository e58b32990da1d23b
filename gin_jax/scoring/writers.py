"""Score outputs: one probability per input row, in input order, as .csv, .npy or .parquet
(or csv on standard output)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

from gin_jax import files
from gin_jax.scoring.errors import ScoringError


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
    tmp = files.temp_path(path)
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

    tmp = files.temp_path(self.path)
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


class _StdoutCsvWriter(_CsvWriter):
  """The csv on standard output (`--out -`), as it is scored: nothing to rename."""

  def __init__(self, path):
    _ScoreWriter.__init__(self, path)
    self._f = sys.stdout
    self._csv = csv.writer(self._f)
    self._csv.writerow(["line", "probability", "status"])

  def _finish(self) -> None:
    self._f.flush()


STDOUT = "-"  # --out -: the csv on standard output
WRITERS = {".csv": _CsvWriter, ".npy": _NpyWriter, ".parquet": _ParquetWriter}


def check_output(path) -> None:
  """Refuses (ScoringError, one line) an output whose type is not known by its extension."""
  if str(path) == STDOUT:
    return
  suffix = Path(path).suffix
  if suffix.lower() not in WRITERS:
    what = f"a {suffix} file" if suffix else "a file without an extension"
    raise ScoringError(
      f"{path}: cannot write scores to {what}; name a .csv, .npy or .parquet file, or - for "
      "csv on standard output"
    )


def open_writer(path) -> _ScoreWriter:
  """The writer of `path`'s type (.csv, .npy, .parquet; `-`: csv on standard output)."""
  check_output(path)
  if str(path) == STDOUT:
    return _StdoutCsvWriter(path)
  return WRITERS[Path(path).suffix.lower()](path)


def write_scores(path, probs: np.ndarray, line_numbers, bad) -> None:
  """One probability per input row, in input order; skipped rows are named.

  .csv: `line,probability,status` with a row for every input line (skipped
  ones carry an empty probability and the reason). .npy: float32 with NaN at
  skipped rows, plus PATH.skipped.json listing them. .parquet: the csv's
  columns, the probability null at skipped rows. The same writers as the
  streaming `score_file`.
  """
  line_numbers = np.arange(1, len(probs) + 1) if line_numbers is None else line_numbers
  with open_writer(path) as writer:
    writer.write(
      np.asarray(line_numbers, np.int64), np.asarray(probs, np.float32), skipped_rows(bad)
    )


def skipped_rows(bad):
  """(line, reason) of every skipped row; reasons are kept for the first few only."""
  if bad is None:
    return []
  reasons = {row.line: row.reason for row in bad.rows}
  return [(n, reasons.get(n, "bad row")) for n in bad.line_numbers]
