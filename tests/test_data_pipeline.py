"""The grain pipeline: seeded epochs, process sharding, exact resume, eval batches."""

import json
import pickle

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import Split, eval_batches, pipeline, prepare, train_iterator
from gin_jax.data.meta import ones_values

N, F = 1000, 3


def _split(n=N, values=False) -> Split:
  """Row r has ids [3r, 3r+1, 3r+2], label r % 2, so every batch row names its row."""
  ids = np.arange(n * F, dtype=np.int32).reshape(n, F)
  vals = ids.astype(np.float32) / 7 if values else ones_values(n, F)
  return Split(ids, vals, (np.arange(n) % 2).astype(np.float32), np.arange(1, n + 1))


def _rows(batches) -> list[np.ndarray]:
  return [b["ids"][:, 0] // F for b in batches]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_feistel_is_a_permutation(n):
  keys = pipeline.epoch_keys(0, 0)
  perm = pipeline.feistel_permute(np.arange(n), n, keys)
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_one_epoch_is_a_shuffled_sample_without_replacement():
  split = _split(values=True)
  batches = list(train_iterator(split, 64, seed=0, epoch=0))
  assert len(batches) == N // 64  # Remainder dropped.
  b = batches[0]
  assert b["ids"].dtype == np.int32 and b["values"].dtype == np.float32
  assert b["labels"].dtype == np.float32 and b["ids"].shape == (64, F)
  rows = np.concatenate(_rows(batches))
  assert len(set(rows.tolist())) == len(rows)
  assert not np.array_equal(rows, np.sort(rows))
  r = rows[:64]
  np.testing.assert_array_equal(b["labels"], r % 2)
  np.testing.assert_allclose(b["values"], split.values[r])


def test_order_depends_only_on_seed_and_epoch():
  split = _split()
  a = np.concatenate(_rows(train_iterator(split, 50, seed=3, epoch=1)))
  b = np.concatenate(_rows(train_iterator(split, 50, seed=3, epoch=1)))
  np.testing.assert_array_equal(a, b)
  for seed, epoch in [(3, 2), (4, 1)]:
    c = np.concatenate(_rows(train_iterator(split, 50, seed=seed, epoch=epoch)))
    assert not np.array_equal(a, c)
  # A divisible epoch visits every row exactly once.
  np.testing.assert_array_equal(np.sort(a), np.arange(N))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_share_each_global_batch(processes):
  split = _split()
  single = list(train_iterator(split, 64, seed=1, epoch=0))
  per_process = [
    list(train_iterator(split, 64, seed=1, epoch=0, process_index=p, process_count=processes))
    for p in range(processes)
  ]
  assert all(len(b) == len(single) for b in per_process)
  for k, batch in enumerate(single):
    for key in ("ids", "values", "labels"):
      joined = np.concatenate([per_process[p][k][key] for p in range(processes)])
      np.testing.assert_array_equal(joined, batch[key])
  with pytest.raises(ValueError, match="not divisible"):
    train_iterator(split, 63, seed=0, epoch=0, process_count=2)


def test_resume_from_state_is_exact():
  split = _split()
  it = train_iterator(split, 32, seed=5, epoch=2)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable.
  rest = _rows(it)
  resumed = train_iterator(split, 32, seed=5, epoch=2)
  resumed.set_state(state)
  got = _rows(resumed)
  assert len(got) == len(rest) == N // 32 - 7
  for a, b in zip(rest, got):
    np.testing.assert_array_equal(a, b)


def test_resume_through_orbax_checkpoint(tmp_path):
  split = _split()
  it = train_iterator(split, 64, seed=0, epoch=0)
  for _ in range(4):
    next(it)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.save(4, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = _rows(it)
  resumed = train_iterator(split, 64, seed=0, epoch=0)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.restore(4, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(resumed)))
  got = _rows(resumed)
  assert len(got) == len(expected) == N // 64 - 4
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


def test_worker_processes_give_the_same_batches_and_resume(tmp_path):
  # A prepared (memory-mapped) split: workers reopen its files instead of copying.
  path = tmp_path / "d.tsv"
  from gin_jax.data import SyntheticSpec, write_criteo_tsv

  write_criteo_tsv(path, SyntheticSpec(num_rows=2000, max_vocab=50))
  _, splits = prepare(DataConfig(format="criteo", train=str(path)), tmp_path / "c", progress=False)
  split = splits["train"]
  assert len(pickle.dumps(pipeline.Gather(split, 0, 8))) < 2000
  want = list(train_iterator(split, 64, seed=2, epoch=1))
  it = train_iterator(split, 64, seed=2, epoch=1, num_workers=2)
  try:
    got = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(it.get_state()))
    got += list(it)
  finally:
    it.close()
  assert len(got) == len(want)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["ids"], b["ids"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  resumed = train_iterator(split, 64, seed=2, epoch=1, num_workers=2)
  try:
    resumed.set_state(state)
    rest = list(resumed)
  finally:
    resumed.close()
  for a, b in zip(want[5:], rest):
    np.testing.assert_array_equal(a["ids"], b["ids"])
  assert len(rest) == len(want) - 5


@pytest.mark.parametrize("processes", [1, 2, 4])
@pytest.mark.parametrize("n", [0, 5, 100, 128, 130])
def test_eval_batches_cover_every_row_once_in_order(n, processes):
  split = _split(n, values=True)
  per_process = [
    list(eval_batches(split, 32, process_index=p, process_count=processes))
    for p in range(processes)
  ]
  assert all(len(b) == -(-n // 32) for b in per_process)
  rows, labels, values = [], [], []
  for k in range(len(per_process[0])):
    batch = {key: np.concatenate([b[k][key] for b in per_process]) for key in per_process[0][k]}
    assert batch["ids"].shape == (32, F) and batch["weights"].shape == (32,)
    real = batch["weights"] == 1.0
    assert real.sum() == min(32, n - 32 * k) and real[: real.sum()].all()  # Padding last.
    rows.append(batch["ids"][real, 0] // F)
    labels.append(batch["labels"][real])
    values.append(batch["values"][real])
    assert (batch["labels"][~real] == 0).all()
  rows = np.concatenate(rows) if rows else np.zeros(0)
  np.testing.assert_array_equal(rows, np.arange(n))
  if n:
    np.testing.assert_array_equal(np.concatenate(labels), split.labels)
    np.testing.assert_allclose(np.concatenate(values), split.values)
