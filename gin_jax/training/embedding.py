"""Row-sparse training of the embedding tables (DESIGN.md section 6).

A train step touches only the rows its batch uses:

  ids [b, f] -> uids, inverse = unique(ids, size=b*f)   sorted, static size
  rows [U, w] = table[uids]                              (padding uids read 0)
  catch_up(rows)                                         the idle steps they missed
  the model reads rows[inverse]; autodiff gives grads for the U rows only
  a row optimizer updates those rows and their state
  table.at[uids].set(new rows)                           (into the donated buffer)

so a step costs O(b f w), whatever the table's size. Padding entries of `uids`
carry the id `num_rows` of the padded table, one past its end: gathers read
them as zeros and scatters drop them. (DESIGN.md reserves a PAD row inside the
table; an out-of-range id does the same job without taking a row.)

The regulariser (`train.embedding_l2` = lambda) is FuxiCTR's: the objective of
a step is the batch's mean log loss + lambda/2 ||table||^2, the same strength
for every row whatever its frequency or the batch size. The dense reference
(`adam`) adds exactly that to the loss and updates every row every step. On
Frappe that L2 is worth +0.003 test AUC, and the gain comes from what dense
Adam does to rows ABSENT from a batch: their gradient is lambda*w alone, which
Adam normalises, so an idle row keeps moving (momentum, then a damped
oscillation towards 0) at ~lr per step. The sparse optimizers reproduce it
lazily: a row keeps the step count of its last update, and when a batch next
touches it, `catch_up` first applies the k idle steps it missed, then the step
proceeds as if the row had been updated all along.

- `lazy_adam`: m, v per entry. A gap of at most `catch_up_steps` idle steps is
  replayed exactly (Adam on g = lambda*w, with the bias corrections of those
  steps), for up to 1/REPLAY_FRACTION of the batch's entries (the longest such
  gaps first); a longer gap (or an entry beyond that budget) takes a closed
  form: the momentum drift of Adam's decaying m and v (a geometric sum), then
  an L2 shrink by (1 - lr*lambda/sqrt(v_hat))^k, dense Adam's rate once the
  momentum has died out (it reaches 0 when the L2 dominates v, as dense Adam's
  row does), and m, v decayed by b1^k, b2^k. With every gap <= catch_up_steps
  the result equals dense Adam (tests/test_embedding.py); the replay costs at
  most catch_up_steps elementwise passes over U/8 rows, whatever the table size.
- `rowwise_adagrad`: one accumulator per row, G += mean_w(g^2),
  w -= lr g / (sqrt(G) + eps) (TorchRec / fbgemm's default); state is (w+1)/w
  of the table. Adagrad has no momentum: an idle row under L2 shrinks by the
  factor (1 - lr*lambda/(sqrt(G)+eps)) per step, applied k times in closed form
  (G's own growth over the idle steps, O(lambda^2), is left out).
- `adam`: the dense reference, O(table) per step (gin_jax.training.steps).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from gin_jax.config import EMBEDDING_OPTIMIZERS, TrainConfig
from gin_jax.models import TABLE_ROWS

REPLAY_FRACTION = 8  # lazy_adam replays at most U / 8 of a batch's U row entries.


@dataclasses.dataclass(frozen=True)
class RowOptimizer:
  """What every row optimizer shares (see the module docstring); one subclass each.

  The base keeps the per-row step counts and the L2 strengths and loops over
  the row tables; a subclass names itself (`name`, its train.embedding_optimizer
  value) and defines its per-row slots (`_slot`), the idle steps a row missed
  (`_idle`) and one step (`_step`). A new row optimizer is one subclass and one
  ROW_OPTIMIZERS entry here, plus its name in gin_jax.config.EMBEDDING_OPTIMIZERS.
  """

  name: ClassVar[str] = ""
  l2: float = 0.0  # lambda: L2 strength per row per step.
  l2_tables: tuple = ()  # ((table name, lambda), ...): tables with their own strength.
  eps: float = 1e-8  # Added to the denominator (optax's default).

  @classmethod
  def from_config(cls, cfg: TrainConfig, l2_tables: tuple, backend: str) -> RowOptimizer:
    """The optimizer train.embedding_optimizer names, with the run's settings."""
    del backend  # only lazy_adam's replay depends on it
    return cls(l2=cfg.embedding_l2, l2_tables=l2_tables)

  def init(self, tables: dict) -> dict:
    """Per-row state for the row tables `{name: [R, w]}` (row-sharded like them).

    Returns:
      {"count": int32 [] steps taken, "last": int32 [R] the count at each row's
      last update (0: never), "slots": {name: the subclass's slots}}.
    """
    rows = next(iter(tables.values())).shape[0]
    slots = {k: self._slot(t) for k, t in tables.items()}
    last = jnp.zeros((rows,), jnp.int32)
    return {"count": jnp.zeros((), jnp.int32), "last": last, "slots": slots}

  def l2_of(self, name: str) -> float:
    """The L2 strength of table `name`."""
    return dict(self.l2_tables).get(name, self.l2)

  def catch_up(self, rows, slots, last_u, valid_u, count, lr):
    """Applies the idle steps each gathered row missed since its last update.

    Args:
      rows: {name: [U, w]} rows as stored (padding entries read 0).
      slots: their optimizer slots, gathered alike.
      last_u: int32 [U] the count at each row's last update.
      valid_u: bool [U], False at padding entries (which are left alone).
      count: int32 scalar, this step's 1-based count (idle = count - 1 - last).
      lr: the learning rate (taken as constant over the idle steps).

    Returns:
      (rows, slots) as dense training would have left them before this step.
    """
    idle = jnp.where(valid_u, count - 1 - last_u, 0)
    out = {k: self._idle(w, slots[k], last_u, idle, lr, self.l2_of(k)) for k, w in rows.items()}
    return {k: o[0] for k, o in out.items()}, {k: o[1] for k, o in out.items()}

  def update(self, rows, grads, slots, count, lr):
    """One optimizer step on the (caught-up) touched rows.

    Args:
      rows: {name: [U, w]} caught-up rows.
      grads: their gradients (this step's L2 included), same structure.
      slots: their caught-up optimizer slots.
      count: int32 scalar, this step's 1-based count.
      lr: the learning rate.

    Returns:
      (new rows, new slots), with the structures of `rows` and `slots`.
    """
    out = {k: self._step(w, grads[k], slots[k], count, lr) for k, w in rows.items()}
    return {k: o[0] for k, o in out.items()}, {k: o[1] for k, o in out.items()}

  def _slot(self, table):
    raise NotImplementedError

  def _idle(self, w, slot, last_u, idle, lr, l2):
    raise NotImplementedError

  def _step(self, w, g, slot, count, lr):
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RowwiseAdagrad(RowOptimizer):
  """One accumulator per row: G += mean_w(g^2), w -= lr g / (sqrt(G) + eps)."""

  name: ClassVar[str] = "rowwise_adagrad"

  def _slot(self, table):
    return {"acc": jnp.zeros((table.shape[0],), table.dtype)}

  def _idle(self, w, slot, last_u, idle, lr, l2):
    del last_u
    if not l2:
      return w, slot
    rate = lr * l2 / (jnp.sqrt(slot["acc"]) + self.eps)
    shrink = jnp.power(jnp.clip(1.0 - rate, 0.0, 1.0), idle.astype(w.dtype))
    return w * shrink[:, None], slot

  def _step(self, w, g, slot, count, lr):
    del count
    acc = slot["acc"] + jnp.mean(jnp.square(g), axis=-1)
    return w - lr * g / (jnp.sqrt(acc)[:, None] + self.eps), {"acc": acc}


