"""The training stages of a run and where each one keeps its files.

One table says everything the trainer and the scorer need to know about a
stage: its name, the index that seeds its initialisation and shuffling, the
directory of its best checkpoint, whether the select (pruning) step follows it,
and which stage comes next. `train.stages` in the config names a plan
(gin_jax.config.STAGE_PLANS):

  aoanet: search -> (select) -> retrain     (paper section 3.5)
  single: train                             (one stage, no pruning)
"""

from __future__ import annotations

import dataclasses

import jax

from gin_jax.config import STAGE_PLANS


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a plan."""

  name: str  # "search", "retrain" or "train".
  seed_index: int  # Folded into train.seed for this stage's init and shuffling.
  selects_after: bool = False  # The select step (pruning masks) follows this stage.

  @property
  def best_dir(self) -> str:
    """Directory (under the workdir) of the stage's best checkpoint."""
    return f"best_{self.name}"


SEARCH = Stage("search", seed_index=0, selects_after=True)
RETRAIN = Stage("retrain", seed_index=1)
TRAIN = Stage("train", seed_index=0)

PLANS: dict[str, tuple[Stage, ...]] = {"aoanet": (SEARCH, RETRAIN), "single": (TRAIN,)}
assert tuple(PLANS) == STAGE_PLANS, "gin_jax.config.STAGE_PLANS and PLANS must agree"
DONE = "done"  # Progress.stage once every stage of the plan has finished.


def plan(name: str) -> tuple[Stage, ...]:
  """The stages of `train.stages`, in order."""
  if name not in PLANS:
    raise ValueError(f"unknown stage plan {name!r}; choose from {sorted(PLANS)}")
  return PLANS[name]


def by_name(plan_name: str, stage: str) -> Stage:
  """The Stage called `stage` in the plan (raises ValueError if it is not there)."""
  for s in plan(plan_name):
    if s.name == stage:
      return s
  raise ValueError(f"plan {plan_name!r} has no stage {stage!r}")


def next_stage(plan_name: str, stage: str) -> str:
  """The name of the stage after `stage`, or DONE after the last one."""
  names = [s.name for s in plan(plan_name)]
  i = names.index(stage)
  return names[i + 1] if i + 1 < len(names) else DONE


def final(plan_name: str) -> Stage:
  """The plan's last stage: the model a finished run delivers."""
  return plan(plan_name)[-1]


def delivered(plan_name: str, progress: dict) -> str:
  """The stage a finished run's checkpoint (its `progress`) delivers: the one recorded,
  else (a checkpoint from before the choice) the plan's final stage."""
  return progress.get("delivered") or final(plan_name).name


def stands_in(plan_name: str, stage: str, progress: dict) -> bool:
  """Whether a regular checkpoint (its saved `progress`) may stand in for an unusable
  best_<stage>.

  The one fallback rule of the trainer (training/best.py) and the scorer
  (`score --best` / `--stage`, scoring/checkpoints.py): a checkpoint saved during
  the stage itself, or one saved by the finished run (DONE), which holds the
  restored best weights of the stage it delivers (`delivered`). A checkpoint
  saved at the boundary into a later stage holds that stage's fresh start and
  never stands in. Among the stand-ins the trainer takes the one that validates
  best (it holds the data) and reseals it as best_<stage>; the scorer, which may
  hold no validation data, takes the newest usable one.
  """
  if progress["stage"] == DONE:
    return delivered(plan_name, progress) == stage
  return progress["stage"] == stage


def init_key(seed: int, stage: Stage) -> jax.Array:
  """PRNG key of the stage's parameter initialisation (and its dropout stream)."""
  return jax.random.fold_in(jax.random.key(seed), stage.seed_index)


def shuffle_seed(seed: int, stage: Stage) -> int:
  """Seed of the stage's training-batch order (grain pipeline)."""
  return seed * 1000 + stage.seed_index + 1
