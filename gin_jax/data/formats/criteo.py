"""Criteo TSV: `label \t I1..I13 \t C1..C26`, no header; missing = empty field.

A file whose first line has 39 fields instead of 40 has no labels (for scoring).
Numeric fields are integers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gin_jax.data import text
from gin_jax.data.errors import DataError
from gin_jax.data.formats import parts, sniff
from gin_jax.data.formats.base import Column, Layout
from gin_jax.data.formats.delimited import DelimitedText, first_record, first_row
from gin_jax.data.formats.schema import CsvSchema

CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))


def criteo_layout(has_labels: bool = True) -> Layout:
  """Criteo TSV: [label] I1..I13 C1..C26."""
  first = 1 if has_labels else 0
  names = CRITEO_NUMERIC + CRITEO_CATEGORICAL
  columns = tuple(
    Column(n, "numeric" if n[0] == "I" else "categorical", first + i) for i, n in enumerate(names)
  )
  ntok = first + len(names)
  return Layout(Criteo.name, b"\t", (9,) * (ntok - 1) + (10,), 0 if has_labels else None, columns)


def layout_from_first_line(first_line: bytes, has_labels: bool | None = None) -> Layout:
  """The layout of rows like first_line: rows of 39 fields have no label (any other
  count is taken as labeled)."""
  if has_labels is None:
    has_labels = first_line.count(b"\t") + 1 != len(CRITEO_NUMERIC) + len(CRITEO_CATEGORICAL)
  return criteo_layout(has_labels)


class Criteo(DelimitedText):
  """The Criteo click logs' TSV."""

  name = "criteo"
  integers_only = True

  def detect_layout(
    self,
    path: str | os.PathLike,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
  ) -> Layout:
    path = parts.first(path)
    head = text.read_head(path)
    lines = [line for line in head if line]  # (blank lines are bad rows, not another format)
    if lines and not any(line.count(b"\t") + 1 in sniff.CRITEO_TOKENS for line in lines):
      got = first_record(head).count(b"\t") + 1
      raise DataError(
        f"{path}: not Criteo TSV, whose rows have 40 tab-separated fields (label, I1..I13, "
        f"C1..C26), or 39 without the label; its first line has {got}, and "
        + sniff.hint(head, self.name)
      )
    return layout_from_first_line(first_record(head), has_labels)

  def rows_layout(
    self,
    chunk: text.Chunk,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
    header: Sequence[str] | None = None,
    path: str = "<rows>",
  ) -> Layout:
    return layout_from_first_line(first_row(chunk), has_labels)


FORMAT = Criteo()
