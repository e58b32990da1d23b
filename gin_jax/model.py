"""GIN / AOANet as Flax NNX modules, used functionally (DESIGN.md sections 1 and 3).

The modules are ordinary NNX modules. The library never calls them statefully:
`abstract_state` and `init_state` split a model once into a static graph
definition plus pure pytrees (`params`, `batch_stats`), and `apply_model` merges
them inside a jitted function, runs the forward pass and returns the new batch
statistics. That
keeps train steps pure functions under plain `jax.jit`.

Each example arrives as f (row id, value) pairs into one stacked embedding
table: categorical fields have value 1, a scaled numeric field is its value
times that field's learned vector (see `gin_jax.data`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from gin_jax.config import ModelConfig
from gin_jax.interaction import generalized_interaction

# Logical axis names. Only gin_jax.partitioning maps them onto a device mesh.
TABLE_ROWS = "table_rows"


class FieldProjection(nnx.Module):
  """Projection layer: E[b,f,:] = table[id[b,f]] * value[b,f] (paper eq. 6).

  Holds one or more tables indexed by the same stacked row ids (`widths`: name
  -> width), e.g. GIN's `table` [R, d], or FM's `table` plus its first-order
  `linear` [R, 1]. Every one is row-sharded and trained row-sparsely.
  """

  def __init__(
    self, num_rows: int, padded_rows: int, widths: dict, init_std: float, *, rngs: nnx.Rngs
  ):
    for name, width in widths.items():
      table = _normal_rows(rngs.params(), num_rows, padded_rows, width, init_std)
      setattr(self, name, nnx.Param(table))
    self.names = tuple(widths)

  def __call__(self, ids_bf: jax.Array, values_bf: jax.Array) -> dict:
    return embed_rows({n: getattr(self, n)[...] for n in self.names}, ids_bf, values_bf)


INIT_BLOCK_ROWS = 1 << 22  # Rows drawn at once when a table is initialised.


def _normal_rows(key, num_rows: int, padded_rows: int, width: int, std: float) -> jax.Array:
  """std * N(0, 1) for the real rows, zeros for the padding rows, [padded_rows, width].

  Drawn block by block (INIT_BLOCK_ROWS rows; block 0 with `key`, block b with
  fold_in(key, b)) into one buffer: jax's threefry needs ~3x its output in
  temporaries, so a 100M-row table drawn at once would need ~4x the table.
  jax's (partitionable) threefry draws element i from counter i, so a row's
  values depend on its index alone, never on how far the table is padded for
  the device count; padding rows stay zero (no id points at them: no gradient).
  """
  block = INIT_BLOCK_ROWS

  def draw(k, first, rows):
    values = std * jax.random.normal(k, (rows, width))
    real = (first + jnp.arange(rows) < num_rows)[:, None]
    return jnp.where(real, values, 0.0)

  if padded_rows <= block:
    return draw(key, 0, padded_rows)
  full, rest = divmod(padded_rows, block)
  out = jnp.zeros((padded_rows, width), jnp.float32)
  out = jax.lax.dynamic_update_slice(out, draw(key, 0, block), (0, 0))

  def body(b, out):
    return jax.lax.dynamic_update_slice(out, draw(jax.random.fold_in(key, b), b * block, block),
                                        (b * block, 0))  # fmt: skip

  out = jax.lax.fori_loop(1, full, body, out)
  if rest:
    out = jax.lax.dynamic_update_slice(
      out, draw(jax.random.fold_in(key, full), full * block, rest), (full * block, 0)
    )
  return out


def embed_rows(tables: dict, ids_bf: jax.Array, values_bf: jax.Array) -> dict:
  """{name: tables[name][ids] * values} ([b, f, width] each); `tables` may be whole
  tables (row ids) or the rows a sparse step gathered (ids into those rows)."""
  out = {}
  for name, table in tables.items():
    e = jnp.take(table, ids_bf, axis=0)
    out[name] = e * values_bf[..., None].astype(e.dtype)
  return out


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


class MLP(nnx.Module):
  """Deep part (eq. 14): dense -> [batch norm] -> ReLU -> [dropout], per hidden layer."""

  def __init__(
    self,
    in_features: int,
    hidden: tuple[int, ...],
    batch_norm: bool,
    dropout: float,
    *,
    rngs: nnx.Rngs,
  ):
    self.num_hidden = len(hidden)
    self.dropout = dropout
    widths = (in_features, *hidden)
    for i in range(len(hidden)):
      # No bias before batch norm: BN cancels it, so its gradient is pure
      # round-off that Adam would normalise into lr-sized random steps.
      dense = nnx.Linear(widths[i], widths[i + 1], use_bias=not batch_norm, rngs=rngs)
      setattr(self, f"dense_{i}", dense)
      if batch_norm:
        setattr(self, f"norm_{i}", nnx.BatchNorm(widths[i + 1], momentum=0.9, rngs=rngs))

  def __call__(self, x, *, train: bool, dropout_key=None):
    for i in range(self.num_hidden):
      x = getattr(self, f"dense_{i}")(x)
      if hasattr(self, f"norm_{i}"):
        x = getattr(self, f"norm_{i}")(x, use_running_average=not train)
      x = jax.nn.relu(x)
      if train and self.dropout > 0:
        if dropout_key is None:
          raise ValueError("training with dropout needs a dropout_key")
        keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1 - self.dropout, x.shape)
        x = jnp.where(keep, x / (1 - self.dropout), 0.0)
    return x


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
      self.projection(ids_bf, values_bf), masks, train=train, dropout_key=dropout_key
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


class LogisticRegression(nnx.Module):
  """logit = b + sum_f w[id_f] * value_f: one weight per table row (the linear floor).

  Uses the same stacked table (of width 1), trainer, regulariser and scoring as
  GIN, so a quality comparison differs in the model alone.
  """

  def __init__(self, num_rows: int, padded_rows: int, init_std: float, *, rngs: nnx.Rngs):
    self.projection = FieldProjection(num_rows, padded_rows, {"table": 1}, init_std, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros(()))

  def __call__(self, ids_bf, values_bf, masks=None, *, train=False, dropout_key=None):
    return self.from_embeddings(self.projection(ids_bf, values_bf))

  def from_embeddings(self, emb, masks=None, *, train=False, dropout_key=None):
    return jnp.sum(emb["table"][..., 0], axis=-1) + self.bias[...]


def layer_name(layer: int) -> str:
  """Name of interaction layer `layer` (0-based) in params, masks and alpha trees."""
  return f"interaction_{layer}"


def layer_names(tree) -> list[str]:
  """The interaction-layer names present in a params-, masks- or alpha-shaped dict, in order."""
  names = []
  while layer_name(len(names)) in tree:
    names.append(layer_name(len(names)))
  return names


# --------------------------------------------------------------- functional use


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static facts about a built model; hashable, so it can close over jit."""

  cfg: ModelConfig
  num_fields: int
  num_rows: int  # Real rows of the stacked table (sum of field sizes).
  padded_rows: int  # Rows after padding to a multiple of the device count.

  def build(self, key: jax.Array) -> nnx.Module:
    rngs = nnx.Rngs(params=key)
    if self.cfg.arch == "lr":
      return LogisticRegression(self.num_rows, self.padded_rows, self.cfg.embed_init_std, rngs=rngs)
    if self.cfg.arch != "gin":
      from gin_jax import baselines  # imports this module

      return baselines.build(self.cfg, self.num_fields, self.num_rows, self.padded_rows, rngs=rngs)
    return GIN(self.cfg, self.num_fields, self.num_rows, self.padded_rows, rngs=rngs)


