"""The stage loop of one run: search -> select -> retrain -> test (paper section 3.5).

`train(cfg, workdir, ...)` is the one orchestration function of the project; it
is long on purpose and reads top to bottom in marked sections (STYLE.md rule
9). Everything it calls is a short, tested library function. The public entry
point is gin_jax.training.run (recipes.py), which adds the runs of runs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import jax
import numpy as np

from gin_jax import data, files, runtime
from gin_jax import models as model_lib
from gin_jax.config import Config, resolve_auto
from gin_jax.data import pipeline, replay
from gin_jax.models import pruning
from gin_jax.training import (
  checkpointing,
  continuation,
  device_input,
  partitioning,
  plots,
  report,
  stages,
  steps,
)
from gin_jax.training.best import improves, keep_as_best, restore_best
from gin_jax.training.context import RunContext
from gin_jax.training.errors import Interrupted, TrainingError
from gin_jax.training.evaluate import (
  final_report,
  groups_of,
  predict_split,
  split_metrics,
  validate,
  write_predictions,
)
from gin_jax.training.resume import Progress, resume, save
from gin_jax.training.stages import Stage
from gin_jax.training.workdir import Workdir, check_config, discard_run


def train(
  cfg: Config,
  workdir: Workdir,
  overwrite: bool,
  devices,
  on_step,
  start_from=None,
  source=None,
  pictures: bool = True,
):
  """Every stage of one run, under the workdir's lock: (report, final state).

  Args:
    cfg: the run's config as asked for (its data-dependent settings decided here).
    workdir: the run's folder; a run in it resumes.
    overwrite: discard a workdir that holds another config's run.
    devices: devices for the mesh (None: all devices of all processes).
    on_step: called with the global step after every train step (tests).
    start_from: train.linear_start: maps a fresh state to one whose first-order
      part is the fitted regression (recipes.py builds it).
    source: train.init_from: the finished checkpoint the run continues
      (continuation.resolve); its vocabularies grow by this run's data.
    pictures: draw the report's figures and summary.md (plots.publish); a run
      nested in another's (recipes) leaves them to it.
  """
  # ------------------------------------------------------------ workdir guard
  lead = jax.process_index() == 0
  discard = check_config(workdir, cfg, overwrite)  # every process reads; all agree
  if lead and discard:
    discard_run(workdir)
  runtime.barrier("workdir")

  # ------------------------------------------------------------ data
  meta, splits, planted, replayed = _load_data(cfg, workdir, source)
  # Checked before config.json is written: a misspelt field must not hold the workdir.
  group_column = meta.group_column(cfg.train.group_by) if cfg.train.group_by else None
  if lead:
    files.write_json(workdir.config, cfg.to_dict())  # the config as asked for
  runtime.log(
    f"data: {meta.num_fields} fields, {meta.num_table_rows} table rows; "
    + ", ".join(f"{k} {len(v)} rows" for k, v in splits.items())
  )
  asked, cfg = (
    cfg,
    resolve_auto(cfg, len(splits["train"]), len(devices or jax.devices())),
  )
  if cfg != asked:
    runtime.log(
      f"data-dependent settings for {len(splits['train']):,} training rows: "
      f"train.batch_size={cfg.train.batch_size}, train.embedding_l2={cfg.train.embedding_l2:.4g}"
    )
  if len(splits["train"]) < cfg.train.batch_size:
    raise TrainingError(
      f"the train split has {len(splits['train'])} rows, fewer than one batch "
      f"(train.batch_size={cfg.train.batch_size})"
    )
  if source is not None:
    runtime.log(f"continuing {source.run} (step {source.step})")
    cfg = continuation.schedule(cfg)
    t = cfg.train
    runtime.log(
      f"continued training: learning rate {t.learning_rate * t.init_lr_scale:.3g}"
      + (f", exactly {t.init_epochs} epoch(s)" if t.init_epochs else "")
    )
    if growth := continuation.growth_summary(meta):
      runtime.log(growth)

  # ------------------------------------------------------------ mesh and steps
  mesh = partitioning.make_mesh(devices)
  partitioning.check_batch_size(mesh, cfg.train.batch_size, "train.batch_size")
  partitioning.check_batch_size(mesh, cfg.train.eval_batch_size, "train.eval_batch_size")
  spec = model_lib.ModelSpec(
    cfg.model,
    meta.num_fields,
    meta.num_table_rows,
    model_lib.padded_table_rows(meta.num_table_rows, partitioning.num_shards(mesh)),
    field_slots=meta.field_slots,
    attention=meta.attention,
  )
  fns = steps.build(spec, cfg.train, mesh)
  mode = device_input.choose_mode(
    cfg.data.device_resident, splits["train"], mesh, cfg.data.device_fraction
  )
  ctx = RunContext(
    cfg, workdir, mesh, spec, fns, meta, splits, planted, on_step, mode, asked=asked,
    devices=devices, start_from=start_from, group_column=group_column,
  )  # fmt: skip
  runtime.log(
    f"mesh: {partitioning.num_shards(mesh)} devices over {jax.process_count()} process(es); "
    f"{model_lib.count_params(fns.abstract_state['params']):,} parameters; "
    f"training input: {device_input.INPUT_NAMES[mode]}"
  )

  # ------------------------------------------------------------ resume or start
  plan = cfg.train.stages
  restored = resume(ctx, overwrite)
  if restored is None:
    # A run killed before its first checkpoint left log lines that this one replays.
    ctx.log.rewind(0, 0)
    first = stages.plan(plan)[0]
    progress = Progress(stage=first.name, stage_start_time=time.time())
    began = time.perf_counter()
    state = jax.block_until_ready(fns.init(stages.init_key(cfg.train.seed, first)))
    runtime.log(f"starting {cfg.name} in {workdir.root}")
    if cfg.train.linear_start:
      state = ctx.start_from(state)
    if source is not None:
      fresh_s, began = time.perf_counter() - began, time.perf_counter()
      state = jax.block_until_ready(continuation.start_state(source, state, fns, meta, cfg))
      runtime.log(
        f"started from step {source.step} of {source.run}: {time.perf_counter() - began:.1f} s "
        f"for the restore and the grown table of {spec.num_rows:,} rows (the fresh init: "
        f"{fresh_s:.1f} s)"
      )
  else:
    step, state, saved = restored
    progress = Progress.from_dict(saved["progress"]).resumed()
    ctx.log.rewind(saved.get("metrics_bytes"), step)  # the replayed steps log again
    runtime.log(f"resuming from step {step}: stage {progress.stage}, epoch {progress.epoch}")
  ctx.step = int(state["step"])

  # ------------------------------------------------------------ stages
  # Ctrl-C: Interrupted carries the step reached, for the one line the CLI prints.
  with _interrupted_at(ctx):
    while progress.stage != stages.DONE:
      stage = stages.by_name(plan, progress.stage)
      # With train.linear_start every stage begins from fitted weights (the
      # regression, or the search stage's best): that start is evaluated and may
      # stand as the stage's best. (Other runs are left as measured.)
      at_start = progress.epoch == 0 and progress.iterator_state is None
      if cfg.train.linear_start and at_start and progress.best_value is None:
        _evaluate_start(ctx, stage, state, progress)
      state = _train_stage(ctx, stage, state, progress)
      state = restore_best(ctx, stage, state)
      result = {**progress.results.get(stage.name, {}), "epochs": progress.epoch}
      for split in ("valid", "test"):
        if len(splits[split]):
          labels, probs = predict_split(ctx, state, splits[split])
          groups = groups_of(ctx, splits[split])
          if lead:  # kept for train.ensemble's average (and for the user)
            write_predictions(workdir.stage_predictions(stage, split), labels, probs, groups)
          result.update(split_metrics(split, labels, probs, groups))
      result["seconds"] = time.time() - progress.stage_start_time
      progress.results[stage.name] = result
      scalars = {k: v for k, v in result.items() if not isinstance(v, list | dict)}
      ctx.log.write(stage=stage.name, event="stage_end", step=int(state["step"]), **scalars)
      if stage.selects_after:
        state = _select_and_reinit(ctx, state, progress)
      nxt = stages.next_stage(plan, stage.name)
      if nxt == stages.DONE:
        state = _deliver(ctx, state, progress)
      progress.start(nxt)
      save(ctx, state, progress)

  # ------------------------------------------------------------ report
  out = final_report(ctx, state, progress)
  if source is not None:
    out = {**out, **continuation.report(source, meta, state, progress)}
    if replayed is not None:  # train.init_replay: what the training split held besides
      out["init_from"] = {**out["init_from"], "replay": replayed}
  if lead:
    if pictures:
      out = plots.publish(workdir.root, out)
    files.write_json(workdir.report, out)
    print(report.summary_table(out), flush=True)
  ctx.log.close()
  return out, state


# ---------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _interrupted_at(ctx: RunContext):
  """KeyboardInterrupt (Ctrl-C) as Interrupted, with the global step the run reached."""
  try:
    yield
  except Interrupted:
    raise  # a nested run's, with its own step
  except KeyboardInterrupt:
    raise Interrupted(ctx.step) from None


def _load_data(cfg: Config, workdir: Workdir, source=None):
  """Prepares the splits (process 0 first, others then hit its cache).

  A continued run's (`source`) vocabularies grow from the source's dataset, and with
  train.init_replay its training split is mixed with the source's (`_replayed`;
  the 4th value: replay.json's record, else None).

  For the demo (`format="synthetic"`) `data.prepare` writes the Criteo TSV
  itself, so the whole text path runs, and returns the planted pairs in
  `meta.planted_pairs`.
  """
  cache = workdir.data_cache
  base = source.dataset if source is not None else None
  workers = cfg.data.prepare_workers or None  # None: the cores available
  if jax.process_index() == 0:
    meta, splits = data.prepare(cfg.data, cache, base=base, workers=workers)
  runtime.barrier("prepare")
  if jax.process_index() != 0:
    meta, splits = data.prepare(cfg.data, cache, base=base, workers=workers)
  replayed = None
  if source is not None and cfg.train.init_replay > 0:
    train, replayed = _replayed(cfg, workdir, source, meta, splits["train"])
    splits = {**splits, "train": train}
  planted = [tuple(p) for p in (meta.planted_pairs or [])]
  return meta, splits, planted, replayed


def _replayed(cfg: Config, workdir: Workdir, source, meta, new):
  """train.init_replay: the new training split plus a sample of the source's training rows
  (data.replay; process 0 builds it, the others read it)."""
  from_dirs = list(dict.fromkeys([Path(source.run).resolve(), Path(cfg.train.init_from).resolve()]))
  build = lambda: replay.mixed_train(
    new, meta, *replay.source_train(from_dirs, source.dataset), source.dataset,
    cfg.train.init_replay, cfg.data.seed, workdir.data_cache, log=runtime.log,
  )  # fmt: skip
  if jax.process_index() == 0:
    split, info = build()
  runtime.barrier("replay")
  if jax.process_index() != 0:
    split, info = build()
  runtime.log(
    f"replay: {info['replayed_rows']:,} rows the source trained on ({info['source']}) beside "
    f"the {info['new_rows']:,} new ones (train.init_replay={cfg.train.init_replay:g})"
  )
  return split, info


def _check_finite(ctx: RunContext, state, stage: Stage) -> None:
  bad = int(state["nonfinite"])
  if bad:
    saved = checkpointing.steps_of(ctx.ckpt)  # each was checked finite before it was saved
    newest = (
      f"The newest checkpoint, {ctx.workdir.checkpoints / str(saved[-1])}, is intact" if saved
      else "No checkpoint was saved before it"
    )  # fmt: skip
    raise TrainingError(
      f"stage {stage.name}: the loss was NaN or Inf in {bad} step(s) before step "
      f"{int(state['step'])}; stopping without saving. {newest} (try a lower "
      "train.learning_rate or train.clip_norm)"
    )


def _train_stage(ctx: RunContext, stage: Stage, state, progress: Progress):
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
      ctx.step = step
      if step % cfg.log_every == 0:
        _check_finite(ctx, state, stage)
        loss = float(step_metrics["loss"])
        rate = since * cfg.batch_size / max(time.time() - t0, 1e-9)
        t0, since = time.time(), 0
        lr = steps.get_learning_rate(state["opt_state"])
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
        save(ctx, state, progress)
      if ctx.on_step is not None:
        ctx.on_step(step)
    if bar is not None:
      bar.close()
    _check_finite(ctx, state, stage)
    _end_of_epoch(ctx, stage, state, progress)
    state = _apply_decay(state, progress, cfg)
    save(ctx, state, progress)
  return state


def _train_batches(ctx: RunContext, seed: int, epoch: int):
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
  return device_input.HostBatches(it, ctx.mesh)


def _progress_bar(total: int, initial: int, desc: str):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, mininterval=1.0)


def _end_of_epoch(ctx: RunContext, stage: Stage, state, progress: Progress) -> None:
  """Validation, best-checkpoint bookkeeping and the plateau counter (in `progress`)."""
  progress.epoch += 1
  progress.iterator_state = None
  if not len(ctx.splits["valid"]):
    return  # no validation data: keep the last weights, never stop early
  m = validate(ctx, stage, state, progress.epoch, f"epoch {progress.epoch}")
  metric = ctx.cfg.train.early_stop_metric
  if improves(metric, m[metric], progress.best_value):
    progress.bad_epochs = 0
    keep_as_best(ctx, stage, state, progress, m[metric])
  else:
    progress.bad_epochs += 1


def _apply_decay(state, progress: Progress, cfg):
  """lr x decay after each epoch without improvement (BARS' ReduceLROnPlateau)."""
  if progress.bad_epochs and progress.bad_epochs < cfg.patience:
    lr = steps.get_learning_rate(state["opt_state"]) * cfg.lr_decay
    runtime.log(f"no improvement: learning rate -> {lr:.2e}")
    state = {**state, "opt_state": steps.set_learning_rate(state["opt_state"], lr)}
  return state


def _evaluate_start(ctx: RunContext, stage: Stage, state, progress: Progress) -> None:
  """The stage's starting point evaluated and kept as its best so far (epoch 0)."""
  if not len(ctx.splits["valid"]):
    return
  m = validate(ctx, stage, state, 0, "start")
  keep_as_best(ctx, stage, state, progress, m[ctx.cfg.train.early_stop_metric])


def _deliver(ctx: RunContext, state, progress: Progress):
  """Once the last stage ends: the run delivers the stage that validates best.

  By train.early_stop_metric over every stage of the plan (a tie, no
  validation split, or train.deliver="last" keeps the last: the pruned model).
  If an earlier stage (the search) wins, its best weights become the finished
  run's state, which the checkpoints then hold for scoring, export and
  --init-from; every stage's
  best_<stage> stays (`gin_jax.score --stage NAME`). Recorded in
  `progress.delivered` and the report's "delivered_stage".
  """
  plan, metric = ctx.cfg.train.stages, ctx.cfg.train.early_stop_metric
  last = stages.final(plan)
  key, chosen, best = f"valid_{metric}", last, None
  for stage in stages.plan(plan) if ctx.cfg.train.deliver == "best" else ():
    value = progress.results.get(stage.name, {}).get(key)
    if value is not None and (improves(metric, value, best) or value == best):  # later wins a tie
      chosen, best = stage, value
  progress.delivered = chosen.name
  if chosen != last:
    state = restore_best(ctx, chosen, state)
    runtime.log(
      f"delivering the {chosen.name} stage's model: it validates best (valid "
      f"{_METRIC_NAMES[metric]} {best:.4f}, {last.name} {progress.results[last.name][key]:.4f}); "
      f"the {last.name} model stays in {ctx.workdir.best(last)} (gin_jax.score --stage "
      f"{last.name})"
    )
  elif len(stages.plan(plan)) > 1:
    runtime.log(f"delivering the {chosen.name} stage's model")
  return state


_METRIC_NAMES = {"auc": "AUC", "logloss": "logloss"}


def _select_and_reinit(ctx: RunContext, state, progress: Progress):
  """The select step: masks from |alpha| of the search weights, then the next stage's model.

  Records the search |alpha| in `progress` (evidence for the report and heatmap).
  """
  cfg = ctx.cfg.train
  alphas = jax.tree.map(partitioning.to_host, model_lib.alpha_tree(state["params"]))
  masks = pruning.select(alphas, cfg.keep_ratio, cfg.prune_scope)
  names = ctx.meta.field_names
  runtime.log(
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
    fresh = ctx.start_from(fresh)
  progress.search_alpha = {k: np.asarray(v).tolist() for k, v in alphas.items()}
  return {**fresh, "step": state["step"]}
