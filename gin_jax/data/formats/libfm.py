"""libfm/libsvm: `label idx:val idx:val ...` separated by single spaces.

Trailing spaces are stripped, like CR. Field k is the k-th pair of the row, `idx` its
category (an integer in [0, LIBFM_INDEX_LIMIT)), `val` its value multiplier. Labels
0/1 or -1/+1 (-1 means 0). A file whose first token has a ':' has no labels.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from gin_jax.data import text, token_values
from gin_jax.data.errors import DataError
from gin_jax.data.formats import parts, sniff
from gin_jax.data.formats.base import Column, Layout, show_token
from gin_jax.data.formats.delimited import DelimitedText, first_record, first_row
from gin_jax.data.formats.schema import CsvSchema

# libfm indices are categories too, but must read as integers in [0, this limit).
LIBFM_INDEX_LIMIT = 2**31 - 1


def libfm_layout(num_fields: int, has_labels: bool = True) -> Layout:
  """libfm: [label] then num_fields `idx:val` pairs; field k = the k-th pair."""
  first = 1 if has_labels else 0
  kinds = [32] * first
  for _ in range(num_fields):
    kinds += [58, 32]
  kinds[-1] = 10
  columns = tuple(
    Column(f"f{k}", "categorical", first + 2 * k, first + 2 * k + 1) for k in range(num_fields)
  )
  return Layout(Libfm.name, b" :", tuple(kinds), 0 if has_labels else None, columns)


def layout_from_first_line(
  first_line: bytes,
  has_labels: bool | None = None,
  num_fields: int | None = None,
  *,
  row_tokens: int | None = None,
  path: str = "<rows>",
) -> Layout:
  """The layout of rows like first_line: rows whose first token has a ':' have no label.

  Args:
    first_line: the first row, without its line end.
    has_labels: None: decide from first_line.
    num_fields: the number of `idx:val` fields (None: from row_tokens).
    row_tokens: with num_fields None: the tokens of a typical row, label included
      (default: first_line's).
    path: names the input in errors.
  """
  if has_labels is None:
    has_labels = b":" not in first_line.split(b" ")[0]
  if num_fields is None:
    if row_tokens is None:
      row_tokens = len(first_line.rstrip(b" ").split(b" "))
    num_fields = row_tokens - (1 if has_labels else 0)
    if num_fields < 1:
      raise DataError(f"{path}: no 'idx:val' fields in the first lines")
  return libfm_layout(num_fields, has_labels)


class Libfm(DelimitedText):
  """libfm/libsvm rows of `idx:val` pairs, one field per pair position."""

  name = "libfm"
  parse_labels = staticmethod(token_values.parse_pm1_labels)
  label_values = "{0, 1} or {-1, +1}"

  def detect_layout(
    self,
    path: str | os.PathLike,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
  ) -> Layout:
    """num_fields None: the most common field count in the first lines."""
    path = parts.first(path)
    head = text.read_head(path)
    if not any(b":" in line for line in head):
      raise DataError(
        f"{path}: no 'idx:val' fields in the first lines (libfm rows are `label idx:val "
        f"idx:val ...`); {sniff.hint(head, self.name)}"
      )
    row_tokens = None
    if num_fields is None:
      counts = collections.Counter(len(line.rstrip(b" ").split(b" ")) for line in head if line)
      row_tokens = counts.most_common(1)[0][0] if counts else 0
    return layout_from_first_line(
      first_record(head), has_labels, num_fields, row_tokens=row_tokens, path=path
    )

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
    return layout_from_first_line(first_row(chunk), has_labels, num_fields, path=path)

  def normalize(self, chunk: text.Chunk) -> text.Chunk:
    """Strips trailing spaces, like CR."""
    if b" \n" not in chunk.data:
      return chunk
    data = chunk.data
    while b" \n" in data:
      data = data.replace(b" \n", b"\n")
    return dataclasses.replace(chunk, data=data)

  def describe(self, layout: Layout) -> Callable[[bytes], str]:
    nf = len(layout.columns)
    what = ("a label and " if layout.has_labels else "") + f"{nf} 'idx:val' field(s)"

    def describe(line: bytes) -> str:
      reason = text.describe_line(line, b" ", 0, "")
      if not reason.startswith("expected"):
        return reason
      return f"expected {what} separated by single spaces"

    return describe

  def _values(self, tokens, categorical: list[Column], row_bad) -> np.ndarray:
    """The value multipliers; an empty index or value makes the row bad."""
    for r, j in zip(*np.nonzero(tokens.lens[:, [c.token for c in categorical]] == 0)):
      row_bad.setdefault(int(r), f"{categorical[j].name}: empty feature index")
    cols = [c.value_token for c in categorical]
    values, bad = token_values.parse_numbers(tokens, cols, False)
    for r, j in zip(*np.nonzero(np.isnan(values))):
      row_bad.setdefault(int(r), f"{categorical[j].name}: empty value")
    for r, j, tok in bad:
      row_bad.setdefault(r, f"{categorical[j].name}: value {show_token(tok)} is not a number")
    return values.astype(np.float32)

  def _check_categories(self, tokens, layout: Layout, categorical: list[Column], row_bad) -> None:
    """Also: indices that are not integers in [0, LIBFM_INDEX_LIMIT) make rows bad."""
    super()._check_categories(tokens, layout, categorical, row_bad)
    if not categorical:
      return
    cols = [c.token for c in categorical]
    index, bad = token_values.parse_numbers(tokens, cols, integers_only=True)
    for r, j, tok in bad:
      row_bad.setdefault(r, f"{categorical[j].name}: index {show_token(tok)} is not an integer")
    out = np.signbit(index) | (index >= LIBFM_INDEX_LIMIT)  # NaN (empty) compares False
    for r, j in zip(*np.nonzero(out)):
      tok = show_token(tokens.token(r, cols[j]))
      row_bad.setdefault(
        int(r), f"{categorical[j].name}: index {tok} is not in [0, {LIBFM_INDEX_LIMIT})"
      )


FORMAT = Libfm()
