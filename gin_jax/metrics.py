"""Exact evaluation metrics, computed on the host over the whole split."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC AUC: full sort, tied scores share their average rank.

  Args:
    labels: [n] in {0, 1}.
    scores: [n] predictions (any monotone scale).

  Returns:
    The Mann-Whitney U statistic / (n_pos * n_neg); NaN if one class is absent.
  """
  labels = np.asarray(labels, dtype=np.float64).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  n_pos = float(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  return auc_from_rank_sum(positive_rank_sum(scores[order], labels[order]), n_pos, n_neg)


def positive_rank_sum(sorted_scores: np.ndarray, sorted_labels: np.ndarray, start=0) -> float:
  """The sum of the positives' ranks, each tie group at its average (1-based) rank.

  The one rank rule of every exact AUC here (this module's `auc` and the
  scorer's streaming metrics). The sum is of half-integers, so it is exact in
  float64 whatever the order of the additions.

  Args:
    sorted_scores: [n] scores in ascending order, tie groups whole.
    sorted_labels: [n] their labels in {0, 1}.
    start: the number of rows ranked before these (a block of a longer list).
  """
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(sorted_scores)]
  positives = np.add.reduceat(np.asarray(sorted_labels, np.float64), starts)
  return float(positives @ (start + (starts + ends + 1) / 2.0))


def auc_from_rank_sum(rank_sum: float, n_pos: float, n_neg: float) -> float:
  """Mann-Whitney U / (n_pos * n_neg); NaN if one class is absent."""
  if not n_pos or not n_neg:
    return float("nan")
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
  labels = np.asarray(labels, dtype=np.float64).reshape(-1)
  p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict:
  """{"auc", "logloss", "n"} for one split."""
  return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs), "n": int(np.size(labels))}


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
  """How far predicted probabilities are from observed click rates.

  Args:
    labels: [n] in {0, 1}.
    probs: [n] predicted probabilities.
    bins: equal-width bins of [0, 1] (the last includes 1).

  Returns:
    {"ece": expected calibration error, sum over bins of (rows in bin / n) x
    |mean predicted - observed rate| (0 is perfect); "mean_predicted" and
    "observed_rate" over all rows; "bins": per non-empty bin {"lo", "hi", "n",
    "mean_predicted", "observed_rate"} (what a reliability diagram draws)}.
  """
  labels = np.asarray(labels, np.float64).reshape(-1)
  probs = np.asarray(probs, np.float64).reshape(-1)
  if not labels.size:
    return {"ece": None, "mean_predicted": None, "observed_rate": None, "bins": []}
  which = np.clip((probs * bins).astype(np.int64), 0, bins - 1)
  n = np.bincount(which, minlength=bins)
  predicted = np.bincount(which, probs, minlength=bins)
  observed = np.bincount(which, labels, minlength=bins)
  used = np.flatnonzero(n)
  gap = np.abs(predicted[used] - observed[used]) / n[used]
  return {
    "ece": float(np.sum(n[used] / labels.size * gap)),
    "mean_predicted": float(probs.mean()),
    "observed_rate": float(labels.mean()),
    "bins": [
      {"lo": b / bins, "hi": (b + 1) / bins, "n": int(n[b]),
       "mean_predicted": float(predicted[b] / n[b]), "observed_rate": float(observed[b] / n[b])}
      for b in used.tolist()
    ],
  }  # fmt: skip


def grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict:
  """gAUC: the AUC within each group (a user, say), averaged weighted by the group's rows.

  Groups whose rows are all of one class have no AUC and are skipped (their rows
  too). Vectorised: one sort by (group, score), tie blocks ranked at their average
  rank within the group (as `auc`), per-group sums by bincount; no Python loop
  over rows or groups.

  Args:
    labels: [n] in {0, 1}.
    scores: [n] predictions.
    groups: [n] integer group ids (any values).

  Returns:
    {"gauc": float (NaN when no group has both classes), "groups": groups used,
    "groups_skipped": groups of one class, "rows": rows of the groups used}.
  """
  labels = np.asarray(labels, np.float64).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  _, group = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
  if not labels.size:
    return {"gauc": float("nan"), "groups": 0, "groups_skipped": 0, "rows": 0}
  order = np.lexsort((scores, group))
  g, s, y = group[order], scores[order], labels[order]
  new_group = np.r_[True, g[1:] != g[:-1]]
  block = np.flatnonzero(new_group | np.r_[True, s[1:] != s[:-1]])  # tie blocks within groups
  block_end = np.r_[block[1:], len(s)]
  group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(s)), 0))
  # The average 1-based rank of each tie block within its group, times its positives.
  rank = (block - group_start[block] + block_end - group_start[block] + 1) / 2.0
  positives = np.add.reduceat(y, block)
  count = len(np.unique(g))
  rank_sum = np.bincount(g[block], positives * rank, minlength=count)
  n = np.bincount(g, minlength=count).astype(np.float64)
  n_pos = np.bincount(g, y, minlength=count)
  n_neg = n - n_pos
  used = (n_pos > 0) & (n_neg > 0)
  if not used.any():
    return {"gauc": float("nan"), "groups": 0, "groups_skipped": int(count), "rows": 0}
  auc_g = (rank_sum[used] - n_pos[used] * (n_pos[used] + 1) / 2) / (n_pos[used] * n_neg[used])
  return {
    "gauc": float(np.sum(n[used] * auc_g) / np.sum(n[used])),
    "groups": int(used.sum()),
    "groups_skipped": int(count - used.sum()),
    "rows": int(n[used].sum()),
  }
