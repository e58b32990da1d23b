"""AOANet's select stage and the mask pytree."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gin_jax import pruning
from gin_jax.interaction import generalized_interaction


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


def test_masked_alpha_stays_exactly_zero_under_adam_with_momentum():
  """Warm start: Adam's moments are non-zero; zeroing updates keeps pruned alpha at 0."""
  k = jax.random.split(jax.random.key(0), 4)
  e = jax.random.normal(k[0], (8, 5, 4))
  params = {"alpha": jax.random.normal(k[1], (2, 5, 5)), "w": jax.random.normal(k[2], (2, 4, 4))}
  h = jnp.ones((2, 4))
  target = jax.random.normal(k[3], (8, 2, 4))
  tx = optax.adam(0.1)

  def loss(p, mask):
    return jnp.mean((generalized_interaction(e, e, p["alpha"], p["w"], h, mask) - target) ** 2)

  opt_state = tx.init(params)
  for _ in range(3):  # search stage: build up momentum on every alpha
    updates, opt_state = tx.update(jax.grad(loss)(params, None), opt_state)
    params = optax.apply_updates(params, updates)
  masks = {"alpha": jnp.asarray(pruning.select({"alpha": params["alpha"]}, 0.3)["alpha"])}
  params = {**params, "alpha": pruning.apply({"alpha": params["alpha"]}, masks)["alpha"]}
  for _ in range(5):  # retrain with masked updates
    updates, opt_state = tx.update(jax.grad(loss)(params, masks["alpha"]), opt_state)
    updates = {**updates, **pruning.apply({"alpha": updates["alpha"]}, masks)}
    params = optax.apply_updates(params, updates)
  pruned = ~np.asarray(masks["alpha"])
  assert np.all(np.asarray(params["alpha"])[pruned] == 0.0)
  assert np.all(np.asarray(params["alpha"])[~pruned] != 0.0)
