"""Probabilities for every row of a prepared split: the one loop the scorer and trainer share.

`predict_split` batches a split (gathered over processes when several share
it), calls a batch scorer, and drops the padding rows; `state_score_fn` is the
batch scorer of a train state on a mesh; `average_probabilities` is the one
rule by which a seed ensemble's members are combined.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gin_jax.data import pipeline
from gin_jax.training import partitioning


def predict_split(
  split, batch_size: int, score_batch: Callable[[dict], dict], *, process_index=0, process_count=1
) -> tuple[np.ndarray, np.ndarray]:
  """(labels, probabilities) of every row of `split`, in order.

  Args:
    split: a prepared data.Split.
    batch_size: global rows per batch (the last batch is padded, with weight 0).
    score_batch: maps a batch dict (ids, values, labels, weights) to a dict of
      host arrays "probs", "labels" and "weights" for the whole (global) batch.
    process_index, process_count: this process's share of the split when
      several processes score it together (each gets the whole result).

  Returns:
    (labels [n], probs [n]) with the padding rows dropped.
  """
  probs, labels, weights = [], [], []
  batches = pipeline.eval_batches(
    split, batch_size, process_index=process_index, process_count=process_count
  )
  for batch in batches:
    out = score_batch(batch)
    probs.append(out["probs"])
    labels.append(out["labels"])
    weights.append(out["weights"])
  if not probs:
    return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
  keep = np.concatenate(weights) > 0
  return np.concatenate(labels)[keep], np.concatenate(probs)[keep]


def state_score_fn(fns, state: dict, mesh) -> Callable[[dict], dict]:
  """The batch scorer of a train state: shards a batch over `mesh` and runs the eval step.

  Args:
    fns: the run's steps.StepFns.
    state: a train state (params, batch_stats, masks).
    mesh: the mesh the state lives on.

  Returns:
    score_batch(batch) -> {"probs", and "labels" / "weights" when the batch has
    them}: host arrays of the global batch.
  """
  params, stats, masks = state["params"], state["batch_stats"], state["masks"]

  def score_batch(batch: dict) -> dict:
    sharded = partitioning.shard_batch(mesh, batch)
    out = {k: partitioning.to_host(sharded[k]) for k in ("labels", "weights") if k in sharded}
    out["probs"] = partitioning.to_host(fns.eval_step(params, stats, masks, sharded))
    return out

  return score_batch


def average_probabilities(members: list[np.ndarray]) -> np.ndarray:
  """A seed ensemble's probabilities: the float64 mean of its members' (float32) ones."""
  total = np.asarray(members[0], np.float64)
  for probs in members[1:]:
    total = total + np.asarray(probs, np.float64)
  return total / len(members)
