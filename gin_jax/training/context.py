"""The state of one run that its stages share (RunContext), beside the train state itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from gin_jax import models as model_lib
from gin_jax.config import Config
from gin_jax.training import checkpointing, report, steps, tensorboard
from gin_jax.training.stages import Stage
from gin_jax.training.workdir import Workdir


@dataclasses.dataclass
class RunContext:
  """What one run's stages share: config, workdir, mesh, step functions, data, logs."""

  cfg: Config
  workdir: Workdir
  mesh: object
  spec: model_lib.ModelSpec
  fns: steps.StepFns
  meta: object
  splits: dict
  planted: list
  on_step: Callable[[int], None] | None = None
  input_mode: str = "off"  # device_input mode of the training split
  resident: object = None  # device_input.ResidentSplit, built on first use
  asked: Config | None = None  # the config as asked for; cfg has its auto settings decided
  devices: list | None = None  # the mesh's devices as run() was given them (None: all)
  # train.linear_start: sets a fresh state's first-order part to the fitted regression.
  start_from: Callable | None = None
  step: int = 0  # the global step reached, counted on the host (what Ctrl-C reports)
  group_column: int | None = None  # train.group_by: its column of the ids (gAUC), else None

  def __post_init__(self):
    self.ckpt = checkpointing.manager(self.workdir.checkpoints, self.cfg.train.keep_checkpoints)
    lead, tb = jax.process_index() == 0, self.cfg.train.tensorboard
    scalars = tensorboard.ScalarWriter(self.workdir.tensorboard) if lead and tb else None
    self.log = report.MetricsLog(self.workdir.metrics, lead, scalars)

  def best_manager(self, stage: Stage):
    """The manager of best_<stage> (one checkpoint: the best by validation AUC)."""
    return checkpointing.manager(self.workdir.best(stage), 1)

  def meta_dict(self, progress) -> dict:
    """What every checkpoint carries besides the state (resume.Progress, config, dataset)."""
    return {
      "progress": progress.to_dict(),
      "config": (self.asked or self.cfg).to_dict(),  # what the workdir guard compares
      "effective_config": self.cfg.to_dict(),  # data-dependent settings decided
      "dataset": self.meta.to_dict(),
      "planted_pairs": [list(p) for p in self.planted],
      "model": {"num_rows": self.spec.num_rows, "padded_rows": self.spec.padded_rows},
      "metrics_bytes": self.log.size(),  # metrics.jsonl up to this checkpoint
    }
