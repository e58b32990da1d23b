"""Which multi-process job this process belongs to, read and checked before jax is imported.

The trainer's and the scorer's command lines call check() first, so a bad
launcher variable (a SLURM_NTASKS that is not a number, a process id out of
range, a coordinator that is not host:port) is one line and exit 2 in a
fraction of a second, not after jax's import. gin_jax.runtime joins the job
(reach(), then jax.distributed). The floor of the package: no jax, no other
gin_jax module.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
import socket
import sys
import threading
import time

DEFAULT_CLUSTER_TIMEOUT = 60.0  # seconds to find and join a multi-process job (--cluster-timeout)
_PORTS = 61440  # SLURM and Open MPI jobs' coordinator ports: 61440 + job id % 4096 (jax's rule)
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OMPI = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
_OMPI_LOCAL = "OMPI_COMM_WORLD_LOCAL_RANK"
_EXPLICIT = (
  ("--coordinator", "JAX_COORDINATOR_ADDRESS"),
  ("--num-processes", "JAX_NUM_PROCESSES"),
  ("--process-id", "JAX_PROCESS_ID"),
)
_ALWAYS = ("JAX_COORDINATOR_PORT", "JAX_LOCAL_DEVICE_IDS")  # jax reads these in every job


def check(coordinator=None, num_processes=None, process_id=None, timeout=DEFAULT_CLUSTER_TIMEOUT):
  """The job this process is to join (cluster_job), or None; the timeout checked too.

  Raises:
    ClusterError: a bad variable or flag, or a timeout that is not a positive number.
  """
  if not 0 < timeout < math.inf:
    raise ClusterError(f"--cluster-timeout {timeout:g} is not a positive number of seconds")
  return cluster_job(coordinator, num_processes, process_id)


def refuse(e: ClusterError) -> None:
  """`error: <what>` as one line, exit 2: a command line's check() failed (jax not started)."""
  print(f"error: {e}", file=sys.stderr, flush=True)
  sys.exit(2)


# ------------------------------------------------------------- the cluster's variables


class ClusterError(ValueError):
  """A multi-process job that cannot be joined: a bad variable, an unknown host, no coordinator."""


@dataclasses.dataclass(frozen=True)
class ClusterJob:
  """How this process joins a multi-process job, and what that was read from.

  coordinator, num_processes and process_id are None only for the launchers
  whose coordinator jax.distributed asks the platform for (Kubernetes, Cloud TPU).
  """

  launcher: str  # "SLURM", "Open MPI", ...; "" when given by flags or JAX_* variables
  coordinator: str | None  # host:port of the coordinator service, which process 0 runs
  num_processes: int | None
  process_id: int | None
  context: str  # "process 1 of 2; read NAME=value, ...": for every message about the job


def cluster_job(coordinator=None, num_processes=None, process_id=None, env=None):
  """The job this process is to join, read and checked without touching the network.

  Flags win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
  without a coordinator from either, a launcher's environment (detect_cluster)
  is read the way jax.distributed.initialize() would read it.

  Returns:
    A ClusterJob, or None when this process runs alone.

  Raises:
    ClusterError: naming the variable (or flag) that is missing or not a valid value.
  """
  env = os.environ if env is None else env
  given = {}
  for (flag, name), value in zip(_EXPLICIT, (coordinator, num_processes, process_id)):
    if value is not None:
      given[flag] = str(value)
    elif env.get(name):
      given[name] = env[name]
  for name in _ALWAYS:
    if env.get(name):
      given[name] = env[name]
  if given.get("--coordinator") or given.get("JAX_COORDINATOR_ADDRESS"):
    return _explicit_job(given)
  launcher = detect_cluster(env)
  if launcher == "SLURM":
    return _slurm_job(env)
  if launcher == "Open MPI":
    return _ompi_job(env)
  if launcher:  # jax asks the platform (Kubernetes API, TPU metadata) for the coordinator
    _local_device_ids(env, _read(env, _ALWAYS))
    return ClusterJob(launcher, None, None, None, f"{launcher} job; jax.distributed finds it")
  _refuse_a_job_without_coordinator(given)
  return None


def _refuse_a_job_without_coordinator(given: dict) -> None:
  """A process count or id with no coordinator and no launcher: they must say one process.

  Else this process would run alone while the job's others wait for it (or run
  alone too): ClusterError naming what was read.
  """
  read = _read(given, given)
  names, multi = [], False
  for (flag, var), low in zip(_EXPLICIT[1:], (1, 0)):
    name = flag if flag in given else var if var in given else None
    if name is not None:
      names.append(name)
      multi |= _int(given, name, read, low=low) > low
  if multi:
    raise ClusterError(
      f"{' and '.join(names)} ask{'s' if len(names) == 1 else ''} for a multi-process job, but "
      f"no coordinator is given (--coordinator or JAX_COORDINATOR_ADDRESS; {read})"
    )


