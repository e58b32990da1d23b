"""Each stage's best checkpoint (by train.early_stop_metric on validation): kept on
improvement, restored at the end."""

from __future__ import annotations

from gin_jax import runtime
from gin_jax.training import checkpointing, stages
from gin_jax.training.context import RunContext
from gin_jax.training.evaluate import evaluate
from gin_jax.training.stages import Stage


def improves(metric: str, value: float, best: float | None) -> bool:
  """Whether validation `metric` ("auc": higher is better; "logloss": lower) beats `best`."""
  if best is None:
    return True
  return value > best if metric == "auc" else value < best


def keep_as_best(ctx: RunContext, stage: Stage, state, progress, value) -> None:
  """Records `value` (of train.early_stop_metric) as the stage's best; saves best_<stage>."""
  progress.best_value = value
  checkpointing.save(ctx.best_manager(stage), int(state["step"]), state, ctx.meta_dict(progress))


def restore_best(ctx: RunContext, stage: Stage, state):
  """The stage's best weights (by train.early_stop_metric), keeping the current step.

  If best_<stage> is unusable (altered on disk, unsealed, NaN/Inf), the stage's
  usable regular checkpoints are evaluated on the validation split again and
  the best of them stands in; it is sealed into best_<stage> in its place, so
  a later rerun or `score --best` finds an intact one.
  """
  best = ctx.best_manager(stage)
  held = checkpointing.steps_of(best)
  if not held:
    return state
  step = held[-1]
  try:
    restored, _ = checkpointing.restore(best, step, ctx.fns.abstract_state)
  except checkpointing.UnusableCheckpoint as e:
    runtime.log(f"WARNING: {e}; re-evaluating the {stage.name} stage's checkpoints instead")
    found = _best_regular_checkpoint(ctx, stage)
    if found is None:
      runtime.log(f"WARNING: no usable {stage.name} checkpoint stands in; keeping the last weights")
      return state
    step, restored, meta = found
    for stale in checkpointing.steps_of(best):
      checkpointing.delete(best, stale)
    checkpointing.save(best, step, restored, meta)
  runtime.log(f"{stage.name}: restored the best weights (step {step})")
  return {**restored, "step": state["step"]}


def _best_regular_checkpoint(ctx: RunContext, stage: Stage):
  """(step, state, meta) of the usable stand-in (stages.stands_in) that validates best."""
  found, best, metric = None, None, ctx.cfg.train.early_stop_metric
  for step in checkpointing.steps_of(ctx.ckpt):
    try:
      meta = checkpointing.read_meta(ctx.ckpt, step)
      if not stages.stands_in(ctx.cfg.train.stages, stage.name, meta["progress"]):
        continue  # another stage's weights (a boundary save holds the next stage's init)
      state, meta = checkpointing.restore(ctx.ckpt, step, ctx.fns.abstract_state, verify=False)
    except checkpointing.UnusableCheckpoint as e:
      runtime.log(f"WARNING: {e}; skipped")
      continue
    value = evaluate(ctx, state, ctx.splits["valid"])[metric]
    runtime.log(f"{stage.name}: checkpoint {step} has valid {_NAMES[metric]} {value:.4f}")
    if improves(metric, value, best):
      found, best = (step, state, meta), value
  return found


_NAMES = {"auc": "AUC", "logloss": "logloss"}
