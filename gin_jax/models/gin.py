"""GIN / AOANet (paper section 3): interaction layers over subspaces, fused by alpha."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gin_jax.config import ModelConfig
from gin_jax.models.interaction import generalized_interaction
from gin_jax.models.layers import MLP, FieldProjection, project


class InteractionLayer(nnx.Module):
  """One generalized interaction + fusion layer with S subspaces (eq. 11-13)."""

  def __init__(
    self,
    num_fields: int,
    num_inputs: int,
    num_subspaces: int,
    embed_dim: int,
    perturbation: float,
    *,
    rngs: nnx.Rngs,
  ):
    s, f, m, d = num_subspaces, num_fields, num_inputs, embed_dim
    # W = I, alpha = 1, h = 1 (as FuxiCTR); a small perturbation, if asked,
    # breaks the symmetry that otherwise makes all subspaces identical.
    noise = lambda shape: perturbation * jax.random.normal(rngs.params(), shape)
    self.alpha = nnx.Param(jnp.ones((s, f, m)) + noise((s, f, m)))
    self.w = nnx.Param(jnp.broadcast_to(jnp.eye(d), (s, d, d)) + noise((s, d, d)))
    self.h = nnx.Param(jnp.ones((s, d)) + noise((s, d)))

  def __call__(self, b0_bfd, x_bmd, mask_sfm=None, impl="factorized"):
    return generalized_interaction(
      b0_bfd, x_bmd, self.alpha[...], self.w[...], self.h[...], mask_sfm=mask_sfm, impl=impl
    )


class GIN(nnx.Module):
  """GIN (paper Fig. 2b); AOANet is this model called with pruning masks on alpha."""

  def __init__(
    self, cfg: ModelConfig, num_fields: int, num_rows: int, padded_rows: int, *, rngs: nnx.Rngs
  ):
    d, s = cfg.embed_dim, cfg.num_subspaces
    self.cfg = cfg
    self.num_fields = num_fields
    widths = {"table": d, **({"linear": 1} if cfg.first_order else {})}
    self.projection = FieldProjection(num_rows, padded_rows, widths, cfg.embed_init_std, rngs=rngs)
    for layer in range(cfg.num_layers):
      num_inputs = num_fields if layer == 0 else s  # m = f at layer 1, S after.
      setattr(
        self,
        layer_name(layer),
        InteractionLayer(num_fields, num_inputs, s, d, cfg.init_perturbation, rngs=rngs),
      )
    self.mlp = MLP(num_fields * d, cfg.mlp_hidden, cfg.mlp_batch_norm, cfg.mlp_dropout, rngs=rngs)
    readout = s * d * (cfg.num_layers if cfg.readout == "all" else 1)
    deep = cfg.mlp_hidden[-1] if cfg.mlp_hidden else 0
    self.output = nnx.Linear(readout + deep, 1, rngs=rngs)

  def __call__(self, ids_bf, values_bf, masks=None, *, train=False, dropout_key=None):
    """Returns logits [b] of examples given as row ids and values [b, f]."""
    return self.from_embeddings(
      project(self, ids_bf, values_bf), masks, train=train, dropout_key=dropout_key
    )

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    """Returns logits [b] from the projected embeddings ({"table": E [b, f, d]}, B_0)."""
    e_bfd = emb["table"]
    b0_bfd = e_bfd.astype(self.cfg.compute_dtype)
    x_bmd = b0_bfd
    outputs = []
    for layer in range(self.cfg.num_layers):
      name = layer_name(layer)
      mask_sfm = None if masks is None else masks[name]
      p_bsd = getattr(self, name)(b0_bfd, x_bmd, mask_sfm, impl=self.cfg.interaction_impl)
      outputs.append(p_bsd)
      x_bmd = p_bsd.astype(self.cfg.compute_dtype)
    readout = outputs if self.cfg.readout == "all" else outputs[-1:]
    q_b = jnp.concatenate([p.reshape(p.shape[0], -1) for p in readout], axis=-1)
    features = [q_b.astype(jnp.float32)]
    if self.cfg.mlp_hidden:
      features.append(
        self.mlp(e_bfd.reshape(e_bfd.shape[0], -1), train=train, dropout_key=dropout_key)
      )
    logits = self.output(jnp.concatenate(features, axis=-1))[:, 0]
    if self.cfg.first_order:  # the linear part of Wide & Deep / DeepFM, not in eq. 16
      logits = logits + jnp.sum(emb["linear"][..., 0], axis=-1)
    return logits


def layer_name(layer: int) -> str:
  """Name of interaction layer `layer` (0-based) in params, masks and alpha trees."""
  return f"interaction_{layer}"


def layer_names(tree) -> list[str]:
  """The interaction-layer names present in a params-, masks- or alpha-shaped dict, in order."""
  names = []
  while layer_name(len(names)) in tree:
    names.append(layer_name(len(names)))
  return names
