"""Command-line glue shared by `python -m train` and `python -m gin_jax.score`."""

from __future__ import annotations

import argparse
import errno
import os
import sys

import jax
from absl import flags

from gin_jax import config as config_lib


def init_runtime(coordinator=None, num_processes=None, process_id=None) -> None:
  """Parses absl flags for grain and joins a multi-process job when asked to.

  Arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID. On CPU, cross-process collectives go through gloo.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags outside app.run
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes or _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if coordinator and (num_processes or 1) > 1:
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _env_int(name):
  v = os.environ.get(name)
  return int(v) if v else None


def build_config(args: argparse.Namespace, overrides: dict[str, str]) -> config_lib.Config:
  """The preset named by --preset (or the default), then data flags, then overrides."""
  name = args.preset or ("criteo_paper" if args.train else "demo")
  cfg = config_lib.preset(name)
  data = {}
  for key in ("train", "valid", "test", "format", "schema", "split", "bad_rows"):
    value = getattr(args, key, None)
    if value is not None:
      data[f"data.{key}"] = value
  if args.train and not args.format and cfg.data.format == "synthetic":
    data["data.format"] = "criteo"
  if getattr(args, "stages", None):
    data["train.stages"] = args.stages
  return config_lib.override(cfg, {**data, **overrides})


def train_main(args: argparse.Namespace, overrides: dict[str, str]) -> None:
  from gin_jax import checkpointing, trainer
  from gin_jax.data import DataError

  try:
    init_runtime(args.coordinator, args.num_processes, args.process_id)
    cfg = build_config(args, overrides)
    workdir = args.workdir or os.path.join("runs", cfg.name)
    trainer.run(cfg, workdir, overwrite=args.overwrite)
  except (
    trainer.TrainingError,
    checkpointing.CheckpointError,
    DataError,
    ValueError,
    OSError,
  ) as e:
    fail(e)


def fail(e: BaseException) -> None:
  """Prints `error: <what>` as one line and exits 2 (bad input or environment, not a bug).

  An OSError reads `<file>: <problem>` (e.g. a read-only disk), or `no space left
  on device while writing <file>`.
  """
  if isinstance(e, OSError) and e.strerror:
    where = e.filename if e.filename is not None else ""
    message = f"{where}: {e.strerror}" if where else e.strerror
    if e.errno == errno.ENOSPC and where:
      message = f"no space left on device while writing {where}"
  else:
    message = str(e)
  from tqdm.auto import tqdm

  for bar in list(getattr(tqdm, "_instances", ())):  # a run stopped mid-epoch leaves one open
    bar.close()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)
