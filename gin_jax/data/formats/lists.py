"""Multi-valued (list) columns: each row's values as keys (the last max_values of them).

A csv list is one token, its values joined by the column's separator; a Parquet
list column (of strings, binary, integers, booleans or floats holding integers:
LIST_TYPES) holds them as an Arrow list array. Both come to `list_keys`, so the
same rows give the same keys whatever the format.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gin_jax.data import text
from gin_jax.data.errors import DataError
from gin_jax.data.formats.base import MAX_CATEGORY_BYTES, Column, ListValues, show_token


def list_keys(tokens: Sequence[bytes | None], column: Column, separator: bytes | None = None):
  """The value keys of one multi-valued column's raw lists.

  Args:
    tokens: each row's list as one token (csv: the values joined by the column's
      separator; b"" or None: an empty list, a missing value), or as a list of
      values (Parquet list columns) when `separator` is None and the token is a list.
    column: the multi-valued column (its name, separator and max_values).

  Returns:
    (ListValues: the LAST max_values values of each row, and no more (the keys
    of values over 8 bytes are LONG_KEY, the values kept aside); rows truncated;
    {row: reason} for bad rows (their lists are left empty): an empty value or
    one over MAX_CATEGORY_BYTES).
  """
  k = column.max_values
  sep = column.separator.encode() if separator is None else separator
  lengths = np.zeros(len(tokens), np.int64)
  flat: list[bytes] = []  # the values kept, row after row (b"" for a long one)
  longs, bad, truncated = {}, {}, 0
  for r, tok in enumerate(tokens):
    if not tok:
      continue
    values = tok.split(sep) if isinstance(tok, bytes) else list(tok)
    if any(not v for v in values):
      bad[r] = f"{column.name}: an empty value in the list {show_token(_joined(tok, sep))}"
      continue
    over = next((v for v in values if len(v) > MAX_CATEGORY_BYTES), None)
    if over is not None:
      bad[r] = f"{column.name}: a value of {len(over)} bytes (the limit is {MAX_CATEGORY_BYTES})"
      continue
    if len(values) > k:
      truncated += 1
      values = values[-k:]
    for v in values:
      if len(v) > 8:
        longs[len(flat)] = v
        v = b""
      flat.append(v)
    lengths[r] = len(values)
  keys = text.bytes_to_keys(flat)
  keys[list(longs)] = text.LONG_KEY
  offsets = np.zeros(len(tokens) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return ListValues(offsets, keys, longs), truncated, bad


def _joined(tok, sep: bytes) -> bytes:
  return tok if isinstance(tok, bytes) else sep.join(tok)


def list_value_type(pa, t, path: str, name: str):
  """The value type of a list column (multi_valued), or DataError if it is no list."""
  if pa.types.is_list(t) or pa.types.is_large_list(t):
    return t.value_type
  raise DataError(
    f"{path}: column {name!r} has type {t}; a multi_valued column is a list column ({LIST_TYPES})"
  )


LIST_TYPES = "lists of strings, binary, integers, booleans or floats holding integers"


def arrow_lists(pa, pc, arr, name: str, row_bad: dict[int, str]) -> list:
  """Each row's list as a list of value tokens (None for a null list); bad rows marked.

  Values are read as a categorical column's single values are: integers become
  their decimal text, as a CSV list's would, booleans 0 or 1, floats must hold
  integers (another float is a bad row; NaN is a missing value, so a bad row as a
  null value is); a null value or a value with a NUL byte or invalid UTF-8 makes
  the row bad.
  """
  flat = arr.flatten()  # the values of the non-null lists, in order
  offsets = arr.offsets.to_numpy()[: len(arr) + 1]
  offsets = offsets - offsets[0]
  if pa.types.is_floating(flat.type) or pa.types.is_boolean(flat.type):
    flat = _whole_numbers(pa, flat, np.repeat(np.arange(len(arr)), np.diff(offsets)), name, row_bad)
  if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)
          or pa.types.is_binary(flat.type) or pa.types.is_large_binary(flat.type)):  # fmt: skip
    flat = pc.cast(flat, pa.string())
  values = flat.to_pylist()
  out = []
  for r in range(len(arr)):
    if not arr[r].is_valid:
      out.append(None)
      continue
    row = values[offsets[r] : offsets[r + 1]]
    if any(v is None for v in row):
      row_bad.setdefault(r, f"{name}: a null value in the list")
      row = []
    row = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in row]
    for v in row:
      at = v.find(b"\0")
      if at >= 0:
        row_bad.setdefault(r, f"{name}: NUL byte at byte {at + 1}")
      try:
        v.decode("utf-8")
      except UnicodeDecodeError as e:
        row_bad.setdefault(
          r, f"{name}: invalid UTF-8 byte 0x{v[e.start]:02x} at byte {e.start + 1}"
        )
    out.append(row)
  return out


def _whole_numbers(pa, flat, rows: np.ndarray, name: str, row_bad: dict[int, str]):
  """Float or boolean list values as int64 (null where NaN or null); bad rows marked.

  rows: the row of each value.
  """
  if pa.types.is_boolean(flat.type):
    return flat.cast(pa.int8())
  x = flat.to_numpy(zero_copy_only=False)  # null: NaN
  whole = np.isfinite(x) & (x == np.trunc(x))
  nan = np.isnan(x) & flat.is_valid().to_numpy(zero_copy_only=False)
  for k in np.flatnonzero(nan | ~(whole | np.isnan(x))):  # (the caller marks null values)
    why = "a NaN value in the list" if nan[k] else f"{float(x[k])!r} is not an integer category"
    row_bad.setdefault(int(rows[k]), f"{name}: {why}")
  return pa.array(np.where(whole, x, 0).astype(np.int64), mask=~whole)
