"""The two-stage AOANet trainer: search -> select -> retrain -> test.

`run(cfg, workdir)` takes the workdir's lock and calls `_run`, the one
orchestration function of the project; it is long on purpose and reads top to
bottom in marked sections (STYLE.md rule 9). Everything it calls is a short,
tested library function.

Resuming: re-running the same command on the same workdir restores the
newest usable checkpoint (sealed, intact and finite: gin_jax/checkpointing.py;
train state + grain iterator state + stage progress) and continues; on one
device the result is bit-identical to an uninterrupted run (tests/test_train.py,
the SIGKILL test). Checkpoints of another config, dataset or device count are
never resumed nor silently discarded (tests/test_reliability.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gin_jax import (
  checkpointing,
  data,
  device_input,
  partitioning,
  pruning,
  report,
  stages,
  tensorboard,
  training,
)
from gin_jax import config as config_lib
from gin_jax import metrics as metrics_lib
from gin_jax import model as model_lib
from gin_jax.config import Config
from gin_jax.data import pipeline
from gin_jax.stages import Workdir

LOCK_FILE = ".lock"  # In the workdir: held (flock) by the run using it.


class TrainingError(RuntimeError):
  """A run cannot continue (non-finite loss, mismatched workdir, ...)."""


@dataclasses.dataclass
class Progress:
  """Host-side stage progress, saved as JSON in every checkpoint.

  One Progress object lives through a run and is updated in place.
  """

  stage: str
  epoch: int = 0
  iterator_state: dict | None = None
  best_auc: float | None = None
  bad_epochs: int = 0
  epoch_start_step: int = 0  # global step at which the current epoch began
  stage_start_time: float = 0.0
  results: dict = dataclasses.field(default_factory=dict)
  search_alpha: dict | None = None  # |alpha| evidence for the heatmap

  def to_dict(self):
    return dataclasses.asdict(self)

  def start(self, stage: str) -> None:
    """Resets the per-stage counters for `stage` (results and evidence are kept)."""
    self.stage = stage
    self.epoch = 0
    self.iterator_state = None
    self.best_auc = None
    self.bad_epochs = 0
    self.stage_start_time = time.time()


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def run(
  cfg: Config,
  workdir: str | os.PathLike,
  *,
  overwrite: bool = False,
  devices=None,
  on_step: Callable[[int], None] | None = None,
) -> dict:
  """Trains, prunes, retrains and tests; writes checkpoints and reports to `workdir`.

  Args:
    cfg: the full config (see gin_jax.config presets).
    workdir: output directory; re-running on it resumes.
    overwrite: discard a workdir that holds a run with a different config.
    devices: devices for the mesh (default: all devices of all processes).
    on_step: called with the global step after every train step (after any
      checkpoint of that step); tests use it to interrupt a run.

  Returns:
    The report dict also written to WORKDIR/report.json.

  One run at a time: process 0 holds an exclusive lock on WORKDIR/.lock for
  the whole run (released when it ends or dies); a second run on the same
  workdir stops with TrainingError naming the process that holds it.
  """
  workdir = Workdir(workdir)
  lock = _workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    out = _run(cfg, workdir, overwrite, devices, on_step)[0]
    if cfg.train.beat_linear:
      out = _beat_linear(cfg, workdir, out, devices)
    if cfg.train.ensemble > 1:
      out = _ensemble(cfg, workdir, out, devices)
    elif jax.process_index() == 0 and len(workdir.ensemble()) > 1:
      # The run delivered an ensemble before; asked for one model now, it
      # delivers member 0 (the report is already that model's).
      delivered = os.path.relpath(workdir.delivered().root, workdir.root)
      report.write_json(workdir.delivered_file, {"workdir": delivered})
    return out


def _run(cfg: Config, workdir: Workdir, overwrite: bool, devices, on_step):
  """The body of run(), under the workdir lock: (report, final state)."""
  # ------------------------------------------------------------ workdir guard
  lead = jax.process_index() == 0
  discard = _check_workdir(workdir, cfg, overwrite)  # every process reads; all agree
  if lead and discard:
    _discard_run(workdir)
  _barrier("workdir")

  # ------------------------------------------------------------ data
  meta, splits, planted = _load_data(cfg, workdir)
  if lead:
    report.write_json(workdir.config, cfg.to_dict())  # the config as asked for
  _log(
    f"data: {meta.num_fields} fields, {meta.num_table_rows} table rows; "
    + ", ".join(f"{k} {len(v)} rows" for k, v in splits.items())
  )
  asked, cfg = (
    cfg,
    config_lib.resolve_auto(cfg, len(splits["train"]), len(devices or jax.devices())),
  )
  if cfg != asked:
    _log(
      f"data-dependent settings for {len(splits['train']):,} training rows: "
      f"train.batch_size={cfg.train.batch_size}, train.embedding_l2={cfg.train.embedding_l2:.4g}"
    )
  if len(splits["train"]) < cfg.train.batch_size:
    raise TrainingError(
      f"the train split has {len(splits['train'])} rows, fewer than one batch "
      f"(train.batch_size={cfg.train.batch_size})"
    )
  if meta.constant_fields:
    _log(data.constant_warning(meta.constant_fields))

  # ------------------------------------------------------------ mesh and steps
  mesh = partitioning.make_mesh(devices)
  partitioning.check_batch_size(mesh, cfg.train.batch_size, "train.batch_size")
  partitioning.check_batch_size(mesh, cfg.train.eval_batch_size, "train.eval_batch_size")
  spec = model_lib.ModelSpec(
    cfg.model,
    meta.num_fields,
    meta.num_table_rows,
    model_lib.padded_table_rows(meta.num_table_rows, partitioning.num_shards(mesh)),
  )
  fns = training.build(spec, cfg.train, mesh)
  mode = device_input.choose_mode(
    cfg.data.device_resident, splits["train"], mesh, cfg.data.device_fraction
  )
  ctx = _Context(
    cfg, workdir, mesh, spec, fns, meta, splits, planted, on_step, mode, asked=asked,
    devices=devices,
  )  # fmt: skip
  _log(
    f"mesh: {partitioning.num_shards(mesh)} devices over {jax.process_count()} process(es); "
    f"{model_lib.count_params(fns.abstract_state['params']):,} parameters; "
    f"training input: {_INPUT_NAMES[mode]}"
  )

  # ------------------------------------------------------------ resume or start
  plan = cfg.train.stages
  restored = _resume(ctx, overwrite)
  if restored is None:
    first = stages.plan(plan)[0]
    progress = Progress(stage=first.name, stage_start_time=time.time())
    state = fns.init(stages.init_key(cfg.train.seed, first))
    _log(f"starting {cfg.name} in {workdir.root}")
    if cfg.train.linear_start:
      state = _start_from_linear(ctx, state)
  else:
    step, state, saved = restored
    progress = Progress(**saved["progress"])
    ctx.log.rewind(saved.get("metrics_bytes"), step)  # the replayed steps log again
    _log(f"resuming from step {step}: stage {progress.stage}, epoch {progress.epoch}")

  # ------------------------------------------------------------ stages
  while progress.stage != stages.DONE:
    stage = stages.by_name(plan, progress.stage)
    # With train.linear_start every stage begins from fitted weights (the
    # regression, or the search stage's best): that start is evaluated and may
    # stand as the stage's best. (Other runs are left as measured.)
    at_start = progress.epoch == 0 and progress.iterator_state is None
    if cfg.train.linear_start and at_start and progress.best_auc is None:
      _evaluate_start(ctx, stage, state, progress)
    state = _train_stage(ctx, stage, state, progress)
    state = _restore_best(ctx, stage, state)
    result = {**progress.results.get(stage.name, {}), "epochs": progress.epoch}
    for split in ("valid", "test"):
      if len(splits[split]):
        labels, probs = _predict(ctx, state, splits[split])
        if lead:  # kept for train.ensemble's average (and for the user)
          _write_predictions(workdir.stage_predictions(stage, split), labels, probs)
        m = metrics_lib.evaluate(labels, probs)
        result[f"{split}_auc"], result[f"{split}_logloss"] = m["auc"], m["logloss"]
    result["seconds"] = time.time() - progress.stage_start_time
    progress.results[stage.name] = result
    ctx.log.write(stage=stage.name, event="stage_end", step=int(state["step"]), **result)
    if stage.selects_after:
      state = _select_and_reinit(ctx, state, progress)
    progress.start(stages.next_stage(plan, stage.name))
    _save(ctx, state, progress)

  # ------------------------------------------------------------ report
  out = _final_report(ctx, state, progress)
  if lead:
    report.write_json(workdir.report, out)
    print(report.summary_table(out), flush=True)
  return out, state


# ---------------------------------------------------------------------- helpers


@dataclasses.dataclass
class _Context:
  cfg: Config
  workdir: Workdir
  mesh: object
  spec: model_lib.ModelSpec
  fns: training.StepFns
  meta: object
  splits: dict
  planted: list
  on_step: Callable[[int], None] | None = None
  input_mode: str = "off"  # device_input mode of the training split
  resident: object = None  # device_input.ResidentSplit, built on first use
  asked: Config | None = None  # the config as asked for; cfg has its auto settings decided
  devices: list | None = None  # the mesh's devices as run() was given them (None: all)

  def __post_init__(self):
    self.ckpt = checkpointing.manager(self.workdir.checkpoints, self.cfg.train.keep_checkpoints)
    lead, tb = jax.process_index() == 0, self.cfg.train.tensorboard
    scalars = tensorboard.ScalarWriter(self.workdir.tensorboard) if lead and tb else None
    self.log = report.MetricsLog(self.workdir.metrics, lead, scalars)

  def best_manager(self, stage: stages.Stage):
    return checkpointing.manager(self.workdir.best(stage), 1)

  def meta_dict(self, progress: Progress) -> dict:
    return {
      "progress": progress.to_dict(),
      "config": (self.asked or self.cfg).to_dict(),  # what the workdir guard compares
      "effective_config": self.cfg.to_dict(),  # data-dependent settings decided
      "dataset": self.meta.to_dict(),
      "planted_pairs": [list(p) for p in self.planted],
      "model": {"num_rows": self.spec.num_rows, "padded_rows": self.spec.padded_rows},
      "metrics_bytes": self.log.size(),  # metrics.jsonl up to this checkpoint
    }


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _workdir_lock(workdir: Workdir):
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


def _check_workdir(workdir: Workdir, cfg: Config, overwrite: bool) -> bool:
  """Refuses a workdir that holds another config's run; True: discard it (`overwrite`).

  The run's config is read from config.json AND from the newest checkpoint
  whose metadata matches its seal (every checkpoint carries its config), so
  deleting or editing config.json does not let another config resume those
  checkpoints. config.json itself is written only once the data is prepared,
  so a run that fails on a data or schema error leaves nothing that would
  refuse its rerun.
  """
  new = _resumable(cfg.to_dict())
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
    old = _resumable(old)
    if old != new:
      if overwrite:
        return True
      raise TrainingError(
        f"{workdir.root} holds a run with a different config "
        f"({_config_diff(old if isinstance(old, dict) else {}, new)}; per {where}); "
        "use another --workdir, or --overwrite to discard it"
      )
  return False


def _resumable(saved):
  """A saved config as the workdir guard compares it (`_with_defaults`), less
  train.ensemble: a run grows or shrinks its ensemble in place, since member i
  is the same model whatever the number of members (`_ensemble`)."""
  saved = _with_defaults(saved)
  if isinstance(saved, dict) and isinstance(saved.get("train"), dict):
    saved = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "ensemble"}}
  return saved


def _with_defaults(saved):
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


def _discard_run(workdir: Workdir) -> None:
  """Deletes config.json and everything a run wrote except the prepared data."""
  for p in [workdir.config, *workdir.run_outputs()]:
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _config_diff(old: dict, new: dict, prefix="") -> str:
  diffs = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      inner = _config_diff(a, b, f"{prefix}{k}.")
      if inner:
        diffs.append(inner)
    elif a != b:
      diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return "; ".join(diffs[:5])


def _load_data(cfg: Config, workdir: Workdir):
  """Prepares the splits (process 0 first, others then hit its cache).

  For the demo (`format="synthetic"`) `data.prepare` writes the Criteo TSV
  itself, so the whole text path runs, and returns the planted pairs in
  `meta.planted_pairs`.
  """
  cache = workdir.data_cache
  if jax.process_index() == 0:
    meta, splits = data.prepare(cfg.data, cache)
  _barrier("prepare")
  if jax.process_index() != 0:
    meta, splits = data.prepare(cfg.data, cache)
  planted = [tuple(p) for p in (meta.planted_pairs or [])]
  return meta, splits, planted


def _resume(ctx: _Context, overwrite: bool):
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
      ctx.ckpt, functools.partial(_fits, ctx), report=lambda m: _log("WARNING: " + m)
    )
  except checkpointing.NoUsableCheckpoint as e:
    if len(e.problems) == 1 and e.problems[0].kind == "unsealed":
      _log(f"WARNING: {e.problems[0]}; starting afresh")
      return None
    problem = f"{e}; nothing to resume from"
  except (checkpointing.CheckpointError, _Mismatch) as e:
    problem = str(e)
  if not overwrite:
    raise TrainingError(
      f"{problem}. Use --overwrite to discard the run and start afresh, or another --workdir"
    )
  _log(f"WARNING: {problem}; --overwrite: discarding the run and starting afresh")
  if jax.process_index() == 0:
    _discard_run(ctx.workdir)
    report.write_json(ctx.workdir.config, ctx.cfg.to_dict())
  _barrier("discarded")
  ctx.ckpt = checkpointing.manager(ctx.workdir.checkpoints, ctx.cfg.train.keep_checkpoints)
  return None


class _Mismatch(Exception):
  """An intact checkpoint of another run (config, dataset or device count)."""


def _fits(ctx: _Context, step: int, saved: dict):
  """The abstract state to restore checkpoint `step` into, if it belongs to this run."""
  where = f"{ctx.workdir.checkpoints}/{step}"
  new, old = _resumable((ctx.asked or ctx.cfg).to_dict()), _resumable(saved.get("config"))
  if old != new:
    old = old if isinstance(old, dict) else {}
    raise _Mismatch(f"{where} was trained with another config ({_config_diff(old, new)})")
  rows = {"num_rows": ctx.spec.num_rows, "padded_rows": ctx.spec.padded_rows}
  if saved.get("model") != rows:
    raise _Mismatch(
      f"{where} holds an embedding table of {saved.get('model')} rows, but this run's data "
      f"and devices give {rows} (the input files or the number of devices changed)"
    )
  return ctx.fns.abstract_state


def _check_finite(ctx: _Context, state, stage: stages.Stage) -> None:
  bad = int(state["nonfinite"])
  if bad:
    raise TrainingError(
      f"stage {stage.name}: the loss was NaN or Inf in {bad} step(s) before step "
      f"{int(state['step'])}; stopping without saving. The last good checkpoint in "
      f"{ctx.workdir.checkpoints} is intact (try a lower train.learning_rate or "
      "train.clip_norm)"
    )


def _save(ctx: _Context, state, progress: Progress) -> None:
  checkpointing.save(ctx.ckpt, int(state["step"]), state, ctx.meta_dict(progress))


def _train_stage(ctx: _Context, stage: stages.Stage, state, progress: Progress):
  """Epochs of one stage with logging, checkpoints, plateau decay and early stopping."""
  cfg = ctx.cfg.train
  split = ctx.splits["train"]
  steps_per_epoch = len(split) // cfg.batch_size
  while progress.epoch < cfg.epochs and progress.bad_epochs < cfg.patience:
    epoch = progress.epoch
    it = _train_batches(ctx, stages.shuffle_seed(cfg.seed, stage), epoch)
    # The step is counted on the host too: reading state["step"] each step
    # would wait for the device and stall asynchronous dispatch.
    step = int(state["step"])
    if progress.iterator_state is not None:  # resuming mid-epoch
      it.set_state(progress.iterator_state)
    else:
      progress.epoch_start_step = step
    bar = _progress_bar(
      steps_per_epoch,
      step - progress.epoch_start_step,
      f"{stage.name} epoch {epoch + 1}/{cfg.epochs}",
    )
    t0, since = time.time(), 0
    for batch in it:
      state, step_metrics = ctx.fns.step(state, batch)
      since += 1
      step += 1
      if step % cfg.log_every == 0:
        _check_finite(ctx, state, stage)
        loss = float(step_metrics["loss"])
        rate = since * cfg.batch_size / max(time.time() - t0, 1e-9)
        t0, since = time.time(), 0
        lr = training.get_learning_rate(state["opt_state"])
        ctx.log.write(
          stage=stage.name,
          step=step,
          epoch=epoch,
          loss=loss,
          samples_per_s=rate,
          lr=lr,
          grad_norm=float(step_metrics["grad_norm"]),
        )
        if bar is not None:
          bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:,.0f}")
      if bar is not None:
        bar.update(1)
      if step % cfg.checkpoint_every == 0:
        _check_finite(ctx, state, stage)
        progress.iterator_state = it.get_state()
        _save(ctx, state, progress)
      if ctx.on_step is not None:
        ctx.on_step(step)
    if bar is not None:
      bar.close()
    _check_finite(ctx, state, stage)
    _end_of_epoch(ctx, stage, state, progress)
    state = _apply_decay(state, progress, cfg)
    _save(ctx, state, progress)
  return state


_INPUT_NAMES = {
  "off": "grain pipeline (host)",
  "resident": "split resident on the devices",
  "streamed": "streamed to the devices in chunks",
}


class _HostBatches:
  """The grain pipeline's host batches, placed on the mesh; grain's iterator state."""

  def __init__(self, it, mesh):
    self._it, self._mesh = it, mesh

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return partitioning.shard_batch(self._mesh, next(self._it))

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)


def _train_batches(ctx: _Context, seed: int, epoch: int):
  """One epoch of device batches, from the input mode chosen for this run."""
  cfg, split = ctx.cfg, ctx.splits["train"]
  if ctx.input_mode == "resident":
    if ctx.resident is None:
      ctx.resident = device_input.ResidentSplit(split, ctx.mesh)
    return ctx.resident.epoch(cfg.train.batch_size, seed, epoch)
  if ctx.input_mode == "streamed":
    chunk = device_input.chunk_batches(
      split, cfg.train.batch_size, ctx.mesh, cfg.data.device_fraction
    )
    return device_input.StreamedBatches(split, ctx.mesh, cfg.train.batch_size, seed, epoch, chunk)
  it = pipeline.train_iterator(
    split,
    cfg.train.batch_size,
    seed=seed,
    epoch=epoch,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_workers=cfg.data.num_workers,
  )
  return _HostBatches(it, ctx.mesh)


def _progress_bar(total: int, initial: int, desc: str):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, mininterval=1.0)


def _end_of_epoch(ctx: _Context, stage: stages.Stage, state, progress: Progress) -> None:
  """Validation, best-checkpoint bookkeeping and the plateau counter (in `progress`)."""
  progress.epoch += 1
  progress.iterator_state = None
  if not len(ctx.splits["valid"]):
    return  # no validation data: keep the last weights, never stop early
  m = _validate(ctx, stage, state, progress.epoch, f"epoch {progress.epoch}")
  if progress.best_auc is None or m["auc"] > progress.best_auc:
    progress.bad_epochs = 0
    _keep_as_best(ctx, stage, state, progress, m["auc"])
  else:
    progress.bad_epochs += 1


def _validate(ctx: _Context, stage: stages.Stage, state, epoch: int, when: str) -> dict:
  """Evaluates on the validation split, logs it (metrics.jsonl and stdout); the metrics."""
  m = _evaluate(ctx, state, ctx.splits["valid"])
  ctx.log.write(
    stage=stage.name, event="eval", split="valid", step=int(state["step"]), epoch=epoch,
    auc=m["auc"], logloss=m["logloss"],
  )  # fmt: skip
  _log(f"{stage.name} {when}: valid AUC {m['auc']:.4f}, logloss {m['logloss']:.4f}")
  return m


def _keep_as_best(ctx: _Context, stage: stages.Stage, state, progress: Progress, auc) -> None:
  """Records `auc` as the stage's best and saves `state` as best_<stage>."""
  progress.best_auc = auc
  checkpointing.save(ctx.best_manager(stage), int(state["step"]), state, ctx.meta_dict(progress))


