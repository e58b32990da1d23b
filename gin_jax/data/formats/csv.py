"""CSV with a schema: a header line, then one record per line.

Records are split on the schema's separator (default ","); missing = empty field.
Quoted fields are not supported: a row with a '"' is a bad row rather than being split
in the wrong place. Columns are matched by header name; a header column the schema
does not name is an error unless the schema lists it under `ignore` (nothing is
dropped silently). A schema that lists `columns` reads files without a header line.
Rows have no labels when their header lacks the label column.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from gin_jax.data import text
from gin_jax.data.errors import DataError
from gin_jax.data.formats import parts, sniff
from gin_jax.data.formats.base import Column, Layout
from gin_jax.data.formats.delimited import DelimitedText, first_row
from gin_jax.data.formats.schema import CsvSchema


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
  if len(names) == 1 and len({schema.label, *schema.categorical, *schema.numeric}) > 1:
    raise DataError(
      f"{path}:1: the header has no {schema.separator!r} (the schema's separator), so it is "
      f"one column; {sniff.hint([header], Csv.name)}"
    )
  columns, label_token = schema_columns(schema, names, f"{path}:1", has_labels)
  sep = ord(schema.separator)
  return Layout(
    Csv.name,
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
  multi = [m.name for m in schema.multi_valued]
  features = set(schema.categorical) | set(schema.numeric) | set(multi)
  missing = [c for c in (*schema.categorical, *multi, *schema.numeric) if c not in names]
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
  columns = tuple(_column(schema, c, i) for i, c in enumerate(names) if c in features)
  label_token = names.index(schema.label) if has_labels else None
  return columns, label_token


def _column(schema: CsvSchema, name: str, token: int) -> Column:
  m = schema.multi(name)
  if m is not None:
    return Column(
      name, "multi_valued", token, separator=m.separator, max_values=m.max_values or 1,
      pooling=m.pooling, target=m.target or "",
    )  # fmt: skip
  return Column(name, "categorical" if name in schema.categorical else "numeric", token)


def layout_from_first_line(
  first_line: bytes,
  schema: CsvSchema | None,
  has_labels: bool | None = None,
  *,
  header: Sequence[str] | None = None,
  path: str = "<rows>",
  train_header: Sequence[str] | None = None,
) -> Layout:
  """The layout of rows, deciding what is not given from their first line.

  Args:
    first_line: without `header`: the header line; else the first row. Without its
      line end.
    schema: the schema (required).
    has_labels: None: the rows have labels when the header has the label column.
    header: rows without a header line: the names of their columns, label included;
      the label is left out when the rows have none (has_labels False, or None and
      first_line has one field fewer than header). Default: the schema's `columns`,
      if it names them.
    path: names the input in errors.
    train_header: see csv_layout.

  Returns:
    The Layout. Raises DataError if the rows fit no layout.
  """
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


class Csv(DelimitedText):
  """CSV (any one-byte separator) whose columns a schema names."""

  name = "csv"
  needs_schema = True

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
    return layout_from_first_line(head[0], schema, has_labels, path=path, train_header=train_header)

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
    first = first_row(chunk)
    if header is not None:  # The caller's names act as a header line.
      first, train_header = schema.separator.join(header).encode(), None
    return layout_from_first_line(first, schema, has_labels, header=train_header, path=path)

  def describe(self, layout: Layout) -> Callable[[bytes], str]:
    describe = super().describe(layout)

    def describe_csv(line: bytes) -> str:
      if b'"' in line:
        return "quoted fields are not supported (found '\"')"
      return describe(line)

    return describe_csv


FORMAT = Csv()
