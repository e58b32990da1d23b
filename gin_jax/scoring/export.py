"""Export for serving: the scoring function as StableHLO (`jax.export`) plus its parameters.

An exported directory holds the StableHLO of the scoring function, its
parameters as a plain .npz (read with allow_pickle=False) and the dataset
metadata; running it needs jax and numpy, not the model code. The files:

  score.stablehlo  jax.export serialization of score(weights, ids [b, slots] int32,
                   values [b, slots] float32) -> probabilities [b], b symbolic
  params.npz       the weights: leaf_0, leaf_1, ... in the order score takes them
  dataset.json     the dataset metadata: fields, vocabularies, encoding options
  export.json      batch_size, fields, slots, table rows, source, platforms
  seal.json        size and SHA-256 of every other file (verified before loading)

An export is written to a temporary directory beside its target and renamed into
place, so a reader never sees half of one. A model base path (what `gin_jax.serve`
serves) holds exports as numbered versions, BASE/1, BASE/2, ...; `export_version`
writes the next one.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gin_jax import data
from gin_jax import models as model_lib
from gin_jax.scoring import checkpoints
from gin_jax.scoring.errors import ScoringError
from gin_jax.training import checkpointing

EXPORT_FILES = ("score.stablehlo", "params.npz", "dataset.json", "export.json")
_TEMP_PREFIX = ".export-"  # Beside the target while it is written: never a version's name.


class ExportExists(ScoringError):
  """The export's directory exists and is not to be replaced (a version of a base path)."""


