"""The input formats, one module each, behind one interface (base.Format).

`get(name)` gives the Format that reads `--format name`; FORMATS maps every name to
its Format, in the order of gin_jax.config.FORMATS (the one list of the names).
Adding a format is one module with a Format subclass and one line below.

- criteo: Criteo TSV (module criteo).
- csv: CSV whose columns a schema file names (modules csv, schema).
- libfm: libfm/libsvm `idx:val` rows (module libfm).
- records: not a file format: columns of values held in memory (a serving
  request), read with the rules of the dataset's format (module records).
- parquet: Parquet datasets, columns named by a schema as for csv (module parquet;
  pyarrow, an optional dependency, is imported only when a dataset is read).
"""

from __future__ import annotations

import types

from gin_jax import config
from gin_jax.data.formats import criteo, csv, libfm, parquet, records
from gin_jax.data.formats.base import Column, Format, Layout, RawChunk
from gin_jax.data.formats.schema import CsvSchema

FORMATS: types.MappingProxyType[str, Format] = types.MappingProxyType(
  {
    criteo.FORMAT.name: criteo.FORMAT,
    csv.FORMAT.name: csv.FORMAT,
    libfm.FORMAT.name: libfm.FORMAT,
    parquet.FORMAT.name: parquet.FORMAT,
  }
)
if tuple(FORMATS) != config.FORMATS:
  raise ImportError(f"formats {tuple(FORMATS)} differ from gin_jax.config.FORMATS {config.FORMATS}")


def get(name: str) -> Format:
  """The Format of a --format name; ValueError naming the known ones if there is none."""
  try:
    return FORMATS[name]
  except KeyError:
    raise ValueError(f"unknown format {name!r}; expected one of {tuple(FORMATS)}") from None


__all__ = [
  "FORMATS", "Column", "CsvSchema", "Format", "Layout", "RawChunk", "get", "records"
]  # fmt: skip
