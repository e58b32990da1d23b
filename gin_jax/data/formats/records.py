"""Records held in memory (online serving): columns of JSON values -> a RawChunk.

A request's values arrive as Python objects, column by column. Each column becomes
the tokens a file of the dataset would hold, and from there the key, number, list
and libfm rules of the file formats and the dataset's Encoder (module encode) apply
unchanged: a record scores as the same row written to a file does. A column costs
one join and a few numpy passes, not a Python step per value, when its values are
all strings, integers or numbers (the common case); mixed columns take a slower
path that checks each value.

What a value may be, by field kind (null, or an absent field, is a missing value):
- categorical: a string (the empty string is missing, as an empty text field; a NUL
  byte, invalid Unicode or more than MAX_CATEGORY_BYTES bytes is bad); an integer
  (its decimal text: 7 and "7" are one category); a boolean (1 / 0) or a float
  holding an integer (that integer), as in Parquet columns; a float NaN is missing.
  Any other value is bad. libfm fields: the category is the feature index `idx`
  (an integer in [0, LIBFM_INDEX_LIMIT), or its text) and "idx:val" also gives the
  value multiplier (default 1), as a libfm file's `idx:val` pair.
- numeric: a number (criteo: an integer, as in its files; a float NaN is missing,
  +-inf is bad), a boolean (1 / 0), or a string in the number grammar of the
  dataset's format.
- multi_valued: a list of categories (as above, without null), or one string of
  values joined by the column's separator (as in a csv file; a column read from
  Parquet lists has none, so the string is one value); [] is missing. Lists longer
  than the field's max_values keep their last values, as in training.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from gin_jax.data import text, token_values
from gin_jax.data.formats.base import (
  MAX_CATEGORY_BYTES,
  Column,
  Layout,
  RawChunk,
  key_names,
  show_token,
)
from gin_jax.data.formats.libfm import LIBFM_INDEX_LIMIT
from gin_jax.data.formats.lists import list_keys

_FAST_CATEGORIES = {str, int, type(None)}  # Column value types taken without a check each.
_FAST_NUMBERS = {int, float, bool, type(None)}  # np.array takes them: None is NaN, bools 1 / 0.


def parse_records(
  columns: Mapping[str, Sequence], rows: int, layout: Layout
) -> tuple[RawChunk, dict[int, str]]:
  """Parses columns of in-memory values like a chunk of the dataset's file.

  Args:
    columns: field name -> its `rows` values (Python objects, as JSON decodes them),
      or None when no record has the field (all missing). Every field of `layout`
      is a key.
    rows: the number of records.
    layout: the dataset's layout (records_layout): its columns and format.

  Returns:
    (a RawChunk of ALL rows, bad ones included, with lines 0..rows-1;
    {row: reason} of the bad rows, the reason naming the field).
  """
  bad: dict[int, str] = {}
  lines = np.arange(rows, dtype=np.int64)
  categorical = [c for c in layout.columns if c.kind == "categorical"]
  numeric = [c for c in layout.columns if c.kind == "numeric"]
  libfm = layout.format == "libfm"
  values = None
  at = [j for j, c in enumerate(categorical) if columns[c.name] is not None]
  given = [categorical[j] for j in at]
  if libfm:
    texts, given_values = _libfm_pairs(given, columns, bad)
    values = np.ones((rows, len(categorical)), np.float32)
    values[:, at] = given_values
  else:
    texts = [columns[c.name] for c in given]
  keys = np.zeros((rows, len(categorical)), np.uint64)  # 0: the missing key
  given_keys, longs = _category_keys(texts, given, rows, bad, libfm)
  keys[:, at] = given_keys
  long_tokens = {(r, at[j]): t for (r, j), t in longs.items()}
  truncated, list_values = {}, {}
  for c in (c for c in layout.columns if c.kind == "multi_valued"):
    tokens = _list_tokens(columns[c.name] or [None] * rows, c, bad)
    shown = (c.separator or ",").encode()  # Joins a list's values in error messages.
    list_values[c.name], truncated[c.name], bad_lists = list_keys(tokens, c, shown)
    for r, reason in bad_lists.items():
      bad.setdefault(r, reason)
  numbers = _numbers([columns[c.name] for c in numeric], numeric, rows, layout.format, bad)
  raw = RawChunk(
    lines=lines,
    labels=np.full(rows, np.nan, np.float32),
    cat_names=key_names(layout.columns),
    keys=keys,
    long_tokens=long_tokens,
    num_names=tuple(c.name for c in numeric),
    numbers=numbers,
    values=values,
    truncated=truncated,
    lists=list_values,
  )
  return raw, bad


# ------------------------------------------------------------------ categories


def _show(v) -> str:
  s = repr(v)
  return s if len(s) <= 40 else s[:37] + "..."


def _category_texts(values: Sequence, name: str, bad: dict[int, str]) -> Sequence[str]:
  """Each value's token text ("" for missing); bad values marked and made missing."""
  kinds = set(map(type, values))
  if kinds <= _FAST_CATEGORIES:
    if type(None) in kinds:
      values = [v if v is not None else "" for v in values]
    return values if kinds <= {str, type(None)} else list(map(str, values))
  out = []
  for r, v in enumerate(values):
    if v is None:
      out.append("")
    elif isinstance(v, bool):
      out.append("1" if v else "0")
    elif isinstance(v, str | int):
      out.append(str(v) if not isinstance(v, str) else v)
    elif isinstance(v, float) and (math.isnan(v) or v.is_integer()):
      out.append("" if math.isnan(v) else str(int(v)))
    else:
      bad.setdefault(r, f"{name}: {_show(v)} is not a category (a string or an integer)")
      out.append("")
  return out


