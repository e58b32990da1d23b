"""The schema file that names the label, categorical, numeric and ignored columns.

Used by the csv and parquet formats (a Parquet dataset's columns are named as a CSV
header's are; `separator` and `columns` apply to csv only).
"""

from __future__ import annotations

import dataclasses
import os

from gin_jax.config import MAX_VALUES, yaml_files
from gin_jax.data.errors import DataError

# How a multi-valued field's values make one field vector; "attention" weighs each
# value by its relevance to a `target` field (DIN's local activation unit).
POOLINGS = ("mean", "sum", "attention")


@dataclasses.dataclass(frozen=True)
class MultiValued:
  """A column that holds a list of categories per row (tags, genres, a history)."""

  name: str
  separator: str = "|"  # Between the values of a row (csv; Parquet list columns need none).
  max_values: int | None = None  # Values kept per row (the LAST ones); None: data.max_values.
  pooling: str = "mean"  # "mean", "sum" or "attention" of the values' embeddings.
  target: str | None = None  # pooling "attention": the single-valued field attended to.

  @classmethod
  def from_entry(cls, name: str, entry, where: str, column_separator: str) -> MultiValued:
    """A `multi_valued:` entry: its separator alone, or {separator, max_values, pooling,
    target}."""
    if isinstance(entry, str):
      entry = {"separator": entry}
    if not isinstance(entry, dict):
      raise DataError(
        f"{where}: multi_valued.{name} must be a separator or a mapping of "
        f"separator / max_values / pooling / target, got {entry!r}"
      )
    unknown = sorted(set(entry) - {"separator", "max_values", "pooling", "target"})
    if unknown:
      raise DataError(f"{where}: multi_valued.{name}: unknown key(s) {unknown}")
    sep = entry.get("separator", "|")
    if not isinstance(sep, str) or len(sep) != 1 or sep in '\n\r"' or ord(sep) >= 128:
      raise DataError(f"{where}: multi_valued.{name}: separator must be one ASCII character")
    if sep == column_separator:
      raise DataError(
        f"{where}: multi_valued.{name}: its separator {sep!r} is the file's column separator"
      )
    k = entry.get("max_values")
    if k is not None and (
      isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_VALUES
    ):
      raise DataError(
        f"{where}: multi_valued.{name}: max_values must be an integer from 1 to {MAX_VALUES}, "
        f"got {yaml_files.short(k)}"
      )
    pooling = entry.get("pooling", "mean")
    if pooling not in POOLINGS:
      raise DataError(f"{where}: multi_valued.{name}: pooling must be one of {POOLINGS}")
    target = entry.get("target")
    if (pooling == "attention") != (target is not None):
      raise DataError(
        f"{where}: multi_valued.{name}: pooling: attention needs a target (the field "
        "its values are weighed against), and only attention takes one"
      )
    if target is not None and (not isinstance(target, str) or not target):
      raise DataError(f"{where}: multi_valued.{name}: target must be a column name")
    return cls(name, sep, k, pooling, target)


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
  multi_valued: tuple[MultiValued, ...] = ()  # List columns, in the order the schema names them.
  # (column, owner): the column's values are ids of the owner's: one vocabulary, one block
  # of table rows (DESIGN.md section 9; FuxiCTR's name).
  share_embedding: tuple[tuple[str, str], ...] = ()

  def multi(self, name: str) -> MultiValued | None:
    """The multi-valued entry of column `name`, or None for any other column."""
    return next((m for m in self.multi_valued if m.name == name), None)

  def with_max_values(self, default: int) -> CsvSchema:
    """The schema with every multi-valued column's max_values decided (data.max_values)."""
    multi = tuple(
      m if m.max_values is not None else dataclasses.replace(m, max_values=default)
      for m in self.multi_valued
    )
    return dataclasses.replace(self, multi_valued=multi)

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
    multi_d = d.get("multi_valued") or {}
    if not isinstance(multi_d, dict) or not all(isinstance(c, str) and c for c in multi_d):
      raise DataError(f"{where}: 'multi_valued' must map column names to their options")
    names = [
      d["label"], *lists["categorical"], *multi_d, *lists["numeric"], *lists["ignore"]
    ]  # fmt: skip
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
      raise DataError(f"{where}: column(s) {dup} named more than once")
    cols = lists["columns"]
    if cols and (len(set(cols)) != len(cols) or sorted(cols) != sorted(names)):
      raise DataError(
        f"{where}: 'columns' must list every column named in the schema exactly once "
        f"(label, categorical, numeric, ignore); got {list(cols)}"
      )
    if not lists["categorical"] and not lists["numeric"] and not multi_d:
      raise DataError(f"{where}: the schema names no feature columns")
    sep = d.get("separator", ",")
    if not isinstance(sep, str) or len(sep) != 1 or sep in '\n\r"' or ord(sep) >= 128:
      raise DataError(f"{where}: separator must be one ASCII character, got {sep!r}")
    multi = tuple(MultiValued.from_entry(c, e, where, sep) for c, e in multi_d.items())
    _check_targets(multi, lists, where)
    shares = _share_embedding(d.get("share_embedding"), lists, multi_d, where)
    return cls(label=d["label"], separator=sep, multi_valued=multi, share_embedding=shares,
               **lists)  # fmt: skip

  @classmethod
  def load(cls, path: str | os.PathLike) -> CsvSchema:
    """Reads a schema file (YAML, of which JSON is a part), bounded (config.yaml_files)."""
    try:
      d = yaml_files.load(path, "schema", "cannot parse schema")
    except ValueError as e:
      raise DataError(str(e)) from None
    return cls.from_dict(d, str(path))

  def to_dict(self) -> dict:
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    multi = d.pop("multi_valued")
    if multi:  # absent when empty: a schema without lists keeps its old dict (and cache key)
      d["multi_valued"] = {m.pop("name"): _without_none(m, "target") for m in multi}
    shares = d.pop("share_embedding")
    if shares:  # likewise
      d["share_embedding"] = dict(shares)
    return d


