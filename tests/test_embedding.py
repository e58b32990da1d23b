"""Row-sparse embedding training (gin_jax.training.embedding) against dense and numpy references."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gin_jax import config as config_lib
from gin_jax import data
from gin_jax import models as model_lib
from gin_jax.config import ModelConfig, TrainConfig
from gin_jax.training import checkpointing, continuation, embedding, partitioning
from gin_jax.training import steps as steps_lib

FIELDS, PER_FIELD, BATCH = 4, 8, 16
ROWS = FIELDS * PER_FIELD
MODEL = ModelConfig(embed_dim=4, num_layers=2, num_subspaces=2, mlp_hidden=(8,))


def _fns(optimizer, l2=0.1, devices=1, rows=ROWS, clip=10.0, lr=1e-2, model=MODEL, **train):
  mesh = partitioning.make_mesh(jax.devices()[:devices])
  spec = model_lib.ModelSpec(model, FIELDS, rows, model_lib.padded_table_rows(rows, devices))
  cfg = TrainConfig(
    learning_rate=lr, embedding_optimizer=optimizer, embedding_l2=l2, clip_norm=clip, **train
  )
  return mesh, steps_lib.build(spec, cfg, mesh)


def _batch(rng, touch_all=True, rows_per_field=PER_FIELD):
  """A batch; with touch_all every row of the table occurs in it."""
  if touch_all:
    within = np.arange(BATCH)[:, None] % PER_FIELD
  else:
    within = rng.integers(0, rows_per_field, (BATCH, FIELDS))
  ids = (np.arange(FIELDS)[None, :] * PER_FIELD + within).astype(np.int32)
  return {
    "ids": ids,
    "values": rng.uniform(0.5, 1.5, (BATCH, FIELDS)).astype(np.float32),
    "labels": rng.integers(0, 2, BATCH).astype(np.float32),
  }


def _run(optimizer, steps=6, touch_all=True, **kw):
  mesh, fns = _fns(optimizer, **kw)
  state = fns.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    state, m = fns.train_step(state, partitioning.shard_batch(mesh, _batch(rng, touch_all)))
    losses.append(float(m["loss"]))
  return np.array(losses), jax.device_get(state)


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched_every_step():
  dense_losses, dense = _run("adam")
  lazy_losses, lazy = _run("lazy_adam")
  np.testing.assert_allclose(lazy_losses, dense_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(lazy["params"]), jax.tree.leaves(dense["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # summation-order round-off
  # ... and the L2 term really acted: without it the table ends elsewhere.
  _, plain = _run("lazy_adam", l2=0.0)
  table = lambda s: s["params"]["projection"]["table"]
  assert np.abs(table(plain) - table(lazy)).max() > 1e-3


def test_first_order_weights_take_their_own_l2_sparse_as_dense():
  """train.linear_l2 sets the `linear` table's lambda; the row-sparse step agrees with dense."""
  wide = dataclasses.replace(MODEL, first_order=True)
  runs = {opt: _run(opt, model=wide, linear_l2=0.0, steps=8) for opt in ("adam", "lazy_adam")}
  (dense_losses, dense), (lazy_losses, lazy) = runs["adam"], runs["lazy_adam"]
  np.testing.assert_allclose(lazy_losses, dense_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(lazy["params"]), jax.tree.leaves(dense["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # The strength really is per table: with linear_l2 unset (= embedding_l2) the
  # linear weights end elsewhere.
  _, shared = _run("lazy_adam", model=wide, steps=8)
  linear = lambda s: s["params"]["projection"]["linear"]
  assert np.abs(linear(shared) - linear(lazy)).max() > 1e-4


def _data_grads(fns, state, batch):
  """d(mean log loss)/d(table) of the dense formulation, no L2 (the reference's input)."""

  def loss(table):
    params = model_lib.with_row_tables(state["params"], {"table": table})
    logits, _ = model_lib.apply_model(
      fns.graphdef, params, state["batch_stats"], batch["ids"], batch["values"], state["masks"],
      train=True, dropout_key=jax.random.key(0),
    )  # fmt: skip
    return jnp.mean(jax.nn.softplus(logits) - batch["labels"] * logits)

  return np.asarray(jax.grad(loss)(state["params"]["projection"]["table"]), np.float64)


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_row_optimizers_match_a_numpy_reference_on_batches_with_idle_rows(optimizer, monkeypatch):
  """Batches touch a few rows each. lazy_adam must equal DENSE Adam with L2 on every
  row every step (the gaps are within its catch-up horizon), computed here in numpy
  over the whole table; rowwise_adagrad must follow its documented update (idle
  rows shrink by (1 - lr lambda / sqrt(G)) per idle step). Untouched rows and their
  state stay bit-for-bit unchanged."""
  monkeypatch.setattr(embedding, "REPLAY_FRACTION", 1)  # replay every entry in this test
  l2, lr, eps, b1, b2 = 0.3, 1e-2, 1e-8, 0.9, 0.999
  mesh, fns = _fns(optimizer, l2=l2, clip=0.0, lr=lr)
  state = jax.device_get(fns.init(jax.random.key(0)))
  rng = np.random.default_rng(1)
  w = np.asarray(state["params"]["projection"]["table"], np.float64)
  acc, m, v = np.zeros(ROWS), np.zeros_like(w), np.zeros_like(w)
  last = np.zeros(ROWS, np.int64)
  for count in range(1, 9):
    batch = _batch(rng, touch_all=False, rows_per_field=3)  # rows 3..7 of each field idle
    touched = np.unique(batch["ids"])
    idle_rows = np.setdiff1d(np.arange(ROWS), touched)
    if optimizer == "rowwise_adagrad":  # catch up, then the data gradient at the new w
      gap = count - 1 - last[touched]
      w[touched] *= ((1 - lr * l2 / (np.sqrt(acc[touched]) + eps)).clip(0, 1) ** gap)[:, None]
    table = model_lib.with_row_tables(state["params"], {"table": w.astype(np.float32)})
    g = _data_grads(fns, {**state, "params": table}, batch) + l2 * w
    before = jax.device_get(state)
    state = jax.device_get(fns.train_step(state, partitioning.shard_batch(mesh, batch))[0])
    if optimizer == "rowwise_adagrad":
      acc[touched] += np.mean(g[touched] ** 2, axis=1)
      w[touched] -= lr * g[touched] / (np.sqrt(acc[touched])[:, None] + eps)
    else:  # dense Adam: every row, every step
      m, v = (1 - b1) * g + b1 * m, (1 - b2) * g**2 + b2 * v
      w -= lr * (m / (1 - b1**count)) / (np.sqrt(v / (1 - b2**count)) + eps)
    last[touched] = count
    new = state["params"]["projection"]["table"]
    np.testing.assert_allclose(new[touched], w[touched], rtol=2e-4, atol=1e-6)
    np.testing.assert_array_equal(state["embedding"]["last"], last)
    # Untouched rows and their optimizer state: bit-for-bit what they were.
    np.testing.assert_array_equal(
      new[idle_rows], before["params"]["projection"]["table"][idle_rows]
    )
    for a, b in zip(
      jax.tree.leaves(state["embedding"]["slots"]), jax.tree.leaves(before["embedding"]["slots"])
    ):
      np.testing.assert_array_equal(a[idle_rows], b[idle_rows])


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_eight_devices_give_the_same_losses_as_one(optimizer):
  rows = 8 * 4 * PER_FIELD // 8  # already a multiple of 8: identical padding
  one, s1 = _run(optimizer, touch_all=False, devices=1, rows=rows)
  eight, s8 = _run(optimizer, touch_all=False, devices=8, rows=rows)
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  np.testing.assert_allclose(
    s8["params"]["projection"]["table"], s1["params"]["projection"]["table"], rtol=1e-4, atol=1e-6
  )


_COLLECTIVE = re.compile(r"= (\([^=]*\)|\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(-start)?\(")  # fmt: skip


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_compiled_step_moves_no_table_sized_operand_between_devices(optimizer):
  """On 8 devices the step's collectives carry [U, d]-sized arrays (U = batch ids),
  never the table, its optimizer state or any per-row state (>= a shard's rows)."""
  rows = 8 * 20_000
  mesh, fns = _fns(optimizer, devices=8, rows=rows)
  state = fns.init(jax.random.key(0))
  _assert_no_table_sized_collective(fns, state, _random_batch(mesh, rows), rows // 8)


def _random_batch(mesh, rows, size=64):
  rng = np.random.default_rng(0)
  batch = {
    "ids": rng.integers(0, rows, (size, FIELDS)).astype(np.int32),
    "values": np.ones((size, FIELDS), np.float32),
    "labels": np.zeros(size, np.float32),
  }
  return partitioning.shard_batch(mesh, batch)


def _assert_no_table_sized_collective(fns, state, batch, shard_rows):
  """Every collective of the compiled train step carries arrays of under `shard_rows` rows."""
  hlo = fns.train_step.lower(state, batch).compile().as_text()
  collectives = [m.group(1) for m in _COLLECTIVE.finditer(hlo)]
  assert collectives, "expected the [U, d] gather/gradient collectives"
  for shapes in collectives:
    dims = [int(d) for d in re.findall(r"\d+", " ".join(re.findall(r"\[([\d,]*)\]", shapes)))]
    assert max(dims, default=0) < shard_rows, shapes


def _blocks(per_field: int) -> data.DatasetMeta:
  """A dataset of FIELDS vocab fields of `per_field` rows each (all continuation reads)."""
  fields = [
    data.FieldSpec(f"C{i}", "categorical", "vocab", i * per_field, per_field) for i in range(FIELDS)
  ]
  return data.DatasetMeta("criteo", fields, FIELDS * per_field, {}, {}, {}, {}, {})


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_a_continued_runs_grown_table_stays_row_sharded_and_off_the_collectives(
  optimizer, tmp_path
):
  """--init-from onto 8 devices (#23): the grown table and its row-optimizer state are
  row-sharded as a fresh run's, and the step still moves no table-sized operand."""
  old_per_field, per_field = 30_000, 40_000  # every field grows by 10,000 rows
  old_rows, rows = FIELDS * old_per_field, FIELDS * per_field  # 160,000: 20,000 a device
  train = TrainConfig(embedding_optimizer=optimizer, stages="single")
  cfg = dataclasses.replace(config_lib.tiny(), model=MODEL, train=train)
  # The source: a checkpoint of the smaller table, random numbers in a one-device run's shapes.
  one = partitioning.make_mesh(jax.devices()[:1])
  spec = model_lib.ModelSpec(MODEL, FIELDS, old_rows, old_rows)
  rng = np.random.default_rng(1)
  old_state = jax.tree.map(
    lambda s: rng.standard_normal(s.shape).astype(s.dtype),
    steps_lib.build(spec, train, one).abstract_state,
  )
  checkpointing.save(checkpointing.manager(tmp_path / "checkpoints", None), 3, old_state, {})
  model_meta = {"model": {"num_rows": old_rows, "padded_rows": old_rows}}
  source = continuation.Source(tmp_path, 3, model_meta, _blocks(old_per_field), cfg)

  mesh = partitioning.make_mesh(jax.devices()[:8])
  fns = steps_lib.build(model_lib.ModelSpec(MODEL, FIELDS, rows, rows), train, mesh)
  fresh = fns.init(jax.random.key(0))
  start = continuation.start_state(source, fresh, fns, _blocks(per_field), cfg)
  for got, want in zip(jax.tree.leaves(start), jax.tree.leaves(fns.state_shardings)):
    assert got.sharding.is_equivalent_to(want, got.ndim), (got.shape, got.sharding, want)

  def per_row(state):  # the table, each row's last update, the row optimizer's slots
    emb = state["embedding"]
    return [state["params"]["projection"]["table"], emb["last"], *jax.tree.leaves(emb["slots"])]

  assert len(per_row(start)) == (4 if optimizer == "lazy_adam" else 3)
  for x, was in zip(per_row(start), per_row(old_state)):
    assert x.shape[0] == rows and x.sharding.spec[0] == partitioning.DATA
    assert {s.data.shape[0] for s in x.addressable_shards} == {rows // 8}
    # Field 1's old rows lead its grown block.
    np.testing.assert_array_equal(
      np.asarray(x)[per_field : per_field + old_per_field], was[old_per_field : 2 * old_per_field]
    )
  _assert_no_table_sized_collective(fns, start, _random_batch(mesh, rows), rows // 8)


def _dense_idle(w, m, v, last, steps, l2, lr, b1=0.9, b2=0.999, eps=1e-8):
  """numpy dense Adam on g = l2 * w for `steps` idle steps after count `last`."""
  w, m, v = (np.array(x, np.float64) for x in (w, m, v))
  for c in range(last + 1, last + steps + 1):
    g = l2 * w
    m, v = (1 - b1) * g + b1 * m, (1 - b2) * g**2 + b2 * v
    w = w - lr * (m / (1 - b1**c)) / (np.sqrt(v / (1 - b2**c)) + eps)
  return w


def test_lazy_adam_closed_form_for_gaps_beyond_the_horizon_tracks_dense_adam():
  """A 300-step gap (horizon 4): the momentum drift matches dense Adam's within 3%,
  and under a strong L2 the row ends near 0, as dense Adam's does."""
  w = np.array([[0.05, -0.02]], np.float32)
  m, v = np.array([[1e-3, -1e-3]], np.float32), np.array([[1e-6, 4e-6]], np.float32)
  last, valid, lr = jnp.array([10]), jnp.array([True]), 1e-3
  slots = {"t": {"m": jnp.asarray(m), "v": jnp.asarray(v)}}
  for l2 in (0.0, 0.5):
    opt = embedding.LazyAdam(l2=l2, catch_up_steps=4)
    rows, out = opt.catch_up({"t": jnp.asarray(w)}, slots, last, valid, 311, lr)
    dense = _dense_idle(w, m, v, 10, 300, l2, lr)
    if l2 == 0.0:
      np.testing.assert_allclose(rows["t"] - w, dense - w, rtol=0.03)
    else:
      assert np.abs(dense).max() < 1e-3 and np.abs(np.asarray(rows["t"])).max() < 1e-3
    np.testing.assert_allclose(out["t"]["m"], m * 0.9**300, rtol=1e-4)


def test_unique_rows_pad_with_an_out_of_range_id_and_invert():
  ids = jnp.array([[5, 2], [5, 9]], jnp.int32)
  uids, inverse = embedding.unique_rows(ids, num_rows=10)
  np.testing.assert_array_equal(uids, [2, 5, 9, 10])
  np.testing.assert_array_equal(uids[inverse], ids)
  table = jnp.arange(10.0)[:, None]
  np.testing.assert_array_equal(embedding.gather({"t": table}, uids)["t"][:, 0], [2, 5, 9, 0])
  new = embedding.scatter({"t": table}, uids, {"t": -jnp.ones((4, 1))})["t"][:, 0]
  np.testing.assert_array_equal(new, [0, 1, -1, 3, 4, -1, 6, 7, 8, -1])


def test_unrolled_replay_equals_the_loop():
  """lazy_adam's two replay forms (a while loop, straight-line code) agree on gaps
  within and beyond the horizon, and both equal numpy dense Adam within it."""
  rng = np.random.default_rng(3)
  u, horizon, count, lr, l2 = 40, 6, 50, 1e-2, 0.3
  w = rng.normal(0, 0.05, (u, 3)).astype(np.float32)
  m = rng.normal(0, 1e-3, (u, 3)).astype(np.float32)
  v = rng.uniform(1e-7, 1e-5, (u, 3)).astype(np.float32)
  gaps = rng.integers(0, 2 * horizon, u)
  last = jnp.asarray(count - 1 - gaps, jnp.int32)
  valid = jnp.asarray(rng.uniform(size=u) < 0.9)
  slots = {"t": {"m": jnp.asarray(m), "v": jnp.asarray(v)}}
  out = {}
  for replay in ("loop", "unrolled"):
    # REPLAY_FRACTION caps the replay at u/8 rows; a horizon-wide budget needs u/8 >= rows.
    opt = embedding.LazyAdam(l2=l2, catch_up_steps=horizon, replay=replay)
    out[replay] = opt.catch_up({"t": jnp.asarray(w)}, slots, last, valid, count, lr)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), *out.values())
  rows = np.asarray(out["loop"][0]["t"])
  replayed = [i for i in range(u) if valid[i] and gaps[i] <= horizon]
  n = max(1, u // embedding.REPLAY_FRACTION)
  longest = sorted(replayed, key=lambda i: -gaps[i])[:n]  # the ones the budget replays
  for i in longest:
    dense = _dense_idle(w[i : i + 1], m[i : i + 1], v[i : i + 1], count - 1 - gaps[i], gaps[i],
                        l2, lr)  # fmt: skip
    np.testing.assert_allclose(rows[i : i + 1], dense, rtol=1e-4, atol=1e-7)
  assert not valid.all() and any(g > horizon for g in gaps)  # both paths exercised


def test_embedding_lr_scale_scales_the_rows_first_step_only():
  """train.embedding_lr_scale multiplies the rows' rate: their first step (Adam's is
  lr times a normalised gradient) is 3x as long; the dense parameters take the same
  first step. (Every row optimizer takes the scaled rate from the same place.)"""
  optimizer = "lazy_adam"
  runs = {s: _run(optimizer, steps=1, l2=0.0, embedding_lr_scale=s) for s in (1.0, 3.0)}
  _, init = _run(optimizer, steps=0, l2=0.0)
  table = lambda s: np.asarray(s["params"]["projection"]["table"], np.float64)
  step = {s: table(state) - table(init) for s, (_, state) in runs.items()}
  assert np.abs(step[1.0]).max() > 1e-4
  np.testing.assert_allclose(step[3.0], 3 * step[1.0], rtol=1e-3, atol=1e-7)
  scaled = dict(jax.tree_util.tree_leaves_with_path(runs[3.0][1]["params"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(runs[1.0][1]["params"]):
    if not any(t in jax.tree_util.keystr(path) for t in ("projection", "linear")):
      np.testing.assert_array_equal(scaled[path], leaf)  # a dense parameter