def export(
  workdir,
  out_dir,
  *,
  step: int | None = None,
  best: bool = False,
  stage: str | None = None,
  replace: bool = True,
) -> Path:
  """Serialises the scoring function and its parameters with jax.export.

  The exported function takes `(weights, ids [b, f] int32, values [b, f]
  float32)` with a symbolic batch size b, and is lowered for CPU and CUDA.

  Args:
    workdir: the training workdir.
    out_dir: the export's directory, written whole or not at all (a temporary
      directory beside it, renamed into place).
    step, best, stage: which checkpoint (as for Scorer.from_checkpoint).
    replace: replace an existing `out_dir` (else ScoringError).

  Returns:
    out_dir.
  """
  out_dir = Path(out_dir)
  models = checkpoints.load_models(
    workdir, step=step, best=best, stage=stage, devices=jax.local_devices()[:1]
  )
  loaded = models[0]
  weights = [
    jax.tree.map(
      lambda x: np.asarray(jax.device_get(x)),
      (m.state["params"], m.state["batch_stats"], m.state["masks"]),
    )
    for m in models
  ]
  graphdefs = [m.fns.graphdef for m in models]
  leaves, treedef = jax.tree.flatten(weights)

  def score(leaves_, ids, values):
    probs = []
    for graphdef, (p, s, m) in zip(graphdefs, jax.tree.unflatten(treedef, leaves_)):
      logits, _ = model_lib.apply_model(graphdef, p, s, ids, values, m, train=False)
      probs.append(jax.nn.sigmoid(logits))
    return sum(probs) / len(probs)  # an ensemble's average of probabilities

  b = jax.export.symbolic_shape("b")[0]
  f = loaded.dataset_meta.num_slots  # the ids / values columns (a list field takes several)
  args = (
    [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
    jax.ShapeDtypeStruct((b, f), jnp.int32),
    jax.ShapeDtypeStruct((b, f), jnp.float32),
  )
  exported = jax.export.export(jax.jit(score), platforms=("cpu", "cuda"))(*args)
  info = {
    "batch_size": loaded.cfg.train.eval_batch_size,
    "num_fields": loaded.dataset_meta.num_fields,
    "num_slots": f,
    "num_table_rows": loaded.dataset_meta.num_table_rows,
    "field_names": loaded.dataset_meta.field_names,
    "source": checkpoints.describe(models),
    "models": len(models),
    "platforms": list(exported.platforms),
  }
  try:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=out_dir.parent))
  except OSError as e:
    raise ScoringError(f"{out_dir}: cannot write the export ({e.strerror})") from None
  try:
    (tmp / "score.stablehlo").write_bytes(exported.serialize())
    np.savez(tmp / "params.npz", **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    (tmp / "dataset.json").write_text(loaded.dataset_meta.to_json())
    (tmp / "export.json").write_text(json.dumps(info, indent=2))
    checkpointing.seal(tmp)  # sizes and SHA-256 of every file, as a checkpoint's
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide it from a server run by another user
    _put_in_place(tmp, out_dir, replace=replace)
  except FileExistsError:
    raise ExportExists(f"{out_dir}: exists already (an export is never replaced)") from None
  except OSError as e:
    raise ScoringError(f"{e.filename or out_dir}: cannot write the export ({e.strerror})") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def _put_in_place(tmp: Path, out_dir: Path, *, replace: bool) -> None:
  """Renames the finished export `tmp` to `out_dir` (an existing one is replaced if asked).

  Raises FileExistsError when `out_dir` exists and `replace` is False.
  """
  if not out_dir.exists():
    try:
      os.rename(tmp, out_dir)
    except OSError as e:  # Another writer took the name meanwhile (a full directory).
      if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
        raise FileExistsError(e.errno, "exists already", str(out_dir)) from None
      raise
    return
  if not replace:
    raise FileExistsError(errno.EEXIST, "exists already", str(out_dir))
  old = out_dir.with_name(f"{_TEMP_PREFIX}old-{out_dir.name}-{os.getpid()}")
  os.rename(out_dir, old)
  try:
    os.rename(tmp, out_dir)
  finally:
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ versions


def versions(base) -> list[int]:
  """The numbered versions in a model base path (subdirectories named 1, 2, ...), ascending.

  Other entries (temporary directories of exports being written, files, names
  that are not positive integers) are not versions.
  """
  try:
    entries = list(os.scandir(base))
  except FileNotFoundError:
    return []
  found = []
  for e in entries:
    if e.name.isdigit() and e.name.isascii() and not e.name.startswith("0") and e.is_dir():
      found.append(int(e.name))
  return sorted(found)


def export_version(workdir, base, *, version: int | None = None, **which) -> Path:
  """Exports the model of `workdir` as a version of the model base path `base`.

  Args:
    workdir: the training workdir.
    base: the model base path (created if absent).
    version: the version number; None: the next one (1 + the highest present).
      A version that exists is never replaced.
    **which: step / best / stage, as for `export`.

  Returns:
    The version's directory. Raises ScoringError when `version` exists.
  """
  base = Path(base)
  for _ in range(100):  # Another exporter may take the same next number first.
    n = version if version is not None else (max(versions(base), default=0) + 1)
    try:
      return export(workdir, base / str(n), replace=False, **which)
    except ExportExists:
      if version is not None:
        raise ScoringError(f"{base / str(n)}: version {n} exists already") from None
  raise ScoringError(f"{base}: could not claim a new version number")


# ------------------------------------------------------------------ loading


@dataclasses.dataclass(frozen=True)
class LoadedExport:
  """An export read back and checked (read_export)."""

  directory: Path
  meta: data.DatasetMeta  # Its dataset: fields, vocabularies, encoding options.
  exported: jax.export.Exported  # score(weights, ids, values) with a symbolic batch size.
  weights: list[np.ndarray]  # The arrays `exported` takes first, from params.npz.
  info: dict  # export.json.

  @property
  def batch_size(self) -> int:
    return self.info["batch_size"]


def read_export(directory) -> LoadedExport:
  """Reads an exported directory, checked before and after deserializing.

  The directory is sealed as checkpoints are (seal.json: the size and SHA-256
  of every file), and the seal is verified before anything is deserialized;
  then every file is checked against the others. A bad one raises
  ScoringError naming it and the problem.
  """
  directory = Path(directory)
  missing = [f for f in EXPORT_FILES if not (directory / f).exists()]
  if missing:
    raise ScoringError(f"{directory} is not an export directory: missing {missing}")
  try:  # before anything is deserialized
    checkpointing.verify_seal(directory)
  except checkpointing.UnusableCheckpoint as e:
    if e.kind == "unsealed":
      raise ScoringError(f"{directory}: the export has no seal (export it again)") from None
    raise ScoringError(f"{directory}: the export is unusable: {e.reason}") from None
  info = _export_info(directory / "export.json")
  path = directory / "score.stablehlo"
  try:
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception as e:  # noqa: BLE001 - any undecodable artifact is reported the same way
    raise ScoringError(f"{path}: not a serialized jax.export function ({e})") from None
  weights = _export_params(directory / "params.npz", exported)
  path = directory / "dataset.json"
  try:
    dataset_meta = data.DatasetMeta.from_json(path.read_text())
  except data.DataError as e:
    raise ScoringError(f"{path}: {e}") from None
  ids_aval = exported.in_avals[len(weights)]
  if dataset_meta.num_slots != ids_aval.shape[1]:
    raise ScoringError(
      f"{path}: {dataset_meta.num_slots} input columns ({dataset_meta.num_fields} fields), "
      f"but the exported function takes {ids_aval.shape[1]}"
    )
  if info.get("num_table_rows", dataset_meta.num_table_rows) != dataset_meta.num_table_rows:
    raise ScoringError(
      f"{path}: num_table_rows={dataset_meta.num_table_rows}, but the exported table "
      f"has {info['num_table_rows']} (export.json)"
    )
  return LoadedExport(directory, dataset_meta, exported, weights, info)


def load_export(directory) -> tuple:
  """(dataset meta, score(ids, values), batch size) of an exported directory (read_export)."""
  loaded = read_export(directory)
  weights = [jnp.asarray(x) for x in loaded.weights]

  def score(ids, values):
    return np.asarray(loaded.exported.call(weights, jnp.asarray(ids), jnp.asarray(values)))

  return loaded.meta, score, loaded.batch_size


def _export_info(path: Path) -> dict:
  """export.json, checked: an object whose batch_size is a positive integer."""
  try:
    info = json.loads(path.read_text())
  except ValueError as e:
    raise ScoringError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(info, dict):
    raise ScoringError(f"{path}: must be a JSON object")
  size = info.get("batch_size")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ScoringError(f"{path}: batch_size must be a positive integer, got {size!r}")
  return info


def _export_params(path: Path, exported) -> list[np.ndarray]:
  """params.npz, checked: exactly the arrays leaf_0.. the exported function takes, finite."""
  avals = exported.in_avals[:-2]  # then ids and values
  names = [f"leaf_{i}" for i in range(len(avals))]
  try:
    with np.load(path, allow_pickle=False) as z:
      extra, absent = sorted(set(z.files) - set(names)), sorted(set(names) - set(z.files))
      if extra or absent:
        raise ScoringError(
          f"{path}: the exported function takes exactly {names[0]}..{names[-1]}; "
          + (f"unexpected {extra}" if extra else f"missing {absent}")
        )
      leaves = [z[name] for name in names]
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ScoringError(f"{path}: unreadable ({e})") from None
  for name, x, aval in zip(names, leaves, avals):
    if x.shape != aval.shape or x.dtype != aval.dtype:
      raise ScoringError(
        f"{path}: {name} is {x.dtype}{list(x.shape)}, the exported function takes "
        f"{aval.dtype}{list(aval.shape)}"
      )
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
      raise ScoringError(f"{path}: {name} holds NaN or Inf")
  return leaves
