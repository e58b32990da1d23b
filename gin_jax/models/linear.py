"""The logistic regression: the quality floor and the start of train.linear_start."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gin_jax.models.layers import FieldProjection, project


class LogisticRegression(nnx.Module):
  """logit = b + sum_f w[id_f] * value_f: one weight per table row (the linear floor).

  Uses the same stacked table (of width 1), trainer, regulariser and scoring as
  GIN, so a quality comparison differs in the model alone.
  """

  def __init__(self, num_rows: int, padded_rows: int, init_std: float, *, rngs: nnx.Rngs):
    self.projection = FieldProjection(num_rows, padded_rows, {"table": 1}, init_std, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros(()))

  def __call__(self, ids_bf, values_bf, masks=None, *, train=False, dropout_key=None):
    return self.from_embeddings(project(self, ids_bf, values_bf))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    return jnp.sum(emb["table"][..., 0], axis=-1) + self.bias[...]
