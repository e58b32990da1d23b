"""A training directory: its layout, the lock of the run using it, and the config guard.

`Workdir` is the one description of the layout; the trainer, the recipes and
the scorer share it. A workdir holds one run: `lock` keeps a second run out,
and `check_config` refuses to resume checkpoints of another config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from gin_jax import files
from gin_jax.config import Config
from gin_jax.training import checkpointing
from gin_jax.training.errors import TrainingError
from gin_jax.training.stages import PLANS, Stage

LOCK_FILE = ".lock"  # In the workdir: held (flock) by the run using it.
# The runs a delivery record may name, relative to the workdir: a closed set.
_DELIVERABLE = re.compile(r"\.|from_linear|ensemble/member_[1-9][0-9]*(/from_linear)?")
_RERUN = "rerun the training command to write it again"


class DeliveryError(ValueError):
  """A delivery record (delivered.json) that cannot be trusted: one line, the file and why."""


class UnfinishedRun(DeliveryError):
  """A run whose recipe (beat_linear, an ensemble) has not delivered its model yet."""


def read_config(path: Path) -> Config:
  """A workdir's config.json; DeliveryError naming the file when it cannot be parsed."""
  try:
    return Config.from_dict(json.loads(path.read_text()))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DeliveryError(f"{path}: cannot parse the run's config ({e})") from None


def config_fingerprint(path: Path) -> str | None:
  """fingerprint() of a run's config.json (None if it is absent or unreadable)."""
  try:
    return fingerprint(json.loads(path.read_text()))
  except (OSError, ValueError):
    return None


def fingerprint(config: dict) -> str:
  """SHA-256 of a saved config as the workdir guard compares it (`resumable`: without
  train.ensemble, which a run changes in place)."""
  return hashlib.sha256(json.dumps(resumable(config), sort_keys=True).encode()).hexdigest()


def _check_delivery(path: Path, record) -> None:
  """The record's shape: names from the closed set, the first delivered alone or first."""
  if not isinstance(record, dict) or not isinstance(record.get("workdir"), str):
    raise DeliveryError(f"{path}: must be an object naming the delivered workdir; {_RERUN}")
  names = record.get("ensemble", [record["workdir"]])
  ok = isinstance(names, list) and names and all(isinstance(n, str) for n in names)
  if not ok or names[0] != record["workdir"] or len(set(names)) != len(names):
    raise DeliveryError(f"{path}: 'ensemble' must list distinct workdirs, the delivered first")
  if record["workdir"] not in (".", "from_linear"):
    raise DeliveryError(
      f"{path}: the run delivers {record['workdir']!r}, not itself or from_linear"
    )
  for name in names:
    if not _DELIVERABLE.fullmatch(name):
      raise DeliveryError(
        f"{path}: names {name!r}, not a run of this workdir (., from_linear, "
        "ensemble/member_<i>[/from_linear])"
      )
  configs = record.get("configs")
  if configs is not None and (not isinstance(configs, dict) or set(configs) != set(names)):
    raise DeliveryError(f"{path}: 'configs' must fingerprint exactly the delivered workdirs")


