"""The paper's baselines (section 4) and FM, as gin_jax models (`model.arch`).

Every model here takes the same inputs as GIN (row ids and values [b, f] into
one stacked, row-sharded table), keeps every per-row parameter in its
`projection` (the embedding `table` [R, d] and, for models with a first-order
part, the `linear` weights [R, 1]), and is trained, checkpointed, scored and
exported by the same code. None has alpha to prune: they run one stage
(`train.stages=gin`) with empty masks.

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

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gin_jax.config import ModelConfig
from gin_jax.interaction import generalized_interaction
from gin_jax.model import MLP, FieldProjection


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


def _impl(cfg: ModelConfig, wide: bool) -> str:
  """The kernel's contraction order: the configured reference, else the cheaper one."""
  if cfg.interaction_impl == "reference":
    return "reference"
  return "factorized_ty" if wide else "factorized"


def _normal(rngs: nnx.Rngs, shape, std: float) -> jax.Array:
  return std * jax.random.normal(rngs.params(), shape)


class _Baseline(nnx.Module):
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
      self.projection(ids_bf, values_bf), masks, train=train, dropout_key=dropout_key
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


def _first_order(emb) -> jax.Array:
  """sum_f w[id_f] * value_f: [b] (the LR part of FM, FwFM, AFM and xDeepFM)."""
  return jnp.sum(emb["linear"][..., 0], axis=-1)


# ------------------------------------------------------------ FM family


class FM(_Baseline):
  """FM (Rendle 2010): w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j."""

  def __init__(self, cfg, num_fields, num_rows, padded_rows, *, rngs):
    self._setup(cfg, num_fields, num_rows, padded_rows, rngs, linear=True, deep=False)
    self.bias = nnx.Param(jnp.zeros(()))

  def interaction(self, e_bfd):
    """sum_{u<v} <e_u, e_v>: [b]."""
    alpha = jnp.asarray(strict_upper(self.num_fields))
    return weighted_inner_products(e_bfd, alpha, _impl(self.cfg, wide=False))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    _, e = self._embeddings(emb)
    return self.bias[...] + _first_order(emb) + self.interaction(e)


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
    fm = self.bias[...] + _first_order(emb) + self.interaction(e)
    return fm + self.deep_output(deep[0])[:, 0]


class FwFM(_Baseline):
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
    return weighted_inner_products(e_bfd, alpha_ff, _impl(self.cfg, wide=False))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    logit = self.bias[...] + _first_order(emb) + self.interaction(e)
    for h in self._deep(e_bfd, train, dropout_key):
      logit = logit + self.deep_output(h)[:, 0]
    return logit


class AFM(_Baseline):
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
    z_bpd = pair_products(e_bfd, _impl(self.cfg, wide=True)).astype(jnp.float32)
    return jnp.einsum("bp,bpd->bd", self.attention_weights(z_bpd), z_bpd)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e), *self._deep(e_bfd, train, dropout_key)]
    return _first_order(emb) + self.output(jnp.concatenate(features, axis=-1))[:, 0]


# ------------------------------------------------------------ PNN


class IPNN(_Baseline):
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
    return jnp.sum(pair_products(e_bfd, _impl(self.cfg, wide=True)), axis=-1)

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
      e_bfd, e_bfd, alpha, w_sde, jnp.eye(d), impl=_impl(self.cfg, wide=False)
    )


# ------------------------------------------------------------ cross networks


class CrossLayer(nnx.Module):
  """One cross layer on x0 = concat(E) (D = f d wide), its interaction on the GIN kernel.

  DCN (`tied`, Wang et al. 2017): x_{l+1} = x0 (x_l . w) + b + x_l, i.e. W's
  rows all equal w (Lemma 3.1). DCN-M (Wang et al. 2020): x_{l+1} =
  x0 * (W x_l + b) + x_l with W free (Lemma 3.2). One subspace, alpha = 1, h = 1.
  """

  def __init__(self, dim: int, tied: bool, *, rngs: nnx.Rngs):
    std = 1.0 / math.sqrt(dim)
    self.tied = tied
    self.w = nnx.Param(_normal(rngs, (dim,) if tied else (dim, dim), std))
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


class DCN(_Baseline):
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
      x = getattr(self, f"cross_{layer}")(x0, x, _impl(self.cfg, wide=True))
    return x

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e).astype(jnp.float32), *self._deep(e_bfd, train, dropout_key)]
    return self.output(jnp.concatenate(features, axis=-1))[:, 0]


class DCNv2(DCN):
  """DCN-M / DCN-V2 (Wang et al. 2020), parallel structure: full-rank W per cross layer."""

  tied = False


# ------------------------------------------------------------ xDeepFM


class CINLayer(nnx.Module):
  """One CIN layer: X^k[h] = sum_{i,j} W^{k,h}_ij (X^{k-1}_i * X^0_j), n maps (Lemma 3.3).

  GIN with S = n subspaces, W = I, h = 1 and alpha[h, j, i] = W^{k,h}_ij (u
  over X^0, v over X^{k-1}): alpha holds the CIN weights.
  """

  def __init__(self, num_fields: int, num_inputs: int, num_maps: int, *, rngs: nnx.Rngs):
    std = 1.0 / math.sqrt(num_fields * num_inputs)
    self.alpha = nnx.Param(_normal(rngs, (num_maps, num_fields, num_inputs), std))

  def __call__(self, x0_bfd, xk_bmd, impl="factorized"):
    s, d = self.alpha.shape[0], x0_bfd.shape[-1]
    identity = jnp.ones((s, d), jnp.float32)  # W = I, given as its diagonal
    return generalized_interaction(
      x0_bfd, xk_bmd, self.alpha[...], identity, jnp.ones((s, d)), impl=impl
    )


class XDeepFM(_Baseline):
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
      p_bsd = getattr(self, f"cin_{layer}")(e_bfd, x, _impl(self.cfg, wide=False))
      maps.append(p_bsd)
      x = p_bsd.astype(e_bfd.dtype)
    return maps

  def interaction(self, e_bfd):
    """p+ = [sum_d X^1, ..., sum_d X^L]: [b, n L]."""
    return jnp.concatenate([jnp.sum(x, axis=-1) for x in self.cin_maps(e_bfd)], axis=-1)

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    e_bfd, e = self._embeddings(emb)
    features = [self.interaction(e), *self._deep(e_bfd, train, dropout_key)]
    return _first_order(emb) + self.output(jnp.concatenate(features, axis=-1))[:, 0]


# ------------------------------------------------------------ AutoInt


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


class AutoInt(_Baseline):
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


MODELS = {
  "fm": FM,
  "deepfm": DeepFM,
  "ipnn": IPNN,
  "opnn": OPNN,
  "fwfm": FwFM,
  "afm": AFM,
  "dcn": DCN,
  "dcnv2": DCNv2,
  "xdeepfm": XDeepFM,
  "autoint": AutoInt,
}


def build(
  cfg: ModelConfig, num_fields: int, num_rows: int, padded_rows: int, *, rngs: nnx.Rngs
) -> nnx.Module:
  """The baseline named by `cfg.arch`.

  Args:
    cfg: the model config; `cfg.arch` is a key of MODELS.
    num_fields: f, fields per example.
    num_rows: real rows of the stacked table.
    padded_rows: rows after padding to a multiple of the device count.
    rngs: parameter initialisation.

  Returns:
    The NNX module (used functionally, like GIN: see gin_jax.model).
  """
  return MODELS[cfg.arch](cfg, num_fields, num_rows, padded_rows, rngs=rngs)