def _apply_decay(state, progress: Progress, cfg):
  """lr x decay after each epoch without improvement (BARS' ReduceLROnPlateau)."""
  if progress.bad_epochs and progress.bad_epochs < cfg.patience:
    lr = training.get_learning_rate(state["opt_state"]) * cfg.lr_decay
    _log(f"no improvement: learning rate -> {lr:.2e}")
    state = {**state, "opt_state": training.set_learning_rate(state["opt_state"], lr)}
  return state


def _restore_best(ctx: _Context, stage: stages.Stage, state):
  """The stage's best weights (by validation AUC), keeping the current step.

  If best_<stage> is unusable (altered on disk, unsealed, NaN/Inf), the stage's
  usable regular checkpoints are evaluated on the validation split again and
  the best of them stands in; it is sealed into best_<stage> in its place, so
  a later rerun or `score --best` finds an intact one.
  """
  best = ctx.best_manager(stage)
  step = best.latest_step()
  if step is None:
    return state
  try:
    restored, _ = checkpointing.restore(best, step, ctx.fns.abstract_state)
  except checkpointing.UnusableCheckpoint as e:
    _log(f"WARNING: {e}; re-evaluating the {stage.name} stage's checkpoints instead")
    found = _best_regular_checkpoint(ctx, stage)
    if found is None:
      _log(f"WARNING: no usable {stage.name} checkpoint stands in; keeping the last weights")
      return state
    step, restored, meta = found
    for stale in best.all_steps():
      checkpointing.delete(best, stale)
    checkpointing.save(best, step, restored, meta)
  _log(f"{stage.name}: restored the best weights (step {step})")
  return {**restored, "step": state["step"]}


