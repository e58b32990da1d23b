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

Seals. Orbax does not verify what it reads back: the array data carry no
checksum (only the zarr3 shard index has a crc32c), so flipped bytes in an
array file restore as wrong numbers, or NaN. So every checkpoint is sealed once
its save has completed: `seal.json` in the step directory lists every file of
the checkpoint with its size and SHA-256, written atomically (temp file +
rename) by process 0 after all processes finished writing. A checkpoint is
usable only if its seal is present and every file matches it, and if every
floating-point leaf of the restored state is finite. Anything else raises
UnusableCheckpoint before (or instead of) a single array reaches the caller:
the trainer falls back to the previous checkpoint, the scorer refuses or falls
back (gin_jax/score.py). A checkpoint that is intact by its seal but still
cannot be restored (other shapes, another model) is not corrupt but
incompatible: that raises CheckpointError, which nobody silently skips.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gin_jax import files as files_lib
from gin_jax.training import partitioning

log = logging.getLogger(__name__)

SEAL_FILE = "seal.json"
SEAL_VERSION = 1
NOT_READ = ocp.PLACEHOLDER  # a leaf restore_on_host was told not to read


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, from another model, or unreadable."""


class UnusableCheckpoint(CheckpointError):
  """A checkpoint that must not be used: unsealed, altered, unreadable or non-finite.

  Attributes:
    path: the step directory.
    kind: "unsealed" (no seal: its write was interrupted, or it predates seals),
      "altered" (a file differs from its seal), "nonfinite" (NaN/Inf in the state).
    reason: one line saying what is wrong.
  """

  def __init__(self, path: Path, kind: str, reason: str):
    super().__init__(f"checkpoint {path} is unusable: {reason}")
    self.path, self.kind, self.reason = path, kind, reason


_GLOB = "[]*?"  # orbax finds a save's per-process files by glob: these break it


def check_directory(directory: str | os.PathLike) -> None:
  """Raises CheckpointError if orbax cannot checkpoint under `directory`.

  orbax finds the files a save wrote by a glob on their path: under a folder named
  with [ ] * or ?, it finds none, writes checkpoints without their arrays and fails
  to read them back after the first epoch. Refused before anything trains.
  """
  path = os.path.abspath(directory)
  bad = sorted({c for c in path if c in _GLOB})
  if bad:
    raise CheckpointError(
      f"{path}: checkpoints cannot be written under a path holding {' '.join(bad)} (orbax "
      "reads such a path as a glob and loses the arrays); choose a --workdir without them"
    )


def manager(directory: str | os.PathLike, max_to_keep: int | None) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `max_to_keep` steps.

  Saves are synchronous: the trainer saves rarely, and a save that returns
  is complete, which is what the crash-and-resume guarantee rests on.
  """
  check_directory(directory)
  _hush_orbax()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
  )
  return _listing(
    lambda: ocp.CheckpointManager(
      Path(directory).absolute(), options=options, item_names=("state", "meta")
    )
  )


_LISTING_TRIES = 5  # times a manager is built again when a step vanishes as it lists them


def _listing(build: Callable[[], ocp.CheckpointManager]) -> ocp.CheckpointManager:
  """build(), again if it raised FileNotFoundError: a CheckpointManager reads every
  step's metadata as it is built, and a run rotating its checkpoints (a scorer reads
  beside a trainer) may remove one meanwhile."""
  for attempt in range(_LISTING_TRIES):
    try:
      return build()
    except FileNotFoundError:
      if attempt == _LISTING_TRIES - 1:
        raise
  raise AssertionError("unreachable")


