"""xDeepFM: the compressed interaction network (CIN) (paper section 4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gin_jax.models.baselines.base import (
  Baseline,
  first_order,
  kernel_impl,
  normal_init,
)
from gin_jax.models.interaction import generalized_interaction


class CINLayer(nnx.Module):
  """One CIN layer: X^k[h] = sum_{i,j} W^{k,h}_ij (X^{k-1}_i * X^0_j), n maps (Lemma 3.3).

  GIN with S = n subspaces, W = I, h = 1 and alpha[h, j, i] = W^{k,h}_ij (u
  over X^0, v over X^{k-1}): alpha holds the CIN weights.
  """

  def __init__(self, num_fields: int, num_inputs: int, num_maps: int, *, rngs: nnx.Rngs):
    std = 1.0 / math.sqrt(num_fields * num_inputs)
    self.alpha = nnx.Param(normal_init(rngs, (num_maps, num_fields, num_inputs), std))

  def __call__(self, x0_bfd, xk_bmd, impl="factorized"):
    s, d = self.alpha.shape[0], x0_bfd.shape[-1]
    identity = jnp.ones((s, d), jnp.float32)  # W = I, given as its diagonal
    return generalized_interaction(
      x0_bfd, xk_bmd, self.alpha[...], identity, jnp.ones((s, d)), impl=impl
    )


class XDeepFM(Baseline):
  """xDeepFM (Lian et al. 2018): linear + CIN (sum-pooled maps of every layer) + deep part."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=True)
    n = cfg.cin_maps
    for layer in range(cfg.num_layers):
      inputs = num_fields if layer == 0 else n
      setattr(self, f"cin_{layer}", CINLayer(num_fields, inputs, n, rngs=rngs))
    self.output = nnx.Linear(n * cfg.num_layers + self._deep_width(), 1, rngs=rngs)

  def cin_maps(self, e_bfd) -> list[jax.Array]:
    """X^1 .. X^L, each [b, n, d]."""
    maps, x = [], e_bfd
    for layer in range(self.cfg.num_layers):
      p_bsd = getattr(self, f"cin_{layer}")(e_bfd, x, kernel_impl(self.cfg, wide=False))
      maps.append(p_bsd)
      x = p_bsd.astype(e_bfd.dtype)
    return maps

  def interaction(self, e_bfd):
    """p+ = [sum_d X^1, ..., sum_d X^L]: [b, n L]."""
    return jnp.concatenate([jnp.sum(x, axis=-1) for x in self.cin_maps(e_bfd)], axis=-1)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e), *self._deep(e_bfd, train, dropout_key)]
    return first_order(emb) + self.output(jnp.concatenate(features, axis=-1))[:, 0]
