"""Training: pure steps on a device mesh, checkpoints, the stage loop and the recipes.

  steps.py          pure train / eval steps, jitted with explicit shardings (sharded init)
  embedding.py      the row optimizers of the row-sparse embedding tables
  partitioning.py   the device mesh: every sharding decision
  device_input.py   the training split resident on, or streamed to, the devices
  checkpointing.py  every orbax call: sealed saves, verified restores
  stages.py         the stage plans (aoanet: search -> retrain; single)
  workdir.py        a run's folder: layout, lock, config guard
  context.py        what a run's stages share (RunContext)
  resume.py         stage progress, saves, resuming from the newest usable checkpoint
  best.py           each stage's best checkpoint
  predict.py        the one split-prediction loop (the scorer's too), the ensemble average
  evaluate.py       exact metrics over whole splits, saved predictions, the final report
  loop.py           the stage loop of one run (the orchestration function)
  recipes.py        `run`: the loop, then beat_linear / seed ensembles / linear start
  report.py         metrics.jsonl, the |alpha| heatmap, the summary table
  tensorboard.py    TensorBoard scalars

`run` and `TrainingError` are imported on first use, so that importing one
module of the package (the scorer imports steps, checkpointing, predict) does
not import the whole trainer.
"""


def __getattr__(name):
  if name == "run":
    from gin_jax.training.recipes import run

    return run
  if name == "TrainingError":
    from gin_jax.training.errors import TrainingError

    return TrainingError
  raise AttributeError(f"module 'gin_jax.training' has no attribute {name!r}")
