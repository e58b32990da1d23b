"""Every orbax call of the project (DESIGN.md section 3; STYLE.md rule 10).

A checkpoint has two items:
- `state`: the train-state pytree (params, batch statistics, optimizer state,
  pruning masks, step, RNG), restored straight onto its shardings;
- `meta`: JSON: stage, epoch, best metric, the grain iterator state, the
  config and the dataset metadata, i.e. everything else needed to resume or
  to score. JSON only: loading never unpickles or evaluates anything.

The grain iterator state lives inside `meta` (as `progress.iterator_state`)
rather than in a separate `grain.checkpoint.CheckpointSave` item, a departure
from DESIGN.md section 3: restoring through CheckpointRestore needs the
iterator built first, and which iterator to build (stage, epoch, seed) is
itself read from `meta`, so one JSON item restored first is simpler and just as
exact. The state is `{"next_index": k}`, the same on every process (each
process's slice of global batch k is fixed), so process 0's copy serves all.
tests/test_data_pipeline.py shows CheckpointSave/Restore works too.

Layout under the workdir: `checkpoints/` keeps the last K saves;
`best_<stage>/` keeps the single best (by validation AUC) of each stage, from
which the stage's best weights are restored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, from another model, or unreadable."""


def manager(directory: str | os.PathLike, max_to_keep: int | None) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `max_to_keep` steps.

  Saves are synchronous: the trainer saves rarely, and a save that returns
  is complete, which is what the crash-and-resume guarantee rests on.
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
    Path(directory).absolute(), options=options, item_names=("state", "meta")
  )


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Writes `state` (pytree) and `meta` (JSON-able dict) as checkpoint `step`."""
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if step in mngr.all_steps():
    # A stage boundary can share its step with the epoch-end save; the newer
    # state supersedes it (earlier checkpoints remain as a fallback).
    mngr.delete(step)
  mngr.save(step, args=args, force=True)
  mngr.wait_until_finished()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Only the JSON item of checkpoint `step`."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """(state, meta) of checkpoint `step`, each array placed on its target sharding.

  Args:
    mngr: the manager.
    step: which checkpoint.
    abstract_state: pytree of jax.ShapeDtypeStruct carrying `.sharding`.

  Returns:
    (state pytree, meta dict).
  """
  args = ocp.args.Composite(
    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
  )
  out = mngr.restore(step, args=args)
  return out["state"], out["meta"]


def restore_latest_good(mngr: ocp.CheckpointManager, abstract_state_fn, report=print):
  """Restores the newest readable checkpoint, falling back past corrupted ones.

  Args:
    mngr: the manager.
    abstract_state_fn: meta dict -> abstract state (shapes depend on the meta,
      e.g. the table's rows).
    report: where to say that a checkpoint was unreadable.

  Returns:
    (step, state, meta), or None if there is no checkpoint at all.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = read_meta(mngr, step)
      state, meta = restore(mngr, step, abstract_state_fn(meta))
      return step, state, meta
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
      report(
        f"checkpoint {mngr.directory}/{step} is unreadable ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else ''}); trying the previous one"
      )
  return None


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest step in `directory`, or None if it holds no checkpoint."""
  if not Path(directory).is_dir():
    return None
  return ocp.CheckpointManager(
    Path(directory).absolute(), item_names=("state", "meta")
  ).latest_step()
