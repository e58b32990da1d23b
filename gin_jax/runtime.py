"""Process start-up and the ways a process speaks: devices, the cluster, logs, the one-line exit.

The lowest floor of the package (it imports no other gin_jax module), so the
scorer, the benchmarks and the trainer share it without importing each other.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import jax
from absl import flags
from jax.experimental import multihost_utils


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


def log(msg: str) -> None:
  """Prints `msg` on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
