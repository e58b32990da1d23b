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
  sorted_scores = scores[order]
  # Average rank (1-based) of each run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], scores.size]
  avg_rank = (starts + ends + 1) / 2.0
  ranks = np.empty(scores.size)
  ranks[order] = np.repeat(avg_rank, ends - starts)
  rank_sum = float(ranks[labels == 1].sum())
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
  labels = np.asarray(labels, dtype=np.float64).reshape(-1)
  p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict:
  """{"auc", "logloss", "n"} for one split."""
  return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs), "n": int(np.size(labels))}
