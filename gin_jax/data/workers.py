"""prepare's work on one chunk, run in worker processes: parse (pass 1), encode (pass 2).

Parsing and encoding are numpy passes glued by Python, which holds the GIL between
them: threads of one process keep a share of the work serial (about 15%, from the
2-thread figure on 2 cores, benchmarks/README.md), processes share nothing but pipes.
prepare uses threads up to prepare.THREADS_UP_TO workers and these processes beyond.
Each chunk is one task:

- pass 1 (ParseTask): parse and validate the chunk, decide each row's split, count the
  categories of its training rows, and keep the parsed rows in this worker's memory
  (up to its share of the spill budget; beyond, in a part file: spill.write_part);
  only the summary (row and positive counts per split, bad rows, the category
  counts) goes back to the main process, which merges the counts and applies
  --bad-rows in file order.
- pass 2 (encode_part, in the worker that holds the chunk, or any for a part file):
  encode the chunk and write its rows straight into the splits' .npy files at the
  offsets the main process computed from pass 1's counts (the files are
  preallocated: see split_files).

So the main process only reads the input and merges counts, and the result is the
same bytes for any number of workers: splits are decided per line, the rows of every
split stay in file order, and vocabularies are ranked by count and key.

Workers are fresh Python processes running serve() (ProcessPool): they import
this module (numpy and the data code, not jax), so a pool starts in about half a
second, and nothing forks the process running jax.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading

import numpy as np

from gin_jax.data import hashing, spill, text, vocab
from gin_jax.data.encode import Encoder
from gin_jax.data.formats import Format, Layout, RawChunk

SPLITS = 3  # train, valid, test


def available_cores() -> int:
  """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  quota = _cgroup_quota()
  return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
  """The CPUs of a cgroup v2 quota (a container's --cpus), rounded up; None without."""
  try:
    with open("/sys/fs/cgroup/cpu.max") as f:
      limit, period = f.read().split()[:2]
  except (OSError, ValueError):
    return None
  if limit == "max":
    return None
  return max(1, math.ceil(int(limit) / int(period)))


class WorkerDied(RuntimeError):
  """A worker process ended without finishing its chunk (killed, or out of memory)."""


_CHILD = "from gin_jax.data import workers; workers.serve()"  # a child's whole program
_INDEX_VARIABLE = "GIN_DATA_WORKER"  # a child's index in its pool