def _encode(texts: list[Sequence], rows: int, names: list[str], bad: dict[int, str]) -> bytes:
  """The values of every column as NUL-joined UTF-8 (bad values marked and made empty).

  Strings (the common case) are joined at once; strings, integers and nulls are
  turned into text in one pass over all columns; other values go through
  _category_texts column by column.
  """
  flat = list(itertools.chain.from_iterable(texts))
  for attempt in range(3):
    try:
      data = "\0".join(flat).encode("utf-8")
    except TypeError:  # not all strings: nulls made empty, then integers made text
      if attempt == 0:
        flat = ["" if v is None else v for v in flat]
        continue
      if attempt == 1 and set(map(type, flat)) <= _FAST_CATEGORIES:
        flat = list(map(str, flat))
        continue
      break
    except UnicodeEncodeError:
      break
    if data.count(0) == len(flat) - 1 or not flat:
      return data
    break
  texts = [list(_category_texts(col, name, bad)) for name, col in zip(names, texts)]
  for name, col in zip(names, texts):  # Find the strings at fault.
    for r, s in enumerate(col):
      if "\0" in s:
        bad.setdefault(r, f"{name}: NUL byte at character {s.index(chr(0)) + 1}")
        col[r] = ""
      elif not s.isascii():
        try:
          s.encode("utf-8")
        except UnicodeEncodeError as e:
          bad.setdefault(r, f"{name}: invalid Unicode at character {e.start + 1}")
          col[r] = ""
  return "\0".join(itertools.chain.from_iterable(texts)).encode("utf-8")


def _category_keys(texts, columns: list[Column], rows: int, bad: dict[int, str], libfm: bool):
  """(keys uint64 [rows, len(columns)], {(row, j): token} of tokens over 8 bytes)."""
  if not columns:
    return np.zeros((rows, 0), np.uint64), {}
  names = [c.name for c in columns]
  data = _encode(texts, rows, names, bad)
  tokens = text.nul_joined_tokens(data, rows, len(columns), np.arange(rows, dtype=np.int64))
  for r, j in zip(*np.nonzero(tokens.lens > MAX_CATEGORY_BYTES)):
    bad.setdefault(
      int(r),
      f"{names[j]}: a category of {int(tokens.lens[r, j])} bytes "
      f"(the limit is {MAX_CATEGORY_BYTES})",
    )
  if libfm:
    _check_libfm_indices(tokens, names, bad)
  cols = list(range(len(columns)))
  keys, longs = text.short_keys(tokens, cols)
  return keys, {(r, j): tokens.token(r, j) for r, j in longs}


def _libfm_pairs(columns: list[Column], values: Mapping[str, Sequence], bad: dict[int, str]):
  """libfm fields: (index texts per field, value multipliers float32 [rows, fields])."""
  texts, multipliers = [], []
  for c in columns:
    index, value = [], []
    for v in values[c.name]:
      if isinstance(v, str) and ":" in v:
        i, _, m = v.partition(":")
        index.append(i)
        value.append(m)
      else:
        index.append(v)
        value.append("1")
    texts.append(_category_texts(index, c.name, bad))
    multipliers.append(value)
  rows = len(texts[0]) if texts else 0
  if not texts:
    return texts, np.ones((rows, 0), np.float32)
  data = _encode([list(m) for m in multipliers], rows, [c.name for c in columns], bad)
  tokens = text.nul_joined_tokens(data, rows, len(columns), np.arange(rows, dtype=np.int64))
  x, wrong = token_values.parse_numbers(tokens, list(range(len(columns))), False)
  for r, j, tok in wrong:
    bad.setdefault(r, f"{columns[j].name}: value {show_token(tok)} is not a number")
  for r, j in zip(*np.nonzero(np.isnan(x))):
    bad.setdefault(int(r), f"{columns[j].name}: empty value")
  return texts, np.nan_to_num(x, nan=1.0).astype(np.float32)


def _check_libfm_indices(tokens: text.Tokens, names: list[str], bad: dict[int, str]) -> None:
  """A libfm index must be an integer in [0, LIBFM_INDEX_LIMIT), as in a libfm file."""
  index, wrong = token_values.parse_numbers(tokens, list(range(len(names))), integers_only=True)
  for r, j, tok in wrong:
    bad.setdefault(r, f"{names[j]}: index {show_token(tok)} is not an integer")
  for r, j in zip(*np.nonzero(np.signbit(index) | (index >= LIBFM_INDEX_LIMIT))):
    tok = show_token(tokens.token(r, j))
    bad.setdefault(int(r), f"{names[j]}: index {tok} is not in [0, {LIBFM_INDEX_LIMIT})")


