"""Stage progress, checkpoint saves, and resuming from the newest usable checkpoint.

Re-running the same command on the same workdir restores the newest usable
checkpoint (sealed, intact and finite: gin_jax/training/checkpointing.py;
train state + grain iterator state + stage progress) and continues; on one
device the result is bit-identical to an uninterrupted run (tests/test_train.py,
the SIGKILL test). Checkpoints of another config, dataset or device count are
never resumed nor silently discarded (tests/test_reliability.py).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax

from gin_jax import files, runtime
from gin_jax.training import checkpointing
from gin_jax.training.context import RunContext
from gin_jax.training.errors import TrainingError
from gin_jax.training.workdir import check_discard, config_diff, discard_run, resumable


@dataclasses.dataclass
class Progress:
  """Host-side stage progress, saved as JSON in every checkpoint.

  One Progress object lives through a run and is updated in place.
  """

  stage: str
  epoch: int = 0
  iterator_state: dict | None = None
  best_value: float | None = None  # the stage's best validation train.early_stop_metric
  bad_epochs: int = 0
  epoch_start_step: int = 0  # global step at which the current epoch began
  # When this process's stretch of the stage began, less the seconds it ran before
  # (stage_seconds, as of the checkpoint): a resumed stage's `seconds` leave out the
  # time the run lay dead, and count again the steps it replays.
  stage_start_time: float = 0.0
  stage_seconds: float = 0.0
  results: dict = dataclasses.field(default_factory=dict)
  search_alpha: dict | None = None  # |alpha| evidence for the heatmap
  # Once the last stage ends: the stage whose model the run delivers (the one that
  # validates best); the finished run's checkpoints hold its weights.
  delivered: str | None = None

  def to_dict(self):
    """The progress as of now, as a checkpoint holds it (stage_seconds: the stage so far)."""
    return {**dataclasses.asdict(self), "stage_seconds": time.time() - self.stage_start_time}

  @classmethod
  def from_dict(cls, saved: dict) -> Progress:
    """A checkpoint's progress; one saved before train.early_stop_metric has `best_auc`."""
    saved = dict(saved)
    if "best_auc" in saved:
      saved.setdefault("best_value", saved.pop("best_auc"))
    return cls(**saved)

  def start(self, stage: str) -> None:
    """Resets the per-stage counters for `stage` (results and evidence are kept)."""
    self.stage = stage
    self.epoch = 0
    self.iterator_state = None
    self.best_value = None
    self.bad_epochs = 0
    self.stage_start_time = time.time()

  def resumed(self) -> Progress:
    """This progress, read from a checkpoint, with its stage's clock going on from there."""
    self.stage_start_time = time.time() - self.stage_seconds
    return self


def save(ctx: RunContext, state, progress: Progress) -> None:
  """A regular checkpoint of `state` at its step, with the run's progress."""
  checkpointing.save(ctx.ckpt, int(state["step"]), state, ctx.meta_dict(progress))


def resume(ctx: RunContext, overwrite: bool):
  """(step, state, meta) of the newest usable checkpoint, or None to start afresh.

  Unusable checkpoints (unsealed, altered on disk, NaN/Inf inside) are skipped
  with a warning. Checkpoints that cannot be resumed (none usable, or the
  newest usable one from another config, dataset or device count) stop the
  run: it never starts afresh over them unless `overwrite` says to discard
  them. One exception: a lone unsealed checkpoint is the first save of a run
  killed before sealing it, and starting afresh is exactly what resuming from
  nothing would do.
  """
  try:
    return checkpointing.restore_latest_good(
      ctx.ckpt, functools.partial(fits, ctx), report=lambda m: runtime.log("WARNING: " + m)
    )
  except checkpointing.NoUsableCheckpoint as e:
    if len(e.problems) == 1 and e.problems[0].kind == "unsealed":
      runtime.log(f"WARNING: {e.problems[0]}; starting afresh")
      return None
    problem = f"{e}; nothing to resume from"
  except (checkpointing.CheckpointError, Mismatch) as e:
    problem = str(e)
  if not overwrite:
    raise TrainingError(
      f"{problem}. Use --overwrite to discard the run and start afresh, or another --workdir"
    )
  check_discard(ctx.workdir, ctx.cfg)
  runtime.log(f"WARNING: {problem}; --overwrite: discarding the run and starting afresh")
  if jax.process_index() == 0:
    discard_run(ctx.workdir)
    files.write_json(ctx.workdir.config, ctx.cfg.to_dict())
  runtime.barrier("discarded")
  ctx.ckpt = checkpointing.manager(ctx.workdir.checkpoints, ctx.cfg.train.keep_checkpoints)
  return None


class Mismatch(Exception):
  """An intact checkpoint of another run (config, dataset or device count)."""


def fits(ctx: RunContext, step: int, saved: dict):
  """The abstract state to restore checkpoint `step` into, if it belongs to this run."""
  where = f"{ctx.workdir.checkpoints}/{step}"
  new, old = resumable((ctx.asked or ctx.cfg).to_dict()), resumable(saved.get("config"))
  if old != new:
    old = old if isinstance(old, dict) else {}
    raise Mismatch(f"{where} was trained with another config ({config_diff(old, new)})")
  rows = {"num_rows": ctx.spec.num_rows, "padded_rows": ctx.spec.padded_rows}
  if saved.get("model") != rows:
    raise Mismatch(
      f"{where} holds an embedding table of {saved.get('model')} rows, but this run's data "
      f"and devices give {rows} (the input files or the number of devices changed)"
    )
  return ctx.fns.abstract_state
