"""Continuing a finished run on new data: `--init-from RUN_DIR` (DESIGN.md section 7).

A new run starts from the model RUN_DIR delivers (delivered.json: the run, its
`from_linear`, or ensemble member i for member i) instead of a fresh init:

  kept     the model config (RUN_DIR's, else exit 2 naming the fields), the
           encoding options, every old vocabulary id, the old table rows and
           their row-optimizer state bit for bit, the dense parameters, batch
           norm statistics and (unless train.reset_optimizer) the dense and
           row optimizers' state; with one stage, the pruning masks
  grown    each field's vocabulary, by the new training split's categories that
           reach min_count (data.prepare's `base`); the table, once, here
  fresh    new rows (as a fresh init draws them, with zero optimizer state and
           no idle steps to catch up on), the learning rate (train.learning_rate
           x train.init_lr_scale, 0.2 by default: the plateau schedule and early
           stopping start afresh on the new validation split, or, with
           train.init_epochs, exactly that many epochs run: schedule()), the
           step counter, dropout keys
  replayed with train.init_replay > 0, a sample of the rows the source trained
           on, beside the new ones (gin_jax.data.replay; the trainer's _load_data)

RUN_DIR is only read. A row that neither the new data nor the replayed rows touch
stays bit-identical after training: the row optimizers apply an idle row's L2
steps lazily, on its next touch (gin_jax.training.embedding), and never to a row
nobody touches.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax import data
from gin_jax import models as model_lib
from gin_jax.config import Config
from gin_jax.models import pruning
from gin_jax.training import checkpointing, partitioning, stages, steps
from gin_jax.training.errors import TrainingError
from gin_jax.training.workdir import (
  DeliveryError,
  Workdir,
  config_diff,
  config_fingerprint,
  fingerprint,
)


@dataclasses.dataclass(frozen=True)
class Source:
  """The finished checkpoint a run continues: its run folder, step, metadata, dataset."""

  run: Path  # the delivered model's workdir (RUN_DIR, its from_linear, a member)
  step: int
  meta: dict  # the checkpoint's JSON item
  dataset: data.DatasetMeta
  cfg: Config  # its effective config

  def lineage(self) -> dict:
    """report.json's `init_from`: what the run started from."""
    return {
      "path": str(self.run),
      "config_fingerprint": fingerprint(self.meta.get("config")),
      "dataset_fingerprint": self.dataset.fingerprint(),
      "step": self.step,
    }


def source_of(init_from: str | Path) -> Source:
  """The delivered, finished checkpoint of run `init_from`; TrainingError naming what is wrong."""
  where = f"--init-from {init_from}"
  layout = Workdir(init_from)
  if not layout.config.exists():
    raise TrainingError(f"{where}: not a training workdir (no config.json)")
  try:
    layout.verified_delivery()
    run = layout.ensemble()[0]
  except DeliveryError as e:
    raise TrainingError(f"{where}: {e}") from None
  steps = checkpointing.all_steps(run.checkpoints)
  if steps:  # the newest is the finished model: an unusable one is named, not skipped
    try:
      checkpointing.verify_seal(run.checkpoints / str(steps[0]), only="meta/")
    except checkpointing.UnusableCheckpoint as e:
      raise TrainingError(f"{where}: {e}; it is the run's newest checkpoint, for which no "
                          "older one stands in") from None  # fmt: skip
  found = checkpointing.newest_meta(run.checkpoints)
  if found is None:
    raise TrainingError(f"{where}: {run.checkpoints} holds no usable checkpoint")
  step, meta = found
  try:
    finished = meta["progress"]["stage"] == stages.DONE
    cfg = Config.from_dict(meta.get("effective_config") or meta["config"])
    dataset = data.DatasetMeta.from_dict(meta["dataset"])
  except Exception as e:  # noqa: BLE001 - report any malformed metadata the same way
    raise TrainingError(f"{where}: {run.checkpoints}/{step}: unreadable checkpoint metadata "
                        f"({type(e).__name__}: {e})") from None  # fmt: skip
  if not finished:
    raise TrainingError(f"{where}: the run is not finished (its newest checkpoint, step {step}, "
                        "is mid-training): rerun its training command to finish it")  # fmt: skip
  if fingerprint(meta.get("config")) != config_fingerprint(run.config):
    raise TrainingError(f"{where}: {run.checkpoints}/{step} was trained with another config "
                        f"than {run.config}")  # fmt: skip
  return Source(run.root, step, meta, dataset, cfg)


