"""Command-line glue shared by `python -m train` and `python -m gin_jax.score`."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys

import jax
from absl import flags

from gin_jax import config as config_lib


def init_runtime(coordinator=None, num_processes=None, process_id=None) -> None:
  """Parses absl flags for grain and joins a multi-process job when asked to.

  Arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; with none given, a cluster launcher's environment (see
  detect_cluster) is joined automatically. On CPU, cross-process collectives go
  through gloo.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags outside app.run
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes or _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if coordinator and (num_processes or 1) > 1:
    _use_gloo_on_cpu()
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif coordinator is None and (cluster := detect_cluster()):
    # jax.distributed finds the coordinator, process count and id itself.
    print(f"{cluster} job detected: joining it with jax.distributed", file=sys.stderr)
    _use_gloo_on_cpu()
    jax.distributed.initialize()


def _use_gloo_on_cpu() -> None:
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def detect_cluster(env=None) -> str | None:
  """The multi-process cluster this process was launched in, if any.

  Recognises the launchers whose environment jax.distributed.initialize() reads
  by itself: SLURM (`srun`), Open MPI (`mpirun`), Kubernetes JobSets and Cloud
  TPU pods. A single-task job is not a cluster (nothing to join).
  """
  env = os.environ if env is None else env
  count = lambda name: int(env.get(name) or 1)
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")):
    return "SLURM" if count("SLURM_NTASKS") > 1 else None
  if "OMPI_COMM_WORLD_SIZE" in env:
    return "Open MPI" if count("OMPI_COMM_WORLD_SIZE") > 1 else None
  if "KUBERNETES_SERVICE_HOST" in env and "JOBSET_NAME" in env:
    return "Kubernetes JobSet"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU pod"
  return None


def _env_int(name):
  v = os.environ.get(name)
  return int(v) if v else None


def build_config(args: argparse.Namespace, overrides: dict[str, str]) -> config_lib.Config:
  """The preset, then the --config file, then data flags, then overrides (later wins).

  The preset is --preset, else the file's `preset:`, else `default` (the
  recipe for real data, config.default) with a training file and `demo` without
  one. A run on a training file without a named preset is named after the file
  (its workdir defaults to runs/<name>).
  """
  from_file, file_preset = {}, None
  if getattr(args, "config", None):
    from_file, file_preset = config_lib.load_file(args.config)
  has_train = bool(args.train or from_file.get("data.train"))
  name = args.preset or file_preset or ("default" if has_train else "demo")
  cfg = config_lib.preset(name)
  if has_train and not (args.preset or file_preset) and "name" not in from_file:
    train = args.train or from_file["data.train"]
    cfg = dataclasses.replace(cfg, name=os.path.basename(train).split(".")[0] or name)
  data = {}
  for key in ("train", "valid", "test", "format", "schema", "split", "bad_rows"):
    value = getattr(args, key, None)
    if value is not None:
      data[f"data.{key}"] = value
  explicit_format = args.format or "data.format" in from_file
  if has_train and not explicit_format and cfg.data.format == "synthetic":
    data["data.format"] = "criteo"
  if getattr(args, "stages", None):
    data["train.stages"] = args.stages
  return config_lib.override(cfg, {**from_file, **data, **overrides})


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
  # Exit now, without the interpreter's teardown: work the error abandoned (an
  # orbax save's coroutines, say) would be finalized there, and Python would warn
  # that it was never awaited, after the one line that is the whole message (a
  # warnings filter does not reach that late). What the exit handlers would do
  # that matters is done here: leave the multi-host job and flush the logs.
  jax.distributed.shutdown()
  logging.shutdown()
  sys.stdout.flush()
  os._exit(2)
