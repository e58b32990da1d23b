"""The serving batcher on a stand-in model: batching, splitting, the queue bound, deadlines."""

import threading
import time

import numpy as np
import pytest

from gin_jax.serving.batcher import Batcher, Closed, DeadlineExceeded, Overloaded


class FakeVersion:
  """Scores row i as ids[i, 0] / 1000; records each call's size; can be held."""

  def __init__(self):
    self.calls = []
    self.gate = threading.Event()
    self.gate.set()

  def predict(self, ids, values):
    self.gate.wait(10)
    self.calls.append(len(ids))
    return ids[:, 0].astype(np.float32) / 1000


def _request(b, version, ids, deadline_s=10.0):
  box, done = {}, threading.Event()

  def on_done(result):
    box["result"] = result
    done.set()

  rows = np.asarray(ids, np.int32).reshape(-1, 1)
  pending = b.submit(version, rows, np.ones_like(rows, np.float32), time.monotonic() + deadline_s,
                     on_done)  # fmt: skip
  return box, done, pending


def test_requests_that_queue_during_a_call_are_scored_in_one_call_in_their_order():
  v = FakeVersion()
  b = Batcher(max_batch=64, timeout_s=0, max_queue=256)
  v.gate.clear()
  first = _request(b, v, [1])  # taken at once; the call waits at the gate
  time.sleep(0.05)
  others = [_request(b, v, range(10 * k, 10 * k + 5)) for k in range(1, 5)]
  v.gate.set()
  for _, done, _ in [first, *others]:
    assert done.wait(5)
  assert v.calls == [1, 20]  # the four queued requests: one call
  for k, (box, _, _) in enumerate(others, 1):
    np.testing.assert_allclose(box["result"], np.arange(10 * k, 10 * k + 5) / 1000)
  b.close()


def test_a_batch_with_room_waits_up_to_the_timeout_for_more():
  v = FakeVersion()
  b = Batcher(max_batch=64, timeout_s=0.5, max_queue=256)
  requests = []
  for k in range(4):
    requests.append(_request(b, v, [k]))
    time.sleep(0.02)
  for _, done, _ in requests:
    assert done.wait(5)
  assert v.calls == [4]
  b.close()


def test_a_request_over_max_batch_is_split_and_reassembled():
  v = FakeVersion()
  b = Batcher(max_batch=16, timeout_s=0, max_queue=64)
  box, done, _ = _request(b, v, range(50))
  assert done.wait(5)
  np.testing.assert_allclose(box["result"], np.arange(50) / 1000)
  assert sorted(v.calls) == [2, 16, 16, 16] and max(v.calls) <= 16
  b.close()


def test_parts_of_different_versions_are_never_in_one_call():
  old, new = FakeVersion(), FakeVersion()
  b = Batcher(max_batch=64, timeout_s=0, max_queue=256)
  old.gate.clear()
  a = _request(b, old, [1])
  time.sleep(0.05)
  rest = [_request(b, old, [2]), _request(b, new, [3]), _request(b, old, [4])]
  old.gate.set()
  for _, done, _ in [a, *rest]:
    assert done.wait(5)
  assert sum(old.calls) == 3 and new.calls == [1]
  assert [box["result"][0] for box, _, _ in rest] == pytest.approx([0.002, 0.003, 0.004])
  b.close()


def test_a_full_queue_refuses_at_once():
  v = FakeVersion()
  v.gate.clear()
  b = Batcher(max_batch=8, timeout_s=0, max_queue=16)
  held = _request(b, v, range(8))  # in the call, at the gate
  time.sleep(0.05)
  queued = _request(b, v, range(16))  # fills the queue
  started = time.monotonic()
  with pytest.raises(Overloaded):
    _request(b, v, [1])
  assert time.monotonic() - started < 1
  v.gate.set()
  assert held[1].wait(5) and queued[1].wait(5)
  b.close()


def test_a_request_past_its_deadline_is_not_scored():
  v = FakeVersion()
  v.gate.clear()
  b = Batcher(max_batch=8, timeout_s=0, max_queue=64)
  held = _request(b, v, [1])
  time.sleep(0.05)
  late = _request(b, v, [2, 3], deadline_s=0.05)
  time.sleep(0.1)
  v.gate.set()
  assert held[1].wait(5) and late[1].wait(5)
  assert isinstance(late[0]["result"], DeadlineExceeded)
  assert v.calls == [1]
  b.close()


def test_close_answers_what_is_queued_then_refuses():
  v = FakeVersion()
  v.gate.clear()
  b = Batcher(max_batch=4, timeout_s=0, max_queue=64)
  requests = [_request(b, v, [k, k + 1]) for k in range(6)]
  closer = threading.Thread(target=b.close)
  closer.start()
  time.sleep(0.05)
  with pytest.raises(Closed):
    _request(b, v, [9])
  v.gate.set()
  closer.join(5)
  assert not closer.is_alive()
  assert all(done.is_set() and len(box["result"]) == 2 for box, done, _ in requests)


def test_a_failing_call_fails_its_requests_and_the_batcher_goes_on():
  v = FakeVersion()
  b = Batcher(max_batch=8, timeout_s=0, max_queue=64)
  broken = FakeVersion()
  broken.predict = lambda ids, values: 1 / 0
  box, done, _ = _request(b, broken, [1])
  assert done.wait(5) and isinstance(box["result"], ZeroDivisionError)
  box, done, _ = _request(b, v, [7])
  assert done.wait(5) and box["result"][0] == pytest.approx(0.007)
  b.close()


def test_a_model_giving_the_wrong_shape_fails_its_requests_not_the_worker():
  v, wrong = FakeVersion(), FakeVersion()
  wrong.predict = lambda ids, values: np.zeros(len(ids) + 1, np.float32)
  b = Batcher(max_batch=8, timeout_s=0, max_queue=64)
  box, done, _ = _request(b, wrong, [1, 2])
  assert done.wait(5) and "probabilities for 2 rows" in str(box["result"])
  box, done, _ = _request(b, v, [7])
  assert done.wait(5) and box["result"][0] == pytest.approx(0.007)
  b.close()
