"""Helpers of prepare's two passes: the spill of parsed chunks, and a thread map.

A Spill holds the parsed chunks between the passes. Past its memory budget it writes
them to a file of raw numpy bytes (no pickle), each chunk as:

  int64 [6]          rows n, long tokens k, blob bytes, has values, bucketized, small
  int64 [n]          lines
  float32 [n]        labels
  uint8 [n]          split of each row
  uint64 [n, c]      keys of the c categorical columns
  float32|64 [n, m]  numbers of the m numeric columns (float32 when `small`)
  float32 [n, c]     values, only when `has values`
  per list column:   int64 [n + 1] offsets, uint64 [offsets[-1]] keys (ListValues)
  int64 [k, 3]       (row, column, length) of each long token, then the blob of them
                     (a list's: (value index, c + the list's index, length))

With worker processes (module workers) each parsed chunk is one such record in a part
file of its own (write_part / read_part), written and read by the workers.

ordered_map runs the parsing and encoding of chunks in worker threads or processes,
results in file order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gin_jax.data.errors import DataError, write_error
from gin_jax.data.formats.base import ListValues, RawChunk


class Spill:
  """Parsed chunks kept between the passes: in memory up to a budget, then on disk.

  Parsing text is the expensive part of preprocessing, so it is done once: pass 2
  streams these parsed chunks instead of re-reading (and re-decompressing) the input.
  Memory stays bounded: past `memory_budget` bytes, chunks go to a file of raw numpy
  bytes (no pickle), read back in order.
  """

  def __init__(self, path: str, memory_budget: int):
    self.path, self.budget = path, memory_budget
    self._memory: list[tuple[RawChunk, np.ndarray]] = []
    self._bytes = 0
    self._spilled = 0  # Bytes (about) written to the file.
    self._file = None

  def append(self, raw: RawChunk, split: np.ndarray) -> None:
    size = raw.nbytes
    if self._file is None and self._bytes + size <= self.budget:
      self._memory.append((raw, split))
      self._bytes += size
      return
    with _writing(self.path, self._spilled + size):
      if self._file is None:
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in chunks()).
      _write_chunk(self._file, raw, split)
    self._spilled += size

  def chunks(self, cat: tuple[str, ...], num: tuple[str, ...], lists: tuple[str, ...] = ()):
    """Yields the (raw chunk, split) pairs in the order they were appended, once.

    cat, num, lists: the chunks' categorical, numeric and list columns.
    """
    memory, self._memory = self._memory, []
    yield from memory
    if self._file is not None:
      with _writing(self.path, self._spilled):
        self._file.close()  # (writes what is still buffered)
      with open(self.path, "rb") as f:
        yield from _read_chunks(f, cat, num, lists)
      os.remove(self.path)


@contextlib.contextmanager
def _writing(path: str, nbytes: int):
  """Turns an OSError while writing `path` (nbytes so far) into write_error's."""
  try:
    yield
  except OSError as e:
    raise write_error(path, e, nbytes, at_least=True) from None


def _write(f, arr: np.ndarray) -> None:
  """An array's bytes into file f. Not arr.tofile(f): numpy's own buffered write
  raises no errno (no telling a full disk), and the error of its last buffer is lost."""
  f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _write_chunk(f, raw: RawChunk, split: np.ndarray) -> None:
  c = len(raw.cat_names)
  # Long tokens: the categorical columns' by (row, column), then each list's by
  # (value index, c + the list's index).
  longs = [((r, j), t) for (r, j), t in raw.long_tokens.items()]
  for k, lv in enumerate(raw.lists.values()):
    longs += [((i, c + k), t) for i, t in lv.long_tokens.items()]
  blob = b"".join(t for _, t in longs)
  # Bucket values are small integers: float32 holds them exactly and halves the I/O.
  small = raw.bucketized and bool((np.abs(np.nan_to_num(raw.numbers)) < 2**24).all())
  numbers = raw.numbers.astype(np.float32 if small else np.float64)
  head = [len(raw), len(longs), len(blob), raw.values is not None, raw.bucketized, small]
  _write(f, np.array(head, np.int64))
  for arr in (raw.lines, raw.labels, split, raw.keys, numbers):
    _write(f, arr)
  if raw.values is not None:
    _write(f, raw.values)
  for lv in raw.lists.values():
    _write(f, lv.offsets)
    _write(f, lv.keys)
  if longs:
    _write(f, np.array([[r, j, len(t)] for (r, j), t in longs], np.int64))
    f.write(blob)


