"""Product-based networks: IPNN and OPNN (paper section 4)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gin_jax.models.baselines.base import (
  Baseline,
  kernel_impl,
  pair_products,
)
from gin_jax.models.interaction import generalized_interaction
from gin_jax.models.layers import MLP


class IPNN(Baseline):
  """IPNN (Qu et al. 2016): the deep part reads [E flattened, <e_u, e_v> for u < v]."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=False, deep=False)
    width = num_fields * cfg.embed_dim + self.product_width(num_fields, cfg.embed_dim)
    self.mlp = MLP(width, cfg.mlp_hidden, cfg.mlp_batch_norm, cfg.mlp_dropout, rngs=rngs)
    self.output = nnx.Linear(self._deep_width() or width, 1, rngs=rngs)

  @staticmethod
  def product_width(num_fields: int, embed_dim: int) -> int:
    return num_fields * (num_fields - 1) // 2

  def interaction(self, e_bfd):
    """<e_u, e_v> for every pair u < v: [b, P]."""
    return jnp.sum(pair_products(e_bfd, kernel_impl(self.cfg, wide=True)), axis=-1)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    flat = e_bfd.reshape(e_bfd.shape[0], -1)
    z = jnp.concatenate([flat, self.interaction(e).reshape(flat.shape[0], -1)], axis=-1)
    return self.output(self.mlp(z, train=train, dropout_key=dropout_key))[:, 0]


class OPNN(IPNN):
  """OPNN (Qu et al. 2016), outer products by superposition: p = f_S f_S^T, f_S = sum_i e_i.

  The deep part reads [E flattened, p flattened]. p is GIN with d subspaces,
  W = all ones, h^s = one-hot(s) and alpha = 1 on every ordered pair: subspace
  s returns column s of sum_{u,v} e_u outer e_v.
  """

  @staticmethod
  def product_width(num_fields: int, embed_dim: int) -> int:
    return embed_dim * embed_dim

  def interaction(self, e_bfd):
    """sum_{u,v} e_u outer e_v: [b, d, d] (row s = subspace s)."""
    f, d = e_bfd.shape[1:]
    alpha = jnp.ones((d, f, f), jnp.float32)
    w_sde = jnp.ones((d, d, d), jnp.float32)
    return generalized_interaction(
      e_bfd, e_bfd, alpha, w_sde, jnp.eye(d), impl=kernel_impl(self.cfg, wide=False)
    )
