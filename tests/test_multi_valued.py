"""Multi-valued fields in the model: slots pooled into one field vector (issue #22, DESIGN 7).

A multi-valued field takes max_values slots of the ids / values arrays; a value
carries 1/count (mean pooling) or 1 (sum pooling) and a padding slot the id one
past the real rows with value 0. These tests hold the model side to a numpy
reading of that: forward, gradient, padding never touched, 1 = 8 devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gin_jax import models as model_lib
from gin_jax.config import ATTENTION_MISSING, ModelConfig, TrainConfig
from gin_jax.models.layers import embed_rows, pool_slots
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

ROWS, DIM = 30, 4
FIELD_SLOTS = (1, 4, 1)  # a single-valued field, a 4-value list, a single-valued field
PAD = ROWS  # one past the real rows


def _slots(lists, pooling):
  """ids, values [n, 4] of one multi-valued field's lists (an empty list: the missing id 0).

  pooling "attention": each value's slot holds 1 (a mask) and an empty list's missing
  id ATTENTION_MISSING (data.encode.Encoder._lists)."""
  ids = np.full((len(lists), 4), PAD, np.int32)
  values = np.zeros((len(lists), 4), np.float32)
  for r, values_r in enumerate(lists):
    empty = not values_r
    values_r = values_r[-4:] or [0]  # the LAST max_values; empty: missing (id 0), weight 1
    ids[r, : len(values_r)] = values_r
    values[r, : len(values_r)] = 1.0 / len(values_r) if pooling == "mean" else 1.0
    if empty and pooling == "attention":
      values[r, 0] = ATTENTION_MISSING
  return ids, values


def _batch(pooling, rng):
  lists = [[], [3], [3, 5, 7, 9], [2, 4, 6, 8, 10, 12]]  # empty, one, full, truncated
  mv_ids, mv_values = _slots(lists, pooling)
  n = len(lists)
  ids = np.concatenate(
    [rng.integers(11, 20, (n, 1)), mv_ids, rng.integers(20, 30, (n, 1))], axis=1
  ).astype(np.int32)
  values = np.concatenate([np.ones((n, 1)), mv_values, np.ones((n, 1))], axis=1)
  return ids, values.astype(np.float32), lists


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pooling_forward_and_gradient_match_numpy(pooling):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(ROWS, DIM)).astype(np.float32)
  ids, values, lists = _batch(pooling, rng)
  upstream = rng.normal(size=(len(lists), 3, DIM)).astype(np.float32)

  pooled = embed_rows({"t": jnp.asarray(table)}, ids, values, FIELD_SLOTS)["t"]
  want = np.zeros((len(lists), 3, DIM), np.float32)
  grad_want = np.zeros_like(table)
  for r, values_r in enumerate(lists):
    kept = values_r[-4:] or [0]
    weight = 1.0 / len(kept) if pooling == "mean" else 1.0
    want[r, 0] = table[ids[r, 0]]
    want[r, 1] = weight * table[kept].sum(axis=0)
    want[r, 2] = table[ids[r, 5]]
    grad_want[ids[r, 0]] += upstream[r, 0]
    for v in kept:  # each value's gradient: the field's, times 1/count under mean
      grad_want[v] += weight * upstream[r, 1]
    grad_want[ids[r, 5]] += upstream[r, 2]
  np.testing.assert_allclose(pooled, want, rtol=1e-6, atol=1e-6)

  def loss(t):
    return jnp.sum(embed_rows({"t": t}, ids, values, FIELD_SLOTS)["t"] * upstream)

  np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(table)), grad_want, rtol=1e-5, atol=1e-6)


def test_single_valued_slots_pass_through_untouched():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3, 2)), jnp.float32)
  assert pool_slots(x, None) is x and pool_slots(x, (1, 1, 1)) is x
  np.testing.assert_array_equal(pool_slots(x, (1, 2)), np.stack([x[:, 0], x[:, 1] + x[:, 2]], 1))


def _spec(padded_rows, attention=()):
  cfg = ModelConfig(embed_dim=DIM, num_layers=1, num_subspaces=2, mlp_hidden=(8,))
  return model_lib.ModelSpec(
    cfg, len(FIELD_SLOTS), ROWS, padded_rows, field_slots=FIELD_SLOTS, attention=attention
  )


@pytest.mark.parametrize("optimizer", ["lazy_adam", "rowwise_adagrad"])
def test_padding_and_absent_rows_are_bit_identical_after_a_step(optimizer):
  """Row PAD (a zero padding row here: padded_rows > ROWS) and a real row that no batch
  uses keep their values and optimizer state bit for bit; a used value's row moves."""
  mesh = partitioning.make_mesh(jax.devices()[:1])
  cfg = TrainConfig(learning_rate=1e-2, embedding_optimizer=optimizer, embedding_l2=0.0)
  fns = steps_lib.build(_spec(ROWS + 2), cfg, mesh)
  state = fns.init(jax.random.key(0))
  before = jax.tree.map(np.asarray, state)
  ids, values, _ = _batch("mean", np.random.default_rng(2))
  batch = {"ids": ids, "values": values, "labels": np.array([0, 1, 1, 0], np.float32)}
  state, _ = fns.train_step(state, partitioning.shard_batch(mesh, batch))
  table = np.asarray(state["params"]["projection"]["table"])
  absent = 1  # in no slot of the batch
  assert absent not in ids
  for row in (PAD, absent):
    np.testing.assert_array_equal(table[row], before["params"]["projection"]["table"][row])
    for new, old in zip(
      jax.tree.leaves(state["embedding"]["slots"]), jax.tree.leaves(before["embedding"]["slots"])
    ):
      np.testing.assert_array_equal(np.asarray(new)[row], old[row])
  assert not np.array_equal(table[9], before["params"]["projection"]["table"][9])  # a list value


@pytest.mark.parametrize("pooling", ["mean", "attention"])  # attention: against field 0
def test_one_and_eight_devices_give_the_same_losses_with_a_multi_valued_field(pooling):
  rng = np.random.default_rng(3)
  attention = ((1, 0),) if pooling == "attention" else ()
  batches = []
  for _ in range(3):
    ids, values, _ = _batch(pooling, rng)
    ids, values = np.tile(ids, (16, 1)), np.tile(values, (16, 1))  # 64 rows: 8 per device
    batches.append({"ids": ids, "values": values, "labels": rng.integers(0, 2, 64).astype("f4")})

  def losses(ndev):
    mesh = partitioning.make_mesh(jax.devices()[:ndev])
    spec = _spec(model_lib.padded_table_rows(ROWS, 8), attention)
    fns = steps_lib.build(spec, TrainConfig(), mesh)
    state, out = fns.init(jax.random.key(0)), []
    for batch in batches:
      state, metrics = fns.train_step(state, partitioning.shard_batch(mesh, batch))
      out.append(float(metrics["loss"]))
    return np.array(out)

  np.testing.assert_allclose(losses(8), losses(1), rtol=1e-5)
