"""Errors raised for bad input, and the report of rows skipped with --bad-rows=skip."""

from __future__ import annotations

import dataclasses
import errno
import resource

# How many skipped rows a report keeps with their reasons (the count is always exact).
MAX_EXAMPLES = 5


class DataError(ValueError):
  """Bad input data. The message reads `path:line: reason` (or `path: reason`; Parquet:
  `file:row-group:row: reason`)."""


def no_space(path, nbytes: int, at_least: bool = False) -> DataError:
  """The error for a full disk while writing `path`, which needs `nbytes` (or more)."""
  mb = f"{nbytes / 2**20:.1f}"
  return DataError(
    f"no space left on device while writing {path} ({'over ' if at_least else ''}{mb} MB needed)"
  )


def write_error(path, e: OSError, nbytes: int, at_least: bool = False) -> Exception:
  """What to raise for `e`, raised while writing `path`, which needs `nbytes` (or more).

  A full disk (no_space) and a file over the size limit (ulimit -f, or the
  filesystem's largest file) are DataErrors that say so; any other error is `e`
  naming `path`.
  """
  if e.errno == errno.ENOSPC:
    return no_space(path, nbytes, at_least)
  if e.errno == errno.EFBIG:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    why = (
      "the largest file of its filesystem"
      if limit == resource.RLIM_INFINITY
      else f"the file size limit, ulimit -f, is {limit:,} bytes"
    )
    needed = f"{'over ' if at_least else ''}{nbytes / 2**20:.1f} MB needed"
    return DataError(f"{path}: file too large ({why}; {needed})")
  if e.filename is None:
    return OSError(e.errno, e.strerror or str(e), str(path))
  return e


@dataclasses.dataclass(frozen=True)
class BadRow:
  """One bad row: its file, its 1-based line and why it is bad."""

  path: str
  line: int  # Parquet: the row's 1-based number in the dataset.
  reason: str
  where: str | None = None  # Where to look, when not path:line (Parquet: file:row-group:row).

  def __str__(self) -> str:
    return f"{self.where or f'{self.path}:{self.line}'}: {self.reason}"


@dataclasses.dataclass
class BadRowReport:
  """Rows skipped under bad_rows="skip": exact count, first examples, their lines.

  Attributes:
    count: number of skipped rows.
    rows: the first MAX_EXAMPLES skipped rows.
    line_numbers: 1-based source line of every skipped row, in file order.
  """

  count: int = 0
  rows: list[BadRow] = dataclasses.field(default_factory=list)
  line_numbers: list[int] = dataclasses.field(default_factory=list)

  @property
  def examples(self) -> list[str]:
    """The first MAX_EXAMPLES skipped rows as "file:line: reason"."""
    return [str(row) for row in self.rows]

  def add(self, path: str, line: int, reason: str, where: str | None = None) -> None:
    self.count += 1
    self.line_numbers.append(line)
    if len(self.rows) < MAX_EXAMPLES:
      self.rows.append(BadRow(path, line, reason, where))

  def summary(self) -> str:
    """One human-readable paragraph: the count and the first examples."""
    if not self.count:
      return "no bad rows"
    head = f"skipped {self.count} bad row(s); first {len(self.rows)}:"
    return "\n  ".join([head, *self.examples])

  def to_json_dict(self) -> dict:
    """The count and examples (line numbers are left out: they can be many)."""
    return {"count": self.count, "examples": self.examples}


class BadRowPolicy:
  """Applies --bad-rows: raise on the first bad row, or record it and go on."""

  def __init__(self, mode: str, path: str):
    if mode not in ("error", "skip"):
      raise ValueError(f"bad_rows must be 'error' or 'skip', got {mode!r}")
    self.mode = mode
    self.path = path
    self.report = BadRowReport()

  def handle(self, bad: list[tuple]) -> None:
    """Raises DataError for the first of `bad` or records them all.

    Args:
      bad: (line, reason) or (line, reason, where) tuples (see BadRow).
    """
    if not bad:
      return
    bad = sorted(bad)
    if self.mode == "error":
      raise DataError(str(BadRow(self.path, *bad[0])))
    for row in bad:
      self.report.add(self.path, *row)