def _read_chunks(f, cat: tuple[str, ...], num: tuple[str, ...], lists: tuple[str, ...]):
  while len(head := np.fromfile(f, np.int64, 6)):
    n, n_long, blob_len, has_values, bucketized, small = (int(x) for x in head)
    lines = np.fromfile(f, np.int64, n)
    labels = np.fromfile(f, np.float32, n)
    split = np.fromfile(f, np.uint8, n)
    keys = np.fromfile(f, np.uint64, n * len(cat)).reshape(n, len(cat))
    numbers = np.fromfile(f, np.float32 if small else np.float64, n * len(num))
    numbers = numbers.astype(np.float64).reshape(n, len(num))
    values = np.fromfile(f, np.float32, n * len(cat)).reshape(n, len(cat)) if has_values else None
    list_values = {}
    for name in lists:
      offsets = np.fromfile(f, np.int64, n + 1)
      list_values[name] = ListValues(offsets, np.fromfile(f, np.uint64, int(offsets[-1])))
    long_tokens = {}
    if n_long:
      index = np.fromfile(f, np.int64, 3 * n_long).reshape(n_long, 3)
      blob, at = f.read(blob_len), 0
      for r, j, length in index.tolist():
        token = blob[at : at + length]
        if j < len(cat):
          long_tokens[(r, j)] = token
        else:
          list_values[lists[j - len(cat)]].long_tokens[r] = token
        at += length
    raw = RawChunk(
      lines, labels, cat, keys, long_tokens, num, numbers, values, bool(bucketized),
      lists=list_values,
    )  # fmt: skip
    yield raw, split


def write_part(path: str, raw: RawChunk, split: np.ndarray) -> None:
  """Writes one parsed chunk to a part file of its own (a worker's spill)."""
  with _writing(path, raw.nbytes), open(path, "wb") as f:
    _write_chunk(f, raw, split)


def read_part(path: str, cat: tuple[str, ...], num: tuple[str, ...], lists: tuple[str, ...]):
  """The (raw chunk, split) of a part file written by write_part."""
  with open(path, "rb") as f:
    (out,) = _read_chunks(f, cat, num, lists)
  return out


def ordered_map(
  fn: Callable,
  items: Iterable,
  workers: int,
  executor: concurrent.futures.Executor | None = None,
  route: Callable | None = None,
) -> Iterator:
  """fn over items in `workers` threads (or `executor`'s processes), in input order.

  At most `workers` results wait in flight for threads, twice that for processes
  (whose inputs and results travel through pipes). `route(item)`: the worker that
  must run it (executor.submit_to). An error raised by the items iterator itself
  (e.g. a truncated gzip) is raised only after the results of the items before
  it, so errors come out in file order.
  """
  if workers <= 1 and executor is None:
    yield from map(fn, items)
    return
  with contextlib.ExitStack() as stack:
    if executor is None:
      executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(workers))
      window = workers
    else:
      window = 2 * workers
    queue: collections.deque = collections.deque()
    error = None
    try:
      it = iter(items)
      while True:
        try:
          item = next(it)
        except StopIteration:
          break
        except DataError as e:
          error = e
          break
        if route is None:
          queue.append(executor.submit(fn, item))
        else:
          queue.append(executor.submit_to(route(item), fn, item))
        if len(queue) > window:
          yield queue.popleft().result()
      while queue:
        yield queue.popleft().result()
    finally:
      for f in queue:
        f.cancel()
    if error is not None:
      raise error