def _best_regular_checkpoint(ctx: _Context, stage: stages.Stage):
  """(step, state, meta) of the usable regular checkpoint of `stage` with the best valid AUC."""
  found, best_auc = None, None
  for step in sorted(ctx.ckpt.all_steps()):
    try:
      meta = checkpointing.read_meta(ctx.ckpt, step)
      if meta["progress"]["stage"] != stage.name:
        continue  # another stage's weights (a boundary save holds the next stage's init)
      state, meta = checkpointing.restore(ctx.ckpt, step, ctx.fns.abstract_state, verify=False)
    except checkpointing.UnusableCheckpoint as e:
      _log(f"WARNING: {e}; skipped")
      continue
    auc = _evaluate(ctx, state, ctx.splits["valid"])["auc"]
    _log(f"{stage.name}: checkpoint {step} has valid AUC {auc:.4f}")
    if best_auc is None or auc > best_auc:
      found, best_auc = (step, state, meta), auc
  return found


def _nested_run(cfg: Config, parent: Workdir, sub: Workdir, devices, link_linear: bool = False):
  """A run of its own in a folder of `parent`, on the parent's prepared data: (report, state).

  Like any run it resumes, and a finished one returns at once. `link_linear`:
  its own linear/ is the parent's (the same regression, fitted once).
  """
  if jax.process_index() == 0:
    (sub.root / "data").mkdir(parents=True, exist_ok=True)
    if not sub.data_cache.exists():
      sub.data_cache.symlink_to(parent.data_cache.resolve(), target_is_directory=True)
    if link_linear and not sub.linear.exists():
      sub.linear.symlink_to(parent.linear.resolve(), target_is_directory=True)
  _barrier(f"nested-{sub.root.name}")
  lock = _workdir_lock(sub) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _run(cfg, sub, False, devices, None)