def _cross_check(path: Path, record: dict, report_path: Path) -> None:
  """The record agrees with report.json, which names the same delivered models."""
  try:
    report = json.loads(report_path.read_text())
  except (OSError, ValueError):
    return  # no finished report to compare with (the trainer writes it next)
  if not isinstance(report, dict):
    return
  beat = report.get("beat_linear")
  if isinstance(beat, dict) and "delivered" in beat and beat["delivered"] != record["workdir"]:
    raise DeliveryError(
      f"{path}: names {record['workdir']!r}, but {report_path.name} says beat_linear delivered "
      f"{beat['delivered']!r}; {_RERUN}"
    )
  members = report.get("ensemble")
  if isinstance(members, list):
    listed = [m.get("workdir") if isinstance(m, dict) else None for m in members]
    if listed != record.get("ensemble", [record["workdir"]]):
      raise DeliveryError(f"{path}: its ensemble is not the one {report_path.name} lists; {_RERUN}")
  if "delivered_configs" in report and report["delivered_configs"] != record.get("configs"):
    raise DeliveryError(f"{path}: its config fingerprints differ from {report_path.name}'s")


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
  def pictures(self) -> list[Path]:
    """The report's other figures and its page (training/plots.py writes them)."""
    names = ("learning_curves.png", "reliability.png", "summary.md")
    return [self.root / name for name in names]

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

  def delivery(self) -> dict | None:
    """delivered.json, verified; None when the run wrote none (it delivers itself).

    The record names only runs inside the workdir, from a closed set: the run
    itself ("."), beat_linear's `from_linear`, and `ensemble/member_<i>` (or its
    `from_linear`); it must agree with report.json (which names them too), and
    its `configs` fingerprint each delivered model's config. Raises
    DeliveryError (one line: the file and what is wrong) otherwise.
    """
    path = self.delivered_file
    try:
      text = path.read_text()
    except FileNotFoundError:
      return None
    except OSError as e:
      raise DeliveryError(f"{path}: unreadable ({e.strerror})") from None
    try:
      record = json.loads(text)
    except ValueError:
      raise DeliveryError(f"{path}: not valid JSON; {_RERUN}") from None
    _check_delivery(path, record)
    _cross_check(path, record, self.report)
    return record

  def sub(self, name: str) -> Workdir:
    """The run named `name` in a delivery record ("." is this one)."""
    return self if name == "." else Workdir(self.root / name)

  def delivered(self) -> Workdir:
    """The workdir of the model this run delivers (itself unless delivered.json says else)."""
    record = self.delivery()
    return self if record is None else self.sub(record["workdir"])

  def ensemble(self) -> list[Workdir]:
    """The workdirs of the models whose averaged probabilities the run delivers.

    One (`delivered()`) unless train.ensemble > 1 wrote their list into
    delivered.json (paths relative to the root).
    """
    record = self.delivery()
    if record is None or "ensemble" not in record:
      return [self.delivered()]
    return [self.sub(n) for n in record["ensemble"]]

  def verified_delivery(self, finished: bool = True) -> dict | None:
    """delivery(), and every model it fingerprints still holding that config.

    Without a record, a run whose config asks for beat_linear or an ensemble
    has not delivered yet: UnfinishedRun, unless not `finished` is asked for
    (a caller that reads one of the run's own checkpoints). Raises
    DeliveryError naming what is wrong.
    """
    record = self.delivery()
    if record is None:
      if finished and self.config.exists():
        train = read_config(self.config).train
        if train.beat_linear or train.ensemble > 1:
          recipe = "train.ensemble" if train.ensemble > 1 else "train.beat_linear"
          raise UnfinishedRun(
            f"{self.root}: the run is not finished ({recipe} has delivered no model yet): "
            "rerun the training command to finish it"
          )
      return None
    for name, want in (record.get("configs") or {}).items():
      if config_fingerprint(self.sub(name).config) != want:
        raise DeliveryError(
          f"{self.sub(name).root}: its config is not the one the run delivered "
          f"({self.delivered_file.name} fingerprints another): another run is in its place"
        )
    return record

  def delivery_record(self, names: list[str]) -> dict:
    """The delivery record of models `names` (the first delivered alone, or an ensemble)."""
    record = {"workdir": names[0]}
    if len(names) > 1:
      record["ensemble"] = list(names)
    record["configs"] = {n: config_fingerprint(self.sub(n).config) for n in names}
    return record

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
      *self.pictures,
      self.tensorboard,
      self.linear,
      self.from_linear,
      self.delivered_file,
      self.members,
      self.predictions,
      *sorted({self.best(stage) for plan in PLANS.values() for stage in plan}),
    ]

  def has_sealed_checkpoint(self) -> bool:
    """Whether a checkpoint here carries a seal (gin_jax writes them; nothing else does)."""
    folders = [self.checkpoints, *(p for p in self.run_outputs() if p.name.startswith("best_"))]
    return any(
      (step / checkpointing.SEAL_FILE).is_file()
      for folder in folders
      if folder.is_dir()
      for step in folder.iterdir()
    )

  def write_delivered(self, record: dict) -> None:
    """delivered.json: which model(s) this run delivers (written atomically)."""
    files.write_json(self.delivered_file, record)


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


def holder_lives(workdir: Workdir) -> bool:
  """Whether the process named in WORKDIR/.lock lives here: a run that may be writing.

  The pid of the last run stays in the file after it ends, so a live process
  with the same pid (or the file written by a run on another host) reads as
  live too: callers bound what they wait for.
  """
  try:
    pid = int((workdir.root / LOCK_FILE).read_text().split()[0])
  except (OSError, ValueError, IndexError):
    return False
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError):
    return False
  except PermissionError:  # another user's process
    return True
  return pid > 0


