"""The input formats, described as layouts of tokens, and chunk parsing.

A Layout says which token of a row is the label and which tokens are which feature
columns. parse_chunk turns a chunk of lines into a RawChunk (labels, per-column keys
or numbers, per-row source lines) plus the list of bad rows with their reasons.

- criteo: `label \\t I1..I13 \\t C1..C26`, no header; missing = empty field. A file
  whose first line has 39 fields instead of 40 has no labels (for scoring).
- csv: a header line, then one record per line split on the schema's separator
  (default ","); missing = empty field. Quoted fields are not supported: a row with a
  '"' is a bad row rather than being split in the wrong place. Columns are matched by
  header name; a header column the schema does not name is an error unless the
  schema lists it under `ignore` (nothing is dropped silently).
- libfm/libsvm: `label idx:val idx:val ...` separated by single spaces (trailing
  spaces are stripped, like CR); field k is the k-th pair of the row, `idx` its
  category (an integer in [0, 2^31 - 1)), `val` its value multiplier. Labels 0/1
  or -1/+1 (-1 means 0). A file whose first token has a ':' has no labels.
- parquet: columns named by a schema as for csv; read by module `parquet` (optional
  pyarrow) into the same RawChunks. read_chunks and parse_chunk dispatch to it.
- Any format: a category longer than 1 KiB makes its row bad.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import yaml

from gin_jax.data import text
from gin_jax.data.errors import DataError

FORMATS = ("criteo", "csv", "libfm", "parquet")
# A category longer than this is a bad row: it would enter the vocabulary, and with
# it every checkpoint and scoring artifact (a 10 MB token is a broken file, not data).
MAX_CATEGORY_BYTES = 1024
# libfm indices are categories too, but must read as integers in [0, this limit).
LIBFM_INDEX_LIMIT = 2**31 - 1
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))


@dataclasses.dataclass(frozen=True)
class Column:
  """A feature column of the raw rows."""

  name: str
  kind: str  # "categorical" or "numeric".
  token: int  # Token index (within a row) of its category or number.
  value_token: int | None = None  # libfm: token index of its value multiplier.


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the label and the features sit among the tokens of one row."""

  format: str
  separators: bytes  # Bytes that end a token (besides b"\n").
  row_kinds: tuple[int, ...]  # The byte expected after each token of a row.
  label_token: int | None  # None: the rows carry no label (scoring input).
  columns: tuple[Column, ...]
  header_lines: int = 0  # Lines before the first record (the CSV header).
  header: tuple[str, ...] = ()  # csv: the names of all columns, in file order.

  @property
  def has_labels(self) -> bool:
    return self.label_token is not None