def _beat_linear(cfg: Config, workdir: Workdir, out: dict, devices) -> dict:
  """train.beat_linear: deliver a model that validates at least as well as a regression.

  Fits the logistic regression (config.linear_floor) in WORKDIR/linear. If the
  run's final model validates below it, trains config.from_linear(cfg) (GIN
  started from the regression, whose start is kept unless an epoch beats it)
  in WORKDIR/from_linear, and delivers whichever model validates better:
  WORKDIR/delivered.json names it for scoring and export, and report.json
  becomes its report, with the run's own under "first_candidate". On Frappe
  GIN validates far above the regression (0.957 vs 0.925): one regression fit
  more. On a 6.5k-row Criteo sample it validates below (0.747 vs 0.755, means
  of 3 seeds) and the second candidate gives 0.761 valid, 0.728 test (README,
  Model quality).
  """
  final = stages.final(cfg.train.stages).name
  deep = out["stages"].get(final, {}).get("valid_auc")
  delivered = "."
  if cfg.model.arch != "gin" or cfg.train.linear_start or deep is None:
    why = (
      "it applies to GIN" if cfg.model.arch != "gin"
      else "the run already starts from the regression" if cfg.train.linear_start
      else "there is no validation split to compare on"
    )  # fmt: skip
    check = {"skipped": why}
    _log(f"train.beat_linear: skipped ({why})")
  else:
    _log(f"beat_linear: fitting the logistic regression in {workdir.linear}")
    lin, _ = _nested_run(config_lib.linear_floor(cfg), workdir, Workdir(workdir.linear), devices)
    check = {"linear_valid_auc": lin["stages"]["gin"]["valid_auc"], "model_valid_auc": deep}
    if deep < check["linear_valid_auc"]:
      _log(f"beat_linear: the model validates below the regression; training it from the "
           f"regression in {workdir.from_linear}")  # fmt: skip
      second, _ = _nested_run(
        config_lib.from_linear(cfg), workdir, Workdir(workdir.from_linear), devices, True
      )
      check["from_linear_valid_auc"] = second["stages"][final]["valid_auc"]
      if check["from_linear_valid_auc"] > deep:
        delivered = workdir.from_linear.name
        # "config" stays the run's; the delivered model's is in from_linear/.
        out = {**second, "config": out["config"], "delivered_config": second["config"],
               "first_candidate": {k: out[k] for k in ("stages", "summary")}}  # fmt: skip
    aucs = ", ".join(f"{k.removesuffix('_valid_auc')} {v:.4f}" for k, v in check.items())
    _log(f"beat_linear: delivering {'the run' if delivered == '.' else delivered} "
         f"(valid AUC: {aucs})")  # fmt: skip
  check["delivered"] = delivered
  out = {**out, "beat_linear": check}
  if jax.process_index() == 0:
    workdir.delivered_file.write_text(json.dumps({"workdir": delivered}) + "\n")
    report.write_json(workdir.report, out)
    if delivered != ".":
      print(report.summary_table(out), flush=True)
  return out


