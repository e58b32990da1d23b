"""The FM family: FM, DeepFM, FwFM and AFM (paper section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gin_jax.models.baselines.base import (
  Baseline,
  first_order,
  kernel_impl,
  pair_indices,
  pair_products,
  strict_upper,
  weighted_inner_products,
)


class FM(Baseline):
  """FM (Rendle 2010): w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=False)
    self.bias = nnx.Param(jnp.zeros(()))

  def interaction(self, e_bfd):
    """sum_{u<v} <e_u, e_v>: [b]."""
    alpha = jnp.asarray(strict_upper(self.num_fields))
    return weighted_inner_products(e_bfd, alpha, kernel_impl(self.cfg, wide=False))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    _, e = self._embeddings(emb)
    return self.bias[...] + first_order(emb) + self.interaction(e)


class DeepFM(FM):
  """DeepFM (Guo et al. 2017): FM's logit + the deep part's logit, one shared embedding."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=True)
    self.bias = nnx.Param(jnp.zeros(()))
    width = self._deep_width() or num_fields * cfg.embed_dim  # no hidden layer: linear on E
    self.deep_output = nnx.Linear(width, 1, use_bias=False, rngs=rngs)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    deep = self._deep(e_bfd, train, dropout_key) or [e_bfd.reshape(e_bfd.shape[0], -1)]
    fm = self.bias[...] + first_order(emb) + self.interaction(e)
    return fm + self.deep_output(deep[0])[:, 0]


class FwFM(Baseline):
  """FwFM (Pan et al. 2018): w0 + sum_i w_i x_i + sum_{i<j} r_ij <v_i, v_j> x_i x_j.

  One feature per field here, so r is learned per field pair (alpha free on
  u < v: "FwFM removes the constraint on alpha"). r starts at 1, i.e. at FM.
  """

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=True)
    self.bias = nnx.Param(jnp.zeros(()))
    self.pair_weight = nnx.Param(jnp.ones((len(pair_indices(num_fields)[0]),)))
    if cfg.mlp_hidden:
      self.deep_output = nnx.Linear(self._deep_width(), 1, use_bias=False, rngs=rngs)

  def interaction(self, e_bfd):
    """sum_{u<v} r_uv <e_u, e_v>: [b]."""
    iu, ju = pair_indices(self.num_fields)
    f = self.num_fields
    alpha_ff = jnp.zeros((f, f), jnp.float32).at[iu, ju].set(self.pair_weight[...])
    return weighted_inner_products(e_bfd, alpha_ff, kernel_impl(self.cfg, wide=False))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    logit = self.bias[...] + first_order(emb) + self.interaction(e)
    for h in self._deep(e_bfd, train, dropout_key):
      logit = logit + self.deep_output(h)[:, 0]
    return logit


class AFM(Baseline):
  """AFM (Xiao et al. 2017): w0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i x_i * v_j x_j).

  a_ij = softmax over pairs of h^T ReLU(W (v_i * v_j) + b), W: [F, d] (F =
  model.attention_factor). The pair products come from generalized_interaction
  (W = I, h = 1); the attention-weighted sum is GIN's fusion with alpha =
  a_ij (Table 2: alpha = MLP(Z)).
  """

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=True)
    d = cfg.embed_dim
    self.attention = nnx.Linear(d, cfg.attention_factor, rngs=rngs)
    self.attention_h = nnx.Linear(cfg.attention_factor, 1, use_bias=False, rngs=rngs)
    self.output = nnx.Linear(d + self._deep_width(), 1, rngs=rngs)

  def attention_weights(self, z_bpd):
    """a [b, P]: softmax over pairs of the attention net's score of each pair product."""
    scores = self.attention_h(jax.nn.relu(self.attention(z_bpd)))[..., 0]
    return jax.nn.softmax(scores, axis=-1)

  def interaction(self, e_bfd):
    """sum_{i<j} a_ij (e_i * e_j): [b, d]."""
    z_bpd = pair_products(e_bfd, kernel_impl(self.cfg, wide=True)).astype(jnp.float32)
    return jnp.einsum("bp,bpd->bd", self.attention_weights(z_bpd), z_bpd)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e), *self._deep(e_bfd, train, dropout_key)]
    return first_order(emb) + self.output(jnp.concatenate(features, axis=-1))[:, 0]
