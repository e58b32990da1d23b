"""Finding and restoring the checkpoints a workdir delivers, for scoring and export.

Usable means sealed, every file matching its seal and every parameter finite
(gin_jax/training/checkpointing.py); an unusable checkpoint is never scored.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

from gin_jax import data
from gin_jax import models as model_lib
from gin_jax.config import Config
from gin_jax.scoring.errors import ScoringError
from gin_jax.training import checkpointing, partitioning, stages, steps
from gin_jax.training.workdir import (
  DeliveryError,
  UnfinishedRun,
  Workdir,
  config_fingerprint,
  fingerprint,
  holder_lives,
  read_config,
)


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
  """One restored checkpoint: its config, dataset, step functions, state and mesh."""

  cfg: Config
  dataset_meta: object
  fns: steps.StepFns
  state: dict
  mesh: object
  description: str
  asked_config: dict | None = None  # the config the run was asked for (its checkpoint's)
  workdir: Path | None = None  # the run the checkpoint belongs to


def load_checkpoint(
  workdir, *, step=None, best=False, stage=None, devices=None, report=None
) -> LoadedCheckpoint:
  """Restores a usable training checkpoint onto `devices` (see Scorer.from_checkpoint).

  Usable means sealed, every file matching its seal and every parameter finite
  (gin_jax.training.checkpointing). An explicit `step` that is unusable is refused.
  Without one, the newest usable checkpoint is used, and each newer one that
  is skipped is reported: the finished run's, which holds the model it
  delivers (the stage that validated best: report.json's "delivered_stage").
  With `stage`, that stage's best checkpoint (best_<stage>; the pruned model
  is `stage="retrain"` whatever was delivered); `best`: the delivered stage's.
  If it is unusable, the newest usable stand-in (training.stages.stands_in: a
  regular checkpoint of that stage, or of the finished run if it delivers that
  stage), saying so. Without `step`, a checkpoint removed while
  it is read (a run still training keeps only its newest) is no error: the
  checkpoints are listed again and the newest is read, a few times at most. A
  checkpoint committed but not sealed yet by a live run gets a while for its
  seal (_await_seal).

  Args:
    workdir: a `python -m train` workdir.
    step: a specific checkpoint step (default: the newest usable).
    best: the best checkpoint of the delivered stage instead.
    stage: the best checkpoint of this stage ("search", "retrain", "train") instead.
    devices: devices to restore onto (default: all local devices).
    report: called with each warning (default: printed to stderr).

  Returns:
    The LoadedCheckpoint. Raises ScoringError naming what is missing or wrong.
  """
  layout = Workdir(workdir)
  report = report or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
  if step is None and layout.delivered() != layout:  # train.beat_linear chose a second model
    layout = layout.delivered()
    info(f"{workdir} delivered the model in {layout.root} (delivered.json): scoring with it")
    workdir = layout.root
  if not layout.config.exists():
    raise ScoringError(f"{workdir} is not a training workdir (no config.json)")
  skipped, passed = [], set()  # carried over when the checkpoints are listed again
  for _ in range(_RELISTS + 1):
    loaded = _newest_usable(workdir, layout, step, (best, stage), devices, report, skipped, passed)
    if loaded is not None:
      return loaded
  raise ScoringError(
    f"the checkpoints of {workdir} were removed while being read, {_RELISTS + 1} times in a "
    "row: its run deletes them faster than they can be read (raise its train.keep_checkpoints)"
  )


def info(message: str) -> None:
  """What scoring does, as it should (which model it scores with): one line on stderr,
  so that csv on standard output (`--out -`) stays clean."""
  print(f"info: {message}", file=sys.stderr, flush=True)


_RELISTS = 5  # times in a row the checkpoint being read may vanish before the scorer gives up
_DELETION_GRACE = 2.0  # seconds a checkpoint that is losing files gets to disappear
_SEAL_WAIT = 60.0  # seconds a committed checkpoint of a live run gets for its seal


def _newest_usable(workdir, layout, step, which, devices, report, skipped, passed):
  """The first usable checkpoint of those listed now (see load_checkpoint).

  None when the one being read was removed under it (a run rotating its
  checkpoints): list them again. Checkpoints in `passed` were reported on an
  earlier listing; `skipped` holds the unusable ones.
  """
  try:
    candidates, wanted = _candidates(layout, step, *which)
  except FileNotFoundError:  # a checkpoint vanished while it was listed
    if step is not None:
      raise
    return None
  for directory, s in candidates:
    if (directory, s) in passed:
      continue
    _await_seal(Path(directory) / str(s), layout)
    try:
      loaded = _restore_checkpoint(directory, s, devices, wanted if skipped else None)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types
      if step is None and _rotated_out(Path(directory) / str(s)):
        report(f"{directory}/{s} was removed while it was read (its run keeps only the newest "
               "checkpoints); trying the newest again")  # fmt: skip
        return None
      _refuse(e, step)
      if all(str(e) != str(x) for x in skipped):  # said once, however often it is listed
        report(f"{e}; trying the previous one")
        skipped.append(e)
      if getattr(e, "kind", None) != "unsealed":  # its seal may come by the next listing
        passed.add((directory, s))
      continue
    if loaded is None:
      passed.add((directory, s))
      continue  # a regular checkpoint of an earlier stage: not a stand-in for --best
    if skipped:
      report(f"using {loaded.description} instead")
    best = which[0] or which[1]
    return dataclasses.replace(
      loaded, description=loaded.description + (" (best)" if best and not skipped else "")
    )
  raise ScoringError(
    f"no usable checkpoint in {workdir}"
    + (f" for the {wanted[1]} stage" if wanted else "")
    + f" ({'; '.join(str(e) for e in skipped[:3])})"
  )


def _refuse(e: Exception, step) -> None:
  """Raises what scoring stops with for `e`, unless it is an unusable checkpoint to skip."""
  if not isinstance(e, checkpointing.UnusableCheckpoint):
    if isinstance(e, checkpointing.CheckpointError):
      raise ScoringError(str(e)) from None
    raise e
  if step is not None:
    raise ScoringError(
      f"{e}; refusing to score with it (omit --step to use the newest usable checkpoint)"
    ) from None


def _await_seal(path: Path, layout: Workdir) -> None:
  """Gives checkpoint `path`, listed (so committed by orbax) but not sealed yet, time for
  its seal, while the run holding the workdir lives.

  The trainer seals a checkpoint right after orbax commits it, hashing every
  file (seconds for a large table); a scorer that lists the checkpoints in
  between would call it unsealed. Waits at most _SEAL_WAIT seconds, and not at
  all when the workdir's run is gone (a killed run's checkpoint stays unsealed)
  or the checkpoint is removed.
  """
  seal, deadline = path / checkpointing.SEAL_FILE, time.monotonic() + _SEAL_WAIT
  while not seal.is_file() and path.is_dir() and time.monotonic() < deadline:
    if not holder_lives(layout):
      return
    time.sleep(0.05)


def _rotated_out(path: Path) -> bool:
  """Whether the checkpoint in `path` was deleted under the reader, rather than damaged.

  A trainer keeping its newest checkpoints deletes the oldest as it saves (orbax
  removes the files, then the directory). So a checkpoint is rotated out if its
  directory is gone, or is losing files and goes within a moment; one whose
  sealed files are all there (altered, say), or that stays, is not: it is
  reported as what it is.
  """
  deadline = time.monotonic() + _DELETION_GRACE
  while path.exists():
    if _all_sealed_files_present(path) or time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def _all_sealed_files_present(path: Path) -> bool:
  try:
    files = json.loads((path / checkpointing.SEAL_FILE).read_text())["files"]
    return all((path / name).is_file() for name in files)
  except (OSError, ValueError, KeyError, TypeError):
    return False


def _candidates(layout: Workdir, step, best: bool, stage) -> tuple[list, tuple | None]:
  """(the checkpoints to try in order, (plan, stage) a stand-in must stand in for).

  With `stage` (or `best`: the delivered stage), best_<stage> first, then the
  regular checkpoints that stand in for it (stages.stands_in).
  """
  regular = [(layout.checkpoints, s) for s in checkpointing.all_steps(layout.checkpoints)]
  wanted = None
  if best or stage:
    plan = _read_config(layout.config).train.stages
    names = [s.name for s in stages.plan(plan)]
    if stage is not None and stage not in names:
      raise ScoringError(
        f"{layout.root} has no {stage!r} stage: its runs' stages are {', '.join(names)}"
      )
    stage = stage or _delivered_stage(layout, plan)
    directory = layout.best(stages.by_name(plan, stage))
    candidates = [(directory, s) for s in checkpointing.all_steps(directory)]
    if not candidates:
      raise ScoringError(f"{directory} holds no checkpoint")
    candidates += regular
    wanted = (plan, stage)
  elif step is not None:
    have = [s for _, s in regular]
    if step not in have:
      raise ScoringError(f"no checkpoint step {step} in {layout.checkpoints}; have {sorted(have)}")
    candidates = [(layout.checkpoints, step)]
  else:
    candidates = regular
    if not candidates:
      raise ScoringError(f"{layout.checkpoints} holds no checkpoint")
  return candidates, wanted


def _delivered_stage(layout: Workdir, plan: str) -> str:
  """The stage the finished run delivers, from its newest checkpoint (sealed metadata);
  the plan's last stage while it is still training."""
  found = checkpointing.newest_meta(layout.checkpoints)
  progress = found[1].get("progress", {}) if found else {}
  if progress.get("stage") == stages.DONE:
    return stages.delivered(plan, progress)
  return stages.final(plan).name


