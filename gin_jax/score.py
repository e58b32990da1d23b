"""Offline scoring from checkpoints, and export for serving.

  python -m gin_jax.score --checkpoint WORKDIR [--step N | --best] --data FILE --out FILE
  python -m gin_jax.score --checkpoint WORKDIR --export DIR
  python -m gin_jax.score --exported DIR --data FILE --out FILE

Loading reads orbax arrays and JSON only: no pickle, no eval. An exported
directory holds the StableHLO of the scoring function (`jax.export`), its
parameters as a plain .npz (read with allow_pickle=False) and the dataset
metadata; running it needs jax and numpy, not the model code.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax import checkpointing, data, partitioning, stages, training
from gin_jax import metrics as metrics_lib
from gin_jax import model as model_lib
from gin_jax.config import Config
from gin_jax.data import pipeline
from gin_jax.stages import Workdir

EXPORT_FILES = ("score.stablehlo", "params.npz", "dataset.json", "export.json")


class ScoringError(RuntimeError):
  """A checkpoint or export directory that cannot be used, with the reason."""


def _batched(split, batch_size: int, score_batch):
  """Probabilities for every row of `split`, in order."""
  out = []
  for batch in pipeline.eval_batches(split, batch_size):
    probs = np.asarray(score_batch(batch["ids"], batch["values"]))
    out.append(probs[batch["weights"] > 0])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


class Scorer:
  """Scores raw rows, files or preprocessed batches with a trained model.

  Build with `Scorer.from_checkpoint(workdir)` (or `Scorer.from_export(dir)`).
  """

  def __init__(self, dataset_meta, score_fn, batch_size: int, description: str):
    self.meta = dataset_meta
    self._score = score_fn
    self.batch_size = batch_size
    self.description = description

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_checkpoint(
    cls, workdir, *, step: int | None = None, best: bool = False, devices=None
  ) -> Scorer:
    """Loads params, masks, config and dataset metadata from a training workdir.

    Args:
      workdir: a `python -m train` workdir.
      step: a specific checkpoint step (default: the newest).
      best: use the best (validation AUC) checkpoint of the last stage instead.
      devices: devices to score on (default: all local devices).

    Returns:
      A Scorer. Raises ScoringError naming what is missing or wrong.
    """
    loaded = load_checkpoint(workdir, step=step, best=best, devices=devices)
    fns, state, mesh = loaded.fns, loaded.state, loaded.mesh
    params, stats, masks = state["params"], state["batch_stats"], state["masks"]

    def score(ids, values):
      batch = partitioning.shard_batch(mesh, {"ids": ids, "values": values})
      return np.asarray(fns.eval_step(params, stats, masks, batch))

    return cls(loaded.dataset_meta, score, loaded.cfg.train.eval_batch_size, loaded.description)

  @classmethod
  def from_export(cls, directory) -> Scorer:
    """Loads an exported scorer (see `export`) without the model code."""
    directory = Path(directory)
    missing = [f for f in EXPORT_FILES if not (directory / f).exists()]
    if missing:
      raise ScoringError(f"{directory} is not an export directory: missing {missing}")
    exported = jax.export.deserialize(bytearray((directory / "score.stablehlo").read_bytes()))
    with np.load(directory / "params.npz", allow_pickle=False) as z:
      leaves = [z[f"leaf_{i}"] for i in range(len(z.files))]
    info = json.loads((directory / "export.json").read_text())
    dataset_meta = data.DatasetMeta.from_json((directory / "dataset.json").read_text())
    weights = [jnp.asarray(x) for x in leaves]

    def score(ids, values):
      return np.asarray(exported.call(weights, jnp.asarray(ids), jnp.asarray(values)))

    return cls(dataset_meta, score, info["batch_size"], f"export {directory}")

  # ------------------------------------------------------------------ scoring
  def predict_batch(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Probabilities for preprocessed arrays ids/values [n, f] (any n)."""
    split = data.Split(
      ids=np.asarray(ids, np.int32),
      values=np.asarray(values, np.float32),
      labels=np.full(len(ids), np.nan, np.float32),
      line_numbers=None,
    )
    return _batched(split, self.batch_size, self._score)

  def predict_rows(self, rows: list[str], **kwargs) -> np.ndarray:
    """Probabilities for raw text rows of the training format (see data.encode_rows)."""
    split = data.encode_rows(self.meta, rows, **kwargs)
    return _batched(split, self.batch_size, self._score)

  def predict_file(self, path, *, fmt: str | None = None, schema=None, bad_rows: str = "error"):
    """Scores a raw file with the saved vocabulary, streaming it chunk by chunk.

    Returns:
      (probs [n], labels [n] (NaN where the file has none), line_numbers [n],
      bad_row_report): probs in input order for the rows that were scored.
    """
    bad = data.BadRowReport()
    probs, labels, lines = [], [], []
    for part in data.iter_encode_file(self.meta, path, fmt, schema, bad_rows, report=bad):
      probs.append(_batched(part, self.batch_size, self._score))
      labels.append(np.asarray(part.labels, np.float32))
      lines.append(np.asarray(part.line_numbers, np.int64))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros((0,), dt)
    return cat(probs, np.float32), cat(labels, np.float32), cat(lines, np.int64), bad


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
  cfg: Config
  dataset_meta: object
  fns: training.StepFns
  state: dict
  mesh: object
  description: str


