"""Cross networks: DCN and DCN-M (DCNv2) (paper section 4)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from gin_jax.models.baselines.base import (
  Baseline,
  kernel_impl,
  normal_init,
)
from gin_jax.models.interaction import generalized_interaction


class CrossLayer(nnx.Module):
  """One cross layer on x0 = concat(E) (D = f d wide), its interaction on the GIN kernel.

  DCN (`tied`, Wang et al. 2017): x_{l+1} = x0 (x_l . w) + b + x_l, i.e. W's
  rows all equal w (Lemma 3.1). DCN-M (Wang et al. 2020): x_{l+1} =
  x0 * (W x_l + b) + x_l with W free (Lemma 3.2). One subspace, alpha = 1, h = 1.
  """

  def __init__(self, dim: int, tied: bool, *, rngs: nnx.Rngs):
    std = 1.0 / math.sqrt(dim)
    self.tied = tied
    self.w = nnx.Param(normal_init(rngs, (dim,) if tied else (dim, dim), std))
    self.bias = nnx.Param(jnp.zeros((dim,)))

  def interaction(self, x0_bd, xl_bd, impl="factorized_ty"):
    """x0 * (W x_l): [b, D] (DCN: x0 (x_l . w))."""
    dim = x0_bd.shape[-1]
    w = self.w[...]
    w_sde = w[None, None, :] if self.tied else w[None]
    ones = jnp.ones((1, 1, 1), jnp.float32)
    p_bsd = generalized_interaction(
      x0_bd[:, None], xl_bd[:, None], ones, w_sde, jnp.ones((1, dim)), impl=impl
    )
    return p_bsd[:, 0]

  def __call__(self, x0_bd, xl_bd, impl="factorized_ty"):
    bias = self.bias[...] if self.tied else x0_bd * self.bias[...]
    return self.interaction(x0_bd, xl_bd, impl) + bias + xl_bd


class DCN(Baseline):
  """DCN (Wang et al. 2017): cross network and deep part side by side on concat(E)."""

  tied = True

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=False, deep=True)
    dim = num_fields * cfg.embed_dim
    for layer in range(cfg.num_layers):
      setattr(self, f"cross_{layer}", CrossLayer(dim, self.tied, rngs=rngs))
    self.output = nnx.Linear(dim + self._deep_width(), 1, rngs=rngs)

  def interaction(self, e_bfd):
    """x_L, the cross network's output: [b, D]."""
    x0 = e_bfd.reshape(e_bfd.shape[0], -1)
    x = x0
    for layer in range(self.cfg.num_layers):
      x = getattr(self, f"cross_{layer}")(x0, x, kernel_impl(self.cfg, wide=True))
    return x

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e).astype(jnp.float32), *self._deep(e_bfd, train, dropout_key)]
    return self.output(jnp.concatenate(features, axis=-1))[:, 0]


class DCNv2(DCN):
  """DCN-M / DCN-V2 (Wang et al. 2020), parallel structure: full-rank W per cross layer."""

  tied = False
