"""Runs of runs: beat_linear, seed ensembles and the linear start, on top of the stage loop.

`run(cfg, workdir)` is the public entry point of training: it takes the
workdir's lock, runs the stage loop (gin_jax.training.loop), then the recipes
the config asks for. Each recipe trains further runs of their own in folders
of the workdir (`_nested_run`), on the same prepared data; the configs they
train are derived here from the run's (`linear_floor`, `from_linear`,
`ensemble_member`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax import files, runtime
from gin_jax.config import Config
from gin_jax.training import checkpointing, continuation, loop, plots, predict, report, stages
from gin_jax.training.errors import TrainingError
from gin_jax.training.evaluate import calibration_of, split_metrics, summary
from gin_jax.training.workdir import Workdir, lock


def linear_floor(cfg: Config) -> Config:
  """The logistic regression on cfg's data: the quality floor and train.linear_start's fit.

  One weight per category (model.arch lr, one stage), Adam 1e-2, no L2, one
  model (no ensemble), the rest of cfg's training settings (batch, epochs, early
  stopping) kept.
  """
  return dataclasses.replace(
    cfg,
    model=dataclasses.replace(cfg.model, arch="lr", first_order=False),
    train=dataclasses.replace(
      cfg.train, stages="single", learning_rate=1e-2, embedding_l2=0.0, linear_l2=None,
      linear_start=False, beat_linear=False, ensemble=1,
    ),
  )  # fmt: skip


MEMBER_SEED_STRIDE = 1000  # ensemble member i trains with train.seed + 1000 i.


def ensemble_member(cfg: Config, i: int) -> Config:
  """Member i (>= 1) of cfg's seed ensemble: one model of the recipe with its own seed.

  Its seed is train.seed + 1000 i, so the members of runs with seeds 0, 1, 2
  (benchmarks.quality's) never share a seed: their ensembles are independent.
  Member 0 is the run itself.
  """
  train = dataclasses.replace(cfg.train, seed=cfg.train.seed + MEMBER_SEED_STRIDE * i, ensemble=1)
  return dataclasses.replace(cfg, train=train)


def from_linear(cfg: Config) -> Config:
  """train.beat_linear's second candidate: cfg's GIN started from the fitted regression."""
  return dataclasses.replace(
    cfg,
    model=dataclasses.replace(cfg.model, first_order=True),
    train=dataclasses.replace(cfg.train, linear_start=True, beat_linear=False, ensemble=1),
  )


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
  checkpointing.check_directory(workdir.root)  # before anything is prepared or trained
  continuation.check_start(cfg, workdir)  # before the lock: a source is never written
  with _locked(workdir):
    recipe = cfg.train.beat_linear or cfg.train.ensemble > 1  # it draws the pictures at its end
    out = _train(cfg, workdir, overwrite, devices, on_step, pictures=not recipe)[0]
    if cfg.train.beat_linear:
      out = _beat_linear(cfg, workdir, out, devices)
    if cfg.train.ensemble > 1:
      out = _ensemble(cfg, workdir, out, devices)
    elif jax.process_index() == 0 and len(workdir.ensemble()) > 1:
      # The run delivered an ensemble before; asked for one model now, it
      # delivers member 0 (the report is already that model's).
      delivered = os.path.relpath(workdir.delivered().root, workdir.root)
      workdir.write_delivered(workdir.delivery_record([delivered]))
    return out


def _locked(workdir: Workdir):
  """The workdir's lock, held by process 0 (the others hold nothing)."""
  return lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def _train(cfg: Config, workdir: Workdir, overwrite: bool, devices, on_step, pictures=True):
  """The stage loop of `cfg` in `workdir` (loop.train), with its linear start if it asks."""
  start_from = None
  if cfg.train.linear_start:
    start_from = functools.partial(_start_from_linear, cfg, workdir, devices)
  cfg, source = continuation.resolve(cfg)
  return loop.train(cfg, workdir, overwrite, devices, on_step, start_from, source, pictures)


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
  runtime.barrier(f"nested-{sub.root.name}")
  with _locked(sub):
    return _train(cfg, sub, False, devices, None, pictures=False)  # the parent draws them


def _beat_linear(cfg: Config, workdir: Workdir, out: dict, devices) -> dict:
  """train.beat_linear: deliver a model that validates at least as well as a regression.

  Fits the logistic regression (linear_floor) in WORKDIR/linear. If the
  run's final model validates below it, trains from_linear(cfg) (GIN
  started from the regression, whose start is kept unless an epoch beats it)
  in WORKDIR/from_linear, and delivers whichever model validates better:
  WORKDIR/delivered.json names it for scoring and export, and report.json
  becomes its report, with the run's own under "first_candidate". Where GIN
  validates above the regression this costs one regression fit more
  (docs/quality.md has the figures on Frappe and a Criteo sample).
  """
  final = out.get("delivered_stage") or stages.final(cfg.train.stages).name
  deep = out["stages"].get(final, {}).get("valid_auc")
  delivered = "."
  if cfg.model.arch != "gin" or cfg.train.linear_start or cfg.train.init_from or deep is None:
    why = (
      "it applies to GIN" if cfg.model.arch != "gin"
      else "the run already starts from the regression" if cfg.train.linear_start
      else "the run continues a delivered model (--init-from)" if cfg.train.init_from
      else "there is no validation split to compare on"
    )  # fmt: skip
    check = {"skipped": why}
    runtime.log(f"train.beat_linear: skipped ({why})")
  else:
    runtime.log(f"beat_linear: fitting the logistic regression in {workdir.linear}")
    lin, _ = _nested_run(linear_floor(cfg), workdir, Workdir(workdir.linear), devices)
    check = {"linear_valid_auc": lin["stages"]["train"]["valid_auc"], "model_valid_auc": deep}
    if deep < check["linear_valid_auc"]:
      runtime.log(f"beat_linear: the model validates below the regression; training it from the "
           f"regression in {workdir.from_linear}")  # fmt: skip
      second, _ = _nested_run(
        from_linear(cfg), workdir, Workdir(workdir.from_linear), devices, True
      )
      second_final = second.get("delivered_stage") or final
      check["from_linear_valid_auc"] = second["stages"][second_final]["valid_auc"]
      if check["from_linear_valid_auc"] > deep:
        delivered = workdir.from_linear.name
        # "config" stays the run's; the delivered model's is in from_linear/.
        out = {**second, "config": out["config"], "delivered_config": second["config"],
               "first_candidate": {k: out[k] for k in ("stages", "summary")}}  # fmt: skip
    aucs = ", ".join(f"{k.removesuffix('_valid_auc')} {v:.4f}" for k, v in check.items())
    runtime.log(f"beat_linear: delivering {'the run' if delivered == '.' else delivered} "
         f"(valid AUC: {aucs})")  # fmt: skip
  check["delivered"] = delivered
  record = workdir.delivery_record([delivered])
  out = {**out, "beat_linear": check, "delivered_configs": record["configs"]}
  if jax.process_index() == 0:
    out = plots.publish(workdir.root, out, workdir.sub(delivered).root)
    files.write_json(workdir.report, out)
    workdir.write_delivered(record)
    if delivered != ".":
      print(report.summary_table(out), flush=True)
  return out


def _ensemble(cfg: Config, workdir: Workdir, out: dict, devices) -> dict:
  """train.ensemble = K: K models of the recipe, delivered as their averaged probabilities.

  Member 0 is the run itself; members 1 .. K-1 are runs of their own in
  WORKDIR/ensemble/member_<i> (ensemble_member: train.seed + 1000 i, the
  same prepared data), each with its own beat_linear check when the recipe has
  one. Every stage's valid and test probabilities (WORKDIR/predictions/, saved
  at each stage's end) are averaged over the members' delivered models, and
  the report's "stages" become the ensemble's metrics; each member's own
  stages are under "ensemble". delivered.json lists the members, so that
  scoring and export average the same models. Like any run, an interrupted
  ensemble resumes: finished members are read back, the others resume. The
  same holds when train.ensemble changes on a workdir (the workdir guard leaves
  it out): more members train only the new ones, fewer average the first K
  (the others' folders stay) and one delivers member 0 alone. docs/quality.md
  has what seed averaging gains.
  """
  k = cfg.train.ensemble
  delivered, reports, seeds = [workdir.delivered()], [out], [cfg.train.seed]
  for i in range(1, k):
    member_cfg, sub = ensemble_member(cfg, i), workdir.member(i)
    if cfg.train.init_from:  # member i continues the source's member i
      member_init = continuation.member_init_from(cfg.train.init_from, i)
      member_cfg = dataclasses.replace(
        member_cfg, train=dataclasses.replace(member_cfg.train, init_from=member_init)
      )
    runtime.log(f"ensemble: member {i + 1}/{k} (train.seed={member_cfg.train.seed}) in {sub.root}")
    member, _ = _nested_run(member_cfg, workdir, sub, devices)
    if member_cfg.train.beat_linear:
      member = _beat_linear(member_cfg, sub, member, devices)
    delivered.append(sub.delivered())
    reports.append(member)
    seeds.append(member_cfg.train.seed)
  runtime.barrier("ensemble")  # every member's predictions are on disk
  results = {}
  for stage in stages.plan(cfg.train.stages):
    result = {}
    member_results = [r["stages"][stage.name] for r in reports]
    for split in ("valid", "test"):
      if f"{split}_auc" not in member_results[0]:
        continue  # an empty split
      average = _average_predictions([m.stage_predictions(stage, split) for m in delivered])
      result.update(split_metrics(split, *average))
    result["epochs"] = float(np.mean([r["epochs"] for r in member_results]))
    result["seconds"] = float(sum(r["seconds"] for r in member_results))
    result["models"] = k
    results[stage.name] = result
  names = [os.path.relpath(m.root, workdir.root) for m in delivered]
  final = stages.final(cfg.train.stages).name
  members = [
    {"workdir": n, "seed": s, "stages": r["stages"], "kept_pairs": r.get("kept_pairs"),
     "delivered_stage": r.get("delivered_stage") or final}
    for n, s, r in zip(names, seeds, reports)
  ]  # fmt: skip
  out = {**out, "stages": results, "summary": summary(results), "ensemble": members}
  out.update(_delivered_average(cfg, reports, delivered, results))
  votes = _pair_votes([r.get("kept_pairs") for r in reports])
  if votes is not None:
    out["kept_pairs_votes"] = votes
  record = workdir.delivery_record(names)
  out["delivered_configs"] = record["configs"]
  if jax.process_index() == 0:
    out = plots.publish(workdir.root, out, delivered[0].root)
    files.write_json(workdir.report, out)
    workdir.write_delivered(record)
    print(report.summary_table(out), flush=True)
  return out


def _delivered_average(cfg: Config, reports: list[dict], delivered: list, results: dict) -> dict:
  """The ensemble's "delivered_stage" and "calibration"; when its members deliver different
  stages (each the one that validates best for it), "delivered_stage" lists them and
  "delivered_metrics" are those of the average that scoring gives, of each member's
  delivered stage."""
  final = stages.final(cfg.train.stages).name
  chosen = [r.get("delivered_stage") or final for r in reports]
  if len(set(chosen)) == 1:
    return {"delivered_stage": chosen[0], "calibration": calibration_of(results, chosen[0])}
  average = {}
  for split in ("valid", "test"):
    paths = [m.stage_predictions(stages.by_name(cfg.train.stages, s), split)
             for m, s in zip(delivered, chosen)]  # fmt: skip
    if all(p.exists() for p in paths):
      average.update(split_metrics(split, *_average_predictions(paths)))
  calibration = calibration_of({"delivered": average}, "delivered")
  return {"delivered_stage": chosen, "delivered_metrics": average, "calibration": calibration}


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


def _average_predictions(paths: list) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(labels, averaged probabilities, each row's group or None) of the members' saved
  predictions of one split."""
  labels, members, groups = None, [], None
  for path in paths:
    try:
      with np.load(path, allow_pickle=False) as z:
        y, p = z["labels"], z["probs"]
        groups = z["groups"] if "groups" in z else None
    except (OSError, ValueError, KeyError) as e:
      raise TrainingError(
        f"{path}: a member's predictions are missing or unreadable ({e}); its run "
        "predates train.ensemble or was altered: rerun with --overwrite"
      ) from None
    if labels is not None and (y.shape != labels.shape or not np.array_equal(y, labels)):
      raise TrainingError(
        f"{path}: the ensemble's members were evaluated on different rows ({len(y)} vs "
        f"{len(labels)}); they must share the run's prepared data"
      )
    labels = y
    members.append(p)
  return labels, predict.average_probabilities(members), groups


def _start_from_linear(asked: Config, workdir: Workdir, devices, state):
  """GIN's first-order part and output bias set to a fitted logistic regression.

  The regression is trained first as a run of its own in WORKDIR/linear (the
  same prepared data, its own checkpoints, so it resumes too), with
  config.linear_floor's settings. The rest of the model keeps its fresh
  initialisation: with embeddings drawn at model.embed_init_std (1e-4 in the
  default recipe) the interaction and deep features are ~0 at evaluation, so
  the stage starts where the regression ended (its valid AUC to 4 digits on
  Frappe and the Criteo sample), and the loop keeps that start as the stage's
  best unless an epoch beats it on validation. (A zero output kernel would make
  the start exact, but the deep part then learns slowly, out of a saddle:
  docs/quality.md.)
  """
  sub = workdir.linear
  runtime.log(f"linear start: fitting the logistic regression in {sub}")
  _, lin = _nested_run(linear_floor(asked), workdir, Workdir(sub), devices)
  params = state["params"]
  w = lin["params"]["projection"]["table"]
  out = params["output"]
  bias = jnp.reshape(lin["params"]["bias"], out["bias"].shape)
  output = {"kernel": out["kernel"], "bias": jax.device_put(bias, out["bias"].sharding)}
  linear = w.astype(params["projection"]["linear"].dtype)
  params = {**params, "projection": {**params["projection"], "linear": linear}, "output": output}
  return {**state, "params": params}