def load_checkpoint(
  workdir, *, step=None, best=False, devices=None, report=None
) -> LoadedCheckpoint:
  """Restores a usable training checkpoint onto `devices` (see Scorer.from_checkpoint).

  Usable means sealed, every file matching its seal and every parameter finite
  (gin_jax.checkpointing). An explicit `step` that is unusable is refused.
  Without one, the newest usable checkpoint is used, and each newer one that
  is skipped is reported. With `best`, the final stage's best checkpoint; if
  it is unusable, the newest usable regular checkpoint of that stage (or of
  the finished run, which holds the restored best weights), saying so.

  Args:
    workdir: a `python -m train` workdir.
    step: a specific checkpoint step (default: the newest usable).
    best: the best checkpoint of the last stage instead.
    devices: devices to restore onto (default: all local devices).
    report: called with each warning (default: printed to stderr).

  Returns:
    The LoadedCheckpoint. Raises ScoringError naming what is missing or wrong.
  """
  layout = Workdir(workdir)
  report = report or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
  if not layout.config.exists():
    raise ScoringError(f"{workdir} is not a training workdir (no config.json)")
  regular = [(layout.checkpoints, s) for s in checkpointing.all_steps(layout.checkpoints)]
  stages_wanted = None
  if best:
    final = stages.final(_read_config(layout.config).train.stages)
    directory = layout.best(final)
    candidates = [(directory, s) for s in checkpointing.all_steps(directory)]
    if not candidates:
      raise ScoringError(f"{directory} holds no checkpoint")
    candidates += regular
    stages_wanted = {final.name, stages.DONE}
  elif step is not None:
    have = [s for _, s in regular]
    if step not in have:
      raise ScoringError(f"no checkpoint step {step} in {layout.checkpoints}; have {sorted(have)}")
    candidates = [(layout.checkpoints, step)]
  else:
    candidates = regular
    if not candidates:
      raise ScoringError(f"{layout.checkpoints} holds no checkpoint")
  skipped = []
  for directory, s in candidates:
    try:
      loaded = _restore_checkpoint(directory, s, devices, stages_wanted if skipped else None)
    except checkpointing.UnusableCheckpoint as e:
      if step is not None:
        raise ScoringError(
          f"{e}; refusing to score with it (omit --step to use the newest usable checkpoint)"
        ) from None
      report(f"{e}; trying the previous one")
      skipped.append(e)
      continue
    except checkpointing.CheckpointError as e:
      raise ScoringError(str(e)) from None
    if loaded is None:
      continue  # a regular checkpoint of an earlier stage: not a stand-in for --best
    if skipped:
      report(f"using {loaded.description} instead")
    return dataclasses.replace(
      loaded, description=loaded.description + (" (best)" if best and not skipped else "")
    )
  raise ScoringError(
    f"no usable checkpoint in {workdir}"
    + (f" for the {'/'.join(sorted(stages_wanted))} stage" if stages_wanted else "")
    + f" ({'; '.join(str(e) for e in skipped[:3])})"
  )


