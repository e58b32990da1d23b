"""Issue 25 item 6: joining a cluster with a bad environment fails fast, in one line.

The trainer and the scorer run as subprocesses in fake launcher environments
(a SLURM job step naming a host that does not exist, an unreachable
JAX_COORDINATOR_ADDRESS, a coordinator whose other processes never come, a
non-integer SLURM_NTASKS) with --cluster-timeout 3. Before the fix the first
three sat silent for ~313 s and then aborted (SIGABRT, a C++ stack trace); the
last exited without naming the variable (trainer) or with a traceback (scorer).
"""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import _env  # a CPU subprocess environment without JAX_* / XLA_* variables

from gin_jax import cluster

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 3  # --cluster-timeout of the runs that wait
LIMIT = 40  # seconds a failing start-up may take at most, jax's import included


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _commands(tmp_path, *extra):
  """The trainer and the scorer, each with `extra` flags (the cluster error comes first)."""
  train = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(tmp_path / "wd")]
  score = [sys.executable, "-m", "gin_jax.score", "--checkpoint", str(tmp_path / "wd")]
  score += ["--data", str(tmp_path / "rows.tsv"), "--out", str(tmp_path / "scores.csv")]
  return {"train": [*train, *extra], "score": [*score, *extra]}


def _run_both(tmp_path, env, *extra):
  """{name: (returncode, stderr, seconds)} of the trainer and the scorer, run side by side.

  `env`: the variables to add, or a function of the name ("train", "score") giving them.
  """
  started = time.monotonic()
  env_of = env if callable(env) else lambda name: env
  procs = {
    name: subprocess.Popen(
      cmd,
      env={**_env(), **env_of(name)},
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )  # fmt: skip
    for name, cmd in _commands(tmp_path, *extra).items()
  }
  out = {}
  for name, proc in procs.items():
    try:
      _, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
      for p in procs.values():
        p.kill()
      pytest.fail(f"{name} still waiting after {LIMIT} s (the 5-minute hang)")
    out[name] = (proc.returncode, err, time.monotonic() - started)
  return out


def _the_error(name, result, *wanted):
  """The single `error:` line of a run that exited 2, holding every string of `wanted`."""
  code, err, _ = result
  assert code == 2, f"{name}: exit {code}\n{err[-3000:]}"
  assert "Traceback" not in err and "@     0x" not in err, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  assert err.rstrip().endswith(errors[0]), err[-3000:]  # the last thing said
  for text in wanted:
    assert text in errors[0], (text, errors[0])
  return errors[0]


def _slurm(host, ntasks="2", procid="1", job="3"):
  return {
    "SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": host, "SLURM_NTASKS": ntasks,
    "SLURM_PROCID": procid, "SLURM_LOCALID": procid,
  }  # fmt: skip


def test_a_slurm_host_that_does_not_exist_is_one_line_at_once(tmp_path):
  env = _slurm("nohost.invalid,nohost2.invalid")
  results = _run_both(tmp_path, env, "--cluster-timeout", "30")
  for name, result in results.items():
    line = _the_error(
      name, result, "nohost.invalid:61443", "SLURM_STEP_NODELIST=nohost.invalid,nohost2.invalid",
      "SLURM_JOB_ID=3", "SLURM_NTASKS=2", "SLURM_PROCID=1", "cannot resolve",
    )  # fmt: skip
    assert result[2] < 25, (name, result[2], line)  # at once, not after the 30 s timeout


def test_an_unreachable_coordinator_is_one_line_after_the_timeout(tmp_path):
  address = f"127.0.0.1:{_free_port()}"  # nobody listens there
  env = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  results = _run_both(tmp_path, env, "--cluster-timeout", str(TIMEOUT))
  for name, result in results.items():
    _the_error(
      name, result, address, f"within {TIMEOUT} s", f"JAX_COORDINATOR_ADDRESS={address}",
      "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=1", "--cluster-timeout",
    )  # fmt: skip
    assert f"waiting for the coordinator at {address}" in result[1]  # said while it waits


def test_a_coordinator_whose_other_processes_never_join_gives_up_after_the_timeout(tmp_path):
  ports = {"train": _free_port(), "score": _free_port()}  # each its own coordinator
  env = lambda name: {**_slurm("127.0.0.1", procid="0"), "JAX_COORDINATOR_PORT": str(ports[name])}
  results = _run_both(tmp_path, env, "--cluster-timeout", str(TIMEOUT))
  for name, result in results.items():
    _the_error(
      name, result, f"127.0.0.1:{ports[name]}", f"within {TIMEOUT} s", "process 0 of 2",
      f"JAX_COORDINATOR_PORT={ports[name]}",
    )  # fmt: skip
    assert "waiting for the 2 processes" in result[1], result[1][-2000:]


@pytest.mark.parametrize(
  "env, variable",
  [
    (_slurm("node1", ntasks="abc"), "SLURM_NTASKS='abc'"),
    (_slurm("node1", procid="2"), "SLURM_PROCID=2"),
    ({**_slurm("node1"), "SLURM_JOB_ID": "x7"}, "SLURM_JOB_ID='x7'"),
    ({"OMPI_COMM_WORLD_SIZE": "two"}, "OMPI_COMM_WORLD_SIZE='two'"),
    (
      {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "z"},
      "JAX_PROCESS_ID='z'",
    ),
    ({"JAX_COORDINATOR_ADDRESS": "nocolon", "JAX_NUM_PROCESSES": "2"}, "host:port"),
    # Issue 33 item 9: each ran one process alone, exit 0.
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, "but no coordinator is given"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_PROCESS_ID": "5"}, "process count is not"),
  ],
)
def test_bad_cluster_variables_are_named_before_the_runtime_is_called(tmp_path, env, variable):
  for name, result in _run_both(tmp_path, env).items():
    _the_error(name, result, variable)