def load_models(workdir, *, step=None, best=False, stage=None, devices=None, report=None):
  """The models a workdir delivers: [LoadedCheckpoint], several for train.ensemble.

  Without `step`, each model that delivered.json lists (load_checkpoint of
  each; `best` applies to each). With `step`, that checkpoint of the workdir
  alone, saying so when the run delivers an ensemble. All members must share
  the dataset (its vocabulary and fields), else ScoringError. `stage` as `best`.
  """
  layout = Workdir(workdir)
  report = report or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
  _delivery(layout, step)
  members = layout.ensemble()
  if step is not None or len(members) == 1:
    if step is not None and len(members) > 1:
      report(f"{workdir} delivers the average of {len(members)} models; --step {step} "
             "scores this run's own checkpoint alone")  # fmt: skip
    model = load_checkpoint(
      workdir, step=step, best=best, stage=stage, devices=devices, report=report
    )
    _check_own_config(model)
    return [model]
  models = [
    load_checkpoint(m.root, best=best, stage=stage, devices=devices, report=report) for m in members
  ]
  for model in models:
    _check_own_config(model)
  first = models[0].dataset_meta
  for m in models[1:]:
    meta = m.dataset_meta
    if (meta.fields, meta.vocab, meta.options) != (first.fields, first.vocab, first.options):
      raise ScoringError(
        f"{m.description}: an ensemble member encodes its input unlike "
        f"{models[0].description} (other fields or vocabulary)"
      )
  return models