def _read_config(path: Path) -> Config:
  try:
    return Config.from_dict(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise ScoringError(f"{path}: cannot parse the run's config ({e})") from None


def _restore_checkpoint(directory: Path, step: int, devices, stages_wanted) -> LoadedCheckpoint:
  """Checkpoint `step` of `directory`; None if its stage is not in `stages_wanted`."""
  mngr = checkpointing.manager(directory, None)
  checkpointing.verify_seal(checkpointing.step_dir(mngr, step))
  meta = checkpointing.read_meta(mngr, step, verify=False)
  try:
    if stages_wanted is not None and meta["progress"]["stage"] not in stages_wanted:
      return None
    cfg = Config.from_dict(meta["config"])
    dataset_meta = data.DatasetMeta.from_dict(meta["dataset"])
    rows = meta["model"]
  except Exception as e:  # noqa: BLE001 - report any malformed metadata the same way
    raise ScoringError(
      f"{directory}/{step}: unreadable checkpoint metadata ({type(e).__name__}: {e})"
    ) from e
  devices = list(devices or jax.local_devices())
  if rows["padded_rows"] % len(devices):  # the table's rows must split evenly
    devices = devices[:1]
  mesh = partitioning.make_mesh(devices)
  spec = model_lib.ModelSpec(
    cfg.model, dataset_meta.num_fields, rows["num_rows"], rows["padded_rows"]
  )
  fns = training.build(spec, cfg.train, mesh)
  state, _ = checkpointing.restore(mngr, step, fns.abstract_state, verify=False)
  return LoadedCheckpoint(cfg, dataset_meta, fns, state, mesh, f"{directory}/{step}")


def export(workdir, out_dir, *, step: int | None = None, best: bool = False) -> Path:
  """Serialises the scoring function and its parameters with jax.export.

  The exported function takes `(weights, ids [b, f] int32, values [b, f]
  float32)` with a symbolic batch size b, and is lowered for CPU and CUDA.
  """
  out_dir = Path(out_dir)
  loaded = load_checkpoint(workdir, step=step, best=best, devices=jax.local_devices()[:1])
  state, graphdef = loaded.state, loaded.fns.graphdef
  weights = jax.tree.map(
    lambda x: np.asarray(jax.device_get(x)), (state["params"], state["batch_stats"], state["masks"])
  )
  leaves, treedef = jax.tree.flatten(weights)

  def score(leaves_, ids, values):
    p, s, m = jax.tree.unflatten(treedef, leaves_)
    logits, _ = model_lib.apply_model(graphdef, p, s, ids, values, m, train=False)
    return jax.nn.sigmoid(logits)

  b = jax.export.symbolic_shape("b")[0]
  f = loaded.dataset_meta.num_fields
  args = (
    [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
    jax.ShapeDtypeStruct((b, f), jnp.int32),
    jax.ShapeDtypeStruct((b, f), jnp.float32),
  )
  exported = jax.export.export(jax.jit(score), platforms=("cpu", "cuda"))(*args)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "score.stablehlo").write_bytes(exported.serialize())
  np.savez(out_dir / "params.npz", **{f"leaf_{i}": x for i, x in enumerate(leaves)})
  (out_dir / "dataset.json").write_text(loaded.dataset_meta.to_json())
  info = {
    "batch_size": loaded.cfg.train.eval_batch_size,
    "num_fields": f,
    "field_names": loaded.dataset_meta.field_names,
    "source": loaded.description,
    "platforms": list(exported.platforms),
  }
  (out_dir / "export.json").write_text(json.dumps(info, indent=2))
  return out_dir


# ---------------------------------------------------------------------- output


def write_scores(path, probs: np.ndarray, line_numbers, bad) -> None:
  """One probability per input row, in input order; skipped rows are named.

  .csv: `line,probability,status` with a row for every input line (skipped
  ones carry an empty probability and the reason). .npy: float32 with NaN at
  skipped rows, plus PATH.skipped.json listing them.
  """
  path = Path(path)
  line_numbers = np.arange(1, len(probs) + 1) if line_numbers is None else line_numbers
  skipped = dict(_skipped(bad))
  order = sorted(
    [(int(n), float(p)) for n, p in zip(line_numbers, probs)] + [(n, None) for n in skipped]
  )
  if path.suffix == ".npy":
    np.save(path, np.array([np.nan if p is None else p for _, p in order], np.float32))
    Path(str(path) + ".skipped.json").write_text(
      json.dumps([{"line": n, "reason": r} for n, r in sorted(skipped.items())], indent=1)
    )
    return
  if path.suffix == ".parquet":
    try:
      import pyarrow as pa
      import pyarrow.parquet as pq
    except ImportError:
      raise ScoringError(
        "writing .parquet needs pyarrow (pip install pyarrow); or use .csv / .npy"
      ) from None
    pq.write_table(
      pa.table(
        {
          "line": [n for n, _ in order],
          "probability": [p for _, p in order],
          "status": ["ok" if p is not None else "skipped: " + skipped[n] for n, p in order],
        }
      ),
      path,
    )
    return
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["line", "probability", "status"])
    for n, p in order:
      w.writerow(
        [n, "" if p is None else f"{p:.8f}", "ok" if p is not None else "skipped: " + skipped[n]]
      )


