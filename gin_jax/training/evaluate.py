"""Evaluation of a run's state: exact metrics over whole splits, saved predictions, the report."""

from __future__ import annotations

import jax
import numpy as np

from gin_jax import files, runtime
from gin_jax import metrics as metrics_lib
from gin_jax.models import pruning
from gin_jax.training import partitioning, plots, predict, stages
from gin_jax.training.context import RunContext
from gin_jax.training.stages import Stage


def evaluate(ctx: RunContext, state, split) -> dict:
  """Exact AUC / logloss (and gAUC with train.group_by) over a whole split; predictions
  gathered from all processes."""
  labels, probs = predict_split(ctx, state, split)
  m = metrics_lib.evaluate(labels, probs)
  groups = groups_of(ctx, split)
  if groups is not None:
    m["gauc"] = metrics_lib.grouped_auc(labels, probs, groups)["gauc"]
  return m


def groups_of(ctx: RunContext, split) -> np.ndarray | None:
  """Each row's group of train.group_by (its id in that field), in the split's order; None
  without train.group_by."""
  if ctx.group_column is None:
    return None
  return np.asarray(split.ids[:, ctx.group_column])


def predict_split(ctx: RunContext, state, split) -> tuple[np.ndarray, np.ndarray]:
  """(labels, probabilities) of every row of `split`, gathered from all processes."""
  return predict.predict_split(
    split,
    ctx.cfg.train.eval_batch_size,
    predict.state_score_fn(ctx.fns, state, ctx.mesh),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def validate(ctx: RunContext, stage: Stage, state, epoch: int, when: str) -> dict:
  """Evaluates on the validation split, logs it (metrics.jsonl and stdout); the metrics."""
  m = evaluate(ctx, state, ctx.splits["valid"])
  extra = {"gauc": m["gauc"]} if "gauc" in m else {}
  ctx.log.write(
    stage=stage.name, event="eval", split="valid", step=int(state["step"]), epoch=epoch,
    auc=m["auc"], logloss=m["logloss"], **extra,
  )  # fmt: skip
  grouped = f", gAUC {m['gauc']:.4f} (by {ctx.cfg.train.group_by})" if extra else ""
  runtime.log(f"{stage.name} {when}: valid AUC {m['auc']:.4f}{grouped}, logloss {m['logloss']:.4f}")
  return m


def split_metrics(split: str, labels: np.ndarray, probs: np.ndarray, groups=None) -> dict:
  """A stage's metrics on one split, as the report's stages hold them (`<split>_<name>`):

  auc, logloss, and calibration: ece (expected calibration error over 10 bins),
  mean_predicted and observed_rate (the mean probability against the click rate),
  calibration_bins (the reliability diagram's points); with `groups` (each row's
  group of train.group_by), gauc and gauc_groups (the groups with both classes).
  """
  m = metrics_lib.evaluate(labels, probs)
  c = metrics_lib.calibration(labels, probs)
  out = {"auc": m["auc"], "logloss": m["logloss"], "ece": c["ece"]}
  out |= {"mean_predicted": c["mean_predicted"], "observed_rate": c["observed_rate"]}
  out["calibration_bins"] = c["bins"]
  if groups is not None:
    g = metrics_lib.grouped_auc(labels, probs, groups)
    out["gauc"], out["gauc_groups"] = g["gauc"], g["groups"]
  return {f"{split}_{k}": v for k, v in out.items()}


def write_predictions(path, labels: np.ndarray, probs: np.ndarray, groups=None) -> None:
  """labels and probs [n] (and each row's group, with train.group_by) as an .npz, written
  atomically (never half a file)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"labels": labels.astype(np.float32), "probs": probs.astype(np.float32)}
  if groups is not None:
    arrays["groups"] = np.asarray(groups)
  with files.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def final_report(ctx: RunContext, state, progress) -> dict:
  """report.json of a finished run: per-stage metrics, the delivered stage, kept pairs,
  planted-pair recall, calibration."""
  names = ctx.meta.field_names
  plan = ctx.cfg.train.stages
  delivered = stages.delivered(plan, {"delivered": progress.delivered})
  out = {
    "stages": progress.results,
    "delivered_stage": delivered,
    "config": ctx.cfg.to_dict(),
    "kept_pairs": None,
    "planted_pairs": [list(p) for p in ctx.planted] or None,
    "planted_pair_recall": None,
    "final_step": int(state["step"]),
  }
  if progress.search_alpha is not None:  # a stage of the plan selected (pruned) after it
    alphas = {k: np.asarray(v, np.float32) for k, v in progress.search_alpha.items()}
    if delivered == stages.final(plan).name:
      masks = jax.tree.map(partitioning.to_host, state["masks"])
    else:  # the state is the unpruned stage's: the pruned model's masks, selected again
      masks = pruning.select(alphas, ctx.cfg.train.keep_ratio, ctx.cfg.train.prune_scope)
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
      plots.alpha_heatmap(ctx.workdir.heatmap, alphas, masks, names, ctx.cfg.model.num_subspaces)
  out["summary"] = summary(out["stages"])
  out["calibration"] = calibration_of(out["stages"], delivered)
  return out


def calibration_of(results: dict, stage: str) -> dict | None:
  """The report's "calibration": the delivered stage's on test (else valid), with its bins."""
  r = results.get(stage, {})
  for split in ("test", "valid"):
    if r.get(f"{split}_ece") is not None:
      keys = ("ece", "mean_predicted", "observed_rate")
      return {"stage": stage, "split": split, **{k: r[f"{split}_{k}"] for k in keys},
              "bins": r.get(f"{split}_calibration_bins", [])}  # fmt: skip
  return None


def summary(results: dict) -> dict:
  """The report's "summary": each stage's valid AUC and test metrics."""
  keys = ("valid_auc", "test_auc", "test_logloss", "test_ece")
  grouped = ("valid_gauc", "test_gauc")
  return {
    stage: {k: r.get(k) for k in keys} | {k: r[k] for k in grouped if k in r}
    for stage, r in results.items()
  }
