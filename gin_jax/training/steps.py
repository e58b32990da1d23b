"""Pure train / eval steps and sharded state construction (STYLE.md rules 3-5).

The train state is a plain dict pytree:

  params, batch_stats   the model (see gin_jax.models)
  opt_state             optax state (Adam with an injectable learning rate) of
                        the dense parameters; of every parameter when
                        train.embedding_optimizer = "adam"
  embedding             row-optimizer state of the embedding table (see
                        gin_jax.training.embedding); {} with the dense "adam"
  masks                 pruning masks with alpha's structure (all True in search)
  step                  int32 global step
  rng                   uint32 key data; dropout keys are fold_in(rng, step)
  nonfinite             int32 count of steps whose loss was NaN/Inf

`train_step(state, batch) -> (state, metrics)` is jitted once per run
(`build`) with explicit in/out shardings and the state donated. `train_step_resident`
is the same step on a batch it first gathers from a device-resident split
(gin_jax.training.device_input): one call per step, so a step's host work is one
dispatch. `StepFns.step(state, batch)` takes either kind of batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gin_jax import models as model_lib
from gin_jax.config import TrainConfig
from gin_jax.models import pruning
from gin_jax.training import device_input, embedding, partitioning


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Adam (the paper) with an injectable learning rate, for the dense parameters.

  The learning rate lives in the optimizer state so that plateau decay
  changes a number in the state, not the compiled step; the row optimizer of
  the table reads the same number. Gradient clipping happens in the step,
  over dense and row gradients together.
  """
  return optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate)


def get_learning_rate(opt_state) -> float:
  """The injected learning rate of an optimizer state from make_optimizer."""
  return float(optax.tree_utils.tree_get(opt_state, "learning_rate"))