def _ensemble(cfg: Config, workdir: Workdir, out: dict, devices) -> dict:
  """train.ensemble = K: K models of the recipe, delivered as their averaged probabilities.

  Member 0 is the run itself; members 1 .. K-1 are runs of their own in
  WORKDIR/ensemble/member_<i> (config.ensemble_member: train.seed + 1000 i, the
  same prepared data), each with its own beat_linear check when the recipe has
  one. Every stage's valid and test probabilities (WORKDIR/predictions/, saved
  at each stage's end) are averaged over the members' delivered models, and
  the report's "stages" become the ensemble's metrics; each member's own
  stages are under "ensemble". delivered.json lists the members, so that
  scoring and export average the same models. Like any run, an interrupted
  ensemble resumes: finished members are read back, the others resume. The
  same holds when train.ensemble changes on a workdir (the workdir guard leaves
  it out): more members train only the new ones, fewer average the first K
  (the others' folders stay) and one delivers member 0 alone.
  Seed averaging gave +0.003 to +0.006 valid AUC over single models on Frappe
  and +0.004 on the Criteo sample (README, Model quality).
  """
  k = cfg.train.ensemble
  delivered, reports, seeds = [workdir.delivered()], [out], [cfg.train.seed]
  for i in range(1, k):
    member_cfg, sub = config_lib.ensemble_member(cfg, i), workdir.member(i)
    _log(f"ensemble: member {i + 1}/{k} (train.seed={member_cfg.train.seed}) in {sub.root}")
    member, _ = _nested_run(member_cfg, workdir, sub, devices)
    if member_cfg.train.beat_linear:
      member = _beat_linear(member_cfg, sub, member, devices)
    delivered.append(sub.delivered())
    reports.append(member)
    seeds.append(member_cfg.train.seed)
  _barrier("ensemble")  # every member's predictions are on disk
  results = {}
  for stage in stages.plan(cfg.train.stages):
    result = {}
    member_results = [r["stages"][stage.name] for r in reports]
    for split in ("valid", "test"):
      if f"{split}_auc" not in member_results[0]:
        continue  # an empty split
      labels, probs = _average_predictions([m.stage_predictions(stage, split) for m in delivered])
      m = metrics_lib.evaluate(labels, probs)
      result[f"{split}_auc"], result[f"{split}_logloss"] = m["auc"], m["logloss"]
    result["epochs"] = float(np.mean([r["epochs"] for r in member_results]))
    result["seconds"] = float(sum(r["seconds"] for r in member_results))
    result["models"] = k
    results[stage.name] = result
  names = [os.path.relpath(m.root, workdir.root) for m in delivered]
  members = [
    {"workdir": n, "seed": s, "stages": r["stages"], "kept_pairs": r.get("kept_pairs")}
    for n, s, r in zip(names, seeds, reports)
  ]
  out = {**out, "stages": results, "summary": _summary(results), "ensemble": members}
  votes = _pair_votes([r.get("kept_pairs") for r in reports])
  if votes is not None:
    out["kept_pairs_votes"] = votes
  if jax.process_index() == 0:
    report.write_json(workdir.delivered_file, {"workdir": names[0], "ensemble": names})
    report.write_json(workdir.report, out)
    print(report.summary_table(out), flush=True)
  return out


