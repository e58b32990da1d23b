"""Row-sparse training of the stacked embedding table (DESIGN.md section 6).

A train step touches only the rows its batch uses:

  ids [b, f] -> uids, inverse = unique(ids, size=b*f)   sorted, static size
  rows [U, d] = table[uids]                              (padding uids read 0)
  the model reads rows[inverse]; autodiff gives grads for the U rows only
  a row optimizer updates those rows and their state
  table.at[uids].set(new rows)                           (into the donated buffer)

so a step costs O(b f d), whatever the table's size. Padding entries of `uids`
carry the id `num_rows` of the padded table, one past its end: gathers read
them as zeros and scatters drop them. (DESIGN.md reserves a PAD row inside the
table; an out-of-range id does the same job without taking a row.)

Row optimizers (`train.embedding_optimizer`):

- `rowwise_adagrad`: one accumulator per row, G += mean_d(g^2),
  w -= lr g / (sqrt(G) + eps) (TorchRec / fbgemm's default); state is (d+1)/d
  of the table.
- `lazy_adam`: Adam's m and v per entry, updated only for touched rows. Before
  a touched row's update, its moments decay by b1^k and b2^k for the k steps
  it sat idle, as dense Adam's would have with zero gradient; bias correction
  uses the stage's step count.
- `adam`: the dense reference. The table is an ordinary optax parameter and
  every row's moments change every step: O(table) per step.

Regularisation (`train.embedding_l2` = lambda): the objective is FuxiCTR's
mean log loss + lambda/2 ||table||^2 per step, the same strength for every
row, whatever its frequency or the batch size. The dense reference adds
exactly that to the loss. The sparse optimizers pay it lazily: a row keeps
the step of its last update, and when a batch next touches it, its loss term
is lambda/2 * k ||row||^2 with k = the steps since that update (the current
one included), i.e. the L2 gradients it missed while idle, summed. A row
touched every step has k = 1, so the sparse and dense forms are equal when
every row is touched every step (tests/test_embedding.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from gin_jax.model import TABLE_ROWS

EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "lazy_adam", "adam")


@dataclasses.dataclass(frozen=True)
class RowOptimizer:
  """A row optimizer for the embedding table (see the module docstring)."""

  kind: str  # "rowwise_adagrad" or "lazy_adam".
  b1: float = 0.9  # lazy_adam: first-moment decay (optax's default).
  b2: float = 0.999  # lazy_adam: second-moment decay.
  eps: float = 1e-8  # Added to the denominator.
  l2: float = 0.0  # lambda (for replaying idle steps).
  replay: int = 0  # EXPERIMENT: idle steps replayed exactly (dense Adam with g = lambda w).

  def __post_init__(self):
    if self.kind not in ("rowwise_adagrad", "lazy_adam"):
      raise ValueError(f"unknown row optimizer {self.kind!r}")

  def init(self, tables: dict) -> dict:
    """Per-row state for the row tables `{name: [R, ...]}` (row-sharded like them).

    Returns:
      {"count": int32 [] steps taken, "last": int32 [R] the count at each row's
      last update (0: never), "slots": {name: {"m", "v"}}} (lazy_adam: arrays
      like the table) or {name: {"acc"}} (rowwise_adagrad: float32 [R]).
    """
    rows = next(iter(tables.values())).shape[0]
    if self.kind == "lazy_adam":
      slots = {k: {"m": jnp.zeros_like(t), "v": jnp.zeros_like(t)} for k, t in tables.items()}
    else:
      slots = {k: {"acc": jnp.zeros((rows,), t.dtype)} for k, t in tables.items()}
    return {
      "count": jnp.zeros((), jnp.int32),
      "last": jnp.zeros((rows,), jnp.int32),
      "slots": slots,
    }

  def update(self, rows, grads, slots, last_u, count, lr):
    """New values of the touched rows and of their optimizer slots.

    Args:
      rows: {name: [U, ...]} current rows of each table.
      grads: their gradients (L2 catch-up included), same structure.
      slots: the per-row slots gathered at the same rows, as in init()["slots"].
      last_u: int32 [U] the count at each row's last update.
      count: int32 scalar, this step's 1-based count.
      lr: the learning rate.

    Returns:
      (new rows, new slots), with the structures of `rows` and `slots`.
    """
    new_rows, new_slots = {}, {}
    for name, w in rows.items():
      new_rows[name], new_slots[name] = self._update_one(
        w, grads[name], slots[name], last_u, count, lr
      )
    return new_rows, new_slots

  def _update_one(self, w, g, slot, last_u, count, lr):
    if self.kind == "rowwise_adagrad":
      acc = slot["acc"] + jnp.mean(jnp.square(g.reshape(g.shape[0], -1)), axis=-1)
      scale = jnp.sqrt(acc).reshape((-1,) + (1,) * (g.ndim - 1)) + self.eps
      return w - lr * g / scale, {"acc": acc}
    idle = (count - 1 - last_u).astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1))
    m, v = slot["m"], slot["v"]
    if self.replay:
      w, m, v, idle = self._replay(w, m, v, last_u, idle, lr)
    # The idle steps' zero-gradient decay, then optax's Adam arithmetic.
    m = m * jnp.power(self.b1, idle)
    v = v * jnp.power(self.b2, idle)
    m = (1 - self.b1) * g + self.b1 * m
    v = (1 - self.b2) * (g**2) + self.b2 * v
    m_hat = m / (1 - self.b1**count).astype(m.dtype)
    v_hat = v / (1 - self.b2**count).astype(v.dtype)
    return w - lr * (m_hat / (jnp.sqrt(v_hat) + self.eps)), {"m": m, "v": v}


  def _replay(self, w, m, v, last_u, idle, lr):
    b1, b2, eps, l2 = self.b1, self.b2, self.eps, self.l2
    first = (last_u + 1).astype(w.dtype).reshape(idle.shape)

    def body(j, carry):
      w, m, v = carry
      active = j < idle
      c = first + j
      g = l2 * w
      m2 = (1 - b1) * g + b1 * m
      v2 = (1 - b2) * g**2 + b2 * v
      upd = lr * ((m2 / (1 - b1**c)) / (jnp.sqrt(v2 / (1 - b2**c)) + eps))
      return jnp.where(active, w - upd, w), jnp.where(active, m2, m), jnp.where(active, v2, v)

    w, m, v = jax.lax.fori_loop(0, self.replay, body, (w, m, v))
    rest = jnp.maximum(idle - self.replay, 0)
    w = jnp.sign(w) * jnp.maximum(jnp.abs(w) - rest * lr, 0.0)
    return w, m, v, rest


def unique_rows(ids_bf: jax.Array, num_rows: int):
  """Sorted unique row ids of a batch, padded to a static size.

  Args:
    ids_bf: [b, f] int32 global row ids.
    num_rows: rows of the (padded) table; used as the padding id.

  Returns:
    (uids [b*f] int32 with padding `num_rows` at the end, inverse [b, f] int32
    such that uids[inverse] == ids_bf).
  """
  flat = ids_bf.reshape(-1)
  uids, inverse = jnp.unique(flat, size=flat.size, fill_value=num_rows, return_inverse=True)
  return uids.astype(jnp.int32), inverse.reshape(ids_bf.shape).astype(jnp.int32)


def gather(tree, uids):
  """tree's leaves (row-major [R, ...]) at rows uids; padding ids read zeros."""
  return jax.tree.map(lambda x: x.at[uids].get(mode="fill", fill_value=0), tree)


def scatter(tree, uids, new_tree):
  """tree with rows uids replaced by new_tree's; padding ids are dropped."""
  return jax.tree.map(lambda x, y: x.at[uids].set(y.astype(x.dtype), mode="drop"), tree, new_tree)


def catch_up_weights(last_u, count, valid_u):
  """k per touched row: steps of L2 it owes, its last update excluded, this step included.

  Args:
    last_u: int32 [U] the count at each row's last update.
    count: this step's 1-based count.
    valid_u: bool [U], False at padding entries (which owe nothing).

  Returns:
    float32 [U].
  """
  return jnp.where(valid_u, (count - last_u).astype(jnp.float32), 0.0)


def logical_axes(state) -> dict:
  """PartitionSpecs of a row-optimizer state: per-row arrays on TABLE_ROWS, scalars replicated."""
  return jax.tree.map(
    lambda x: PartitionSpec(TABLE_ROWS, *([None] * (x.ndim - 1))) if x.ndim else PartitionSpec(),
    state,
  )
