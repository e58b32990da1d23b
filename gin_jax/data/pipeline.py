"""grain input pipelines over prepared splits: shuffled training batches, ordered eval.

Training: a grain MapDataset whose element k is global batch k's shuffled row
indices -> the process's contiguous slice of them -> one vectorised gather of ids,
values and labels -> IterDataset (threads, optional worker processes). The order
depends only on (seed, epoch), and process p of P gets rows [p*B/P, (p+1)*B/P) of
every global batch, so P processes together see exactly the batches of one process.

Why a custom index dataset instead of `MapDataset.range(n).shuffle().batch(b)`: that
chain computes every index with a Python call, slower than training consumes rows (the
loader's measured rate is in benchmarks/README.md, "Input"). ShuffledBatches computes a
whole batch of the same kind of keyed pseudorandom permutation (a 4-round Feistel
network with cycle walking, as grain's index_shuffle) in a few numpy operations, with
O(batch) memory and nothing precomputed, so it is equally cheap to start in every
worker process.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import grain
import numpy as np

from gin_jax.data import hashing
from gin_jax.data.meta import Split

_ROUNDS = 4


def feistel_permute(positions: np.ndarray, num_rows: int, keys: np.ndarray) -> np.ndarray:
  """A keyed bijection of [0, num_rows), applied to `positions`.

  Args:
    positions: int64 positions in [0, num_rows).
    num_rows: size of the permuted range.
    keys: uint64 [_ROUNDS] round keys.

  Returns:
    int64 permuted positions.
  """
  half = max(1, (max(num_rows - 1, 1).bit_length() + 1) // 2)  # 2*half bits >= num_rows.
  mask = np.uint64((1 << half) - 1)
  shift = np.uint64(half)

  def permute(x):
    left, right = x >> shift, x & mask
    for k in keys:
      left, right = right, left ^ (hashing.hash_keys(right ^ k) & mask)
    return (left << shift) | right

  x = permute(np.asarray(positions, np.uint64))
  # Cycle walking: re-permute values that fall outside [0, num_rows); this stays a
  # bijection of [0, num_rows) and needs fewer than 4 rounds on average.
  out = np.flatnonzero(x >= np.uint64(num_rows))
  while len(out):
    x[out] = permute(x[out])
    out = out[x[out] >= np.uint64(num_rows)]
  return x.astype(np.int64)


def epoch_keys(seed: int, epoch: int) -> np.ndarray:
  """The Feistel round keys of (seed, epoch)."""
  return np.random.SeedSequence([seed, epoch]).generate_state(_ROUNDS, np.uint64)


class ShuffledBatches(grain.MapDataset):
  """Element k: the row indices (int64 [batch_size]) of shuffled global batch k."""

  def __init__(self, num_rows: int, batch_size: int, seed: int, epoch: int):
    super().__init__()
    self._num_rows, self._batch_size = num_rows, batch_size
    self._keys = epoch_keys(seed, epoch)

  def __len__(self) -> int:
    return self._num_rows // self._batch_size

  def __str__(self) -> str:
    return f"ShuffledBatches(rows={self._num_rows}, batch={self._batch_size})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self.batches(index % len(self), 1)[0]

  def batches(self, first: int, count: int) -> np.ndarray:
    """Rows of batches first .. first+count-1 (clipped to the epoch): int64 [count, B].

    One vectorised permutation for all of them, equal to stacking `self[k]`.
    """
    count = max(0, min(count, len(self) - first))
    b = self._batch_size
    pos = np.arange(first * b, (first + count) * b, dtype=np.int64)
    return feistel_permute(pos, self._num_rows, self._keys).reshape(count, b)


class Gather:
  """Gathers a process's slice of a batch of rows with numpy fancy indexing.

  Pickles memory-mapped arrays by file name (grain's worker processes are spawned, and
  pickling a memmap would copy the whole file), and an all-ones `values` as nothing.
  """

  def __init__(self, split: Split, lo: int, hi: int):
    self.lo, self.hi = lo, hi
    self.ids, self.labels = split.ids, split.labels
    self.values = None if split.values_are_ones else split.values
    self.num_fields = split.ids.shape[1]

  def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    rows = rows[self.lo : self.hi]
    ids = np.asarray(self.ids[rows])
    values = (
      np.ones(ids.shape, np.float32) if self.values is None else np.asarray(self.values[rows])
    )
    return {"ids": ids, "values": values, "labels": np.asarray(self.labels[rows])}

  def __getstate__(self):
    state = dict(self.__dict__)
    for k in ("ids", "labels", "values"):
      state[k] = _describe_array(state[k])
    return state

  def __setstate__(self, state):
    for k in ("ids", "labels", "values"):
      state[k] = _open_array(state[k])
    self.__dict__.update(state)


def _describe_array(arr):
  if isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename:
    return (
      "memmap",
      arr.filename,
      arr.dtype.str,
      arr.shape,
      arr.offset,
      "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C",
    )
  return ("array", arr)


def _open_array(desc):
  if desc[0] == "array":
    return desc[1]
  _, filename, dtype, shape, offset, order = desc
  return np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def train_iterator(
  split: Split,
  global_batch_size: int,
  *,
  seed: int,
  epoch: int,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
  num_threads: int = 1,
  prefetch: int = 8,
) -> grain.DatasetIterator:
  """One shuffled epoch of training batches for this process.

  Args:
    split: the training split.
    global_batch_size: B, the batch over all processes (divisible by process_count).
    seed: shuffle seed; with `epoch` it alone fixes the order.
    epoch: epoch number (every epoch has its own order).
    process_index: this process (jax.process_index()).
    process_count: number of processes (jax.process_count()).
    num_workers: grain worker processes (0: threads in this process only).
    num_threads: gather threads per process.
    prefetch: batches buffered ahead per process.

  Returns:
    A grain DatasetIterator of dicts {"ids": int32 [B/P, f], "values": float32
    [B/P, f], "labels": float32 [B/P]}, len(split) // B batches (the remainder is
    dropped, so every process yields the same number). get_state()/set_state()
    round-trip exactly (JSON-serialisable), also through grain.checkpoint.
  """
  if global_batch_size % process_count:
    raise ValueError(
      f"global batch {global_batch_size} is not divisible by {process_count} processes"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  local = global_batch_size // process_count
  ds = ShuffledBatches(len(split), global_batch_size, seed, epoch)
  ds = ds.map(Gather(split, process_index * local, (process_index + 1) * local))
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch // num_workers)
      )
    )
  return iter(it_ds)


def eval_batches(
  split: Split,
  global_batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Every row once, in order, with the last batch padded (weights 0).

  Args:
    split: the split to evaluate or score.
    global_batch_size: B (divisible by process_count).
    process_index: this process.
    process_count: number of processes.

  Returns:
    An iterator of dicts {"ids", "values", "labels", "weights"} of B/P rows: global
    batch k covers rows [k*B, (k+1)*B) and process p gets its rows
    [p*B/P, (p+1)*B/P). Padding rows repeat row 0's ids with label 0 and weight 0.
    Every process yields ceil(len(split) / B) batches.
  """
  if global_batch_size % process_count:
    raise ValueError(
      f"global batch {global_batch_size} is not divisible by {process_count} processes"
    )
  n, local = len(split), global_batch_size // process_count
  for k in range(-(-n // global_batch_size)):
    a = min(n, k * global_batch_size + process_index * local)
    b = min(n, a + local)
    real = b - a
    ids = np.zeros((local, split.ids.shape[1]), np.int32)
    values = np.ones((local, split.ids.shape[1]), np.float32)
    labels = np.zeros(local, np.float32)
    weights = np.zeros(local, np.float32)
    ids[:real] = split.ids[a:b]
    ids[real:] = split.ids[0]
    if not split.values_are_ones:
      values[:real] = split.values[a:b]
    labels[:real] = split.labels[a:b]
    weights[:real] = 1.0
    yield {"ids": ids, "values": values, "labels": labels, "weights": weights}
