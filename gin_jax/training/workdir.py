"""A training directory: its layout, the lock of the run using it, and the config guard.

`Workdir` is the one description of the layout; the trainer, the recipes and
the scorer share it. A workdir holds one run: `lock` keeps a second run out,
and `check_config` refuses to resume checkpoints of another config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from pathlib import Path

from gin_jax import files
from gin_jax.config import Config
from gin_jax.training import checkpointing
from gin_jax.training.errors import TrainingError
from gin_jax.training.stages import Stage

LOCK_FILE = ".lock"  # In the workdir: held (flock) by the run using it.


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

  def write_delivered(self, entry: dict) -> None:
    """delivered.json: which model(s) this run delivers (written atomically)."""
    files.write_json(self.delivered_file, entry)


@contextlib.contextmanager
def lock(workdir: Workdir):
  """Holds an exclusive flock on WORKDIR/.lock, with this process's pid inside.

  flock is released by the kernel when the process dies, however it dies, so a
  killed run never leaves a stale lock behind; the file itself stays.
  """
  path = workdir.root / LOCK_FILE
  try:
    workdir.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise TrainingError(
      f"{e.filename or workdir.root}: cannot write to the workdir ({e.strerror})"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "(unknown pid)"
      raise TrainingError(f"{workdir.root} is in use by process {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def check_config(workdir: Workdir, cfg: Config, overwrite: bool) -> bool:
  """Refuses a workdir that holds another config's run; True: discard it (`overwrite`).

  The run's config is read from config.json AND from the newest checkpoint
  whose metadata matches its seal (every checkpoint carries its config), so
  deleting or editing config.json does not let another config resume those
  checkpoints. config.json itself is written only once the data is prepared,
  so a run that fails on a data or schema error leaves nothing that would
  refuse its rerun.
  """
  new = resumable(cfg.to_dict())
  saved = []
  if workdir.config.exists():
    try:
      saved.append((workdir.config, json.loads(workdir.config.read_text())))
    except (OSError, ValueError) as e:
      if not overwrite:
        raise TrainingError(
          f"{workdir.config}: cannot read the run's config ({e}); fix or delete it, "
          "or use --overwrite to discard the run"
        ) from None
      return True
  newest = checkpointing.newest_meta(workdir.checkpoints)
  if newest is not None:
    saved.append((f"{workdir.checkpoints}/{newest[0]}", newest[1].get("config")))
  for where, old in saved:
    old = resumable(old)
    if old != new:
      if overwrite:
        return True
      raise TrainingError(
        f"{workdir.root} holds a run with a different config "
        f"({config_diff(old if isinstance(old, dict) else {}, new)}; per {where}); "
        "use another --workdir, or --overwrite to discard it"
      )
  return False


def resumable(saved):
  """A saved config as the workdir guard compares it (`with_defaults`), less
  train.ensemble: a run grows or shrinks its ensemble in place, since member i
  is the same model whatever the number of members (`_ensemble`)."""
  saved = with_defaults(saved)
  if isinstance(saved, dict) and isinstance(saved.get("train"), dict):
    saved = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "ensemble"}}
  return saved


def with_defaults(saved):
  """A saved config with the fields added since it was written at their defaults.

  A run started by an older gin_jax resumes as long as every field it knew is
  unchanged; anything that does not parse as a config is compared as it is.
  """
  if not isinstance(saved, dict):
    return saved
  try:
    return Config.from_dict(saved).to_dict()
  except (KeyError, TypeError, ValueError):
    return saved


def discard_run(workdir: Workdir) -> None:
  """Deletes config.json and everything a run wrote except the prepared data."""
  for p in [workdir.config, *workdir.run_outputs()]:
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def config_diff(old: dict, new: dict, prefix="") -> str:
  diffs = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      inner = config_diff(a, b, f"{prefix}{k}.")
      if inner:
        diffs.append(inner)
    elif a != b:
      diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return "; ".join(diffs[:5])
