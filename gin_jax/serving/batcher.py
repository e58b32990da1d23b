"""Micro-batching: concurrent requests scored together in one compiled call.

Requests are queued as parts of at most `max_batch` candidates (a larger request
is split). One worker thread takes the oldest part, then waits at most
`timeout_s` for more parts of the same version while the batch has room, and
scores them in one call (padded to a compiled size, ServedVersion.predict). A part
whose request has passed its deadline, or was given up, is dropped unscored.

The queue is bounded in candidates: a request that would overflow it is refused
at once (Overloaded), never left to wait. `close` stops taking requests and
returns once every queued part is answered.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np


class Overloaded(Exception):
  """The queue is full: answer 503 and ask the client to retry."""


class Closed(Exception):
  """The batcher is shutting down and takes no new requests."""


class DeadlineExceeded(Exception):
  """The request's deadline passed before it was scored."""


class Pending:
  """A request in the queue: its parts' probabilities gather here.

  `on_done(probs or exception)` is called once, from the worker thread, when every
  part is scored or the first one fails.
  """

  def __init__(self, n: int, parts: int, deadline: float, on_done: Callable):
    self.probs = np.empty(n, np.float32)
    self.deadline = deadline
    self._parts = parts
    self._on_done = on_done
    self._lock = threading.Lock()
    self.finished = False

  def part_done(self, start: int, probs: np.ndarray) -> None:
    self.probs[start : start + len(probs)] = probs
    with self._lock:
      self._parts -= 1
      last = self._parts == 0 and not self.finished
      self.finished |= last
    if last:
      self._on_done(self.probs)

  def fail(self, error: BaseException) -> None:
    with self._lock:
      first = not self.finished
      self.finished = True
    if first:
      self._on_done(error)

  def give_up(self) -> None:
    """The caller stopped waiting (its own deadline): parts not yet run are dropped."""
    with self._lock:
      self.finished = True


@dataclasses.dataclass
class _Part:
  request: Pending
  version: object  # The ServedVersion that encoded it, and must score it.
  ids: np.ndarray
  values: np.ndarray
  start: int  # Its first candidate's index in the request.

  @property
  def n(self) -> int:
    return len(self.ids)


class Batcher:
  """A bounded queue of requests and the thread that scores them in batches.

  Args:
    max_batch: the most candidates one call scores.
    timeout_s: how long a batch with room waits for more requests.
    max_queue: the most candidates waiting (at least max_batch).
    on_batch: called with (candidates, seconds) after each call (metrics).
  """

  def __init__(self, max_batch: int, timeout_s: float, max_queue: int, on_batch=None):
    self.max_batch = max_batch
    self.timeout_s = timeout_s
    self.max_queue = max(max_queue, max_batch)
    self._on_batch = on_batch or (lambda n, s: None)
    self._queue: collections.deque[_Part] = collections.deque()
    self._queued = 0  # Candidates in the queue.
    self._cond = threading.Condition()
    self._closing = False
    self._thread = threading.Thread(target=self._run, name="gin-serve-batcher", daemon=True)
    self._thread.start()

  @property
  def depth(self) -> int:
    """Candidates waiting in the queue."""
    return self._queued

  def submit(self, version, ids: np.ndarray, values: np.ndarray, deadline: float, on_done):
    """Queues a request's encoded candidates; returns its Pending.

    Raises Overloaded when the queue has no room for them, Closed after close().
    """
    n = len(ids)
    starts = range(0, n, self.max_batch)
    pending = Pending(n, len(starts), deadline, on_done)
    parts = [
      _Part(pending, version, ids[s : s + self.max_batch], values[s : s + self.max_batch], s)
      for s in starts
    ]
    with self._cond:
      if self._closing:
        raise Closed()
      if self._queued and self._queued + n > self.max_queue:
        raise Overloaded()
      self._queue.extend(parts)
      self._queued += n
      self._cond.notify()
    if not parts:
      on_done(pending.probs)
    return pending

  def close(self, timeout: float | None = None) -> None:
    """Takes no more requests; returns when the queued ones are answered (or timeout)."""
    with self._cond:
      self._closing = True
      self._cond.notify_all()
    self._thread.join(timeout)

  # ------------------------------------------------------------------ the worker

  def _run(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      now = time.monotonic()
      live = []
      for part in batch:
        if part.request.finished:
          continue  # Given up, or another part failed.
        if now > part.request.deadline:
          part.request.fail(DeadlineExceeded())
        else:
          live.append(part)
      if live:
        self._score(live)

  def _next_batch(self) -> list[_Part] | None:
    with self._cond:
      while not self._queue:
        if self._closing:
          return None
        self._cond.wait()
      first = self._take()
      batch, total = [first], first.n
      wait_until = time.monotonic() + self.timeout_s
      while total < self.max_batch:
        if not self._queue:
          left = wait_until - time.monotonic()
          if left <= 0 or self._closing:
            break
          self._cond.wait(left)
          continue
        nxt = self._queue[0]
        if nxt.version is not first.version or total + nxt.n > self.max_batch:
          break
        batch.append(self._take())
        total += nxt.n
      return batch

  def _take(self) -> _Part:
    part = self._queue.popleft()
    self._queued -= part.n
    return part

  def _score(self, parts: list[_Part]) -> None:
    """Scores the parts in one call; any failure fails their requests, never the worker."""
    try:
      version = parts[0].version
      if len(parts) == 1:
        ids, values = parts[0].ids, parts[0].values
      else:
        ids = np.concatenate([p.ids for p in parts])
        values = np.concatenate([p.values for p in parts])
      started = time.perf_counter()
      probs = np.asarray(version.predict(ids, values), np.float32)
      if probs.shape != (len(ids),):
        raise RuntimeError(f"the model gave {probs.shape} probabilities for {len(ids)} rows")
      self._on_batch(len(ids), time.perf_counter() - started)
    except Exception as e:  # noqa: BLE001 - a failed call fails its requests, not the server
      for p in parts:
        p.request.fail(e)
      return
    at = 0
    for p in parts:
      p.request.part_done(p.start, probs[at : at + p.n])
      at += p.n