@dataclasses.dataclass(frozen=True)
class CsvSchema:
  """Which CSV columns are the label, categorical and numeric features.

  Loaded from YAML or JSON with the keys `label`, `categorical`, `numeric`, and the
  optional `separator` (default ","), `ignore` (columns that may appear and are
  skipped, e.g. a row id) and `columns` (the names of all columns in file order, for
  files WITHOUT a header line; then no file's first line is read as a header).
  """

  label: str
  categorical: tuple[str, ...] = ()
  numeric: tuple[str, ...] = ()
  separator: str = ","
  ignore: tuple[str, ...] = ()
  columns: tuple[str, ...] = ()

  @classmethod
  def from_dict(cls, d: dict, where: str = "schema") -> CsvSchema:
    """Validates a parsed schema file; raises DataError naming `where`."""
    if not isinstance(d, dict):
      raise DataError(f"{where}: a schema must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise DataError(f"{where}: unknown schema key(s) {unknown}; known: {sorted(known)}")
    if "label" not in d:
      raise DataError(f"{where}: the schema must name the label column")
    lists = {k: tuple(d.get(k) or ()) for k in ("categorical", "numeric", "ignore", "columns")}
    for k, v in lists.items():
      if not all(isinstance(c, str) and c for c in v):
        raise DataError(f"{where}: '{k}' must be a list of column names")
    names = [d["label"], *lists["categorical"], *lists["numeric"], *lists["ignore"]]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
      raise DataError(f"{where}: column(s) {dup} named more than once")
    cols = lists["columns"]
    if cols and (len(set(cols)) != len(cols) or sorted(cols) != sorted(names)):
      raise DataError(
        f"{where}: 'columns' must list every column named in the schema exactly once "
        f"(label, categorical, numeric, ignore); got {list(cols)}"
      )
    if not lists["categorical"] and not lists["numeric"]:
      raise DataError(f"{where}: the schema names no feature columns")
    sep = d.get("separator", ",")
    if not isinstance(sep, str) or len(sep) != 1 or sep in '\n\r"' or ord(sep) >= 128:
      raise DataError(f"{where}: separator must be one ASCII character, got {sep!r}")
    return cls(label=d["label"], separator=sep, **lists)

  @classmethod
  def load(cls, path: str | os.PathLike) -> CsvSchema:
    """Reads a .json file as JSON and anything else as YAML."""
    with open(path, encoding="utf-8") as f:
      try:
        d = json.load(f) if str(path).endswith(".json") else yaml.safe_load(f)
      except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot parse schema: {e}") from None
    return cls.from_dict(d, str(path))

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------ layouts


def criteo_layout(has_labels: bool = True) -> Layout:
  """Criteo TSV: [label] I1..I13 C1..C26."""
  first = 1 if has_labels else 0
  names = CRITEO_NUMERIC + CRITEO_CATEGORICAL
  columns = tuple(
    Column(n, "numeric" if n[0] == "I" else "categorical", first + i) for i, n in enumerate(names)
  )
  ntok = first + len(names)
  return Layout("criteo", b"\t", (9,) * (ntok - 1) + (10,), 0 if has_labels else None, columns)


def csv_layout(
  schema: CsvSchema,
  header: bytes,
  path: str,
  has_labels: bool | None = None,
  *,
  header_lines: int = 1,
  train_header: Sequence[str] | None = None,
) -> Layout:
  """The layout of a CSV file with this header line under this schema.

  Args:
    schema: the schema.
    header: the header line (or, for header-less rows, the column names joined).
    path: names the file in errors.
    has_labels: None: the rows have labels when the header has the label column.
    header_lines: lines before the first record (0 for header-less rows).
    train_header: the training file's header; a first line with its column count
      but none of its names is reported as a missing header, not as a bad header.
  """
  try:
    names = header.decode("utf-8-sig").split(schema.separator)  # -sig: drop a BOM.
  except UnicodeDecodeError:
    raise DataError(f"{path}:1: header is not valid UTF-8") from None
  if not header:
    raise DataError(f"{path}:1: empty header line")
  if (
    train_header
    and len(names) in (len(train_header), len(train_header) - 1)
    and not set(names) & set(train_header)
  ):
    raise DataError(
      f"{path}:1: the file has no header line: its first line has the training file's "
      f"{len(names)} columns but none of their names ({schema.separator.join(train_header)}). "
      "Add that header line, or list the columns in the schema ('columns:') to read "
      "header-less files"
    )
  columns, label_token = schema_columns(schema, names, f"{path}:1", has_labels)
  sep = ord(schema.separator)
  return Layout(
    "csv",
    schema.separator.encode() + b'"',
    (sep,) * (len(names) - 1) + (10,),
    label_token,
    columns,
    header_lines=header_lines,
    header=tuple(names),
  )


def schema_columns(
  schema: CsvSchema,
  names: Sequence[str],
  where: str,
  has_labels: bool | None = None,
  header: str = "header",
) -> tuple[tuple[Column, ...], int | None]:
  """Checks a file's column names against a schema (CSV header, Parquet columns).

  Every column must be named by the schema (as label, feature or ignored): nothing is
  dropped silently.

  Args:
    schema: the schema.
    names: the file's columns, in order.
    where: names the file (and line) in errors.
    has_labels: None: the rows have labels when `names` has the label column.
    header: what errors call the list of names.

  Returns:
    (the feature columns, Column.token = index in names; the label's index in names,
    None when the rows have no label). Raises DataError naming `where`.
  """
  dup = sorted({c for c in names if names.count(c) > 1})
  if dup:
    raise DataError(f"{where}: duplicate {header} column(s) {dup}")
  features = set(schema.categorical) | set(schema.numeric)
  missing = [c for c in (*schema.categorical, *schema.numeric) if c not in names]
  if missing:
    raise DataError(f"{where}: schema column(s) {missing} not in the {header} {names}")
  if has_labels is None:
    has_labels = schema.label in names
  if has_labels and schema.label not in names:
    raise DataError(f"{where}: label column {schema.label!r} not in the {header} {names}")
  known = features | set(schema.ignore) | {schema.label}
  unknown = [c for c in names if c not in known]
  if unknown:
    raise DataError(
      f"{where}: column(s) {unknown} not named in the schema "
      "(list them under 'ignore' to skip them)"
    )
  columns = tuple(
    Column(c, "categorical" if c in schema.categorical else "numeric", i)
    for i, c in enumerate(names)
    if c in features
  )
  label_token = names.index(schema.label) if has_labels else None
  return columns, label_token


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
  return Layout("libfm", b" :", tuple(kinds), 0 if has_labels else None, columns)


def detect_layout(
  fmt: str,
  path: str,
  schema: CsvSchema | None = None,
  has_labels: bool | None = None,
  num_fields: int | None = None,
  train_header: Sequence[str] | None = None,
) -> Layout:
  """Builds the layout of a file from its first lines.

  Args:
    fmt: "criteo", "csv", "libfm" or "parquet".
    path: the file (plain or gzip); parquet: a file, a directory or a glob of parts.
    schema: required for csv and parquet.
    has_labels: None: decide from the first line (see layout_from_first_line).
    num_fields: libfm: the expected number of fields (None: the most common count in
      the first lines).
    train_header: csv files other than the training file: its header, to name a
      missing header line plainly.

  Returns:
    The Layout. Raises DataError if the first line fits no layout.
  """
  if fmt == "parquet":
    from gin_jax.data import parquet  # Local: pyarrow is optional.

    return parquet.detect_layout(path, schema, has_labels)
  head = text.read_head(path)
  if fmt == "csv":
    return layout_from_first_line(
      fmt, head[0], schema, has_labels, path=path, train_header=train_header
    )
  # A bad first line must not decide the layout of the whole file: use the first
  # non-empty line (criteo, libfm labels) and the most common field count (libfm).
  first = next((line for line in head if line), b"")
  row_tokens = None
  if fmt == "libfm" and num_fields is None:
    counts = collections.Counter(len(line.rstrip(b" ").split(b" ")) for line in head if line)
    row_tokens = counts.most_common(1)[0][0] if counts else 0
  return layout_from_first_line(
    fmt, first, schema, has_labels, num_fields, row_tokens=row_tokens, path=path
  )


def layout_from_first_line(
  fmt: str,
  first_line: bytes,
  schema: CsvSchema | None = None,
  has_labels: bool | None = None,
  num_fields: int | None = None,
  *,
  header: Sequence[str] | None = None,
  row_tokens: int | None = None,
  path: str = "<rows>",
  train_header: Sequence[str] | None = None,
) -> Layout:
  """The layout of rows, deciding what is not given from their first line.

  The one place that tells labeled rows from unlabeled ones: criteo rows of 39 fields
  have no label (any other count is taken as labeled); libfm rows whose first token
  has a ':' have none; csv rows have none when their header lacks the label column.

  Args:
    fmt: "criteo", "csv" or "libfm".
    first_line: the first row, without its line end; csv without `header`: the header
      line.
    schema: required for csv.
    has_labels: None: decide from first_line.
    num_fields: libfm: the number of `idx:val` fields (None: from row_tokens).
    header: csv rows without a header line: the names of their columns, label
      included; the label is left out when the rows have none (has_labels False, or
      None and first_line has one field fewer than header). Default: the schema's
      `columns`, if it names them.
    row_tokens: libfm with num_fields None: the tokens of a typical row, label
      included (default: first_line's).
    path: names the input in errors.
    train_header: csv: the training file's header (see csv_layout).

  Returns:
    The Layout. Raises DataError if the rows fit no layout.
  """
  if fmt == "criteo":
    if has_labels is None:
      has_labels = first_line.count(b"\t") + 1 != 39
    return criteo_layout(has_labels)
  if fmt == "csv":
    if schema is None:
      raise DataError(f"{path}: csv input needs a schema file (--schema)")
    header = header or schema.columns or None
    if header is None:
      return csv_layout(schema, first_line, path, has_labels, train_header=train_header)
    names = list(header)
    ntok = first_line.count(schema.separator.encode()) + 1
    if has_labels is False or (has_labels is None and ntok == len(names) - 1):
      names.remove(schema.label)
    joined = schema.separator.join(names).encode()
    return csv_layout(schema, joined, path, has_labels, header_lines=0)
  if fmt == "libfm":
    if has_labels is None:
      has_labels = b":" not in first_line.split(b" ")[0]
    if num_fields is None:
      if row_tokens is None:
        row_tokens = len(first_line.rstrip(b" ").split(b" "))
      num_fields = row_tokens - (1 if has_labels else 0)
      if num_fields < 1:
        raise DataError(f"{path}: no 'idx:val' fields in the first lines")
    return libfm_layout(num_fields, has_labels)
  raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


# ------------------------------------------------------------------ parsing


@dataclasses.dataclass
class RawChunk:
  """The good rows of one chunk, before vocabularies are applied.

  Attributes:
    lines: int64 [n] 1-based source lines.
    labels: float32 [n] in {0, 1}; NaN when the file has no labels.
    cat_names: the categorical columns.
    keys: uint64 [n, len(cat_names)] token keys (text.short_keys; 0 = missing).
    long_tokens: {(row, j): token} for categorical tokens over 8 bytes.
    num_names: the numeric columns.
    numbers: float64 [n, len(num_names)] values, NaN when missing.
    values: libfm only: float32 [n, len(cat_names)] value multipliers, else None.
    bucketized: whether `numbers` already went through vocab.bucketize.
  """

  lines: np.ndarray
  labels: np.ndarray
  cat_names: tuple[str, ...]
  keys: np.ndarray
  long_tokens: dict[tuple[int, int], bytes]
  num_names: tuple[str, ...]
  numbers: np.ndarray
  values: np.ndarray | None = None
  bucketized: bool = False

  def __len__(self) -> int:
    return len(self.lines)

  def keys_of(self, name: str) -> np.ndarray:
    return self.keys[:, self.cat_names.index(name)]

  def long_tokens_of(self, name: str) -> dict[int, bytes]:
    j = self.cat_names.index(name)
    return {r: t for (r, jj), t in self.long_tokens.items() if jj == j}

  def numbers_of(self, name: str) -> np.ndarray:
    return self.numbers[:, self.num_names.index(name)]

  def values_of(self, name: str) -> np.ndarray | None:
    return None if self.values is None else self.values[:, self.cat_names.index(name)]

  def take(self, keep: np.ndarray) -> RawChunk:
    """The rows where the boolean mask `keep` is True."""
    new_index = np.cumsum(keep) - 1
    return dataclasses.replace(
      self,
      lines=self.lines[keep],
      labels=self.labels[keep],
      keys=self.keys[keep],
      long_tokens={(int(new_index[r]), j): t for (r, j), t in self.long_tokens.items() if keep[r]},
      numbers=self.numbers[keep],
      values=None if self.values is None else self.values[keep],
    )


def show_token(tok: bytes) -> str:
  """A token for an error message: its repr as text, shortened past 40 characters."""
  s = tok.decode("utf-8", "backslashreplace")
  return repr(s if len(s) <= 40 else s[:37] + "...")


def _describe(layout: Layout):
  if layout.format == "libfm":
    nf = len(layout.columns)
    what = ("a label and " if layout.has_labels else "") + f"{nf} 'idx:val' field(s)"

    def describe(line: bytes) -> str:
      reason = text.describe_line(line, b" ", 0, "")
      return (
        reason
        if not reason.startswith("expected")
        else (f"expected {what} separated by single spaces")
      )

    return describe
  sep = layout.separators[:1]
  name = {b"\t": "tab", b",": "comma"}.get(sep, repr(sep.decode()))
  ntok = len(layout.row_kinds)

  def describe(line: bytes) -> str:
    if layout.format == "csv" and b'"' in line:
      return "quoted fields are not supported (found '\"')"
    return text.describe_line(line, sep, ntok, name)

  return describe


def read_chunks(
  path: str | os.PathLike,
  layout: Layout,
  on_progress: Callable[[int], None] | None = None,
  chunk_bytes: int | None = None,
) -> Iterator:
  """The chunks of an input, in order: text.Chunks, or parquet.Chunks for parquet.

  Args:
    path: the input (see detect_layout).
    layout: its layout.
    on_progress: called with the number of (on-disk) bytes consumed.
    chunk_bytes: text inputs: decompressed bytes per chunk (default text.CHUNK_BYTES).
  """
  if layout.format == "parquet":
    from gin_jax.data import parquet

    return parquet.iter_chunks(path, layout, on_progress=on_progress)
  return text.iter_chunks(
    path, skip_lines=layout.header_lines, on_progress=on_progress, chunk_bytes=chunk_bytes
  )


def parse_chunk(chunk, layout: Layout) -> tuple[RawChunk, list[tuple]]:
  """Tokenises and validates a chunk of lines (or, for parquet, a parquet.Chunk).

  Args:
    chunk: whole lines of the file (a text.Chunk), or a parquet.Chunk.
    layout: the file's layout.

  Returns:
    (the good rows, [(line, reason)] for every bad row; parquet: (line, reason, where)
    with where = "file:row-group:row"). Never drops a row silently.
  """
  if layout.format == "parquet":
    from gin_jax.data import parquet

    return parquet.parse_chunk(chunk, layout)
  if layout.format == "libfm" and b" \n" in chunk.data:
    data = chunk.data
    while b" \n" in data:
      data = data.replace(b" \n", b"\n")
    chunk = text.Chunk(data, chunk.first_line)
  kinds = np.array(layout.row_kinds, np.uint8)
  tokens, bad = text.tokenize(chunk, layout.separators, kinds, _describe(layout))
  row_bad: dict[int, str] = {}  # Row -> the first reason it is bad.
  numeric = [c for c in layout.columns if c.kind == "numeric"]
  categorical = [c for c in layout.columns if c.kind == "categorical"]
  raw = RawChunk(
    lines=tokens.lines,
    labels=_labels(tokens, layout, row_bad),
    cat_names=tuple(c.name for c in categorical),
    keys=np.zeros((len(tokens), 0), np.uint64),
    long_tokens={},
    num_names=tuple(c.name for c in numeric),
    numbers=_numbers(tokens, layout, numeric, row_bad),
    values=_values(tokens, categorical, row_bad) if layout.format == "libfm" else None,
  )
  _check_categories(tokens, layout, categorical, row_bad)
  if categorical:
    raw.keys, longs = text.short_keys(tokens, [c.token for c in categorical])
    raw.long_tokens = {(r, j): tokens.token(r, categorical[j].token) for r, j in longs}
  if row_bad:
    keep = np.ones(len(tokens), bool)
    keep[list(row_bad)] = False
    raw = raw.take(keep)
    bad += [(int(tokens.lines[r]), reason) for r, reason in row_bad.items()]
  return raw, bad


def _labels(tokens: text.Tokens, layout: Layout, row_bad: dict[int, str]) -> np.ndarray:
  if not layout.has_labels:
    return np.full(len(tokens), np.nan, np.float32)
  libfm = layout.format == "libfm"
  parse = text.parse_pm1_labels if libfm else text.parse_binary_labels
  labels, bad_rows = parse(tokens, layout.label_token)
  allowed = "{0, 1} or {-1, +1}" if libfm else "{0, 1}"
  for r in bad_rows:
    tok = show_token(tokens.token(r, layout.label_token))
    row_bad.setdefault(int(r), f"label {tok} not in {allowed}")
  return labels


def _numbers(tokens, layout: Layout, numeric: list[Column], row_bad) -> np.ndarray:
  if not numeric:
    return np.zeros((len(tokens), 0))
  criteo = layout.format == "criteo"
  numbers, bad = text.parse_numbers(tokens, [c.token for c in numeric], integers_only=criteo)
  kind = "an integer" if criteo else "a number"
  for r, j, tok in bad:
    row_bad.setdefault(r, f"{numeric[j].name}: {show_token(tok)} is not {kind}")
  return numbers


def _check_categories(tokens, layout: Layout, categorical: list[Column], row_bad) -> None:
  """Over-long categories, and libfm indices that are not integers in range, make rows bad."""
  if not categorical:
    return
  cols = [c.token for c in categorical]
  lens = text.select_columns(tokens.lens, cols)
  for r, j in zip(*np.nonzero(lens > MAX_CATEGORY_BYTES)):
    row_bad.setdefault(
      int(r),
      f"{categorical[j].name}: a category of {int(lens[r, j])} bytes "
      f"(the limit is {MAX_CATEGORY_BYTES})",
    )
  if layout.format != "libfm":
    return
  index, bad = text.parse_numbers(tokens, cols, integers_only=True)
  for r, j, tok in bad:
    row_bad.setdefault(r, f"{categorical[j].name}: index {show_token(tok)} is not an integer")
  out = np.signbit(index) | (index >= LIBFM_INDEX_LIMIT)  # NaN (empty) compares False
  for r, j in zip(*np.nonzero(out)):
    tok = show_token(tokens.token(r, cols[j]))
    row_bad.setdefault(
      int(r), f"{categorical[j].name}: index {tok} is not in [0, {LIBFM_INDEX_LIMIT})"
    )


def _values(tokens, categorical: list[Column], row_bad) -> np.ndarray:
  """libfm value multipliers; an empty index or value makes the row bad."""
  for r, j in zip(*np.nonzero(tokens.lens[:, [c.token for c in categorical]] == 0)):
    row_bad.setdefault(int(r), f"{categorical[j].name}: empty feature index")
  values, bad = text.parse_numbers(tokens, [c.value_token for c in categorical], False)
  for r, j in zip(*np.nonzero(np.isnan(values))):
    row_bad.setdefault(int(r), f"{categorical[j].name}: empty value")
  for r, j, tok in bad:
    row_bad.setdefault(r, f"{categorical[j].name}: value {show_token(tok)} is not a number")
  return values.astype(np.float32)