def _pair_votes(kept: list) -> list[dict] | None:
  """How many members kept each layer-1 field pair, most first (None without pruning).

  The report's own kept_pairs, kept_pairs_detail and alpha heatmap are member
  0's; a pair that every member keeps is one the search finds whatever the seed.
  """
  if any(k is None for k in kept):
    return None
  counts = collections.Counter(tuple(pair) for k in kept for pair in k)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  return [{"pair": list(pair), "members": n} for pair, n in ranked]


def _average_predictions(paths: list) -> tuple[np.ndarray, np.ndarray]:
  """(labels, mean probabilities) of the members' saved predictions of one split."""
  labels, total = None, None
  for path in paths:
    try:
      with np.load(path, allow_pickle=False) as z:
        y, p = z["labels"], z["probs"].astype(np.float64)
    except (OSError, ValueError, KeyError) as e:
      raise TrainingError(
        f"{path}: a member's predictions are missing or unreadable ({e}); its run "
        "predates train.ensemble or was altered: rerun with --overwrite"
      ) from None
    if labels is None:
      labels, total = y, p
    elif y.shape != labels.shape or not np.array_equal(y, labels):
      raise TrainingError(
        f"{path}: the ensemble's members were evaluated on different rows ({len(y)} vs "
        f"{len(labels)}); they must share the run's prepared data"
      )
    else:
      total = total + p
  return labels, total / len(paths)


