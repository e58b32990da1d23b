"""AOANet's select stage and the mask pytree."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gin_jax import models as model_lib
from gin_jax.config import ModelConfig, TrainConfig
from gin_jax.models import pruning
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib


def _alphas(seed=0, s=3, f=6, layers=2):
  rng = np.random.default_rng(seed)
  out = {"interaction_0": rng.normal(size=(s, f, f)).astype(np.float32)}
  for layer in range(1, layers):
    out[f"interaction_{layer}"] = rng.normal(size=(s, f, s)).astype(np.float32)
  return out


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 1.0])
def test_subspace_scope_keeps_top_ceil_r_per_subspace(ratio):
  alphas = _alphas()
  masks = pruning.select(alphas, ratio, "subspace")
  assert jax.tree.structure(masks) == jax.tree.structure(alphas)
  for name, a in alphas.items():
    for s in range(a.shape[0]):
      kept = masks[name][s]
      k = math.ceil(ratio * kept.size)
      assert kept.sum() == k
      # Every kept |alpha| is >= every pruned |alpha| in the same subspace.
      if 0 < k < kept.size:
        assert np.abs(a[s])[kept].min() >= np.abs(a[s])[~kept].max()


def test_layer_and_global_scopes_rank_across_subspaces():
  alphas = _alphas()
  alphas["interaction_0"][0] *= 100  # subspace 0 dominates by scale
  layer = pruning.select(alphas, 0.3, "layer")
  assert layer["interaction_0"].sum() == math.ceil(0.3 * alphas["interaction_0"].size)
  assert layer["interaction_0"][0].sum() > layer["interaction_0"][1].sum()
  glob = pruning.select(alphas, 0.2, "global")
  total = sum(a.size for a in alphas.values())
  assert sum(m.sum() for m in glob.values()) == math.ceil(0.2 * total)


def test_ties_break_deterministically_towards_lower_index():
  alphas = {"interaction_0": np.ones((1, 4, 4), np.float32)}
  m1 = pruning.select(alphas, 0.25, "subspace")["interaction_0"]
  m2 = pruning.select(alphas, 0.25, "subspace")["interaction_0"]
  assert np.array_equal(m1, m2)
  assert m1.reshape(-1).tolist() == [True] * 4 + [False] * 12


def test_select_uses_absolute_value():
  a = np.array([[[0.1, -5.0], [2.0, 0.0]]], np.float32)
  m = pruning.select({"interaction_0": a}, 0.5)["interaction_0"]
  assert m.tolist() == [[[False, True], [True, False]]]


def test_bad_arguments():
  with pytest.raises(ValueError, match="keep_ratio"):
    pruning.select(_alphas(), 0.0)
  with pytest.raises(ValueError, match="scope"):
    pruning.select(_alphas(), 0.3, "field")


def test_kept_pairs_are_named_by_field():
  masks = {"interaction_0": np.zeros((2, 3, 3), bool), "interaction_1": np.zeros((2, 3, 2), bool)}
  masks["interaction_0"][1, 0, 2] = True
  masks["interaction_0"][0, 2, 0] = True
  masks["interaction_1"][0, 1, 1] = True
  names = ["I1", "C1", "C2"]
  rows = pruning.kept_pairs(masks, names)
  assert [r["name"] for r in rows] == ["C2 x I1", "I1 x C2", "C1 x P1[1]"]
  assert rows[2]["layer"] == 2
  assert pruning.kept_field_pairs(masks, names) == [["C2", "I1"]]
  assert pruning.planted_pair_recall(masks, names, [("I1", "C2"), ("C1", "C2")]) == 0.5
  assert pruning.planted_pair_recall(masks, names, []) is None


def test_planted_pair_ranks():
  a = np.zeros((1, 3, 3), np.float32)
  a[0, 2, 1] = 5.0
  a[0, 0, 0] = 1.0
  ranks = pruning.planted_pair_ranks(
    {"interaction_0": a}, ["A", "B", "C"], [("B", "C"), ("A", "A")]
  )
  assert [r["rank"] for r in ranks] == [0, 1]


def test_masked_alpha_stays_exactly_zero_in_the_real_train_step_with_momentum():
  """The trainer's own train step holds pruned alpha at exactly 0, even when Adam's
  moments for those entries are non-zero (as they would be after momentum built up)."""
  rows, fields, batch = 50, 5, 16
  cfg = ModelConfig(embed_dim=4, num_layers=2, num_subspaces=2, mlp_hidden=(8,))
  spec = model_lib.ModelSpec(cfg, fields, rows, rows)
  mesh = partitioning.make_mesh(jax.devices()[:1])
  fns = steps_lib.build(spec, TrainConfig(learning_rate=0.05), mesh)
  searched = fns.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  alphas = {
    k: rng.normal(size=v.shape).astype(np.float32)
    for k, v in model_lib.alpha_tree(searched["params"]).items()
  }
  masks = pruning.select(alphas, 0.3)
  state = fns.init(jax.random.key(1), masks)
  state = {**state, "params": model_lib.with_alpha(state["params"], pruning.apply(alphas, masks))}

  def poison(path, x):  # non-zero first and second moments on every alpha entry
    keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    return jnp.full_like(x, 0.5) if "alpha" in keys and x.ndim == 3 else x

  state = {**state, "opt_state": jax.tree_util.tree_map_with_path(poison, state["opt_state"])}
  for _ in range(5):
    b = {
      "ids": rng.integers(0, rows, (batch, fields)).astype(np.int32),
      "values": np.ones((batch, fields), np.float32),
      "labels": rng.integers(0, 2, batch).astype(np.float32),
    }
    state, _ = fns.train_step(state, partitioning.shard_batch(mesh, b))
  for name, alpha in model_lib.alpha_tree(state["params"]).items():
    alpha, mask = np.asarray(alpha), masks[name]
    assert np.all(alpha[~mask] == 0.0)
    assert np.all(alpha[mask] != alphas[name][mask])  # kept entries did train
