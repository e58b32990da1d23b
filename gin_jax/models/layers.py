"""The parts every model shares: the projection (embedding rows) and the deep MLP.

A list field pooled by attention (schema `pooling: attention`) is weighed by the
model's TargetAttention (DIN's local activation unit) inside the projection.

Each example arrives as f (row id, value) pairs into one stacked embedding
table: categorical fields have value 1, a scaled numeric field is its value
times that field's learned vector (see `gin_jax.data`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gin_jax.config import ATTENTION_MISSING


class FieldProjection(nnx.Module):
  """Projection layer: E[b,f,:] = table[id[b,f]] * value[b,f] (paper eq. 6).

  Holds one or more tables indexed by the same stacked row ids (`widths`: name
  -> width), e.g. GIN's `table` [R, d], or FM's `table` plus its first-order
  `linear` [R, 1]. Every one is row-sharded and trained row-sparsely.

  The ids and values arrive as slots: one per single-valued field, max_values
  for a multi-valued one (`field_slots`, set by ModelSpec.build; None: one slot
  per field). A multi-valued field's slots are pooled into one field vector
  here, so every model sees f fields (see `pool_slots`); a field pooled by
  attention is weighed by the model's `TargetAttention` (passed in as `attention`).
  """

  field_slots: tuple[int, ...] | None = None

  def __init__(
    self, num_rows: int, padded_rows: int, widths: dict, init_std: float, *, rngs: nnx.Rngs
  ):
    for name, width in widths.items():
      table = _normal_rows(rngs.params(), num_rows, padded_rows, width, init_std)
      setattr(self, name, nnx.Param(table))
    self.names = tuple(widths)
    self.widths = tuple(widths.values())

  def __call__(self, ids_bs: jax.Array, values_bs: jax.Array, attention=None) -> dict:
    tables = {n: getattr(self, n)[...] for n in self.names}
    return embed_rows(tables, ids_bs, values_bs, self.field_slots, attention)


def project(model, ids_bs: jax.Array, values_bs: jax.Array) -> dict:
  """A model's field embeddings: its projection, with its target attention if it has one."""
  return model.projection(ids_bs, values_bs, getattr(model, "target_attention", None))


ATTENDED_TABLE = "table"  # the table whose rows TargetAttention weighs (width embed_dim)
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


def embed_rows(
  tables: dict, ids_bs: jax.Array, values_bs: jax.Array, field_slots=None, attention=None
) -> dict:
  """{name: pool_slots(tables[name][ids] * weights)} ([b, f, width] each).

  `tables` may be whole tables (row ids) or the rows a sparse step gathered
  (ids into those rows); ids and values are [b, slots] (see pool_slots). The
  weights are the values, except at the slots of a field pooled by attention,
  where `attention` (a TargetAttention) weighs each value against its target
  from the rows of the table named ATTENDED_TABLE (every model's d-wide one);
  every table of such a field (FM's first-order weights too) is pooled with
  those weights.
  """
  # Padding slots' ids are past the real rows: they read zeros, never NaN.
  rows = {n: jnp.take(t, ids_bs, axis=0, mode="fill", fill_value=0) for n, t in tables.items()}
  weights = values_bs
  if attention is not None:  # weighs the d-wide rows (a dict's order is not the model's)
    weights = attention(rows[ATTENDED_TABLE], values_bs)
  return {
    n: pool_slots(e * weights[..., None].astype(e.dtype), field_slots) for n, e in rows.items()
  }