def _start_from_linear(ctx: _Context, state):
  """GIN's first-order part and output bias set to a fitted logistic regression.

  The regression is trained first as a run of its own in WORKDIR/linear (the
  same prepared data, its own checkpoints, so it resumes too), with
  config.linear_floor's settings. The rest of the model keeps its fresh
  initialisation: with embeddings drawn at model.embed_init_std (1e-4 in the
  default recipe) the interaction and deep features are ~0 at evaluation, so
  the stage starts where the regression ended (its valid AUC to 4 digits on
  Frappe and the Criteo sample), and `_evaluate_start` keeps that start as the
  stage's best unless an epoch beats it on validation. (A zero output kernel
  would make the start exact, but the deep part then learns slowly, out of a
  saddle: 0.004 lower valid AUC on Frappe.)
  """
  sub = ctx.workdir.linear
  _log(f"linear start: fitting the logistic regression in {sub}")
  lin_cfg = config_lib.linear_floor(ctx.asked)
  _, lin = _nested_run(lin_cfg, ctx.workdir, Workdir(sub), ctx.devices)
  params = state["params"]
  w = lin["params"]["projection"]["table"]
  out = params["output"]
  bias = jnp.reshape(lin["params"]["bias"], out["bias"].shape)
  output = {"kernel": out["kernel"], "bias": jax.device_put(bias, out["bias"].sharding)}
  linear = w.astype(params["projection"]["linear"].dtype)
  params = {**params, "projection": {**params["projection"], "linear": linear}, "output": output}
  return {**state, "params": params}


