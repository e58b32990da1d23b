"""Data layer: raw click logs (Criteo TSV, CSV + schema, libfm, Parquet) -> device batches.

`prepare` turns files into a cached on-disk dataset (two streaming passes), the
`pipeline` module serves it as grain batches, `encode_file`/`encode_rows` (module
`encode`) encode new files with a prepared dataset's vocabularies for scoring, and
`synthetic` makes Criteo-shaped data with planted interactions; `replay` mixes a
continued run's training split with its source's (`--init-from`, train.init_replay).
Package `formats` has one module per input format behind one interface (Parquet:
optional pyarrow, imported only when used); ParquetScoreWriter writes scores.

The pipeline's names (it imports grain) load on first use, so that prepare's worker
processes (module workers) start without it.
"""

from gin_jax.data import replay
from gin_jax.data.encode import encode_file, encode_rows, iter_encode_file
from gin_jax.data.errors import BadRow, BadRowReport, DataError
from gin_jax.data.formats import CsvSchema
from gin_jax.data.formats.parquet_writer import ParquetScoreWriter
from gin_jax.data.meta import DatasetMeta, FieldSpec, Split
from gin_jax.data.prepare import constant_warning, open_prepared, prepare
from gin_jax.data.synthetic import SyntheticSpec, generate, write_criteo_tsv

__all__ = [
  "replay",
  "BadRow",
  "BadRowReport",
  "CsvSchema",
  "DataError",
  "DatasetMeta",
  "FieldSpec",
  "ParquetScoreWriter",
  "Split",
  "SyntheticSpec",
  "constant_warning",
  "encode_file",
  "encode_rows",
  "eval_batches",
  "generate",
  "iter_encode_file",
  "open_prepared",
  "prepare",
  "train_iterator",
  "write_criteo_tsv",
]

_LAZY = {"eval_batches": "gin_jax.data.pipeline", "train_iterator": "gin_jax.data.pipeline"}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'gin_jax.data' has no attribute {name!r}")