def set_learning_rate(opt_state, lr: float):
  """A copy of `opt_state` with the injected learning rate replaced (same sharding)."""
  old = optax.tree_utils.tree_get(opt_state, "learning_rate")
  new = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
  return optax.tree_utils.tree_set(opt_state, learning_rate=new)


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The jitted functions of one (model, optimizer, mesh) combination."""

  init: callable  # (key, masks|None) -> state
  train_step: callable  # (state, batch) -> (state, metrics)
  train_step_resident: callable  # (state, arrays, index chunk, j) -> (state, metrics)
  eval_step: callable  # (params, batch_stats, masks, batch) -> probs [B]
  state_shardings: dict
  abstract_state: dict
  graphdef: object

  def step(self, state, batch):
    """One train step on a batch dict or a device_input.ResidentBatch."""
    if isinstance(batch, device_input.ResidentBatch):
      return self.train_step_resident(state, batch.arrays, batch.index, batch.j)
    return self.train_step(state, batch)


def _row_optimizer(cfg: TrainConfig) -> embedding.RowOptimizer | None:
  if cfg.embedding_optimizer == "adam":
    return None  # the dense reference: optax over the whole table
  l2_tables = (("linear", table_l2(cfg, "linear")),)
  cls = embedding.ROW_OPTIMIZERS[cfg.embedding_optimizer]
  return cls.from_config(cfg, l2_tables, jax.default_backend())


def table_l2(cfg: TrainConfig, name: str) -> float:
  """lambda of row table `name`: train.linear_l2 for the first-order weights, else embedding_l2."""
  if name == "linear" and cfg.linear_l2 is not None:
    return cfg.linear_l2
  return cfg.embedding_l2


def _l2_penalty(cfg: TrainConfig, tables: dict):
  """sum over row tables of lambda_t / 2 ||t||^2 (tables or their gathered rows)."""
  return sum(0.5 * table_l2(cfg, k) * jnp.sum(jnp.square(t)) for k, t in tables.items())


def _init_state(spec, tx, row_opt, key, masks):
  params, batch_stats = model_lib.init_state(spec, key)
  # Pruned alpha entries are exactly zero in the stored params too.
  params = model_lib.with_alpha(params, pruning.apply(model_lib.alpha_tree(params), masks))
  dense = params if row_opt is None else model_lib.dense_params(params)
  return {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": tx.init(dense),
    "embedding": {} if row_opt is None else row_opt.init(model_lib.row_tables(params)),
    "masks": masks,
    "step": jnp.zeros((), jnp.int32),
    "rng": jax.random.key_data(jax.random.fold_in(key, 1)),
    "nonfinite": jnp.zeros((), jnp.int32),
  }


def build(spec: model_lib.ModelSpec, cfg: TrainConfig, mesh: Mesh) -> StepFns:
  """Builds sharded init, train and eval steps.

  Args:
    spec: the model's static description (table rows already padded).
    cfg: training config (optimizers, L2, clipping).
    mesh: the device mesh from gin_jax.training.partitioning.

  Returns:
    StepFns whose functions are jitted with explicit shardings.
  """
  tx = make_optimizer(cfg)
  row_opt = _row_optimizer(cfg)
  graphdef, _, _ = model_lib.abstract_state(spec)
  init = functools.partial(_init_state, spec, tx, row_opt)
  all_true = jax.tree.map(
    lambda a: np.ones(a.shape, bool), model_lib.alpha_tree(model_lib.abstract_state(spec)[1])
  )
  shapes = jax.eval_shape(init, jax.random.key(0), all_true)
  opt_params = shapes["params"] if row_opt is None else model_lib.dense_params(shapes["params"])
  shardings = partitioning.state_shardings(mesh, shapes, tx, opt_params)
  rep = partitioning.replicated(mesh)
  batch_sh = partitioning.batch_sharding(mesh)
  if row_opt is None:
    step_fn = functools.partial(_dense_train_step, graphdef, tx, cfg)
  else:
    step_fn = functools.partial(_sparse_train_step, graphdef, tx, row_opt, cfg, spec)
  jit_init = jax.jit(init, in_shardings=(rep, shardings["masks"]), out_shardings=shardings)

  def init_state(key, masks=None):
    return jit_init(key, all_true if masks is None else masks)  # None: the search stage

  return StepFns(
    init=init_state,
    train_step=jax.jit(
      step_fn,
      in_shardings=(shardings, batch_sh),
      out_shardings=(shardings, rep),
      donate_argnums=(0,),
    ),
    train_step_resident=jax.jit(
      functools.partial(_resident_step, step_fn, batch_sh),
      in_shardings=(shardings, batch_sh, rep, rep),
      out_shardings=(shardings, rep),
      donate_argnums=(0,),
    ),
    eval_step=jax.jit(
      functools.partial(_eval_step, graphdef),
      in_shardings=(shardings["params"], shardings["batch_stats"], shardings["masks"], batch_sh),
      out_shardings=batch_sh,
    ),
    state_shardings=shardings,
    abstract_state=partitioning.with_shardings(shapes, shardings),
    graphdef=graphdef,
  )


def _resident_step(step_fn, batch_sh, state, arrays, index, j):
  """step_fn on batch j of a chunk, gathered from the resident split's rows."""
  batch = jax.lax.with_sharding_constraint(device_input.gather_batch(arrays, index, j), batch_sh)
  return step_fn(state, batch)


def _log_loss(logits, labels):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def _clip(grads, clip_norm: float):
  """Global-norm clipping over the whole gradient tree (optax's rule); 0 disables."""
  norm = optax.global_norm(grads)
  if clip_norm <= 0:
    return grads, norm
  scale = jnp.where(norm < clip_norm, 1.0, clip_norm / norm)
  return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads), norm


def _dense_update(tx, state, dense_params, dense_grads):
  """optax on the dense parameters; pruned alpha gets no update (DESIGN.md section 2)."""
  updates, opt_state = tx.update(dense_grads, state["opt_state"], dense_params)
  masked = pruning.apply(model_lib.alpha_tree(updates), state["masks"])
  updates = model_lib.with_alpha(updates, masked)
  return optax.apply_updates(dense_params, updates), opt_state


