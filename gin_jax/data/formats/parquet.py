"""Parquet input (`--format parquet`).

Needs pyarrow, an optional extra: `pip install 'gin-jax[parquet]'` (in a checkout,
`pip install -e '.[parquet]'`); without it, using this module raises a DataError
that says so. Scores are written to Parquet by module parquet_writer.

A dataset is one file, a directory of part files (every file under it, recursively,
except names starting with "_" or "." such as Spark's _SUCCESS and .crc files), or a
glob of files; a 0-byte part is an empty part, as for text. Its parts are read in
sorted path order, row group by row group, in record batches of at most CHUNK_ROWS
rows of the schema's columns only, so memory is bounded by one row group's column
chunks, never by the dataset.

The schema names the label, categorical, numeric and ignored columns as for csv
(schema.CsvSchema; its `separator` and `columns` apply to csv only), and every
column of the files must be named (nothing is dropped silently). Each batch becomes
a RawChunk like a chunk of text, so prepare's two passes, the vocabularies
(min-count, OOV, missing, hashing) and the Encoder are the ones text input uses.
Rows are numbered 1, 2, ... through the whole dataset in part order; that number is
a row's "line" (it decides its split; line_numbers.npy and scores hold it). A bad
row is named `file:row-group:row`, both 0-based as in pyarrow's
`ParquetFile(file).read_row_group(row_group).slice(row, 1)`.

Column types, by role (null is a missing value, like an empty text field):
- label: integers, floats or booleans equal to 0 or 1, or the strings "0" / "1".
- numeric: integers, floats, decimals, booleans, or strings in the csv number
  grammar. A float NaN is missing, like null (pandas writes missing values so);
  +-inf is a bad row.
- categorical: strings or binary (UTF-8; the empty string is missing as in text; a
  NUL byte, which would make the token keys ambiguous, is a bad row); integers and
  booleans (their decimal text is the token: 7 and "7" are one category, a boolean is
  0 or 1); floats that hold integers (pandas' integer columns with missing values;
  any other value is a bad row).
- multi_valued: lists (list or large_list) of any type a categorical column takes,
  each value read as a categorical value is: `[7.0, 12.0]` and `[7, 12]` are one
  list, `[true]` is `[1]`; 135.5 or inf is a bad row, and a NaN value is a bad row
  as a null value is (an empty list is the missing value). Lists of lists or of
  structs are refused, naming the column.
Dictionary-encoded columns are read as their values; any other type is an error
naming the column.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gin_jax.data import text, token_values
from gin_jax.data.errors import DataError
from gin_jax.data.formats import lists, parts
from gin_jax.data.formats.base import Format, Layout, RawChunk, key_names, show_token
from gin_jax.data.formats.csv import schema_columns
from gin_jax.data.formats.schema import CsvSchema

CHUNK_ROWS = 1 << 16  # Rows per record batch (a text chunk holds ~30k Criteo lines).
INSTALL = "pip install 'gin-jax[parquet]' (in a checkout: pip install -e '.[parquet]')"


def pyarrow_modules():
  """(pyarrow, pyarrow.compute, pyarrow.parquet); a DataError naming the extra if absent."""
  try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
  except ImportError:
    raise DataError(f"Parquet needs pyarrow, an optional dependency: {INSTALL}") from None
  return pa, pc, pq


# ------------------------------------------------------------------ the dataset


def part_files(path: str | os.PathLike) -> list[str]:
  """The files of a Parquet dataset (a file, a directory or a glob), in reading order.

  Raises DataError when nothing matches.
  """
  return parts.part_files(path, "Parquet files")


def _nonempty(path: str | os.PathLike) -> list[str]:
  """part_files without 0-byte files (an empty part, as of text); DataError if all are."""
  files = part_files(path)
  nonempty = [f for f in files if os.path.getsize(f) > 0]
  if not nonempty:
    raise DataError(f"{files[0]}: empty file")
  return nonempty


def fingerprint(path: str | os.PathLike) -> dict:
  """What prepare's cache key hashes: total size, newest mtime and every part's stat."""
  return parts.fingerprint(path, "Parquet files", list_one=True)


def _open(pq, path: str):
  try:
    # Pages written with checksums are verified as they are read: a flipped byte in
    # one is a bad row group (file:row-group: ...), never a silently wrong value.
    return pq.ParquetFile(path, page_checksum_verification=True)
  except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
    raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None


_ROLES = {  # Role -> (allowed kinds, how errors list them).
  "label": ({"int", "float", "bool", "string"}, "integers, floats, booleans or strings"),
  "numeric": (
    {"int", "float", "bool", "decimal", "string"},
    "integers, floats, decimals, booleans or strings",
  ),
  "categorical": (
    {"int", "float", "bool", "string"},
    "strings, binary, integers, booleans or floats holding integers",
  ),
}


def _kind(pa, t) -> str | None:
  """The kind of an Arrow type that decides how a column is read (None: unsupported)."""
  if pa.types.is_dictionary(t):
    t = t.value_type
  checks = [
    ("bool", pa.types.is_boolean),
    ("int", pa.types.is_integer),
    ("float", pa.types.is_floating),
    ("decimal", pa.types.is_decimal),
    ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    ("string", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    ("string", getattr(pa.types, "is_string_view", lambda t: False)),
    ("string", getattr(pa.types, "is_binary_view", lambda t: False)),
  ]
  return next((kind for kind, check in checks if check(t)), None)


def detect_layout(
  path: str | os.PathLike, schema: CsvSchema | None, has_labels: bool | None = None
) -> Layout:
  """The layout of a Parquet dataset under a schema, from its files' footers.

  Args:
    path: a file, a directory of part files or a glob.
    schema: names the label, categorical, numeric and ignored columns.
    has_labels: None: the rows have labels when the files have the label column.

  Returns:
    The Layout (format "parquet"; header: the columns of the files). Raises DataError
    for a missing schema, columns the schema does not name, parts whose columns
    differ, or a column whose type its role cannot take.
  """
  pa, _, pq = pyarrow_modules()
  if schema is None:
    raise DataError(f"{path}: parquet input needs a schema file (--schema)")
  if schema.columns or schema.separator != ",":
    raise DataError(f"{path}: the schema's 'separator' and 'columns' apply to csv only")
  files = _nonempty(path)
  first, layout = None, None
  for f in files:
    arrow = _open(pq, f).schema_arrow
    if first is None:
      first = arrow.names
      columns, label = schema_columns(schema, first, f, has_labels, "columns")
      layout = Layout(Parquet.name, b"", (), label, columns, header=tuple(first))
    elif sorted(arrow.names) != sorted(first):
      raise DataError(f"{f}: columns {arrow.names} differ from those of {files[0]}: {first}")
    roles = [(c.name, c.kind) for c in layout.columns]
    if layout.has_labels:
      roles.append((schema.label, "label"))
    for name, role in roles:
      t = arrow.field(name).type
      if role == "multi_valued":
        value_type = lists.list_value_type(pa, t, f, name)
        if _kind(pa, value_type) not in _ROLES["categorical"][0]:  # its values are categories
          raise DataError(
            f"{f}: column {name!r} has type {t}: a list of {value_type}, which is not "
            f"supported; multi_valued columns take {lists.LIST_TYPES}"
          )
        continue
      allowed, words = _ROLES[role]
      if _kind(pa, t) not in allowed:
        raise DataError(f"{f}: column {name!r} has type {t}; {role} columns take {words}")
  return layout


@dataclasses.dataclass(frozen=True)
class Chunk:
  """At most CHUNK_ROWS consecutive rows of one row group of one part file."""

  batch: object  # pyarrow.RecordBatch of the layout's columns.
  path: str  # The part file.
  row_group: int  # 0-based row group in the file.
  first_row: int  # 0-based row within the row group of the batch's first row.
  first_line: int  # 1-based row number in the dataset of the batch's first row.


def _read_columns(layout: Layout) -> list[str]:
  names = [c.name for c in layout.columns]
  return names + [layout.header[layout.label_token]] if layout.has_labels else names


def iter_chunks(
  path: str | os.PathLike,
  layout: Layout,
  *,
  chunk_rows: int | None = None,
  on_progress: Callable[[int], None] | None = None,
) -> Iterator[Chunk]:
  """Streams a Parquet dataset's rows as Chunks, in part, row-group and row order.

  Args:
    path: a file, a directory of part files or a glob (see part_files).
    layout: from detect_layout.
    chunk_rows: rows per chunk (default CHUNK_ROWS).
    on_progress: called with (an estimate of) the on-disk bytes consumed.

  Returns:
    An iterator of Chunk. Raises DataError naming `file:row-group` for unreadable data.
  """
  pa, _, pq = pyarrow_modules()
  columns = _read_columns(layout)
  line = 1
  for f in _nonempty(path):
    pf = _open(pq, f)
    meta = pf.metadata
    for g in range(meta.num_row_groups):
      group = meta.row_group(g)
      size = sum(group.column(j).total_compressed_size for j in range(group.num_columns))
      first = 0
      batches = pf.iter_batches(chunk_rows or CHUNK_ROWS, row_groups=[g], columns=columns)
      while True:
        try:
          batch = next(batches)
        except StopIteration:
          break
        except (OSError, pa.ArrowException) as e:
          raise DataError(f"{f}:{g}: cannot read the row group ({e})") from None
        yield Chunk(batch, f, g, first, line + first)
        first += batch.num_rows
        if on_progress:
          on_progress(size * batch.num_rows // max(group.num_rows, 1))
      line += group.num_rows


# ------------------------------------------------------------------ parsing


def parse_chunk(chunk: Chunk, layout: Layout) -> tuple[RawChunk, list[tuple[int, str, str]]]:
  """Converts and validates a chunk's columns, like parse_chunk of the text formats.

  Args:
    chunk: from iter_chunks.
    layout: the dataset's layout.

  Returns:
    (the good rows, [(line, reason, "file:row-group:row")] for every bad row).
  """
  pa, pc, _ = pyarrow_modules()
  batch = chunk.batch
  n = batch.num_rows
  lines = np.arange(chunk.first_line, chunk.first_line + n, dtype=np.int64)
  row_bad: dict[int, str] = {}  # Row -> the first reason it is bad.
  labels = np.full(n, np.nan, np.float32)
  if layout.has_labels:
    label = _column(pa, batch, layout.header[layout.label_token])
    labels = _labels(pa, label, lines, row_bad)
  categorical = [c.name for c in layout.columns if c.kind == "categorical"]
  numeric = [c.name for c in layout.columns if c.kind == "numeric"]
  keys = np.zeros((n, len(categorical)), np.uint64)
  long_tokens = {}
  for j, name in enumerate(categorical):
    keys[:, j], longs = _category_keys(pa, pc, _column(pa, batch, name), name, lines, row_bad)
    long_tokens.update({(r, j): token for r, token in longs.items()})
  truncated, list_values = {}, {}
  for col in (c for c in layout.columns if c.kind == "multi_valued"):
    values = lists.arrow_lists(pa, pc, _column(pa, batch, col.name), col.name, row_bad)
    list_values[col.name], truncated[col.name], bad_lists = lists.list_keys(values, col)
    for r, reason in bad_lists.items():
      row_bad.setdefault(r, reason)
  numbers = np.zeros((n, len(numeric)))
  for j, name in enumerate(numeric):
    numbers[:, j] = _numbers(pa, _column(pa, batch, name), name, lines, row_bad)
  raw = RawChunk(
    lines, labels, key_names(layout.columns), keys, long_tokens, tuple(numeric), numbers,
    truncated=truncated, lists=list_values,
  )  # fmt: skip
  if not row_bad:
    return raw, []
  keep = np.ones(n, bool)
  keep[list(row_bad)] = False
  where = f"{chunk.path}:{chunk.row_group}"
  bad = [(int(lines[r]), why, f"{where}:{chunk.first_row + r}") for r, why in row_bad.items()]
  return raw.take(keep), bad


def _column(pa, batch, name: str):
  """A column as a plain (not dictionary-encoded, not view) array."""
  arr = batch.column(name)
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  if getattr(pa.types, "is_string_view", lambda t: False)(arr.type):
    arr = arr.cast(pa.large_string())
  if getattr(pa.types, "is_binary_view", lambda t: False)(arr.type):
    arr = arr.cast(pa.large_binary())
  return arr


def _is_text(pa, arr) -> bool:
  t = arr.type
  return (
    pa.types.is_string(t)
    or pa.types.is_large_string(t)
    or pa.types.is_binary(t)
    or pa.types.is_large_binary(t)
  )


def _tokens(pa, arr, lines: np.ndarray) -> text.Tokens:
  """The values of a string/binary array as one token column (null: the empty token)."""
  large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
  _, offsets_buf, data_buf = arr.buffers()
  offsets = np.frombuffer(offsets_buf, np.int64 if large else np.int32)
  offsets = offsets[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
  base, end = int(offsets[0]), int(offsets[-1])
  data = memoryview(data_buf)[base:end] if data_buf is not None else b""
  valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
  return text.column_tokens(data, offsets - base, lines, valid)


def _show_value(arr, r: int, tokens: text.Tokens | None = None) -> str:
  """A value for an error message: null, a number, or a token (its bytes from `tokens`)."""
  if not arr[int(r)].is_valid:
    return "null"
  if tokens is not None:
    return show_token(tokens.token(int(r), 0))
  return repr(arr[int(r)].as_py())


def _floats(pa, arr) -> np.ndarray:
  """float64 values of a numeric/boolean array; NaN where null."""
  return arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def _labels(pa, arr, lines: np.ndarray, row_bad: dict[int, str]) -> np.ndarray:
  tokens = None
  if _is_text(pa, arr):
    tokens = _tokens(pa, arr, lines)
    labels, bad = token_values.parse_binary_labels(tokens, 0)  # A null is the token b"": bad.
  else:
    x = _floats(pa, arr)
    labels = (x == 1).astype(np.float32)
    bad = np.flatnonzero((x != 0) & (x != 1))  # NaN (null) included.
  for r in bad:
    row_bad.setdefault(int(r), f"label {_show_value(arr, r, tokens)} not in {{0, 1}}")
  return labels


def _numbers(pa, arr, name: str, lines: np.ndarray, row_bad: dict[int, str]) -> np.ndarray:
  if _is_text(pa, arr):
    x, bad = token_values.parse_numbers(_tokens(pa, arr, lines), [0], integers_only=False)
    for r, _, token in bad:
      row_bad.setdefault(r, f"{name}: {show_token(token)} is not a number")
    return x[:, 0]
  x = _floats(pa, arr)
  for r in np.flatnonzero(np.isinf(x)):
    row_bad.setdefault(int(r), f"{name}: {_show_value(arr, r)} is not a finite number")
  return x  # NaN, null or float NaN, is missing.


def _category_keys(pa, pc, arr, name: str, lines: np.ndarray, row_bad: dict[int, str]):
  """(uint64 [n] token keys (text.short_keys), {row: token} of tokens over 8 bytes)."""
  if pa.types.is_floating(arr.type):
    x = arr.to_numpy(zero_copy_only=False)
    whole = np.isfinite(x) & (x == np.trunc(x))
    for r in np.flatnonzero(~whole & ~np.isnan(x)):
      row_bad.setdefault(int(r), f"{name}: {_show_value(arr, r)} is not an integer category")
    arr = pa.array(np.where(whole, x, 0).astype(np.int64), mask=~whole)
  if pa.types.is_boolean(arr.type):
    arr = arr.cast(pa.int8())
  if not _is_text(pa, arr):  # Integers: their decimal text is the token.
    arr = pc.cast(arr, pa.string())
  tokens = _tokens(pa, arr, lines)
  _check_bytes(pa, arr, tokens, name, row_bad)
  keys, longs = text.short_keys(tokens, [0])
  return keys[:, 0], {r: tokens.token(r, 0) for r, _ in longs}


def _check_bytes(pa, arr, tokens: text.Tokens, name: str, row_bad: dict[int, str]) -> None:
  """Marks tokens with a NUL byte or invalid UTF-8 bad (text rejects both too)."""
  u8 = np.frombuffer(tokens.data, np.uint8)
  nul, high = u8 == 0, u8 >= 0x80
  if not nul.any() and not high.any():
    return
  if not nul.any():
    try:  # Validates all of it in C++; rows are looked at one by one only if needed.
      arr.cast(pa.binary()).cast(pa.string())
      return
    except pa.ArrowInvalid:
      pass
  ends = tokens.starts[:, 0] + tokens.lens[:, 0]
  for r in np.unique(np.searchsorted(ends, np.flatnonzero(nul | high), side="right")):
    token = tokens.token(int(r), 0)
    at = token.find(b"\0")
    if at >= 0:
      row_bad.setdefault(int(r), f"{name}: NUL byte at byte {at + 1}")
      continue
    try:
      token.decode("utf-8")
    except UnicodeDecodeError as e:
      row_bad.setdefault(
        int(r), f"{name}: invalid UTF-8 byte 0x{token[e.start]:02x} at byte {e.start + 1}"
      )


# ------------------------------------------------------------------ the format


_NO_ROWS = "<rows>: rows of a Parquet dataset are scored from files (encode_file)"


class Parquet(Format):
  """Parquet datasets (a file, a directory of part files or a glob) read by pyarrow."""

  name = "parquet"
  needs_schema = True

  def fingerprint(self, path: str) -> dict:
    return fingerprint(path)

  def detect_layout(
    self,
    path: str | os.PathLike,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
  ) -> Layout:
    return detect_layout(path, schema, has_labels)

  def rows_chunk(self, rows: Sequence[str]):
    raise DataError(_NO_ROWS)

  def rows_layout(
    self,
    chunk,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
    header: Sequence[str] | None = None,
    path: str = "<rows>",
  ) -> Layout:
    raise DataError(_NO_ROWS)  # Not reached: rows_chunk refuses first.

  def iter_chunks(
    self,
    path: str | os.PathLike,
    layout: Layout,
    *,
    on_progress: Callable[[int], None] | None = None,
    chunk_bytes: int | None = None,
  ) -> Iterator[Chunk]:
    return iter_chunks(path, layout, on_progress=on_progress)

  def last_line(self, path: str | os.PathLike, layout: Layout, on_progress=None) -> int:
    """The dataset's row count (a row's "line" is its row number), from the footers."""
    _, _, pq = pyarrow_modules()
    return sum(_open(pq, f).metadata.num_rows for f in _nonempty(path))

  def parse_chunk(self, chunk: Chunk, layout: Layout) -> tuple[RawChunk, list[tuple]]:
    return parse_chunk(chunk, layout)


FORMAT = Parquet()