def _evaluate_start(ctx: _Context, stage: stages.Stage, state, progress: Progress) -> None:
  """The stage's starting point evaluated and kept as its best so far (epoch 0)."""
  if not len(ctx.splits["valid"]):
    return
  m = _validate(ctx, stage, state, 0, "start")
  _keep_as_best(ctx, stage, state, progress, m["auc"])


def _select_and_reinit(ctx: _Context, state, progress: Progress):
  """The select step: masks from |alpha| of the search weights, then the next stage's model.

  Records the search |alpha| in `progress` (evidence for the report and heatmap).
  """
  cfg = ctx.cfg.train
  alphas = jax.tree.map(partitioning.to_host, model_lib.alpha_tree(state["params"]))
  masks = pruning.select(alphas, cfg.keep_ratio, cfg.prune_scope)
  names = ctx.meta.field_names
  _log(
    f"select: kept {pruning.kept_fraction(masks):.0%} of pairs "
    f"({len(pruning.kept_field_pairs(masks, names))} distinct layer-1 field pairs)"
  )
  nxt = stages.by_name(cfg.stages, stages.next_stage(cfg.stages, progress.stage))
  fresh = ctx.fns.init(stages.init_key(cfg.seed, nxt), masks)
  if cfg.warm_start:
    params = model_lib.with_alpha(
      state["params"], pruning.apply(model_lib.alpha_tree(state["params"]), masks)
    )
    fresh = {**fresh, "params": params, "batch_stats": state["batch_stats"]}
  elif cfg.linear_start:
    fresh = _start_from_linear(ctx, fresh)
  progress.search_alpha = {k: np.asarray(v).tolist() for k, v in alphas.items()}
  return {**fresh, "step": state["step"]}


def _evaluate(ctx: _Context, state, split) -> dict:
  """Exact AUC / logloss over a whole split; predictions gathered from all processes."""
  return metrics_lib.evaluate(*_predict(ctx, state, split))


def _predict(ctx: _Context, state, split) -> tuple[np.ndarray, np.ndarray]:
  """(labels, probabilities) of every row of `split`, gathered from all processes."""
  probs, labels, weights = [], [], []
  for batch in pipeline.eval_batches(
    split,
    ctx.cfg.train.eval_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  ):
    sharded = partitioning.shard_batch(ctx.mesh, batch)
    p = ctx.fns.eval_step(state["params"], state["batch_stats"], state["masks"], sharded)
    probs.append(partitioning.to_host(p))
    labels.append(partitioning.to_host(sharded["labels"]))
    weights.append(partitioning.to_host(sharded["weights"]))
  keep = np.concatenate(weights) > 0
  return np.concatenate(labels)[keep], np.concatenate(probs)[keep]


def _write_predictions(path, labels: np.ndarray, probs: np.ndarray) -> None:
  """labels and probs [n] as an .npz (temp file + rename: never half a file)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, labels=labels.astype(np.float32), probs=probs.astype(np.float32))
  os.replace(tmp, path)


def _final_report(ctx: _Context, state, progress: Progress) -> dict:
  names = ctx.meta.field_names
  out = {
    "stages": progress.results,
    "config": ctx.cfg.to_dict(),
    "kept_pairs": None,
    "planted_pairs": [list(p) for p in ctx.planted] or None,
    "planted_pair_recall": None,
    "final_step": int(state["step"]),
  }
  if ctx.cfg.train.stages == "aoanet" and progress.search_alpha is not None:
    masks = jax.tree.map(partitioning.to_host, state["masks"])
    alphas = {k: np.asarray(v, np.float32) for k, v in progress.search_alpha.items()}
    kept = pruning.kept_field_pairs(masks, names)
    out.update(
      kept_pairs=kept,
      kept_fraction=pruning.kept_fraction(masks),
      kept_pairs_detail=pruning.kept_pairs(masks, names, alphas),
    )
    if ctx.planted:  # synthetic data only: how well pruning found the planted pairs
      f = len(names)
      out.update(
        planted_pair_recall=pruning.planted_pair_recall(masks, names, ctx.planted),
        planted_pair_chance=len(kept) / (f * (f + 1) / 2),
        planted_pair_ranks=pruning.planted_pair_ranks(alphas, names, ctx.planted),
      )
    if jax.process_index() == 0:
      report.alpha_heatmap(ctx.workdir.heatmap, alphas, masks, names, ctx.cfg.model.num_subspaces)
  out["summary"] = _summary(out["stages"])
  return out


def _summary(results: dict) -> dict:
  """The report's "summary": each stage's valid AUC and test metrics."""
  keys = ("valid_auc", "test_auc", "test_logloss")
  return {stage: {k: r.get(k) for k in keys} for stage, r in results.items()}