def check_start(cfg: Config, workdir: Workdir) -> None:
  """What a continued run refuses before it takes its workdir's lock or writes anything.

  RUN_DIR is only read, while a run writes its workdir and --overwrite
  discards it: so neither may lie in the other (their real paths, links
  followed). And train.ensemble may ask for no more members than RUN_DIR
  delivers, since member i continues RUN_DIR's member i. Raises TrainingError.
  """
  init_from = cfg.train.init_from
  if not init_from:
    return
  source, target = Path(os.path.realpath(init_from)), Path(os.path.realpath(workdir.root))
  relation = (
    "and --workdir {} are the same folder" if source == target
    else "holds --workdir {}" if target.is_relative_to(source)
    else "lies inside --workdir {}" if source.is_relative_to(target)
    else None
  )  # fmt: skip
  if relation:
    raise TrainingError(
      f"--init-from {init_from} {relation.format(workdir.root)}: a continued run never writes "
      "the run it continues; use a --workdir outside it"
    )
  k = cfg.train.ensemble
  if k > 1:
    try:
      n = len(Workdir(init_from).ensemble())
    except DeliveryError as e:
      raise TrainingError(f"--init-from {init_from}: {e}") from None
    if n < k:
      raise TrainingError(
        f"--init-from {init_from} delivers {n} model{'s' if n > 1 else ''}, fewer than "
        f"train.ensemble={k}: member i continues the source's member i (lower "
        f"train.ensemble to {n}, or continue an ensemble of {k})"
      )


def member_init_from(init_from: str, i: int) -> str:
  """Where ensemble member i of a continued run starts: RUN_DIR's delivered member i."""
  try:
    members = Workdir(init_from).ensemble()
  except DeliveryError as e:
    raise TrainingError(f"--init-from {init_from}: {e}") from None
  if i >= len(members):
    raise TrainingError(
      f"--init-from {init_from} delivers {len(members)} model(s); train.ensemble asks for "
      f"member {i + 1}: each member continues the run's member of its index (lower "
      "train.ensemble)"
    )
  return str(members[i].root)


def resolve(cfg: Config) -> tuple[Config, Source | None]:
  """(the config to train, the source) of a run with train.init_from; (cfg, None) without.

  The model config must be the source's (a beat_linear `from_linear` source
  differs in model.first_order alone, which the run then takes over); the
  row optimizer must be too unless train.reset_optimizer restarts it. Raises
  TrainingError naming the differing fields.
  """
  if not cfg.train.init_from:
    return cfg, None
  source = source_of(cfg.train.init_from)
  theirs = source.cfg.model
  if source.cfg.train.linear_start:  # from_linear(cfg) turned first_order on
    theirs = dataclasses.replace(theirs, first_order=cfg.model.first_order)
  if cfg.model != theirs:
    model = {"model": dataclasses.asdict(cfg.model)}
    diff = config_diff({"model": dataclasses.asdict(theirs)}, model)
    raise TrainingError(
      f"--init-from {cfg.train.init_from}: the model config differs from the run it continues "
      f"({diff}); a continued run keeps the model: use the same --preset/--config and model "
      "flags"
    )
  old_opt, new_opt = source.cfg.train.embedding_optimizer, cfg.train.embedding_optimizer
  if old_opt != new_opt and not cfg.train.reset_optimizer:
    raise TrainingError(
      f"--init-from {cfg.train.init_from}: train.embedding_optimizer {old_opt!r} -> {new_opt!r}: "
      "the row optimizer's state cannot carry over; add --train.reset_optimizer=true"
    )
  return dataclasses.replace(cfg, model=source.cfg.model), source


def schedule(cfg: Config) -> Config:
  """The training config a continued run trains with: with train.init_epochs > 0,
  exactly that many epochs, no early stopping and no plateau decay (the config as
  asked for, config.json's, keeps its fields)."""
  n = cfg.train.init_epochs
  if not n:
    return cfg
  train = dataclasses.replace(cfg.train, epochs=n, patience=n + 1, lr_decay=1.0)
  return dataclasses.replace(cfg, train=train)


# ---------------------------------------------------------------------- the grown state


def row_map(old: data.DatasetMeta, new: data.DatasetMeta, padded_rows: int) -> np.ndarray:
  """int64 [padded_rows]: the old table row each new row continues, -1 for a fresh row.

  Each field's block keeps its old rows first (OOV, missing, the old vocabulary
  in order) and its added categories after them; blocks stay stacked in field
  order, so a field's rows move by what the fields before it grew.
  """
  src = np.full(padded_rows, -1, np.int64)
  for fo, fn in zip(old.fields, new.fields, strict=True):
    if (fo.name, fo.transform) != (fn.name, fn.transform) or fn.size < fo.size:
      raise TrainingError(f"field {fn.name!r}: its block cannot continue {fo.name!r}'s")
    src[fn.offset : fn.offset + fo.size] = np.arange(fo.offset, fo.offset + fo.size)
  return src