# ------------------------------------------------------------------ lists


def _list_tokens(values: Sequence, column: Column, bad: dict[int, str]) -> list:
  """Each row's list as a list of UTF-8 values (None: missing), for lists.list_keys."""
  out = []
  sep = column.separator
  for r, v in enumerate(values):
    if v is None:
      out.append(None)
      continue
    if isinstance(v, str):
      v = v.split(sep) if sep and v else ([v] if v else [])
    if not isinstance(v, list | tuple):
      bad.setdefault(r, f"{column.name}: {_show(v)} is not a list of categories")
      out.append(None)
      continue
    items = []
    for x in v:
      s = _one_category(x)
      if s is None:
        bad.setdefault(r, f"{column.name}: {_show(x)} in the list is not a category")
        break
      try:
        items.append(s.encode("utf-8"))
      except UnicodeEncodeError as e:
        bad.setdefault(r, f"{column.name}: invalid Unicode at character {e.start + 1}")
        break
      if b"\0" in items[-1]:
        bad.setdefault(r, f"{column.name}: NUL byte in a value of the list")
        break
    out.append(items if len(items) == len(v) else None)
  return out


def _one_category(x) -> str | None:
  """A list value's token text; None when it is no category (null included)."""
  if isinstance(x, str):
    return x
  if isinstance(x, bool):
    return "1" if x else "0"
  if isinstance(x, int):
    return str(x)
  if isinstance(x, float) and x.is_integer():
    return str(int(x))
  return None


# ------------------------------------------------------------------ numbers


def _numbers(columns: list[Sequence], numeric: list[Column], rows: int, fmt: str, bad):
  """float64 [rows, len(numeric)] values, NaN where missing; bad values marked (and NaN)."""
  integers_only = fmt == "criteo"
  x = np.full((rows, len(numeric)), np.nan)
  given = [j for j, col in enumerate(columns) if col is not None]
  if given:
    x[:, given] = _given_numbers([columns[j] for j in given], [numeric[j] for j in given], rows,
                                 integers_only, bad)  # fmt: skip
  return x


def _given_numbers(columns, numeric: list[Column], rows: int, integers_only: bool, bad):
  """The numeric columns a request gave, [rows, len(columns)]: at once when all numbers."""
  if all(set(map(type, col)) <= _FAST_NUMBERS for col in columns):
    x = np.array(columns, np.float64).T.reshape(rows, len(numeric))
  else:
    x = np.stack(
      [_number_column(col, c.name, integers_only, bad) for col, c in zip(columns, numeric)], 1
    ).reshape(rows, len(numeric))
  if np.isinf(x).any():
    for r, j in zip(*np.nonzero(np.isinf(x))):
      bad.setdefault(int(r), f"{numeric[j].name}: {columns[j][r]!r} is not a finite number")
    x[np.isinf(x)] = np.nan
  if integers_only:
    for r, j in zip(*np.nonzero(np.isfinite(x) & (x != np.trunc(x)))):
      bad.setdefault(int(r), f"{numeric[j].name}: {_show(columns[j][r])} is not an integer")
  return x


def _number_column(values: Sequence, name: str, integers_only: bool, bad) -> np.ndarray:
  """One column with values other than numbers and null: strings parsed, others bad."""
  x = np.full(len(values), np.nan)
  texts = []
  for r, v in enumerate(values):
    if isinstance(v, str):
      texts.append((r, v))
    elif v is None or isinstance(v, int | float):
      x[r] = np.nan if v is None else float(v)
    else:
      bad.setdefault(r, f"{name}: {_show(v)} is not a number")
  if texts:
    _parse_number_texts(texts, name, integers_only, x, bad)
  return x


def _parse_number_texts(texts, name: str, integers_only: bool, x: np.ndarray, bad) -> None:
  """Numbers given as strings, in the dataset format's number grammar."""
  strs = [s for _, s in texts]
  try:
    data = "\0".join(strs).encode("utf-8")
  except UnicodeEncodeError:
    data = b""
  tokens = text.nul_joined_tokens(data, len(strs), 1, np.arange(len(strs), dtype=np.int64))
  if tokens is None or not data and len(strs) > 1:
    for r, s in texts:
      bad.setdefault(r, f"{name}: {_show(s)} is not a number")
    return
  parsed, wrong = token_values.parse_numbers(tokens, [0], integers_only=integers_only)
  rows = np.array([r for r, _ in texts])
  x[rows] = parsed[:, 0]
  kind = "an integer" if integers_only else "a number"
  for i, _, tok in wrong:
    bad.setdefault(int(rows[i]), f"{name}: {show_token(tok)} is not {kind}")
    x[rows[i]] = np.nan