@dataclasses.dataclass(frozen=True)
class LazyAdam(RowOptimizer):
  """Adam's m, v per entry, updated for touched rows only, idle steps caught up."""

  name: ClassVar[str] = "lazy_adam"
  catch_up_steps: int = 64  # Idle steps replayed exactly per touched row.
  b1: float = 0.9  # First-moment decay (optax's default).
  b2: float = 0.999  # Second-moment decay.
  # The replay: "loop" runs as many iterations as the longest gap (a while loop);
  # "unrolled" always runs catch_up_steps masked iterations as straight-line
  # code, with no loop for the device to return to the host for
  # (benchmarks/row_optimizer_bench.py compares them).
  replay: str = "loop"

  def __post_init__(self):
    if self.replay not in ("loop", "unrolled"):
      raise ValueError(f"replay must be 'loop' or 'unrolled', got {self.replay!r}")
    if self.catch_up_steps < 0:
      raise ValueError(f"catch_up_steps must be >= 0, got {self.catch_up_steps}")

  @classmethod
  def from_config(cls, cfg: TrainConfig, l2_tables: tuple, backend: str) -> LazyAdam:
    return cls(
      l2=cfg.embedding_l2,
      l2_tables=l2_tables,
      catch_up_steps=cfg.embedding_catch_up,
      replay=replay_form(backend),
    )

  def _slot(self, table):
    return {"m": jnp.zeros_like(table), "v": jnp.zeros_like(table)}

  def _step(self, w, g, slot, count, lr):
    # optax's Adam arithmetic, for the touched rows only.
    m = (1 - self.b1) * g + self.b1 * slot["m"]
    v = (1 - self.b2) * (g**2) + self.b2 * slot["v"]
    m_hat = m / (1 - self.b1**count).astype(m.dtype)
    v_hat = v / (1 - self.b2**count).astype(v.dtype)
    return w - lr * (m_hat / (jnp.sqrt(v_hat) + self.eps)), {"m": m, "v": v}

  def _idle(self, w, slot, last_u, idle, lr, l2):
    m, v = slot["m"], slot["v"]
    b1, b2 = self.b1, self.b2
    short = idle <= self.catch_up_steps
    if self.catch_up_steps:
      # Exact replay of the gaps within the horizon, longest first, for at most
      # U / REPLAY_FRACTION entries (the others take the closed form below).
      n = max(1, w.shape[0] // REPLAY_FRACTION)
      top = jnp.argsort(-jnp.where(short, idle, 0), stable=True)[:n]
      steps = jnp.where(short[top], idle[top], 0)
      ws, ms, vs = self._replay(w[top], m[top], v[top], last_u[top], steps, lr, l2)
      w, m, v = w.at[top].set(ws), m.at[top].set(ms), v.at[top].set(vs)
      idle = idle.at[top].add(-steps)
    # Closed form for the remaining idle steps (all of a long gap's): the momentum
    # drift sum_j lr m_hat_j / sqrt(v_hat_j), m_j = b1^j m and v_j = b2^j v, a
    # geometric sum in r = b1 / sqrt(b2) (bias corrections taken at the sum's
    # r^j-weighted mean step: within 2% of the exact sum after 5 steps); then
    # the L2 shrink at the rate dense Adam has once momentum has died out, with
    # v decayed to the gap's middle.
    k = idle.astype(w.dtype)[:, None]
    r = b1 / b2**0.5
    s0 = r * (1 - r**k) / (1 - r)  # sum_{j=1..k} r^j
    s1 = r * (1 - (k + 1) * r**k + k * r ** (k + 1)) / (1 - r) ** 2  # sum j r^j
    c = last_u.astype(w.dtype)[:, None] + jnp.where(k > 0, s1 / jnp.maximum(s0, 1e-12), 1.0)
    bc1, bc2 = 1 - b1**c, 1 - b2**c
    drift = lr * (m / bc1) / (jnp.sqrt(v / bc2) + self.eps) * s0
    w = w - jnp.where(k > 0, drift, 0.0)
    v_mid = v * b2 ** (k / 2) / jnp.maximum(bc2, 1e-12)
    rate = lr * l2 / (jnp.sqrt(v_mid) + self.eps)
    w = w * jnp.power(jnp.clip(1.0 - rate, 0.0, 1.0), k)
    return w, {"m": m * b1**k, "v": v * b2**k}

  def _replay(self, w, m, v, last_u, steps, lr, l2):
    """Exact dense-Adam idle steps (g = lambda w), `steps` [n] of them per row."""
    b1, b2, eps = self.b1, self.b2, self.eps
    first = (last_u + 1)[:, None]
    steps = steps[:, None]

    def body(j, carry):
      w, m, v = carry
      c = (first + j).astype(w.dtype)
      g = l2 * w
      m2 = (1 - b1) * g + b1 * m
      v2 = (1 - b2) * (g**2) + b2 * v
      upd = lr * ((m2 / (1 - b1**c)) / (jnp.sqrt(v2 / (1 - b2**c)) + eps))
      active = j < steps
      return jnp.where(active, w - upd, w), jnp.where(active, m2, m), jnp.where(active, v2, v)

    if self.replay == "unrolled":
      return jax.lax.fori_loop(0, self.catch_up_steps, body, (w, m, v), unroll=True)
    # As many iterations as the longest gap among these rows (often a few).
    return jax.lax.fori_loop(0, jnp.max(steps, initial=0), body, (w, m, v))


def replay_form(backend: str) -> str:
  """lazy_adam's replay form for a backend (benchmarks/results/row_optimizer_bench_*.json).

  Same numbers either way (tests/test_embedding.py). On a CPU the while loop is
  the faster (it stops at the longest gap); on a GPU straight-line code is
  (each loop iteration goes back to the host for its condition). The figures
  are in that JSON and docs/scale.md.
  """
  return "loop" if backend == "cpu" else "unrolled"


# train.embedding_optimizer -> its class ("adam" is the dense optax reference: none).
ROW_OPTIMIZERS = {cls.name: cls for cls in (RowwiseAdagrad, LazyAdam)}
assert set(ROW_OPTIMIZERS) | {"adam"} == set(EMBEDDING_OPTIMIZERS)


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


def logical_axes(state) -> dict:
  """PartitionSpecs of a row-optimizer state: per-row arrays on TABLE_ROWS, scalars replicated."""
  return jax.tree.map(
    lambda x: PartitionSpec(TABLE_ROWS, *([None] * (x.ndim - 1))) if x.ndim else PartitionSpec(),
    state,
  )