def _delivery(layout: Workdir, step) -> dict | None:
  """The run's verified delivery record (Workdir.verified_delivery); refuses a tampered
  one, and an unfinished recipe unless `step` picks one of the run's own checkpoints."""
  try:
    return layout.verified_delivery(finished=step is None)
  except UnfinishedRun as e:
    raise ScoringError(f"{e}; --step N scores one checkpoint of the run itself") from None
  except DeliveryError as e:
    raise ScoringError(str(e)) from None


def _check_own_config(model: LoadedCheckpoint) -> None:
  """The checkpoint's own config is its workdir's (config.json), fingerprint for fingerprint."""
  directory = model.workdir
  want = config_fingerprint(directory / "config.json")
  if want is not None and fingerprint(model.asked_config) != want:
    raise ScoringError(f"{model.description}: trained with another config than {directory}'s")


def _read_config(path: Path) -> Config:
  try:
    return read_config(path)
  except DeliveryError as e:
    raise ScoringError(str(e)) from None


def _restore_checkpoint(directory: Path, step: int, devices, wanted) -> LoadedCheckpoint:
  """Checkpoint `step` of `directory`; None unless it stands in for `wanted` (plan, stage)."""
  mngr = checkpointing.manager(directory, None)
  checkpointing.verify_seal(checkpointing.step_dir(mngr, step))
  meta = checkpointing.read_meta(mngr, step, verify=False)
  try:
    if wanted is not None and not stages.stands_in(*wanted, meta["progress"]):
      return None
    cfg = Config.from_dict(meta.get("effective_config") or meta["config"])
    dataset_meta = data.DatasetMeta.from_dict(meta["dataset"])
    rows = meta["model"]
  except Exception as e:  # noqa: BLE001 - report any malformed metadata the same way
    raise ScoringError(
      f"{directory}/{step}: unreadable checkpoint metadata ({type(e).__name__}: {e})"
    ) from e
  devices = list(devices or jax.local_devices())
  if rows["padded_rows"] % len(devices):  # the table's rows must split evenly
    devices = devices[:1]
  mesh = partitioning.make_mesh(devices)
  spec = model_lib.ModelSpec(
    cfg.model, dataset_meta.num_fields, rows["num_rows"], rows["padded_rows"],
    field_slots=dataset_meta.field_slots, attention=dataset_meta.attention,
  )  # fmt: skip
  fns = steps.build(spec, cfg.train, mesh)
  state, _ = checkpointing.restore(mngr, step, fns.abstract_state, verify=False)
  desc = f"{directory}/{step}"
  # checkpoints/ and best_<stage>/ are folders of the run's workdir.
  return LoadedCheckpoint(
    cfg, dataset_meta, fns, state, mesh, desc, meta.get("config"), Path(directory).parent
  )


def describe(models) -> str:
  """What a Scorer scores with: one checkpoint, or the average of several."""
  if len(models) == 1:
    return models[0].description
  return f"the average of {len(models)} models ({', '.join(m.description for m in models)})"