def check_config(workdir: Workdir, cfg: Config, overwrite: bool) -> bool:
  """Refuses a workdir that holds another config's run; True: discard it (`overwrite`).

  The run's config is read from config.json AND from the newest checkpoint
  whose metadata matches its seal (every checkpoint carries its config), so
  deleting or editing config.json does not let another config resume those
  checkpoints. config.json itself is written only once the data is prepared,
  so a run that fails on a data or schema error leaves nothing that would
  refuse its rerun.

  `overwrite` discards only a gin_jax run (a config.json of gin_jax's, or a
  sealed checkpoint), never an input file or a link's target (check_discard);
  a folder holding files of a run's names but no run is refused either way.
  """
  new = resumable(cfg.to_dict())
  saved = []
  if workdir.config.exists():
    try:
      saved.append((workdir.config, _read_saved_config(workdir.config)))
    except (OSError, ValueError) as e:
      ours = workdir.has_sealed_checkpoint()  # a run whose config.json was damaged
      if not (overwrite and ours):
        advice = (
          "or use --overwrite to discard the run" if ours
          else "or use another --workdir (--overwrite discards only a gin_jax run, and this "
          "folder holds no sealed checkpoint)"
        )  # fmt: skip
        raise TrainingError(
          f"{workdir.config}: cannot read the run's config ({e}); fix or delete it, {advice}"
        ) from None
      check_discard(workdir, cfg)
      return True
  elif not workdir.has_sealed_checkpoint():
    _refuse_someone_elses(workdir)
  newest = checkpointing.newest_meta(workdir.checkpoints)
  if newest is not None:
    saved.append((f"{workdir.checkpoints}/{newest[0]}", newest[1].get("config")))
  for where, old in saved:
    old = resumable(old)
    if old != new:
      if overwrite:
        check_discard(workdir, cfg)
        return True
      raise TrainingError(
        f"{workdir.root} holds a run with a different config "
        f"({config_diff(old if isinstance(old, dict) else {}, new)}; per {where}); "
        "give this run another --workdir DIR (--overwrite would delete that run)"
      )
  return False


def _read_saved_config(path: Path) -> dict:
  """config.json as a dict; ValueError unless it has a config's sections (another program's)."""
  saved = json.loads(path.read_text())
  if not (isinstance(saved, dict) and all(isinstance(saved.get(k), dict) for k in _SECTIONS)):
    raise ValueError("not a gin_jax run's config: it has no model, data and train sections")
  return saved


_SECTIONS = ("model", "data", "train")


def _refuse_someone_elses(workdir: Workdir) -> None:
  """A folder without config.json or sealed checkpoint holds no gin_jax run: if it holds
  files of a run's names anyway, they are another program's, which a run would overwrite
  (append to metrics.jsonl, rotate checkpoints out) and --overwrite would delete."""
  present = [p.name for p in workdir.run_outputs() if p.exists() or p.is_symlink()]
  if workdir.linear.is_symlink():  # a nested run's link to its parent's regression
    present.remove(workdir.linear.name)
  if present:
    raise TrainingError(
      f"{workdir.root} holds {', '.join(present[:4])} but no config.json nor sealed "
      "checkpoint: it is not a gin_jax run, and a run there would overwrite them; use "
      "another --workdir"
    )


def input_files(cfg: Config) -> list[tuple[str, str]]:
  """(flag, path) of each file the run reads: its data files and schema."""
  data = cfg.data
  named = (("--train", data.train), ("--valid", data.valid), ("--test", data.test))
  return [(flag, path) for flag, path in (*named, ("--schema", data.schema)) if path]


def check_discard(workdir: Workdir, cfg: Config) -> None:
  """Refuses (TrainingError) a discard_run that would delete more than the run's outputs.

  Called on every process before process 0 discards: a link among the outputs
  (discarding would delete its target, or fail half-way), and an input file of
  `cfg` inside an output (e.g. a --train file kept in predictions/) are named.
  """
  doomed = [p for p in [workdir.config, *workdir.run_outputs()] if p.exists() or p.is_symlink()]
  for path in doomed:
    if path.is_symlink():
      raise TrainingError(
        f"--overwrite would delete {path}, a link to {os.readlink(path)}: it deletes no link's "
        "target; remove the link yourself, or use another --workdir"
      )
  for flag, name in input_files(cfg):
    real = Path(os.path.realpath(name))
    for path in doomed:
      if real.is_relative_to(os.path.realpath(path)):
        raise TrainingError(
          f"--overwrite would delete {path}, which holds the {flag} file {name}: move it out "
          "of the run's outputs, or use another --workdir"
        )


def resumable(saved):
  """A saved config as the workdir guard compares it (`with_defaults`), less
  train.ensemble: a run grows or shrinks its ensemble in place, since member i
  is the same model whatever the number of members (`_ensemble`); and less
  data.prepare_workers, which changes how fast the files are prepared, never
  the bytes prepared."""
  saved = with_defaults(saved)
  if isinstance(saved, dict) and isinstance(saved.get("train"), dict):
    saved = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "ensemble"}}
  if isinstance(saved, dict) and isinstance(saved.get("data"), dict):
    data = {k: v for k, v in saved["data"].items() if k != "prepare_workers"}
    saved = {**saved, "data": data}
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
  """Deletes config.json and everything a run wrote except the prepared data.

  check_discard first: nothing else (an input file, a link's target).
  """
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