def _finish(state, params, batch_stats, opt_state, loss, grad_norm, **extra):
  new_state = {
    **state,
    **extra,
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": opt_state,
    "step": state["step"] + 1,
    "nonfinite": state["nonfinite"] + (~jnp.isfinite(loss)).astype(jnp.int32),
  }
  return new_state, {"loss": loss, "grad_norm": grad_norm}


def _dropout_key(state):
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def _dense_train_step(graphdef, tx, cfg: TrainConfig, state, batch):
  """The reference: every parameter, the whole table included, through optax Adam.

  The L2 term is FuxiCTR's lambda/2 ||table||^2 on every row each step: O(table).
  """

  def loss_fn(params):
    logits, batch_stats = model_lib.apply_model(
      graphdef,
      params,
      state["batch_stats"],
      batch["ids"],
      batch["values"],
      state["masks"],
      train=True,
      dropout_key=_dropout_key(state),
    )
    loss = _log_loss(logits, batch["labels"])
    reg = _l2_penalty(cfg, model_lib.row_tables(params))
    return loss + reg, (loss, batch_stats)

  (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  grads, norm = _clip(grads, cfg.clip_norm)
  params, opt_state = _dense_update(tx, state, state["params"], grads)
  return _finish(state, params, batch_stats, opt_state, loss, norm)


def _sparse_train_step(graphdef, tx, row_opt, cfg: TrainConfig, spec, state, batch):
  """Row-sparse step: gradients and updates for the batch's unique rows only.

  The touched rows first catch up on the idle steps they missed (their L2
  decay, gin_jax.training.embedding); the loss then has dense training's
  lambda/2 ||row||^2 for each of them. O(batch), and equal to the dense step
  while every gap is within the catch-up horizon.
  """
  params, emb = state["params"], state["embedding"]
  num_rows = spec.padded_rows
  uids, inverse = embedding.unique_rows(batch["ids"], num_rows)
  # A multi-valued field's padding slots carry the id spec.num_rows (one past the
  # real rows): made out of range here, they read zeros and are never written.
  uids = jnp.where(uids < spec.num_rows, uids, num_rows)
  valid = uids < num_rows
  count = emb["count"] + 1
  # The rows' rate follows the dense schedule, times train.embedding_lr_scale.
  lr = optax.tree_utils.tree_get(state["opt_state"], "learning_rate") * cfg.embedding_lr_scale
  last_u = emb["last"].at[uids].get(mode="fill", fill_value=0)
  rows, slots = row_opt.catch_up(
    embedding.gather(model_lib.row_tables(params), uids),
    embedding.gather(emb["slots"], uids),
    last_u,
    valid,
    count,
    lr,
  )

  def loss_fn(dense, rows):
    logits, batch_stats = model_lib.apply_on_rows(
      graphdef, {**params, **dense}, state["batch_stats"], rows, inverse, batch["values"],
      state["masks"], train=True, dropout_key=_dropout_key(state),
    )  # fmt: skip
    loss = _log_loss(logits, batch["labels"])
    # Padding entries read zero rows, so they add nothing.
    reg = _l2_penalty(cfg, rows)
    return loss + reg, (loss, batch_stats)

  dense = model_lib.dense_params(params)
  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
  (_, (loss, batch_stats)), grads = grad_fn(dense, rows)
  (dense_grads, row_grads), norm = _clip(grads, cfg.clip_norm)
  dense, opt_state = _dense_update(tx, state, dense, dense_grads)
  new_rows, new_slots = row_opt.update(rows, row_grads, slots, count, lr)
  tables = embedding.scatter(model_lib.row_tables(params), uids, new_rows)
  emb = {
    "count": count,
    "last": emb["last"].at[uids].set(jnp.full_like(uids, count), mode="drop"),
    "slots": embedding.scatter(emb["slots"], uids, new_slots),
  }
  params = model_lib.with_row_tables({**params, **dense}, tables)
  return _finish(state, params, batch_stats, opt_state, loss, norm, embedding=emb)


def _eval_step(graphdef, params, batch_stats, masks, batch):
  logits, _ = model_lib.apply_model(
    graphdef, params, batch_stats, batch["ids"], batch["values"], masks, train=False
  )
  return jax.nn.sigmoid(logits)