def padded_table_rows(num_rows: int, num_shards: int) -> int:
  """Rows rounded up to a multiple of `num_shards` (rows are sharded over all devices)."""
  return int(math.ceil(num_rows / num_shards) * num_shards)


def abstract_state(spec: ModelSpec):
  """(graphdef, params, batch_stats) with ShapeDtypeStruct leaves; allocates nothing."""
  model = nnx.eval_shape(lambda: spec.build(jax.random.key(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, params.to_pure_dict(), rest.to_pure_dict()


def init_state(spec: ModelSpec, key: jax.Array):
  """(params, batch_stats) as plain nested dicts of arrays; call under jit."""
  _, params, rest = nnx.split(spec.build(key), nnx.Param, ...)
  return params.to_pure_dict(), rest.to_pure_dict()


def apply_model(
  graphdef, params, batch_stats, ids_bf, values_bf, masks=None, *, train=False, dropout_key=None
):
  """Pure forward pass from row ids and values.

  Args:
    graphdef: from `abstract_state`.
    params, batch_stats: plain pytrees from `init_state`.
    ids_bf, values_bf: [b, f] row ids and values.
    masks: optional pruning masks, `{layer_name: bool [S, f, m]}` (see pruning).
    train: training mode (batch statistics, dropout).
    dropout_key: PRNG key, needed only with dropout in train mode.

  Returns:
    (logits [b], new batch_stats).
  """
  model = nnx.merge(graphdef, params, batch_stats)
  logits = model(ids_bf, values_bf, masks, train=train, dropout_key=dropout_key)
  return logits, _batch_stats(model)


def apply_on_embeddings(
  graphdef, params, batch_stats, emb, masks=None, *, train=False, dropout_key=None
):
  """Pure forward pass from already projected embeddings ({name: [b, f, width]}).

  The row-sparse train step gathers the batch's rows of every table itself (see
  `embed_rows`), so that gradients exist for those rows only; `params` still
  holds the tables (the graph needs them), but they are not read.

  Returns:
    (logits [b], new batch_stats).
  """
  model = nnx.merge(graphdef, params, batch_stats)
  logits = model.from_embeddings(emb, masks, train=train, dropout_key=dropout_key)
  return logits, _batch_stats(model)


def _batch_stats(model) -> dict:
  _, _, stats = nnx.split(model, nnx.Param, ...)
  return stats.to_pure_dict()


def alpha_tree(params) -> dict:
  """The alpha leaves of a params-shaped tree (params, grads or updates), by layer."""
  return {name: params[name]["alpha"] for name in layer_names(params)}


def with_alpha(params, alphas: dict):
  """A shallow copy of `params` whose alpha leaves are replaced by `alphas`."""
  out = dict(params)
  for name, value in alphas.items():
    out[name] = {**params[name], "alpha": value}
  return out


def row_tables(params) -> dict:
  """The parameters indexed by table row (`{name: [R, width]}`): trained row-sparsely."""
  return dict(params["projection"])


def with_row_tables(params, tables: dict):
  """A shallow copy of `params` whose row tables are replaced."""
  return {**params, "projection": {**params["projection"], **tables}}


def dense_params(params) -> dict:
  """Every parameter except the row tables: trained by optax."""
  return {k: v for k, v in params.items() if k != "projection"}


def logical_axes(params):
  """Per-leaf PartitionSpecs over logical names: table rows are TABLE_ROWS, all else replicated."""

  def axes(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    if keys[:1] == ["projection"]:
      return PartitionSpec(TABLE_ROWS, *([None] * (np.ndim(leaf) - 1)))
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(axes, params)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