def step_dir(mngr: ocp.CheckpointManager, step: int) -> Path:
  """The directory of checkpoint `step` (orbax's default step naming: the number)."""
  return Path(mngr.directory) / str(step)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Writes `state` (pytree) and `meta` (JSON-able dict) as checkpoint `step`, sealed."""
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if step in mngr.all_steps():
    # A stage boundary can share its step with the epoch-end save; the newer
    # state supersedes it (earlier checkpoints remain as a fallback).
    mngr.delete(step)
  try:
    mngr.save(step, args=args, force=True)
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
    raise _write_error(step_dir(mngr, step), state, e) from None
  _barrier(f"checkpoint-{step}-written")  # every process's array files are complete
  if jax.process_index() == 0:
    seal(step_dir(mngr, step))
  _barrier(f"checkpoint-{step}-sealed")


def _write_error(directory: Path, state, e: BaseException) -> CheckpointError:
  """One line for a failed save; a full disk says so, with the space needed."""
  chain, x = [], e
  while x is not None and len(chain) < 10:
    chain.append(x)
    x = x.__cause__ or x.__context__
  if any(
    getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x) for x in chain
  ):
    nbytes = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
    return CheckpointError(
      f"no space left on device while writing {directory} (about {nbytes / 2**20:.1f} MB needed)"
    )
  return CheckpointError(f"{directory}: cannot write the checkpoint ({_first_line(e)})")


# When an orbax write or read fails, its worker threads, abandoned futures and
# tensorstore callbacks print tracebacks of the very error that reaches the
# caller (and is reported there in one line), or of the event loop they were
# bound to having closed ("Event loop is closed", through sys.unraisablehook):
# harmless, and not for the user's eyes. _hush_orbax drops exactly those.
_ORBAX_NOISE = (
  "_SignalingThread.run() raised an exception",  # absl log, re-raised to the caller
  "exception was never retrieved",  # asyncio log of an abandoned future
)


def _drop_orbax_noise(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return not any(noise in message for noise in _ORBAX_NOISE)


_previous_unraisablehook = sys.unraisablehook


def _unraisable(unraisable) -> None:
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return
  _previous_unraisablehook(unraisable)


def _hush_orbax() -> None:
  """Installs the filters above once per process."""
  global _previous_unraisablehook
  if sys.unraisablehook is _unraisable:
    return
  _previous_unraisablehook = sys.unraisablehook
  sys.unraisablehook = _unraisable
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_drop_orbax_noise)


def delete(mngr: ocp.CheckpointManager, step: int) -> None:
  """Removes checkpoint `step` (an unusable one that is being replaced)."""
  if step in mngr.all_steps():
    mngr.delete(step)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------- seals


def _files(directory: Path) -> list[Path]:
  return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SEAL_FILE)


def _sha256(path: Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def seal(directory: str | os.PathLike) -> Path:
  """Writes DIRECTORY/seal.json: size and SHA-256 of every other file below it.

  Written to a temporary name, flushed to disk and renamed, so a seal is either
  absent or complete.

  Returns:
    The seal's path.
  """
  directory = Path(directory)
  files = {
    str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
    for p in _files(directory)
  }
  path = directory / SEAL_FILE
  with files_lib.atomic_open(path, fsync=True) as f:
    json.dump({"version": SEAL_VERSION, "algorithm": "sha256", "files": files}, f, indent=1)
  return path


def verify_seal(directory: str | os.PathLike, only: str = "") -> None:
  """Checks every file of a checkpoint against its seal.

  Args:
    directory: the step directory.
    only: check just the files whose path (relative to it) starts with this,
      e.g. "meta/" to trust the metadata without hashing the arrays.

  Raises:
    UnusableCheckpoint: no seal, an unreadable seal, or a file that is missing,
      extra, or differs from the seal.
  """
  directory = Path(directory)
  path = directory / SEAL_FILE
  if not path.is_file():
    raise UnusableCheckpoint(
      directory,
      "unsealed",
      "it has no seal: its write was interrupted, or gin_jax did not write it (an orbax "
      "checkpoint of another program, or of a gin_jax older than seals)",
    )
  try:
    sealed = json.loads(path.read_text())["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UnusableCheckpoint(directory, "altered", f"its seal is unreadable ({e})") from None
  present = {str(p.relative_to(directory)): p for p in _files(directory)}
  present = {k: p for k, p in present.items() if k.startswith(only)}
  sealed = {k: v for k, v in sealed.items() if k.startswith(only)}
  missing = sorted(set(sealed) - set(present))
  extra = sorted(set(present) - set(sealed))
  if missing or extra:
    what = f"file {missing[0]} is missing" if missing else f"file {extra[0]} is not in the seal"
    raise UnusableCheckpoint(directory, "altered", f"{what}")
  same_size = [n for n, want in sealed.items() if present[n].stat().st_size == want["size"]]
  # The files are hashed on every core (hashlib lets go of the GIL): a table's
  # checkpoint is a few files of gigabytes each.
  workers = max(1, min(len(same_size), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    digests = dict(zip(same_size, pool.map(lambda n: _sha256(present[n]), same_size)))
  for name, want in sealed.items():
    if digests.get(name) != want["sha256"]:
      raise UnusableCheckpoint(
        directory, "altered", f"{name} does not match its seal (corrupted or altered on disk)"
      )


# ---------------------------------------------------------------------- restore


def read_meta(mngr: ocp.CheckpointManager, step: int, *, verify: bool = True) -> dict:
  """Only the JSON item of checkpoint `step` (its seal checked first unless `verify` is False)."""
  if verify:
    verify_seal(step_dir(mngr, step))
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
    raise CheckpointError(
      f"{step_dir(mngr, step)}: cannot read its metadata ({_first_line(e)})"
    ) from e


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, *, verify: bool = True):
  """(state, meta) of checkpoint `step`, each array placed on its target sharding.

  Args:
    mngr: the manager.
    step: which checkpoint.
    abstract_state: pytree of jax.ShapeDtypeStruct carrying `.sharding`.
    verify: check the seal first (False when the caller just did).

  Returns:
    (state pytree, meta dict).

  Raises:
    UnusableCheckpoint: unsealed, altered, or a restored leaf holds NaN/Inf.
    CheckpointError: intact, but it does not fit `abstract_state` (another model).
  """
  directory = step_dir(mngr, step)
  if verify:
    verify_seal(directory)
  args = ocp.args.Composite(
    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
  )
  try:
    out = mngr.restore(step, args=args)
  except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
    raise CheckpointError(f"{directory}: cannot restore ({_first_line(e)})") from e
  _refuse_nonfinite(directory, nonfinite_leaves(out["state"]))
  return out["state"], out["meta"]


def restore_on_host(
  mngr: ocp.CheckpointManager, step: int, abstract_state, *, verify: bool = True, select=None
):
  """(state, meta) of checkpoint `step`, its arrays numpy arrays in host memory.

  Each array is read once, whatever the mesh: no device holds a copy (for a
  state that is reshaped before it is placed, e.g. a continued run's grown
  table). Verified as `restore` verifies. With `select`, only the chosen
  leaves are read (a caller holding one large array at a time).

  Args:
    mngr: the manager.
    step: which checkpoint.
    abstract_state: pytree of shapes and dtypes (a sharding, if any, is ignored).
    verify: check the seal first (False when the caller just did).
    select: optional pytree of bools shaped as abstract_state: the leaves to read.

  Returns:
    (state pytree of np.ndarray, NOT_READ where `select` is False; meta dict).

  Raises:
    UnusableCheckpoint: unsealed, altered, or a restored leaf holds NaN/Inf.
    CheckpointError: intact, but it does not fit `abstract_state` (another model).
  """
  directory = step_dir(mngr, step)
  if verify:
    verify_seal(directory)
  meta = read_meta(mngr, step, verify=False)
  if select is None:
    select = jax.tree.map(lambda _: True, abstract_state)
  item = jax.tree.map(lambda s, keep: s if keep else NOT_READ, abstract_state, select)
  as_numpy = jax.tree.map(
    lambda s, keep: ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype) if keep else NOT_READ,
    abstract_state,
    select,
  )
  # A checkpointer of its own: a manager that saved this item (StandardSave)
  # accepts no PyTreeRestore for it, and StandardRestore has no restore types.
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  try:
    state = checkpointer.restore(
      directory / "state", args=ocp.args.PyTreeRestore(item=item, restore_args=as_numpy)
    )
  except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
    raise CheckpointError(f"{directory}: cannot restore ({_first_line(e)})") from e
  finally:
    checkpointer.close()
  for (path, want), got in zip(
    jax.tree_util.tree_flatten_with_path(abstract_state)[0], jax.tree.leaves(state)
  ):
    if got is not NOT_READ and np.shape(got) != tuple(want.shape):
      raise CheckpointError(
        f"{directory}: cannot restore ({jax.tree_util.keystr(path)} has shape "
        f"{np.shape(got)} there, {tuple(want.shape)} expected)"
      )
  _refuse_nonfinite(directory, _nonfinite_on_host(state))
  return state, meta


def _refuse_nonfinite(directory: Path, bad: list[str]) -> None:
  if bad:
    raise UnusableCheckpoint(
      directory, "nonfinite", f"NaN or Inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    )


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point leaves of `tree` holding a NaN or Inf."""
  leaves = [
    (jax.tree_util.keystr(path), x)
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  if not leaves:
    return []
  flags = jax.jit(lambda xs: jnp.stack([~jnp.all(jnp.isfinite(x)) for x in xs]))(
    [x for _, x in leaves]
  )
  return [name for (name, _), bad in zip(leaves, partitioning.to_host(flags)) if bad]


def _nonfinite_on_host(tree, chunk: int = 1 << 22) -> list[str]:
  """nonfinite_leaves of numpy leaves, in numpy, `chunk` elements at a time (no big temporary)."""
  bad = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if x is not NOT_READ and np.issubdtype(x.dtype, np.inexact):
      flat = x.reshape(-1)
      if not all(np.isfinite(flat[i : i + chunk]).all() for i in range(0, flat.size, chunk)):
        bad.append(jax.tree_util.keystr(path))
  return bad


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def restore_latest_good(
  mngr: ocp.CheckpointManager,
  abstract_state_fn: Callable[[int, dict], object],
  report: Callable[[str], None] = print,
):
  """Restores the newest usable checkpoint, falling back past unusable ones.

  Args:
    mngr: the manager.
    abstract_state_fn: (step, meta dict) -> abstract state (shapes depend on
      the meta, e.g. the table's rows). It may raise to refuse a checkpoint
      that belongs to another run; that error propagates.
    report: where to say that a checkpoint was skipped.

  Returns:
    (step, state, meta), or None if there is no checkpoint at all.

  Raises:
    NoUsableCheckpoint: checkpoints exist but none is usable.
    CheckpointError: an intact checkpoint that does not fit (not skipped).
  """
  problems = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      verify_seal(step_dir(mngr, step))
      meta = read_meta(mngr, step, verify=False)
      state, meta = restore(mngr, step, abstract_state_fn(step, meta), verify=False)
      return step, state, meta
    except UnusableCheckpoint as e:
      problems.append(e)
      report(f"{e}; trying the previous one")
  if problems:
    raise NoUsableCheckpoint(mngr.directory, problems)
  return None


class NoUsableCheckpoint(CheckpointError):
  """Every checkpoint of a directory is unusable; `problems` says why, newest first."""

  def __init__(self, directory, problems: list[UnusableCheckpoint]):
    reasons = "; ".join(f"step {p.path.name}: {p.reason}" for p in problems[:3])
    super().__init__(f"no usable checkpoint in {directory} ({reasons})")
    self.problems = problems


def newest_meta(directory: str | os.PathLike) -> tuple[int, dict] | None:
  """(step, meta) of the newest checkpoint whose metadata matches its seal.

  Reads no arrays, so it is cheap enough for a guard before anything else.
  Call it on every process: orbax synchronises the processes in a restore.
  """
  steps = all_steps(directory)
  if not steps:
    return None
  mngr = manager(directory, None)
  for step in steps:
    try:
      verify_seal(step_dir(mngr, step), only="meta/")
    except UnusableCheckpoint:
      continue
    return step, read_meta(mngr, step, verify=False)
  return None


def steps_of(mngr: ocp.CheckpointManager) -> list[int]:
  """Every step a manager holds, oldest first."""
  return sorted(mngr.all_steps())


def all_steps(directory: str | os.PathLike) -> list[int]:
  """Every step in `directory`, newest first (none if it does not exist)."""
  if not Path(directory).is_dir():
    return []
  mngr = _listing(
    lambda: ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "meta"))
  )
  return sorted(mngr.all_steps(), reverse=True)