def _without_none(d: dict, key: str) -> dict:
  return {k: v for k, v in d.items() if k != key or v is not None}


def _check_targets(multi: tuple[MultiValued, ...], lists: dict, where: str) -> None:
  """Raises DataError unless every attention target is a single-valued categorical column."""
  for m in multi:
    if m.target is None:
      continue
    if m.target not in lists["categorical"]:
      what = (
        "a multi-valued column" if any(x.name == m.target for x in multi)
        else "a numeric column" if m.target in lists["numeric"]
        else "not a categorical column of the schema"
      )  # fmt: skip
      raise DataError(
        f"{where}: multi_valued.{m.name}: target {m.target!r} is {what}; the target of "
        "attention pooling is a single-valued categorical column"
      )


def _share_embedding(entry, lists: dict, multi_d: dict, where: str) -> tuple:
  """The validated `share_embedding:` mapping, as (column, owner) pairs."""
  if entry is None:
    return ()
  if not isinstance(entry, dict) or not all(
    isinstance(k, str) and k and isinstance(v, str) and v for k, v in entry.items()
  ):
    raise DataError(
      f"{where}: 'share_embedding' must map a column to the column whose rows it uses"
    )
  keyed = set(lists["categorical"]) | set(multi_d)
  for column, owner in entry.items():
    for name in (column, owner):
      if name in lists["numeric"]:
        raise DataError(
          f"{where}: share_embedding.{column}: {name!r} is a numeric column; only "
          "categorical and multi-valued columns share embedding rows"
        )
      if name not in keyed:
        raise DataError(
          f"{where}: share_embedding.{column}: {name!r} is not a categorical or "
          "multi-valued column of the schema"
        )
    if column == owner:
      raise DataError(f"{where}: share_embedding.{column}: a column cannot share its own rows")
    if owner in entry:
      raise DataError(
        f"{where}: share_embedding.{column}: {owner!r} shares the rows of "
        f"{entry[owner]!r} itself; name {entry[owner]!r}, whose rows they are"
      )
  return tuple(entry.items())