def start_state(source: Source, fresh, fns: steps.StepFns, new_meta, cfg: Config):
  """The first state of a continued run: the source's, its table grown to `fresh`'s rows.

  Host memory stays near one state plus READ_BYTES (or the source's largest
  array): the source's small arrays are read first, then its row-sharded arrays
  (the table, its row-optimizer state) a group at a time (_Reader), each copied
  into `fresh`'s own device buffers (donated: they become the grown array) and
  dropped before the next group is read.

  Args:
    source: what the run continues.
    fresh: a fresh init of this run's model (new rows and reset state come from
      it). Consumed: its carried row-sharded arrays are deleted.
    fns: this run's step functions (shardings).
    new_meta: this run's (grown) dataset.
    cfg: this run's config.

  Returns:
    The state, placed on fns.state_shardings.
  """
  src = row_map(source.dataset, new_meta, int(fresh["params"]["projection"]["table"].shape[0]))
  runs = _carried_runs(src)
  carried = ["params", "batch_stats"]
  if not stages.plan(cfg.train.stages)[0].selects_after:
    carried.append("masks")  # one stage keeps the source's architecture
  if not cfg.train.reset_optimizer:
    carried += ["opt_state", "embedding"]
  shardings = fns.state_shardings
  reader = _Reader(source, carried, shardings)
  small = reader.small()
  if fresh["embedding"] and "embedding" in carried:
    # A new row has missed no step: its last update is the step count so far.
    count = int(small["embedding"]["count"])
    last = _filled(fresh["embedding"]["last"], count, shardings["embedding"]["last"])
    fresh = {**fresh, "embedding": {**fresh["embedding"], "last": last}}

  def carry(path, new, previous, sharding):
    if not _row_sharded(sharding):
      return jax.device_put(previous, sharding)
    return _grown_in_place(new, reader.rows(path), runs, sharding)

  out = dict(fresh)
  for key in carried:
    out[key] = jax.tree_util.tree_map_with_path(
      lambda path, *x, key=key: carry((jax.tree_util.DictKey(key), *path), *x),
      fresh[key],
      small[key],
      shardings[key],
    )
  if "opt_state" in carried:  # the schedule starts afresh, at train.init_lr_scale
    lr = cfg.train.learning_rate * cfg.train.init_lr_scale
    out["opt_state"] = steps.set_learning_rate(out["opt_state"], lr)
  return out


def _row_sharded(sharding) -> bool:
  return bool(sharding.spec) and sharding.spec[0] == partitioning.DATA


READ_BYTES = 2 << 30  # the source's row arrays are read in groups of at most this (or one)


class _Reader:
  """The source checkpoint's carried arrays, read into host memory on demand (seal checked once).

  small(): every carried array that is not row-sharded here, in one read (a
  row-sharded one is NOT_READ there). rows(path): a row-sharded one, read with
  the next ones in `carried` order while together they stay within READ_BYTES
  (orbax reads the arrays of one call in parallel), then handed out one by one.
  """

  def __init__(self, source: Source, carried: list[str], shardings):
    cfg, rows = source.cfg, source.meta["model"]
    spec = model_lib.ModelSpec(
      cfg.model,
      source.dataset.num_fields,
      rows["num_rows"],
      rows["padded_rows"],
      field_slots=source.dataset.field_slots,
      attention=source.dataset.attention,
    )
    # Shapes come from a one-device build: the source's rows need not split over
    # this run's mesh; they are read to the host and copied into this run's buffers.
    one = steps.build(spec, cfg.train, partitioning.make_mesh(jax.devices()[:1]))
    self.abstract = one.abstract_state
    self.mngr = checkpointing.manager(source.run / "checkpoints", None)
    self.step = source.step
    self.carried = carried
    row = [p for p, sh in jax.tree_util.tree_leaves_with_path(shardings) if _row_sharded(sh)]
    self.order = [p for key in carried for p in row if p[0].key == key]  # start_state's order
    self.nbytes = {
      p: int(np.prod(x.shape)) * x.dtype.itemsize
      for p, x in jax.tree_util.tree_leaves_with_path(self.abstract)
    }
    self.held: dict = {}
    self.verified = False

  def _read(self, want) -> dict:
    select = jax.tree_util.tree_map_with_path(lambda path, _: want(path), self.abstract)
    try:
      state, _ = checkpointing.restore_on_host(
        self.mngr, self.step, self.abstract, verify=not self.verified, select=select
      )
    except checkpointing.CheckpointError as e:
      raise TrainingError(f"--init-from: {e}") from None
    self.verified = True
    return state

  def small(self) -> dict:
    row = set(self.order)
    return self._read(lambda path: path[0].key in self.carried and path not in row)

  def rows(self, path) -> np.ndarray:
    if path not in self.held:
      group, total = [], 0
      for p in self.order[self.order.index(path) :]:
        if group and total + self.nbytes[p] > READ_BYTES:
          break
        group.append(p)
        total += self.nbytes[p]
      state = self._read(lambda p: p in group)
      self.held = {p: x for p, x in jax.tree_util.tree_leaves_with_path(state) if p in group}
    return self.held.pop(path)


