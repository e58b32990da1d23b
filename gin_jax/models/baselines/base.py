"""What the paper's baselines (section 4) and FM share, as gin_jax models (`model.arch`).

Every model here takes the same inputs as GIN (row ids and values [b, f] into
one stacked, row-sharded table), keeps every per-row parameter in its
`projection` (the embedding `table` [R, d] and, for models with a first-order
part, the `linear` weights [R, 1]), and is trained, checkpointed, scored and
exported by the same code. None has alpha to prune: they run one stage
(`train.stages=single`) with empty masks.

Where the paper's Table 2 shows a model is a special case of the generalized
interaction, its interaction IS `generalized_interaction` with W, h and alpha
fixed, tied or free as that row says (constants are built in the forward pass;
only free entries are parameters). W = I and DCN's tied rows are passed in
the kernel's structured forms (a diagonal [S, d], tied rows [S, 1, e]), which
cost O(d) per vector instead of O(d^2):

| model | layers x subspaces | W | h | alpha |
|---|---|---|---|---|
| FM, DeepFM | 1 x 1 | I | 1 | 1 on pairs u < v |
| IPNN | one pair at a time | I | 1 | 1 (then sum over d) |
| OPNN | 1 x d | all ones | one-hot per subspace | 1 on all (u, v) |
| FwFM | 1 x 1 | I | 1 | r_uv, learned, on pairs u < v |
| AFM (pair products) | one pair at a time | I | 1 | 1 (attention pools them) |
| DCN | L x 1 on concat(E) | rows tied (learned w) | 1 | 1 |
| DCN-M | L x 1 on concat(E) | learned | 1 | 1 |
| xDeepFM (CIN) | L x n | I | 1 | learned (the CIN weights) |

AFM's attention net and AutoInt's multi-head self-attention are as published.
tests/test_baselines.py checks each model against a numpy reading of its
original paper and each row above against the GIN layer so configured.

The deep part (`model.mlp_hidden`, the paper's [512, 256, 64]) is shared: the
paper gives every baseline the same one. LR and FM have none; FwFM, AFM, DCN,
DCN-M, xDeepFM and AutoInt are their original models with an empty
`mlp_hidden`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gin_jax.config import ModelConfig
from gin_jax.models.interaction import generalized_interaction
from gin_jax.models.layers import MLP, FieldProjection, project


def pair_indices(num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """(u, v) index arrays of the unordered field pairs u < v, in row-major order."""
  return np.triu_indices(num_fields, k=1)


def strict_upper(num_fields: int) -> np.ndarray:
  """[f, f] float32 with 1 on the pairs u < v: alpha of FM's sum over pairs."""
  return np.triu(np.ones((num_fields, num_fields), np.float32), k=1)


def pair_products(e_bfd: jax.Array, impl: str = "factorized_ty") -> jax.Array:
  """e_u * e_v for every pair u < v (AFM's pair products; summed over d, IPNN's).

  Each pair's interaction map Z_uv = (e_u outer e_v) * I fused with h = 1 (the
  paper's Lemma A.2), one pair at a time (f = m = S = 1) so that no pair is
  summed with another.

  Args:
    e_bfd: [b, f, d] field embeddings.
    impl: generalized_interaction's implementation.

  Returns:
    [b, P, d] float32, P = f (f - 1) / 2 pairs in `pair_indices` order.
  """
  b, f, d = e_bfd.shape
  iu, ju = pair_indices(f)
  u = e_bfd[:, iu].reshape(-1, 1, d)
  v = e_bfd[:, ju].reshape(-1, 1, d)
  ones = jnp.ones((1, 1, 1), jnp.float32)
  identity = jnp.ones((1, d), jnp.float32)  # W = I, given as its diagonal
  z = generalized_interaction(u, v, ones, identity, jnp.ones((1, d)), impl=impl)
  return z.reshape(b, len(iu), d)


def weighted_inner_products(e_bfd: jax.Array, alpha_ff: jax.Array, impl: str) -> jax.Array:
  """sum_{u,v} alpha[u, v] <e_u, e_v>: FM's (alpha = 1 on u < v) and FwFM's pair sum.

  One subspace with W = I (given as its diagonal) and h = 1, summed over d.

  Args:
    e_bfd: [b, f, d] field embeddings.
    alpha_ff: [f, f] weight of each ordered pair.
    impl: generalized_interaction's implementation.

  Returns:
    [b] float32.
  """
  d = e_bfd.shape[-1]
  p_bsd = generalized_interaction(
    e_bfd, e_bfd, alpha_ff[None], jnp.ones((1, d)), jnp.ones((1, d)), impl=impl
  )
  return jnp.sum(p_bsd[:, 0], axis=-1)


def kernel_impl(cfg: ModelConfig, wide: bool) -> str:
  """The kernel's contraction order: the configured reference, else the cheaper one."""
  if cfg.interaction_impl == "reference":
    return "reference"
  return "factorized_ty" if wide else "factorized"


def normal_init(rngs: nnx.Rngs, shape, std: float) -> jax.Array:
  return std * jax.random.normal(rngs.params(), shape)


class Baseline(nnx.Module):
  """Shared parts: the projection (with `linear` weights if asked), the deep part."""

  def _setup(self, cfg, num_fields, num_rows, padded_rows, rngs, *, linear: bool, deep: bool):
    self.cfg = cfg
    self.num_fields = num_fields
    widths = {"table": cfg.embed_dim, **({"linear": 1} if linear else {})}
    self.projection = FieldProjection(num_rows, padded_rows, widths, cfg.embed_init_std, rngs=rngs)
    if deep:
      self.mlp = MLP(
        num_fields * cfg.embed_dim, cfg.mlp_hidden, cfg.mlp_batch_norm, cfg.mlp_dropout, rngs=rngs
      )

  def __call__(self, ids_bf, values_bf, masks=None, *, train=False, dropout_key=None):
    """Returns logits [b] of examples given as row ids and values [b, f]."""
    return self.from_embeddings(
      project(self, ids_bf, values_bf), masks, train=train, dropout_key=dropout_key
    )

  def _embeddings(self, emb) -> tuple[jax.Array, jax.Array]:
    """(E [b, f, d] in float32, E in the interaction's compute dtype)."""
    e_bfd = emb["table"]
    return e_bfd, e_bfd.astype(self.cfg.compute_dtype)

  def _deep(self, e_bfd, train, dropout_key) -> list[jax.Array]:
    """[H [b, hidden[-1]]] from the deep part, or [] when model.mlp_hidden is empty."""
    if not self.cfg.mlp_hidden:
      return []
    flat = e_bfd.reshape(e_bfd.shape[0], -1)
    return [self.mlp(flat, train=train, dropout_key=dropout_key)]

  def _deep_width(self) -> int:
    return self.cfg.mlp_hidden[-1] if self.cfg.mlp_hidden else 0


def first_order(emb) -> jax.Array:
  """sum_f w[id_f] * value_f: [b] (the LR part of FM, FwFM, AFM and xDeepFM)."""
  return jnp.sum(emb["linear"][..., 0], axis=-1)