class TargetAttention(nnx.Module):
  """DIN's local activation unit, one per list field pooled by attention.

  For each value h_i of the row's list and the target field's vector t, the weight
  is a_i = MLP([h_i, t, h_i - t, h_i * t]) (ReLU hidden layers, one linear output,
  no softmax: as in DIN, the weights need not sum to 1, so the pooled vector keeps
  how MUCH of the history is relevant, not only which part). Padding weighs 0; an
  empty list's missing slot (value ATTENTION_MISSING) weighs 1: the field's
  missing vector. The output bias starts at 1, so that a fresh unit pools like a
  sum (the embeddings start near 0, so a unit starting near 0 would pass almost
  no gradient to the history's rows).

  Args:
    field_slots: slots per field (the data's layout).
    pairs: (field, target field) indices of the fields it pools.
    width: the width of the rows it weighs (embed_dim).
    hidden: the unit's hidden widths (model.target_attention_hidden).
  """

  def __init__(self, field_slots, pairs, width: int, hidden: tuple[int, ...], *, rngs: nnx.Rngs):
    starts = np.cumsum([0, *field_slots])[:-1].tolist()
    self.where = tuple((starts[f], field_slots[f], starts[t]) for f, t in pairs)
    widths = (4 * width, *hidden)
    for k in range(len(pairs)):
      layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
      out = nnx.Linear(widths[-1], 1, bias_init=nnx.initializers.ones, rngs=rngs)
      setattr(self, f"unit_{k}", nnx.List([*layers, out]))

  def scores(self, k: int, h_bkw: jax.Array, t_bw: jax.Array) -> jax.Array:
    """Unit k's a_i [b, slots] of rows h [b, slots, w] against targets t [b, w].

    The first layer on [h, t, h - t, h * t] is computed without the concatenation:
    with its kernel in four blocks K1..K4, it is h (K1 + K3) + (h * t) K4 +
    t (K2 - K3) + bias, whose t part is once per row, not once per slot (the same
    function, half the per-slot work: the unit's main cost, benchmarks.train_bench).
    """
    first, *rest = getattr(self, f"unit_{k}")
    k1, k2, k3, k4 = jnp.split(first.kernel[...], 4, axis=0)
    per_row = t_bw @ (k2 - k3) + first.bias[...]
    x = h_bkw @ (k1 + k3) + (h_bkw * t_bw[:, None, :]) @ k4 + per_row[:, None, :]
    for dense in rest:
      x = dense(jax.nn.relu(x))
    return x[..., 0]

  def __call__(self, e_bsw: jax.Array, values_bs: jax.Array) -> jax.Array:
    """The slots' pooling weights [b, slots]: the values, with each attention field's
    slots replaced by their a_i (1 at an empty list's missing slot, 0 at padding)."""
    weights = values_bs.astype(jnp.float32)
    for k, (start, slots, target) in enumerate(self.where):
      t = e_bsw[:, target] * values_bs[:, target, None].astype(e_bsw.dtype)
      v = values_bs[:, start : start + slots]
      a = self.scores(k, e_bsw[:, start : start + slots], t).astype(jnp.float32)
      w = jnp.where(v == ATTENTION_MISSING, 1.0, jnp.where(v > 0, a, 0.0))
      weights = weights.at[:, start : start + slots].set(w)
    return weights


def pool_slots(e_bsw: jax.Array, field_slots: tuple[int, ...] | None) -> jax.Array:
  """[b, slots, w] -> [b, f, w]: each field's slots summed into one field vector.

  A multi-valued field's slots carry value 1/count each (mean pooling) or 1
  (sum pooling), and 0 at padding slots, whose id no table row answers to: so
  the sum IS the pooled embedding, and each value's gradient is the field's
  gradient times its value (1/count under mean). A single-valued field is one
  slot, passed through untouched (no arithmetic: bit-identical to no pooling).

  Args:
    e_bsw: slot embeddings already multiplied by their values.
    field_slots: slots per field, in order (None or all 1: nothing to pool).
  """
  if field_slots is None or all(k == 1 for k in field_slots):
    return e_bsw
  fields, start = [], 0
  for k in field_slots:
    part = e_bsw[:, start : start + k]
    fields.append(part[:, 0] if k == 1 else jnp.sum(part, axis=1))
    start += k
  return jnp.stack(fields, axis=1)


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
