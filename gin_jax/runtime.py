"""Process start-up and the ways a process speaks: devices, the cluster, logs, the one-line exit.

The lowest floor of the package that imports jax (below it, gin_jax.cluster reads
the job from the environment without jax), so the scorer, the benchmarks and the
trainer share it without importing each other.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sys
import threading
import time

import jax
from absl import flags
from jax.experimental import multihost_utils

from gin_jax import cluster
from gin_jax.cluster import (  # noqa: F401 - the names this module's callers have used
  DEFAULT_CLUSTER_TIMEOUT,
  ClusterError,
  ClusterJob,
  cluster_job,
  detect_cluster,
  progress_every,
  reach,
  say_waiting,
)


def init_runtime(
  coordinator=None, num_processes=None, process_id=None, timeout=DEFAULT_CLUSTER_TIMEOUT
) -> None:
  """Parses absl flags for grain and joins a multi-process job when asked to.

  Arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; with no coordinator given, a cluster launcher's environment
  (see detect_cluster) is joined automatically. The variables are checked
  before the runtime is called, and joining takes at most `timeout` seconds
  (see join). On CPU, cross-process collectives go through gloo.

  Raises:
    ClusterError: a bad variable, a host that does not resolve, no coordinator.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags outside app.run
  job = cluster.check(coordinator, num_processes, process_id, timeout)
  if job is None:
    return
  if job.launcher:
    where = f" (process {job.process_id} of {job.num_processes}, coordinator {job.coordinator})"
    print(
      f"{job.launcher} job detected: joining it with jax.distributed"
      + (where if job.coordinator else ""),
      file=sys.stderr,
      flush=True,
    )
  join(job, timeout)


def _use_gloo_on_cpu() -> None:
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


# ------------------------------------------------------------- joining within a timeout


def join(job: ClusterJob, timeout: float) -> None:
  """Joins `job` within `timeout` seconds, or stops this process with one line (exit 2).

  First cluster.reach: the coordinator's host resolves, process 0 (which runs
  the coordinator service) finds its port free, every other process waits for
  the coordinator to accept connections, saying so every few seconds. Then
  jax.distributed joins the processes, watched: jax's own timeout ends in an
  abort with a C++ stack trace, so the watch stops the process, in one line,
  before jax would.

  Raises:
    ClusterError: the host does not resolve, the port is taken, no coordinator answered.
  """
  deadline = time.monotonic() + timeout
  reach(job, deadline, timeout)
  _use_gloo_on_cpu()
  with _watched(job, deadline, timeout):
    try:
      jax.distributed.initialize(
        job.coordinator,
        job.num_processes,
        job.process_id,
        initialization_timeout=math.ceil(deadline - time.monotonic()) + 30,  # the watch ends first
      )
    except (RuntimeError, ValueError) as e:  # JaxRuntimeError; the platform's lookups
      text = str(e).strip().splitlines()
      raise ClusterError(
        f"cannot join the job{' at ' + job.coordinator if job.coordinator else ''}: "
        f"{text[0] if text else type(e).__name__} ({job.context})"
      ) from None


@contextlib.contextmanager
def _watched(job: ClusterJob, deadline: float, timeout: float):
  """Says every few seconds that the processes are still joining; at `deadline`, exits 2."""
  done, started = threading.Event(), time.monotonic()
  where = f" at {job.coordinator}" if job.coordinator else ""
  processes = f"{job.num_processes} processes" if job.num_processes else "processes"

  def watch():
    while not done.wait(min(progress_every(timeout), max(0.0, deadline - time.monotonic()))):
      if time.monotonic() < deadline:
        say_waiting(f"waiting for the {processes} to join{where}", started, timeout)
        continue
      _exit_in_one_line(
        f"the job's {processes} did not all join{where} within "
        f"{timeout:g} s ({job.context}): start every process, or raise --cluster-timeout",
        leave_job=False,  # jax is inside its initialize: leaving would wait on it
      )

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  try:
    yield
  finally:
    done.set()


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
  _exit_in_one_line(message)


INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C (128 + SIGINT), as shells say


def interrupted(message: str) -> None:
  """Ctrl-C: prints `message` (what was reached, how to go on) as one line and exits 130.

  No traceback: the interrupt is the user's, not a bug. Work in flight (an orbax
  save) is abandoned; an unfinished checkpoint has no seal and is never resumed from.
  """
  _exit_in_one_line(message, prefix="", status=INTERRUPTED)


def _exit_in_one_line(
  message: str, leave_job: bool = True, *, prefix: str = "error: ", status: int = 2
) -> None:
  from tqdm.auto import tqdm

  for bar in list(getattr(tqdm, "_instances", ())):  # a run stopped mid-epoch leaves one open
    bar.close()
  print(f"{prefix}{message}", file=sys.stderr, flush=True)
  # Exit now, without the interpreter's teardown: work the error abandoned (an
  # orbax save's coroutines, say) would be finalized there, and Python would warn
  # that it was never awaited, after the one line that is the whole message (a
  # warnings filter does not reach that late). What the exit handlers would do
  # that matters is done here: leave the multi-host job and flush the logs.
  if leave_job:
    jax.distributed.shutdown()
  logging.shutdown()
  sys.stdout.flush()
  os._exit(status)


def log(msg: str) -> None:
  """Prints `msg` on process 0 only (every process runs the same code)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
