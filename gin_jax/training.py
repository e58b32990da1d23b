"""Pure train / eval steps and sharded state construction (STYLE.md rules 3-5).

The train state is a plain dict pytree:

  params, batch_stats   the model (see gin_jax.model)
  opt_state             optax state (Adam with an injectable learning rate)
  masks                 pruning masks with alpha's structure (all True in search)
  step                  int32 global step
  rng                   uint32 key data; dropout keys are fold_in(rng, step)
  nonfinite             int32 count of steps whose loss was NaN/Inf

`train_step(state, batch) -> (state, metrics)` is jitted once per Trainer
with explicit in/out shardings and the state donated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gin_jax import model as model_lib
from gin_jax import partitioning, pruning
from gin_jax.config import TrainConfig


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Adam (the paper) behind optional global-norm clipping; lr is injectable.

  The learning rate lives in the optimizer state so that plateau decay
  changes a number in the state, not the compiled step.
  """
  adam = optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate)
  if cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adam)
  return adam


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
  eval_step: callable  # (params, batch_stats, masks, batch) -> probs [B]
  state_shardings: dict
  abstract_state: dict
  graphdef: object


def _state_shapes(spec: model_lib.ModelSpec, tx):
  graphdef, params, batch_stats = model_lib.abstract_state(spec)
  masks = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, jnp.bool_), model_lib.alpha_tree(params)
  )
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  return graphdef, {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": jax.eval_shape(tx.init, params),
    "masks": masks,
    "step": scalar,
    "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    "nonfinite": scalar,
  }


def build(spec: model_lib.ModelSpec, cfg: TrainConfig, mesh: Mesh) -> StepFns:
  """Builds sharded init, train and eval steps.

  Args:
    spec: the model's static description (table rows already padded).
    cfg: training config (optimizer, L2).
    mesh: the device mesh from gin_jax.partitioning.

  Returns:
    StepFns whose functions are jitted with explicit shardings.
  """
  tx = make_optimizer(cfg)
  graphdef, shapes = _state_shapes(spec, tx)
  rep = partitioning.replicated(mesh)
  shardings = partitioning.state_shardings(mesh, shapes, tx)
  batch_sh = partitioning.batch_sharding(mesh)

  def init(key, masks):
    params, batch_stats = model_lib.init_state(spec, key)
    # Pruned alpha entries are exactly zero in the stored params too.
    params = model_lib.with_alpha(params, pruning.apply(model_lib.alpha_tree(params), masks))
    return {
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": tx.init(params),
      "masks": masks,
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.key_data(jax.random.fold_in(key, 1)),
      "nonfinite": jnp.zeros((), jnp.int32),
    }

  train_step = functools.partial(_train_step, graphdef, tx, cfg.embedding_l2)
  eval_step = functools.partial(_eval_step, graphdef)
  abstract = partitioning.with_shardings(shapes, shardings)
  jit_init = jax.jit(init, in_shardings=(rep, shardings["masks"]), out_shardings=shardings)

  def init_state(key, masks=None):
    if masks is None:  # the search stage keeps every pair
      masks = jax.tree.map(lambda m: np.ones(m.shape, bool), shapes["masks"])
    return jit_init(key, masks)

  return StepFns(
    init=init_state,
    train_step=jax.jit(
      train_step,
      in_shardings=(shardings, batch_sh),
      out_shardings=(shardings, rep),
      donate_argnums=(0,),
    ),
    eval_step=jax.jit(
      eval_step,
      in_shardings=(shardings["params"], shardings["batch_stats"], shardings["masks"], batch_sh),
      out_shardings=batch_sh,
    ),
    state_shardings=shardings,
    abstract_state=abstract,
    graphdef=graphdef,
  )


def _train_step(graphdef, tx, embedding_l2, state, batch):
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

  def loss_fn(params):
    logits, e_bfd, batch_stats = model_lib.apply_model(
      graphdef,
      params,
      state["batch_stats"],
      batch["ids"],
      batch["values"],
      state["masks"],
      train=True,
      dropout_key=dropout_key,
    )
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))
    # L2 on the embedding rows this batch touched (the usual sparse-friendly form).
    reg = embedding_l2 * jnp.mean(jnp.sum(jnp.square(e_bfd), axis=(1, 2)))
    return loss + reg, (loss, batch_stats)

  (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  # Pruned alpha gets no update whatever Adam's moments say (DESIGN.md section 2).
  masked = pruning.apply(model_lib.alpha_tree(updates), state["masks"])
  updates = model_lib.with_alpha(updates, masked)
  new_state = {
    **state,
    "params": optax.apply_updates(state["params"], updates),
    "batch_stats": batch_stats,
    "opt_state": opt_state,
    "step": state["step"] + 1,
    "nonfinite": state["nonfinite"] + (~jnp.isfinite(loss)).astype(jnp.int32),
  }
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def _eval_step(graphdef, params, batch_stats, masks, batch):
  logits, _, _ = model_lib.apply_model(
    graphdef, params, batch_stats, batch["ids"], batch["values"], masks, train=False
  )
  return jax.nn.sigmoid(logits)
