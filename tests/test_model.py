"""The whole model: shapes, presets, and sharded forward/backward on 8 fake devices."""

import jax
import numpy as np
import pytest

from gin_jax import models as model_lib
from gin_jax.config import ModelConfig, TrainConfig, criteo_bars, criteo_paper
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

ROWS, FIELDS, BATCH = 500, 39, 64


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    yield {
      "ids": rng.integers(0, ROWS, (BATCH, FIELDS)).astype(np.int32),
      "values": rng.uniform(0.5, 1.5, (BATCH, FIELDS)).astype(np.float32),
      "labels": rng.integers(0, 2, BATCH).astype(np.float32),
    }


def _train_losses(ndev, model_cfg, steps=3):
  mesh = partitioning.make_mesh(jax.devices()[:ndev])
  spec = model_lib.ModelSpec(model_cfg, FIELDS, ROWS, model_lib.padded_table_rows(ROWS, 8))
  fns = steps_lib.build(spec, TrainConfig(learning_rate=1e-2), mesh)
  state = fns.init(jax.random.key(0))
  losses = []
  for batch in _batches(steps):
    state, metrics = fns.train_step(state, partitioning.shard_batch(mesh, batch))
    losses.append(float(metrics["loss"]))
  probs = fns.eval_step(
    state["params"], state["batch_stats"], state["masks"], partitioning.shard_batch(mesh, batch)
  )
  return np.array(losses), np.asarray(probs), state


@pytest.mark.parametrize(
  "model_cfg",
  [
    ModelConfig(embed_dim=8, mlp_hidden=(32, 16)),
    ModelConfig(
      embed_dim=4,
      num_layers=1,
      num_subspaces=4,
      mlp_hidden=(16,),
      mlp_batch_norm=True,
      readout="all",
    ),
  ],
  ids=["paper-like", "bars-like-bn"],
)
def test_sharded_training_matches_one_device(model_cfg):
  loss1, probs1, _ = _train_losses(1, model_cfg)
  loss8, probs8, state8 = _train_losses(8, model_cfg)
  # Same math, different reduction order across shards: float32 round-off only.
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  np.testing.assert_allclose(probs8, probs1, rtol=1e-4, atol=1e-6)
  table = state8["params"]["projection"]["table"]
  assert table.sharding.spec == jax.sharding.PartitionSpec(
    "data", None
  )  # rows sharded over all 8 devices
  assert len({s.device for s in table.addressable_shards}) == 8
  assert state8["params"]["mlp"]["dense_0"]["kernel"].sharding.is_fully_replicated


def test_parameter_shapes_follow_the_paper():
  spec = model_lib.ModelSpec(criteo_paper().model, 39, 1000, 1000)
  _, params, _ = model_lib.abstract_state(spec)
  alphas = model_lib.alpha_tree(params)
  assert alphas["interaction_0"].shape == (3, 39, 39)  # layer 1 pairs B_0 with B_0
  assert alphas["interaction_1"].shape == (3, 39, 3)  # layer 2 pairs B_0 with B_1 (m = S)
  assert params["interaction_0"]["w"].shape == (3, 16, 16)
  assert params["output"]["kernel"].shape == (3 * 16 + 64, 1)  # [Q; H]
  bars = model_lib.ModelSpec(criteo_bars().model, 39, 1000, 1000)
  _, params, stats = model_lib.abstract_state(bars)
  assert set(model_lib.alpha_tree(params)) == {"interaction_0"}
  assert "norm_0" in stats["mlp"]


def _init(spec, seed):
  """init_state as the trainer calls it: under jit."""
  return jax.jit(lambda key: model_lib.init_state(spec, key))(jax.random.key(seed))


def test_init_is_identity_interaction_and_independent_of_padding():
  cfg = ModelConfig(embed_dim=4, mlp_hidden=(8,))
  a = _init(model_lib.ModelSpec(cfg, 5, 10, 10), 3)[0]
  b = _init(model_lib.ModelSpec(cfg, 5, 10, 16), 3)[0]
  np.testing.assert_array_equal(a["projection"]["table"], b["projection"]["table"][:10])
  assert np.all(np.asarray(b["projection"]["table"][10:]) == 0)
  np.testing.assert_array_equal(a["interaction_0"]["w"][0], np.eye(4))
  assert np.all(np.asarray(a["interaction_0"]["alpha"]) == 1)
  assert np.all(np.asarray(a["interaction_0"]["h"]) == 1)


def test_masked_model_forward_ignores_pruned_alpha():
  cfg = ModelConfig(embed_dim=4, mlp_hidden=(8,))
  spec = model_lib.ModelSpec(cfg, FIELDS, ROWS, ROWS)
  graphdef, _, _ = model_lib.abstract_state(spec)
  params, stats = _init(spec, 0)
  batch = next(_batches(1))
  rng = np.random.default_rng(1)
  masks = {k: rng.random(v.shape) < 0.3 for k, v in model_lib.alpha_tree(params).items()}
  noisy = model_lib.with_alpha(
    params,
    {k: np.where(masks[k], v, 100.0) for k, v in model_lib.alpha_tree(params).items()},
  )
  run = jax.jit(
    lambda p: model_lib.apply_model(graphdef, p, stats, batch["ids"], batch["values"], masks)[0]
  )
  np.testing.assert_allclose(run(noisy), run(params), rtol=1e-6)