CHUNK_ROWS = 1 << 16  # rows copied into a device buffer per call (16 MB at d = 64)


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(buffer: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
  return buffer.at[rows].set(values, mode="drop")  # rows out of range are padding


def _filled(x: jax.Array, value, sharding) -> jax.Array:
  """`x`'s buffers (donated) filled with `value`."""
  fill = jax.jit(lambda a: jnp.full_like(a, value), out_shardings=sharding, donate_argnums=0)
  return fill(x)


def _grown_in_place(fresh: jax.Array, previous: np.ndarray, runs: np.ndarray, sharding):
  """fresh's rows, but `previous`'s where `runs` (_carried_runs) carry them; row-sharded.

  Written into fresh's own per-device buffers (donated, so fresh is deleted),
  CHUNK_ROWS rows at a time: besides `previous` the host holds one chunk.
  """
  if not fresh.sharding.is_equivalent_to(sharding, fresh.ndim):
    raise TrainingError(f"a fresh array is sharded {fresh.sharding}, {sharding} expected")
  shape, dtype = fresh.shape, fresh.dtype
  shards = [(s.index, s.data) for s in fresh.addressable_shards]  # before any is donated
  pieces = []
  for index, piece in shards:
    lo, hi, _ = index[0].indices(shape[0])
    for first, source_first, count in runs.tolist():
      for a in range(max(first, lo), min(first + count, hi), CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, first + count, hi)
        size = min(CHUNK_ROWS, max(1024, 1 << (b - a - 1).bit_length()))  # few shapes to compile
        rows = np.full(size, hi - lo, np.int32)
        rows[: b - a] = np.arange(a - lo, b - lo)
        values = np.zeros((size, *shape[1:]), dtype)
        values[: b - a] = previous[source_first + a - first : source_first + b - first]
        (device,) = piece.devices()
        piece = _put_rows(piece, jax.device_put(rows, device), jax.device_put(values, device))
    pieces.append(piece)
  return jax.make_array_from_single_device_arrays(shape, sharding, pieces)


def _carried_runs(src: np.ndarray) -> np.ndarray:
  """int64 [k, 3]: (first row, its source row, rows) of each run of consecutive carried rows."""
  rows = np.flatnonzero(src >= 0)
  if not rows.size:
    return np.zeros((0, 3), np.int64)
  cut = np.flatnonzero((np.diff(rows) != 1) | (np.diff(src[rows]) != 1)) + 1
  starts, ends = np.concatenate([[0], cut]), np.concatenate([cut, [rows.size]])
  return np.stack([rows[starts], src[rows[starts]], ends - starts], axis=1).astype(np.int64)


def report(source: Source, meta: data.DatasetMeta, state, progress) -> dict:
  """What a continued run adds to report.json: its lineage, the growth, the kept pairs.

  With one stage, the pairs are those the source's pruning kept (masks carried over).
  """
  out = {"init_from": source.lineage(), "vocabulary_growth": meta.growth}
  if progress.search_alpha is None:
    masks = jax.tree.map(partitioning.to_host, state["masks"])
    if any(not np.all(m) for m in jax.tree.leaves(masks)):
      out["kept_pairs"] = pruning.kept_field_pairs(masks, meta.field_names)
      out["kept_fraction"] = pruning.kept_fraction(masks)
  return out


def growth_summary(meta: data.DatasetMeta) -> str | None:
  """One log line on the vocabulary growth of a continued run's data (None without)."""
  if not meta.growth:
    return None
  added = sum(g["added"] for g in meta.growth.values())
  grown = sum(1 for g in meta.growth.values() if g["added"])
  worst = max(meta.growth.items(), key=lambda kv: kv[1]["oov_before"])
  return (
    f"vocabulary: +{added:,} rows in {grown} of {len(meta.growth)} fields; OOV in the new "
    f"training split, worst field {worst[0]}: {worst[1]['oov_before']:.1%} -> "
    f"{worst[1]['oov_after']:.1%}"
  )
