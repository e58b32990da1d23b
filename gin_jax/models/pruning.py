"""Architecture adaptation (AOANet, paper section 3.5; DESIGN.md section 2).

Masks are pytrees with alpha's structure (`{layer_name: bool [S, f, m]}`, see
`gin_jax.models.alpha_tree`), combined with alpha by `jax.tree.map`. A mask
acts twice during retraining: it multiplies alpha in the forward pass (so a
pruned pair contributes nothing and gets zero gradient) and it zeroes alpha's
optimizer updates, so a pruned entry stays exactly 0 whatever the optimizer
state holds (the retrain stage starts a fresh optimizer state, also with
`train.warm_start`, and the masked update guarantees it for any optimizer).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax.models.gin import layer_name, layer_names
from gin_jax.models.interaction import effective_alpha

SCOPES = ("subspace", "layer", "global")


def all_true(alphas) -> dict:
  """Masks that keep every pair (the search stage)."""
  return jax.tree.map(lambda a: jnp.ones(np.shape(a), dtype=bool), alphas)


def apply(alphas, masks):
  """alpha with pruned entries set to exactly 0 (also used on alpha's updates), per layer."""
  return jax.tree.map(effective_alpha, alphas, masks)


def _top_k_mask(scores: np.ndarray, keep_ratio: float) -> np.ndarray:
  """Keeps the ceil(r * n) largest scores; ties go to the lower flat index."""
  flat = scores.reshape(-1)
  k = math.ceil(keep_ratio * flat.size - 1e-9)
  # Stable sort on -score: equal scores keep index order, so ties break
  # deterministically towards the earlier (u, v) pair.
  order = np.argsort(-flat, kind="stable")
  keep = np.zeros(flat.size, dtype=bool)
  keep[order[:k]] = True
  return keep.reshape(scores.shape)


def select(alphas, keep_ratio: float, scope: str = "subspace") -> dict:
  """Masks keeping the pairs with the largest |alpha|.

  Args:
    alphas: `{layer_name: [S, f, m]}` alpha after the search stage.
    keep_ratio: r in (0, 1]; each ranking group keeps ceil(r * its size).
    scope: "subspace" (default; rank within each (layer, subspace), where all
      pairs share W and h so |alpha| are comparable), "layer" (rank within a
      layer across its subspaces) or "global" (one ranking over everything).

  Returns:
    Boolean numpy masks with alpha's structure.
  """
  if not 0.0 < keep_ratio <= 1.0:
    raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
  if scope not in SCOPES:
    raise ValueError(f"unknown scope {scope!r}; choose from {SCOPES}")
  scores = {name: np.abs(np.asarray(a, dtype=np.float32)) for name, a in alphas.items()}
  if scope == "subspace":
    return {
      name: np.stack([_top_k_mask(a_fm, keep_ratio) for a_fm in a_sfm])
      for name, a_sfm in scores.items()
    }
  if scope == "layer":
    return {name: _top_k_mask(a_sfm, keep_ratio) for name, a_sfm in scores.items()}
  names = sorted(scores)
  flat = _top_k_mask(np.concatenate([scores[n].reshape(-1) for n in names]), keep_ratio)
  out, start = {}, 0
  for n in names:
    out[n] = flat[start : start + scores[n].size].reshape(scores[n].shape)
    start += scores[n].size
  return out


def kept_fraction(masks) -> float:
  kept = sum(int(np.sum(m)) for m in jax.tree.leaves(masks))
  total = sum(int(np.size(m)) for m in jax.tree.leaves(masks))
  return kept / max(total, 1)


def input_names(layer: int, field_names: list[str], num_subspaces: int) -> list[str]:
  """Names of the v index of a layer: fields at layer 1, P_{l-1} subspaces after."""
  if layer == 0:
    return list(field_names)
  return [f"P{layer}[{s}]" for s in range(num_subspaces)]


def kept_pairs(masks, field_names: list[str], alphas=None) -> list[dict]:
  """Every kept (u, v) per layer and subspace, named, e.g. `C3 x I7`.

  Args:
    masks: `{interaction_<l>: bool [S, f, m]}`.
    field_names: the f field names in model order.
    alphas: optional alpha tree; adds each kept pair's alpha.

  Returns:
    A list of dicts `{layer, subspace, u, v, name[, alpha]}`, layer 1-based.
  """
  out = []
  for layer, name in enumerate(layer_names(masks)):
    mask = np.asarray(masks[name])
    v_names = input_names(layer, field_names, mask.shape[0])
    for s, u, v in zip(*np.nonzero(mask)):
      row = {
        "layer": layer + 1,
        "subspace": int(s),
        "u": field_names[u],
        "v": v_names[v],
        "name": f"{field_names[u]} x {v_names[v]}",
      }
      if alphas is not None:
        row["alpha"] = float(np.asarray(alphas[name])[s, u, v])
      out.append(row)
  return out


def kept_field_pairs(masks, field_names: list[str]) -> list[list[str]]:
  """Unordered field pairs kept at layer 1 in any subspace, sorted: [["C3", "I7"], ...]."""
  first = np.asarray(masks[layer_name(0)]).any(axis=0)
  pairs = set()
  for u, v in zip(*np.nonzero(first)):
    a, b = field_names[u], field_names[v]
    pairs.add(tuple(sorted((a, b))))
  return [list(p) for p in sorted(pairs)]


def planted_pair_recall(masks, field_names: list[str], planted) -> float | None:
  """Fraction of planted (unordered) field pairs kept at layer 1; None if none planted."""
  if not planted:
    return None
  kept = {tuple(p) for p in kept_field_pairs(masks, field_names)}
  return sum(tuple(sorted(p)) in kept for p in planted) / len(planted)


def planted_pair_ranks(alphas, field_names: list[str], planted) -> list[dict]:
  """Rank (0 = most important) of each planted pair among layer-1 unordered pairs.

  A pair's score is its largest |alpha| over both orders and all subspaces,
  the same evidence `select` uses; this shows how decisively pruning kept it.
  """
  a_sfm = np.abs(np.asarray(alphas[layer_name(0)], dtype=np.float32))
  best_fm = a_sfm.max(axis=0)
  best_fm = np.maximum(best_fm, best_fm.T)
  f = len(field_names)
  iu = np.triu_indices(f)
  order = np.argsort(-best_fm[iu], kind="stable")
  rank_of = {(int(iu[0][i]), int(iu[1][i])): r for r, i in enumerate(order)}
  index = {n: i for i, n in enumerate(field_names)}
  out = []
  for a, b in planted:
    u, v = sorted((index[a], index[b]))
    out.append({"pair": [a, b], "rank": rank_of[(u, v)], "of": len(order)})
  return out