def _skipped(bad):
  """(line, reason) of every skipped row; reasons are kept for the first few only."""
  if bad is None:
    return []
  reasons = {row.line: row.reason for row in bad.rows}
  return [(n, reasons.get(n, "bad row")) for n in bad.line_numbers]


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m gin_jax.score", description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="training workdir")
  src.add_argument("--exported", help="directory written by --export")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--step", type=int, help="checkpoint step (default: newest)")
  which.add_argument("--best", action="store_true", help="best checkpoint of the last stage")
  p.add_argument("--data", help="file to score (any supported format, may be .gz)")
  p.add_argument("--format", choices=["criteo", "csv", "libfm"], help="default: training's")
  p.add_argument("--schema", help="CSV schema (default: training's)")
  p.add_argument("--bad-rows", choices=["error", "skip"], default="error")
  p.add_argument("--out", help="output .csv, .npy or .parquet")
  p.add_argument("--export", help="write a jax.export directory here (with --checkpoint)")
  args = p.parse_args(argv)
  from gin_jax.cli import init_runtime

  init_runtime()
  try:
    if args.export:
      if not args.checkpoint:
        p.error("--export needs --checkpoint")
      out = export(args.checkpoint, args.export, step=args.step, best=args.best)
      print(f"exported to {out}")
      if not args.data:
        return
    if not args.data or not args.out:
      p.error("scoring needs --data and --out")
    if args.checkpoint:
      scorer = Scorer.from_checkpoint(args.checkpoint, step=args.step, best=args.best)
    else:
      scorer = Scorer.from_export(args.exported)
    probs, labels, lines, bad = scorer.predict_file(
      args.data, fmt=args.format, schema=args.schema, bad_rows=args.bad_rows
    )
    nonfinite = np.flatnonzero(~np.isfinite(probs))
    if len(nonfinite):
      raise ScoringError(
        f"{scorer.description} gave {len(nonfinite)} non-finite probabilities (first at "
        f"{args.data}:{int(lines[nonfinite[0]])}); nothing written to {args.out}"
      )
    write_scores(args.out, probs, lines, bad)
    print(f"scored {len(probs)} rows with {scorer.description} -> {args.out}")
    if bad is not None and bad.count:
      print(f"skipped {bad.count} bad rows (listed in {args.out}); first: {bad.examples[:3]}")
    if len(labels) and not np.isnan(labels).any():
      m = metrics_lib.evaluate(labels, probs)
      print(f"AUC {m['auc']:.6f}  logloss {m['logloss']:.6f}  (n={m['n']})")
  except (ScoringError, data.DataError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