def test_the_coordinator_address_is_the_one_jax_would_use():
  """The SLURM and Open MPI rules of jax._src.clusters, read without touching the network."""
  slurm = {**_slurm("gpu[007-015,020],cpu1", procid="3", job="4097"), "SLURM_NTASKS": "8"}
  job = cluster.cluster_job(env=slurm)
  assert (job.coordinator, job.num_processes, job.process_id) == ("gpu007:61441", 8, 3)
  assert (
    cluster.cluster_job(env={**slurm, "SLURM_STEP_NODELIST": "n9,n3"}).coordinator == "n9:61441"
  )
  assert cluster.cluster_job(env={**slurm, "JAX_COORDINATOR_PORT": "1234"}).coordinator.endswith(
    ":1234"
  )
  ompi = {
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
  }  # fmt: skip
  job = cluster.cluster_job(env=ompi)
  assert (job.coordinator, job.num_processes, job.process_id) == ("10.96.0.1:62624", 4, 2)
  assert cluster.cluster_job(env={**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
  assert cluster.cluster_job(env={"PATH": "/bin"}) is None
  flags = cluster.cluster_job("h:5", 2, 1, env={})
  assert (flags.coordinator, flags.context) == (
    "h:5",
    "process 1 of 2; read --coordinator=h:5, --num-processes=2, --process-id=1",
  )


@pytest.mark.parametrize(
  "env, message",
  [
    (
      {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
      "JAX_NUM_PROCESSES and JAX_PROCESS_ID ask for a multi-process job, but no coordinator "
      "is given (--coordinator or JAX_COORDINATOR_ADDRESS; read JAX_NUM_PROCESSES=2, "
      "JAX_PROCESS_ID=1)",
    ),
    (
      {"JAX_PROCESS_ID": "3"},
      "JAX_PROCESS_ID asks for a multi-process job, but no coordinator is given (--coordinator "
      "or JAX_COORDINATOR_ADDRESS; read JAX_PROCESS_ID=3)",
    ),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:5", "JAX_PROCESS_ID": "5"},
      "JAX_COORDINATOR_ADDRESS is set, but the job's process count is not (--num-processes or "
      "JAX_NUM_PROCESSES; read JAX_COORDINATOR_ADDRESS=h:5, JAX_PROCESS_ID=5)",
    ),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:5", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "5"},
      "JAX_PROCESS_ID=5 is out of range: it must be 0..0 (read JAX_COORDINATOR_ADDRESS=h:5, "
      "JAX_NUM_PROCESSES=1, JAX_PROCESS_ID=5)",
    ),
    (
      {"JAX_COORDINATOR_ADDRESS": "h:5", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
       "JAX_COORDINATOR_PORT": "70000"},
      "JAX_COORDINATOR_PORT=70000 is out of range: it must be 1..65535 (read "
      "JAX_COORDINATOR_ADDRESS=h:5, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=1, "
      "JAX_COORDINATOR_PORT=70000)",
    ),
  ],
)  # fmt: skip
def test_inconsistent_cluster_variables_are_named_not_run_alone(env, message):
  """Issue 33 item 9: a count or id without a coordinator, or a coordinator and an id
  without a count, ran one process alone (exit 0); a bad port beside an address passed."""
  with pytest.raises(cluster.ClusterError) as refused:
    cluster.cluster_job(env=env)
  assert str(refused.value) == message


def test_consistent_single_process_variables_still_run_alone():
  one = {"JAX_COORDINATOR_ADDRESS": "h:5", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
  for env in ({"JAX_NUM_PROCESSES": "1"}, {"JAX_PROCESS_ID": "0"}, one):
    assert cluster.cluster_job(env=env) is None
  assert cluster.cluster_job("h:5", 1, env={}) is None


_BEFORE_JAX = """
import sys
from gin_jax import cli, score
for main, argv in ((cli.main, ["--preset", "tiny", "--workdir", sys.argv[1]]),
                   (score.main, ["--checkpoint", sys.argv[1], "--data", "x", "--out", "y.csv"])):
  try:
    main(argv)
  except SystemExit as e:
    assert e.code == 2, e.code
  assert "jax" not in sys.modules, main.__module__
"""


def test_bad_cluster_variables_are_refused_before_jax_is_imported(tmp_path):
  """The check comes first: a bad SLURM_NTASKS costs a fraction of a second, not jax's import."""
  env = {**_env(), **_slurm("node1", ntasks="abc")}
  done = subprocess.run(
    [sys.executable, "-c", _BEFORE_JAX, str(tmp_path / "wd")],
    env=env, cwd=REPO, text=True, capture_output=True, timeout=LIMIT,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  errors = done.stderr.splitlines()
  assert len(errors) == 2 and all(e.startswith("error: SLURM_NTASKS='abc'") for e in errors), errors
  assert not (tmp_path / "wd").exists()
