"""One served version: an export read back, its encoding, and its calls compiled per batch size.

Loading a version verifies the export's seal (scoring.read_export), builds the
dataset's encoder (vocabulary tables), and compiles the scoring function once for
each batch size of the ladder, then runs each once (warm-up): nothing compiles on
the request path. A batch of n candidates runs at the smallest size >= n, padded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax.data import encode
from gin_jax.scoring import read_export


def batch_ladder(max_batch: int, smallest: int = 16) -> tuple[int, ...]:
  """Padded batch sizes: powers of two from `smallest` up to, and ending at, max_batch.

  Padding wastes less than half of a call; each size costs one compilation when a
  version loads.
  """
  sizes, b = [], min(smallest, max_batch)
  while b < max_batch:
    sizes.append(b)
    b *= 2
  return (*sizes, max_batch)


class ServedVersion:
  """A loaded export version, ready to encode records and score them.

  Attributes:
    version: its number in the model base path.
    directory: its directory.
    meta: its dataset metadata (fields, vocabularies, encoding options).
    fields: the field names a request may give.
    sizes: the compiled batch sizes (ascending); the last one is the largest batch.
    load_seconds: how long reading, compiling and warming up took.
  """

  def __init__(self, version: int, directory: str | Path, sizes: Sequence[int], device=None):
    started = time.perf_counter()
    loaded = read_export(directory)
    self.version = version
    self.directory = Path(directory)
    self.meta = loaded.meta
    self.fields = tuple(self.meta.field_names)
    self.sizes = tuple(sorted(set(sizes)))
    encode.encoder_for(self.meta)  # The vocabulary tables, built now, not on a request.
    device = device or jax.local_devices()[0]
    self._weights = [jax.device_put(w, device) for w in loaded.weights]
    slots = self.meta.num_slots
    call = jax.jit(loaded.exported.call)
    self._calls = {}
    for b in self.sizes:
      ids = jax.ShapeDtypeStruct((b, slots), jnp.int32)
      values = jax.ShapeDtypeStruct((b, slots), jnp.float32)
      self._calls[b] = call.lower(self._weights, ids, values).compile()
    for b in self.sizes:  # Warm-up: the first run of a compiled call allocates.
      self._run(np.zeros((b, slots), np.int32), np.ones((b, slots), np.float32))
    self.load_seconds = time.perf_counter() - started

  @property
  def max_batch(self) -> int:
    return self.sizes[-1]

  def encode(self, columns: Mapping[str, Sequence], rows: int, context=None):
    """(ids int32 [rows, slots], values float32 [rows, slots], {row: reason} of bad values).

    `columns` maps fields to their `rows` raw values, `context` fields to one value
    every row holds (encode.encode_records; a bad context value is row -1).
    """
    split, bad = encode.encode_records(self.meta, columns, rows, context)
    return split.ids, split.values, bad

  def predict(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Click probabilities float32 [n] for n <= max_batch encoded rows."""
    n = len(ids)
    b = next(s for s in self.sizes if s >= n)
    if b != n:
      pad = ((0, b - n), (0, 0))
      ids = np.pad(ids, pad)
      values = np.pad(values, pad, constant_values=1.0)
    return self._run(ids, values)[:n]

  def _run(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = self._calls[len(ids)](self._weights, ids, values)
    return np.asarray(out, np.float32)