class ProcessPool(concurrent.futures.Executor):
  """`workers` child processes running workers.serve(), fed by threads.

  Not multiprocessing's pools: their children re-run the caller's main script (a
  script without an `if __name__ == "__main__":` guard would prepare again in every
  child) or fork a process that runs jax. These children start clean, import only
  this module, and talk through their stdin and stdout (length-prefixed pickles of
  module-level functions and their arguments: tasks and results stay inside one
  process tree). One thread per child sends it the tasks of its queue and resolves
  their futures; a task goes to an idle child, else to a new one while there are
  fewer than `workers`, else to the least busy, or to the one `submit_to` names
  (the child that holds a parsed chunk encodes it): children are started only for
  tasks, never more than run at once. `set_context` hands every child an object
  (pass 2's encoder) once, before its next task.
  """

  def __init__(self, workers: int):
    self._size = workers  # children at most: one is started when a task finds none idle
    self._queues: list[queue.SimpleQueue] = []
    self._pending: list[int] = []  # tasks queued or running, per child
    self._dead: list[bool] = []  # per child: whether it ended (its tasks fail at once)
    self._procs: list[subprocess.Popen] = []
    self._threads: list[threading.Thread] = []
    self._lock = threading.Lock()
    self._context: tuple[int, bytes] | None = None
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    self._env = env

  def _start(self) -> int:
    """Starts one more child and its feeding thread (under the lock); returns its index."""
    k = len(self._procs)
    self._procs.append(
      subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**self._env, _INDEX_VARIABLE: str(k)},
      )
    )
    self._queues.append(queue.SimpleQueue())
    self._pending.append(0)
    self._dead.append(False)
    self._threads.append(threading.Thread(target=self._feed, args=(k,), daemon=True))
    self._threads[k].start()
    return k

  def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
    """fn(*args, **kwargs) in an idle child, a new one, or the one with the fewest tasks."""
    return self.submit_to(None, fn, *args, **kwargs)

  def submit_to(self, worker: int | None, fn, /, *args, **kwargs) -> concurrent.futures.Future:
    """fn(*args, **kwargs) in child `worker` (its index; None: see submit)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    task = pickle.dumps((fn, args, kwargs), protocol=5)
    with self._lock:
      if worker is None:
        live = [k for k, dead in enumerate(self._dead) if not dead] or range(len(self._procs))
        idle = [k for k in live if self._pending[k] == 0]
        if idle:
          worker = idle[0]
        elif len(self._procs) < self._size:
          worker = self._start()  # so an input of 4 chunks starts 4 children at most
        else:
          worker = min(live, key=self._pending.__getitem__)
      self._pending[worker] += 1
    self._queues[worker].put((future, task))
    return future

  def set_context(self, obj) -> None:
    """Every child gets `obj` (workers.context()) before the next task it runs."""
    self._context = (id(obj), pickle.dumps(obj, protocol=5))

  def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
    for q in self._queues:
      if cancel_futures:
        while True:
          try:
            future, _ = q.get_nowait()
          except queue.Empty:
            break
          future.cancel()
      q.put(None)
    if wait:
      for t in self._threads:
        t.join()
    for p in self._procs:
      p.wait() if wait else p.kill()

  def _feed(self, k: int) -> None:
    proc, tasks = self._procs[k], self._queues[k]
    sent, dead = None, False
    try:
      while (item := tasks.get()) is not None:
        future, task = item
        try:
          if not future.set_running_or_notify_cancel():
            continue
          if dead:
            future.set_exception(WorkerDied(f"worker process {proc.pid} is gone"))
            continue
          try:
            if self._context is not None and self._context[0] != sent:
              sent = self._context[0]
              _send(proc.stdin, b"C" + self._context[1])
            _send(proc.stdin, b"T" + task)
            reply = _receive(proc.stdout)
          except (OSError, EOFError):
            dead = self._dead[k] = True
            try:
              code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
              code = None
            future.set_exception(
              WorkerDied(f"worker process {proc.pid} ended (exit status {code}) during its chunk")
            )
            continue
          ok, value = pickle.loads(reply)
          future.set_result(value) if ok else future.set_exception(value)
        finally:
          with self._lock:
            self._pending[k] -= 1
    finally:
      with contextlib.suppress(OSError):
        proc.stdin.close()


def _send(pipe, payload: bytes) -> None:
  pipe.write(struct.pack("<Q", len(payload)))
  pipe.write(payload)
  pipe.flush()


def _receive(pipe) -> bytes:
  head = pipe.read(8)
  if len(head) < 8:
    raise EOFError
  (n,) = struct.unpack("<Q", head)
  data = pipe.read(n)
  if len(data) < n:
    raise EOFError
  return data


_CONTEXT: list = [None]  # The object set_context last sent to this child.


def context():
  """In a child: the object the pool's set_context sent (pass 2's encoder)."""
  return _CONTEXT[0]


def serve() -> None:
  """A child's loop: run each task read from stdin, write its result to stdout."""
  inp, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # print() in a task goes to stderr, never into the replies
  while True:
    try:
      message = _receive(inp)
    except EOFError:
      return
    if message[:1] == b"C":
      _CONTEXT[0] = pickle.loads(message[1:])
      continue
    fn, args, kwargs = pickle.loads(message[1:])
    try:
      reply = (True, fn(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - every error goes back to the caller
      reply = (False, e)
    try:
      payload = pickle.dumps(reply, protocol=5)
    except Exception as e:  # noqa: BLE001 - an error that does not pickle
      payload = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")), protocol=5)
    _send(out, payload)


# ------------------------------------------------------------------ pass 1


@dataclasses.dataclass
class Parsed:
  """What pass 1 learned of one chunk.

  Attributes:
    rows, positives: int64 / float64 [3] per split.
    values_not_one: whether some value multiplier (libfm) is not 1.
    truncated: {multi-valued column: rows whose list was cut to max_values}.
    bad: the bad rows, (line, reason[, where]).
    counts: {counted column: (unique keys, their counts, Counter of long tokens,
      rows where it is empty)} over the chunk's training rows.
    raw, split: the parsed rows and their splits (None in a worker process).
    part: a worker process: the name its parsed rows go by in pass 2 (encode_part).
    holder: the index of the worker process that holds them in memory (only it can
      encode them); None: they are in the part file named `part`.
  """

  rows: np.ndarray
  positives: np.ndarray
  values_not_one: bool
  truncated: dict
  bad: list
  counts: dict
  raw: RawChunk | None = None
  split: np.ndarray | None = None
  part: str | None = None
  holder: int | None = None


@dataclasses.dataclass(frozen=True)
class ParseTask:
  """Pass 1 on one (index, chunk) of an input; picklable, so it runs in any process.

  Attributes:
    fmt, layout: how the input is parsed.
    ratios, seed: the split of the training file (assign_splits).
    cuts: data.split_by=line: the last lines of the train and valid splits
      (line_splits); None: the seeded hash of assign_splits.
    fixed: the split of every row of a valid/test file (None: the training file).
    bucketize: numeric columns become bucket values (data.numeric).
    counted: the columns whose categories are counted.
    spill_dir: None: the parsed rows go back in the result (the main process's
      threads). Else (a worker process) the worker keeps them for pass 2 while it
      holds under `hold_bytes` of them, and writes them to the part file
      `spill_dir/<input>-<index>.bin` beyond.
    input_index: which input of the dataset (part names).
    hold_bytes: the parsed rows a worker process keeps in memory.
  """

  fmt: Format
  layout: Layout
  ratios: tuple[float, float, float]
  seed: int
  fixed: int | None
  bucketize: bool
  counted: tuple
  spill_dir: str | None = None
  input_index: int = 0
  hold_bytes: int = 0
  cuts: tuple[int, int] | None = None

  def __call__(self, item) -> Parsed:
    index, chunk = item
    raw, bad = self.fmt.parse_chunk(chunk, self.layout)
    if self.bucketize:
      raw = dataclasses.replace(raw, numbers=vocab.bucketize(raw.numbers), bucketized=True)
    if self.fixed is None and self.cuts is not None:
      split = line_splits(raw.lines, self.cuts)
    elif self.fixed is None:
      split = assign_splits(raw.lines, self.ratios, self.seed)
    else:
      split = np.full(len(raw), self.fixed, np.uint8)
    out = Parsed(
      rows=np.bincount(split, minlength=SPLITS).astype(np.int64),
      positives=np.bincount(split, weights=raw.labels, minlength=SPLITS),
      values_not_one=raw.values is not None and bool((raw.values != 1).any()),
      truncated=dict(raw.truncated),
      bad=bad,
      counts=count_categories(raw, split, self.counted),
    )
    if self.spill_dir is None:
      out.raw, out.split = raw, split
      return out
    name = f"{self.input_index:04d}-{index:09d}"
    size = raw.nbytes
    if _HELD_BYTES[0] + size <= self.hold_bytes:
      _HELD[name] = (raw, split)
      _HELD_BYTES[0] += size
      out.part, out.holder = name, _INDEX
    else:
      out.part = os.path.join(self.spill_dir, name + ".bin")
      spill.write_part(out.part, raw, split)
    return out


_INDEX = int(os.environ.get(_INDEX_VARIABLE, "-1"))  # this worker's index in its pool
_HELD: dict = {}  # a worker's parsed chunks kept for pass 2: name -> (raw, split)
_HELD_BYTES = [0]


def assign_splits(lines: np.ndarray, ratios, seed: int) -> np.ndarray:
  """uint8 [n] split (0 train, 1 valid, 2 test) of each row, from its line number.

  A seeded hash of the line number, compared with the cumulative ratios; a split whose
  ratio is 0 gets no row.
  """
  salt = np.uint64((seed * 0x9E37_79B1 + 1) % 2**64)
  u = hashing.hash_keys(np.asarray(lines, np.uint64) ^ salt)
  u = (u >> np.uint64(11)).astype(np.float64) * 2.0**-53
  t1 = ratios[0] if ratios[1] + ratios[2] > 0 else 2.0
  t2 = ratios[0] + ratios[1] if ratios[2] > 0 else 2.0
  return ((u >= t1).astype(np.uint8) + (u >= t2)).astype(np.uint8)


def line_cuts(first: int, last: int, ratios) -> tuple[int, int]:
  """data.split_by=line: the last line of the train split and of the valid split, for
  an input whose rows are lines `first`..`last` and the splits' ratios."""
  n = last - first + 1
  c1 = first - 1 + round(ratios[0] * n)
  return c1, max(c1, first - 1 + round((ratios[0] + ratios[1]) * n))


def line_splits(lines: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
  """uint8 [n] split of each row by its line: train up to cuts[0], valid up to cuts[1],
  test after (data.split_by=line)."""
  lines = np.asarray(lines)
  return ((lines > cuts[0]).astype(np.uint8) + (lines > cuts[1])).astype(np.uint8)


def count_categories(raw: RawChunk, split: np.ndarray, counted) -> dict:
  """Unique keys with counts per counted column, over the chunk's training rows."""
  train = split == 0
  if not train.all():
    raw = raw.take(train)
  counts = {}
  for col in counted:
    if col.kind == "numeric":  # Already bucketized; keys of NaN (missing) dropped.
      keys, n = vocab.count_unique(vocab.number_keys(raw.numbers_of(col.name)))
      empty = np.isnan(vocab.key_numbers(keys))
      real = ~empty
      longs = {}
    elif col.kind == "multi_valued":  # every value of the lists; padding keys dropped
      counts[col.name] = _count_list(raw, col)
      continue
    else:
      keys, n = vocab.count_unique(raw.keys_of(col.name))
      empty = keys == text.MISSING_KEY
      real = ~empty & (keys != text.LONG_KEY)
      longs = collections.Counter(raw.long_tokens_of(col.name).values())
    counts[col.name] = (keys[real], n[real], longs, int(n[empty].sum()))
  return counts


def _count_list(raw: RawChunk, col) -> tuple:
  """A multi-valued column's (keys, counts, long tokens, rows with an empty list)."""
  values = raw.lists[col.name]
  keys, n = vocab.count_unique(values.keys)
  real = (keys != text.MISSING_KEY) & (keys != text.LONG_KEY)
  longs = collections.Counter(values.long_tokens.values())
  empty = int(np.count_nonzero(values.lengths == 0))
  return keys[real], n[real], longs, empty


# ------------------------------------------------------------------ pass 2


@dataclasses.dataclass
class Encoding:
  """Pass 2's context in a child: the dataset's encoder, columns and split files."""

  encoder: Encoder
  files: list[dict[str, str]]  # per split: {"ids", "labels", ...} -> .npy path
  cat: tuple[str, ...]
  num: tuple[str, ...]
  lists: tuple[str, ...] = ()
  arrays: list | None = None  # the files' memory maps, opened on first use

  def __getstate__(self):
    return {**self.__dict__, "arrays": None}


def encode_part(task: tuple[str, np.ndarray]) -> np.ndarray:
  """Pass 2 of one part file, in a child: encodes its rows and writes them at `offsets`.

  Args:
    task: (the chunk's Parsed.part: a chunk this worker holds, or a part file, removed
      when done; int64 [3] rows of each split before it).

  Returns:
    int64 [3]: the rows written to each split.
  """
  path, offsets = task
  enc: Encoding = context()
  if enc.arrays is None:
    enc.arrays = [{k: np.load(p, mmap_mode="r+") for k, p in s.items()} for s in enc.files]
  if path in _HELD:
    raw, split = _HELD.pop(path)
  else:
    raw, split = spill.read_part(path, enc.cat, enc.num, enc.lists)
    os.remove(path)
  return encode_and_write(enc.encoder, enc.arrays, raw, split, offsets)


# The padded ids and values pass 2 builds at a time (a Criteo chunk's are ~9 MB: one
# block; lists padded to max_values 1024 take 8 KB a row: blocks of ~2,000 rows).
ENCODE_BLOCK_BYTES = 16 << 20


def encode_and_write(encoder: Encoder, arrays, raw: RawChunk, split, offsets) -> np.ndarray:
  """Encodes a chunk a block of rows at a time and writes them into the splits' arrays.

  Args:
    encoder: the dataset's.
    arrays: per split, {"ids", "labels", ...} -> writable array (the .npy files).
    raw, split: the chunk and the split of each row.
    offsets: int64 [3] rows of each split before the chunk's.

  Returns:
    int64 [3]: the rows written to each split.
  """
  filled = np.array(offsets, np.int64)
  block = max(1, ENCODE_BLOCK_BYTES // (8 * max(encoder.num_slots, 1)))
  for a in range(0, len(raw), block):
    b = min(a + block, len(raw))
    part = raw if b - a == len(raw) else raw.rows(a, b)
    ids, values = encoder.encode(part)
    write_rows(arrays, filled, part, split[a:b], ids, values)
  return filled - offsets


def write_rows(arrays, filled: np.ndarray, raw: RawChunk, split, ids, values) -> None:
  """Writes one encoded chunk's rows into their splits' arrays, after `filled` rows."""
  for s in np.flatnonzero(np.bincount(split, minlength=SPLITS)):
    rows = split == s
    a, b = filled[s], filled[s] + np.count_nonzero(rows)
    out = arrays[s]
    out["ids"][a:b] = ids[rows]
    out["labels"][a:b] = raw.labels[rows]
    out["line_numbers"][a:b] = raw.lines[rows]
    if "values" in out:
      out["values"][a:b] = values[rows]
    filled[s] = b
