"""The training stages of a run and where each one keeps its files.

One table says everything the trainer and the scorer need to know about a
stage: its name, the index that seeds its initialisation and shuffling, the
directory of its best checkpoint, whether the select (pruning) step follows it,
and which stage comes next. `train.stages` in the config names a plan:

  aoanet: search -> (select) -> retrain     (paper section 3.5)
  gin:    gin                               (one stage, no pruning)

`Workdir` is the one description of a training directory's layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a plan."""

  name: str  # "search", "retrain" or "gin".
  seed_index: int  # Folded into train.seed for this stage's init and shuffling.
  selects_after: bool = False  # The select step (pruning masks) follows this stage.

  @property
  def best_dir(self) -> str:
    """Directory (under the workdir) of the stage's best checkpoint."""
    return f"best_{self.name}"


SEARCH = Stage("search", seed_index=0, selects_after=True)
RETRAIN = Stage("retrain", seed_index=1)
GIN = Stage("gin", seed_index=0)

PLANS: dict[str, tuple[Stage, ...]] = {"aoanet": (SEARCH, RETRAIN), "gin": (GIN,)}
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


def init_key(seed: int, stage: Stage) -> jax.Array:
  """PRNG key of the stage's parameter initialisation (and its dropout stream)."""
  return jax.random.fold_in(jax.random.key(seed), stage.seed_index)


def shuffle_seed(seed: int, stage: Stage) -> int:
  """Seed of the stage's training-batch order (grain pipeline)."""
  return seed * 1000 + stage.seed_index + 1


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The layout of a `python -m train` directory; the trainer and scorer share it."""

  root: Path

  def __init__(self, root: str | os.PathLike):
    object.__setattr__(self, "root", Path(root))

  @property
  def config(self) -> Path:
    return self.root / "config.json"

  @property
  def checkpoints(self) -> Path:
    return self.root / "checkpoints"

  def best(self, stage: Stage) -> Path:
    return self.root / stage.best_dir

  @property
  def metrics(self) -> Path:
    return self.root / "metrics.jsonl"

  @property
  def report(self) -> Path:
    return self.root / "report.json"

  @property
  def tensorboard(self) -> Path:
    return self.root / "tensorboard"

  @property
  def heatmap(self) -> Path:
    return self.root / "alpha_heatmap.png"

  @property
  def linear(self) -> Path:
    """The logistic regression run that `train.linear_start` starts from."""
    return self.root / "linear"

  @property
  def from_linear(self) -> Path:
    """train.beat_linear's second candidate: GIN started from the regression."""
    return self.root / "from_linear"

  @property
  def delivered_file(self) -> Path:
    """Which workdir holds the delivered model (train.beat_linear): "." or a subfolder."""
    return self.root / "delivered.json"

  def _delivered_entry(self, key: str):
    """delivered.json's `key` (None when the file or the key is absent or unreadable)."""
    try:
      return json.loads(self.delivered_file.read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
      return None

  def _sub(self, name: str) -> Workdir:
    return self if name == "." else Workdir(self.root / name)

  def delivered(self) -> Workdir:
    """The workdir of the model this run delivers (itself unless delivered.json says else)."""
    name = self._delivered_entry("workdir")
    return self if name is None else self._sub(name)

  def ensemble(self) -> list[Workdir]:
    """The workdirs of the models whose averaged probabilities the run delivers.

    One (`delivered()`) unless train.ensemble > 1 wrote their list into
    delivered.json (paths relative to the root).
    """
    names = self._delivered_entry("ensemble")
    return [self.delivered()] if names is None else [self._sub(n) for n in names]

  @property
  def members(self) -> Path:
    """Where train.ensemble's members 1 .. K-1 run (member 0 is this run)."""
    return self.root / "ensemble"

  def member(self, i: int) -> Workdir:
    return Workdir(self.members / f"member_{i}")

  @property
  def predictions(self) -> Path:
    """Each stage's probabilities on the valid and test splits (`<stage>_<split>.npz`)."""
    return self.root / "predictions"

  def stage_predictions(self, stage: Stage, split: str) -> Path:
    return self.predictions / f"{stage.name}_{split}.npz"

  @property
  def data_cache(self) -> Path:
    return self.root / "data" / "cache"

  def run_outputs(self) -> list[Path]:
    """Everything a run writes except the prepared data (what --overwrite discards)."""
    return [
      self.checkpoints,
      self.metrics,
      self.report,
      self.heatmap,
      self.tensorboard,
      self.linear,
      self.from_linear,
      self.delivered_file,
      self.members,
      self.predictions,
      *self.root.glob("best_*"),
    ]
