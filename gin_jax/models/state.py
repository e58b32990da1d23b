"""Models used functionally (DESIGN.md section 3): static spec, pure pytrees, pure apply.

The modules are ordinary NNX modules. The library never calls them statefully:
`abstract_state` and `init_state` split a model once into a static graph
definition plus pure pytrees (`params`, `batch_stats`), and `apply_model` merges
them inside a jitted function, runs the forward pass and returns the new batch
statistics. That keeps train steps pure functions under plain `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from gin_jax.config import ModelConfig
from gin_jax.models import registry
from gin_jax.models.gin import layer_names
from gin_jax.models.layers import ATTENDED_TABLE, TargetAttention, embed_rows

# Logical axis names. Only gin_jax.training.partitioning maps them onto a device mesh.
TABLE_ROWS = "table_rows"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Static facts about a built model; hashable, so it can close over jit."""

  cfg: ModelConfig
  num_fields: int
  num_rows: int  # Real rows of the stacked table (sum of field sizes).
  padded_rows: int  # Rows after padding to a multiple of the device count.
  # Input slots per field (a multi-valued field has max_values of them); None:
  # one slot per field. DatasetMeta.field_slots gives it for prepared data.
  field_slots: tuple[int, ...] | None = None
  # (field, target field) of each list field pooled by attention (DatasetMeta.attention):
  # the model gets a TargetAttention over them.
  attention: tuple[tuple[int, int], ...] = ()

  @property
  def num_slots(self) -> int:
    """The width of the ids and values arrays: one column per slot."""
    return self.num_fields if self.field_slots is None else sum(self.field_slots)

  def build(self, key: jax.Array) -> nnx.Module:
    model = registry.build(
      self.cfg, self.num_fields, self.num_rows, self.padded_rows, rngs=nnx.Rngs(params=key)
    )
    # The input's slot layout is the data's, not the architecture's: set on the
    # projection every model has, so no model's constructor needs to know it.
    model.projection.field_slots = self.field_slots
    if self.attention:
      # A key of its own: the rest of the model draws exactly what it draws without it.
      rngs = nnx.Rngs(params=jax.random.fold_in(key, ATTENTION_KEY))
      model.target_attention = TargetAttention(
        self.field_slots or (1,) * self.num_fields,  # None: one slot a field (max_values 1)
        self.attention,
        model.projection.widths[model.projection.names.index(ATTENDED_TABLE)],
        self.cfg.target_attention_hidden,
        rngs=rngs,
      )
    return model


ATTENTION_KEY = 0xD1  # fold_in of the init key that draws the target-attention units


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


def apply_on_rows(
  graphdef, params, batch_stats, rows, ids_bs, values_bs, masks=None, *, train=False,
  dropout_key=None,
):  # fmt: skip
  """Pure forward pass from gathered table rows ({name: [u, width]}) and ids into them.

  The row-sparse train step gathers the batch's rows of every table itself, so that
  gradients exist for those rows only; `params` still holds the tables (the graph
  needs them), but they are not read. The model's target attention (if any) comes
  from `params`, so it trains with the dense parameters.

  Returns:
    (logits [b], new batch_stats).
  """
  model = nnx.merge(graphdef, params, batch_stats)
  attention = getattr(model, "target_attention", None)
  emb = embed_rows(rows, ids_bs, values_bs, model.projection.field_slots, attention)
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
