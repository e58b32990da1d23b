"""AutoInt: multi-head self-attention over the field embeddings (paper section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gin_jax.models.baselines.base import (
  Baseline,
)


class SelfAttentionLayer(nnx.Module):
  """AutoInt's interacting layer (Song et al. 2019, eq. 5-8), no scaling, with residual.

  Per head h: a_mk = softmax_k(<W_Q e_m, W_K e_k>), e~_m = sum_k a_mk W_V e_k;
  heads concatenated; output ReLU(e~_m + W_Res e_m).
  """

  def __init__(self, in_dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
    self.heads, self.head_dim = heads, head_dim
    width = heads * head_dim
    self.query = nnx.Linear(in_dim, width, use_bias=False, rngs=rngs)
    self.key = nnx.Linear(in_dim, width, use_bias=False, rngs=rngs)
    self.value = nnx.Linear(in_dim, width, use_bias=False, rngs=rngs)
    self.residual = nnx.Linear(in_dim, width, use_bias=False, rngs=rngs)

  def attention(self, x_bfd):
    """(a [b, h, f, f] over keys, values [b, f, h, k]) of every head."""
    split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)
    q, k, v = split(self.query(x_bfd)), split(self.key(x_bfd)), split(self.value(x_bfd))
    a_bhfg = jax.nn.softmax(jnp.einsum("bfhk,bghk->bhfg", q, k), axis=-1)
    return a_bhfg, v

  def __call__(self, x_bfd):
    a_bhfg, v_bghk = self.attention(x_bfd)
    heads = jnp.einsum("bhfg,bghk->bfhk", a_bhfg, v_bghk)
    return jax.nn.relu(heads.reshape(*x_bfd.shape[:2], -1) + self.residual(x_bfd))


class AutoInt(Baseline):
  """AutoInt (Song et al. 2019): L interacting layers, then a linear read of all fields;
  with the shared deep part, AutoInt+."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=False, deep=True)
    width = cfg.attention_heads * cfg.attention_head_dim
    for layer in range(cfg.num_layers):
      in_dim = cfg.embed_dim if layer == 0 else width
      attn = SelfAttentionLayer(in_dim, cfg.attention_heads, cfg.attention_head_dim, rngs=rngs)
      setattr(self, f"attention_{layer}", attn)
    self.output = nnx.Linear(num_fields * width + self._deep_width(), 1, rngs=rngs)

  def interaction(self, e_bfd):
    """The last interacting layer's output: [b, f, h k]."""
    x = e_bfd.astype(jnp.float32)
    for layer in range(self.cfg.num_layers):
      x = getattr(self, f"attention_{layer}")(x)
    return x

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, _ = self._embeddings(emb)
    attn = self.interaction(e_bfd)
    features = [attn.reshape(attn.shape[0], -1), *self._deep(e_bfd, train, dropout_key)]
    return self.output(jnp.concatenate(features, axis=-1))[:, 0]
