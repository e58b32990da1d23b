"""The schema file that names the label, categorical, numeric and ignored columns.

Used by the csv and parquet formats (a Parquet dataset's columns are named as a CSV
header's are; `separator` and `columns` apply to csv only).
"""

from __future__ import annotations

import dataclasses
import json
import os

import yaml

from gin_jax.data.errors import DataError


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