def detect_cluster(env=None) -> str | None:
  """The multi-process cluster this process was launched in, if any.

  Recognises the launchers whose environment jax.distributed.initialize() reads
  by itself: SLURM (`srun`), Open MPI (`mpirun`), Kubernetes JobSets and Cloud
  TPU pods. A single-task job is not a cluster (nothing to join). A task count
  that is not a whole number is a ClusterError naming the variable.
  """
  env = os.environ if env is None else env
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")):
    ntasks = _int(env, "SLURM_NTASKS", _read(env, _SLURM), low=1, default=1)
    return "SLURM" if ntasks > 1 else None
  if "OMPI_COMM_WORLD_SIZE" in env:
    size = _int(env, "OMPI_COMM_WORLD_SIZE", _read(env, _OMPI), low=1, default=1)
    return "Open MPI" if size > 1 else None
  if "KUBERNETES_SERVICE_HOST" in env and "JOBSET_NAME" in env:
    return "Kubernetes JobSet"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU pod"
  return None


def _read(env, names) -> str:
  """`read A=1, B=x`: the variables of `names` that are set, for a message."""
  return "read " + ", ".join(f"{n}={env[n]}" for n in names if n in env)


def _int(env, name, read, *, low=0, high=None, default=None) -> int:
  """Variable `name` of `env` as an integer in [low, high]; ClusterError naming it otherwise."""
  raw = env.get(name)
  if raw is None or raw == "":
    if default is None:
      raise ClusterError(f"{name} is not set ({read})")
    return default
  try:
    value = int(raw)
  except ValueError:
    raise ClusterError(f"{name}={raw!r} is not a whole number ({read})") from None
  if value < low or (high is not None and value > high):
    bound = f"{low}..{high}" if high is not None else f"at least {low}"
    raise ClusterError(f"{name}={value} is out of range: it must be {bound} ({read})")
  return value


def _port(env, read) -> int | None:
  """JAX_COORDINATOR_PORT, which overrides a launcher's port, if set."""
  return _int(env, "JAX_COORDINATOR_PORT", read, low=1, high=65535, default=0) or None


def _local_device_ids(env, read) -> None:
  """Checks JAX_LOCAL_DEVICE_IDS (jax reads it as comma-separated integers)."""
  raw = env.get("JAX_LOCAL_DEVICE_IDS")
  if raw and not all(part.strip().isdigit() for part in raw.split(",")):
    raise ClusterError(f"JAX_LOCAL_DEVICE_IDS={raw!r} is not a list of device numbers ({read})")


def _explicit_job(given: dict) -> ClusterJob | None:
  """The job of --coordinator / JAX_COORDINATOR_ADDRESS (and the count and id beside it)."""
  read = _read(given, given)
  name = lambda flag, var: flag if flag in given else var
  what, count_name = name("--coordinator", "JAX_COORDINATOR_ADDRESS"), name(*_EXPLICIT[1])
  if count_name not in given:  # jax would not run it alone either
    raise ClusterError(
      f"{what} is set, but the job's process count is not (--num-processes or "
      f"JAX_NUM_PROCESSES; {read})"
    )
  count = _int(given, count_name, read, low=1)
  pid_name = name("--process-id", "JAX_PROCESS_ID")
  _port(given, read)  # jax reads no port beside an address, but a bad one is still a mistake
  if count == 1:
    if pid_name in given:
      _int(given, pid_name, read, high=0)
    return None  # a coordinator for one process: nothing to join
  address = given.get("--coordinator") or given["JAX_COORDINATOR_ADDRESS"]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ClusterError(f"{what}={address!r} is not host:port ({read})")
  if pid_name not in given:
    raise ClusterError(f"this process's id is not given (--process-id or JAX_PROCESS_ID; {read})")
  pid = _int(given, pid_name, read, high=count - 1)
  _local_device_ids(given, read)
  return ClusterJob("", address, count, pid, f"process {pid} of {count}; {read}")


def _slurm_job(env) -> ClusterJob:
  """A SLURM job step (srun) of several tasks, read as jax._src.clusters.slurm_cluster does."""
  read = _read(env, (*_SLURM, *_ALWAYS))
  count = _int(env, "SLURM_NTASKS", read, low=1)
  pid = _int(env, "SLURM_PROCID", read, high=count - 1)
  _int(env, "SLURM_LOCALID", read, default=0)  # jax makes it the process's visible device
  _local_device_ids(env, read)
  port = _port(env, read) or _PORTS + _int(env, "SLURM_JOB_ID", read) % 4096
  # The first host of the step: "node7", "node7,gpu2", "node[007-015,020],gpu2" -> node7 / node007.
  nodes = env["SLURM_STEP_NODELIST"]
  first = re.match(r"([^,\[]*)(?:\[([^,\-\]]*))?", nodes)
  host = first.group(1) + (first.group(2) or "")
  if not host:
    raise ClusterError(f"SLURM_STEP_NODELIST={nodes!r} names no host ({read})")
  return ClusterJob("SLURM", f"{host}:{port}", count, pid, f"process {pid} of {count}; {read}")


def _ompi_job(env) -> ClusterJob:
  """An Open MPI job (mpirun) of several ranks, read as jax._src.clusters.ompi_cluster does."""
  read = _read(env, (*_OMPI, _OMPI_LOCAL, *_ALWAYS))
  count = _int(env, "OMPI_COMM_WORLD_SIZE", read, low=1)
  pid = _int(env, "OMPI_COMM_WORLD_RANK", read, high=count - 1)
  _int(env, _OMPI_LOCAL, read, default=0)
  _local_device_ids(env, read)
  uri = env.get("OMPI_MCA_orte_hnp_uri")
  if not uri:
    raise ClusterError(
      f"OMPI_MCA_orte_hnp_uri is not set, so the coordinator is unknown ({read}): start the job "
      "with mpirun, or pass --coordinator, --num-processes and --process-id"
    )
  launcher = re.search(r"tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]", uri)
  job_id = uri.split(".", 1)[0]
  if launcher is None or not job_id.isdigit():
    raise ClusterError(f"OMPI_MCA_orte_hnp_uri={uri!r} is not jobid.vpid;tcp://host:port ({read})")
  host = launcher.group(1) or f"[{launcher.group(2)}]"
  port = _port(env, read) or _PORTS + int(job_id) // 4096 % 4096
  return ClusterJob("Open MPI", f"{host}:{port}", count, pid, f"process {pid} of {count}; {read}")


# ------------------------------------------------------------- reaching the coordinator


def reach(job: ClusterJob, deadline: float, timeout: float) -> None:
  """Before jax.distributed: the coordinator's host resolves; process 0 finds its port
  free; every other process waits (saying so) until the coordinator accepts connections.

  Raises:
    ClusterError: the host does not resolve, the port is taken, no coordinator answered.
  """
  if not job.coordinator:
    return  # the platform (Kubernetes, TPU metadata) names it to jax.distributed
  host, _, port = job.coordinator.rpartition(":")
  addresses = _resolve(host.strip("[]"), int(port), job, deadline)
  if job.process_id == 0:
    _check_coordinator_port(int(port), addresses, job)
  else:
    _wait_for_coordinator(addresses, job, deadline, timeout)


def progress_every(timeout: float) -> float:
  """Seconds between the `waiting for ...` lines of a join that takes `timeout` at most."""
  return min(5.0, max(1.0, timeout / 3))


def say_waiting(what: str, started: float, timeout: float) -> None:
  print(f"{what} ({time.monotonic() - started:.0f} s of {timeout:g})", file=sys.stderr, flush=True)


def _resolve(host: str, port: int, job: ClusterJob, deadline: float) -> list:
  """The addresses of the coordinator's host; a name the resolver does not know fails at once.

  The lookup runs in a thread, so a resolver that does not answer cannot
  outlast the timeout.
  """
  answer = {}

  def lookup():
    while True:
      try:
        answer["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return
      except socket.gaierror as e:
        if e.errno != socket.EAI_AGAIN or time.monotonic() > deadline:  # else: retry a busy DNS
          answer["error"] = e.strerror
          return
      time.sleep(0.5)

  thread = threading.Thread(target=lookup, daemon=True)
  thread.start()
  thread.join(max(0.0, deadline - time.monotonic()))
  if "addresses" in answer:
    return answer["addresses"]
  why = answer.get("error", "no answer before the --cluster-timeout")
  raise ClusterError(
    f"cannot resolve the coordinator's host {host!r} of {job.coordinator} ({why}; {job.context})"
  )


def _check_coordinator_port(port: int, addresses: list, job: ClusterJob) -> None:
  """Process 0: the coordinator's port must be free here (jax binds it on every interface)."""
  if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
    return  # bound where the user says; jax reports a failure as an error, not an abort
  for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
      break
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ClusterError(
          f"port {port} of the coordinator {job.coordinator} is in use on this machine, where "
          f"process 0 runs the coordinator ({job.context}): set JAX_COORDINATOR_PORT to a free one"
        ) from None
  if not any(_is_local(family, a[0]) for family, *_, a in addresses):
    print(
      f"warning: the coordinator's host {job.coordinator} is not an address of this machine, "
      "but process 0 runs the coordinator here: the other processes may not reach it",
      file=sys.stderr,
      flush=True,
    )


def _is_local(family, host: str) -> bool:
  try:
    with socket.socket(family, socket.SOCK_STREAM) as s:
      s.bind((host, 0))
    return True
  except OSError:
    return False


def _wait_for_coordinator(addresses: list, job: ClusterJob, deadline: float, timeout: float):
  """Waits until the coordinator accepts a TCP connection, saying so every few seconds."""
  started, said, why = time.monotonic(), time.monotonic(), "no answer"
  while True:
    for family, kind, proto, _, address in addresses:
      try:
        with socket.socket(family, kind, proto) as s:
          s.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
          s.connect(address)
        return
      except OSError as e:
        why = e.strerror or type(e).__name__
    now = time.monotonic()
    if now >= deadline:
      raise ClusterError(
        f"no coordinator answered at {job.coordinator} within {timeout:g} s ({why}; "
        f"{job.context}): start process 0 there, or raise --cluster-timeout"
      )
    if now - said >= progress_every(timeout):
      said = now
      say_waiting(f"waiting for the coordinator at {job.coordinator}", started, timeout)
    time.sleep(min(0.25, max(0.0, deadline - now)))
