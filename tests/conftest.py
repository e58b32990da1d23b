"""Test setup: 8 fake CPU devices, absl flags parsed for grain, one compilation cache.

The compilation cache: a run of the suite compiles the same programs many times
over (the tiny preset's steps in-process and in every subprocess a test starts).
JAX's persistent cache keeps each compiled program in a folder that this run
creates, that every xdist worker and every subprocess started with
`subprocess_env` shares, and that the run removes at its end; a program is then
compiled once per run. `test_compilation_cache.py` shows that it changes no
result (a run with a cold cache and one with a warm cache are bit-identical).
GIN_TEST_XLA_CACHE=off runs the suite without it.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_OWNER = "GIN_TEST_XLA_CACHE" not in os.environ  # the controller (or a plain run)
if _CACHE_OWNER:
  os.environ["GIN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="gin_jax_test_xla_cache-")
CACHE_VARS = {}
if os.environ["GIN_TEST_XLA_CACHE"] != "off":
  CACHE_VARS = {
    "JAX_COMPILATION_CACHE_DIR": os.environ["GIN_TEST_XLA_CACHE"],
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # every program, however quick
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  # A size limit makes jax lock the folder (filelock, a test dependency) around each
  # read and write, so that no process reads an entry another one is writing.
  if importlib.util.find_spec("filelock") is not None:
    CACHE_VARS["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(16 << 30)
  os.environ.update(CACHE_VARS)

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
jax.config.update("jax_default_matmul_precision", "highest")


def subprocess_env(devices: int | None = 1, **extra: str) -> dict:
  """The environment of a CPU subprocess: without this suite's JAX_* / XLA_* settings
  (8 fake devices, matmul precision), with `devices` fake CPU devices (None: jax's
  default) and the run's compilation cache; this checkout first on PYTHONPATH."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(CACHE_VARS, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.update(extra)
  return env


def pytest_unconfigure(config):
  if _CACHE_OWNER and not hasattr(config, "workerinput") and CACHE_VARS:
    shutil.rmtree(CACHE_VARS["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The modules in order of their cost (worker-seconds, from --durations=0): run with
# `--dist loadscope --no-loadscope-reorder` (.ci/run), each module is one unit of
# work and the costliest go first, so no worker is left with a long module at the
# end while the other idles. Modules not named here follow, in file order.
COSTLIEST_FIRST = (
  "test_train", "test_continuation", "test_reliability", "test_benchmarks", "test_sequences",
  "test_data_multi_valued", "test_embedding", "test_baselines", "test_serving",
  "test_delivery", "test_device_input", "test_cluster_startup", "test_interaction",
  "test_score", "test_score_memory", "test_data_parquet", "test_paper_bench",
  "test_data_workers", "test_model", "test_multi_valued", "test_score_race",
  "test_data_pipeline", "test_compilation_cache",
)  # fmt: skip


def _cost_rank(item) -> int:
  module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
  return COSTLIEST_FIRST.index(module) if module in COSTLIEST_FIRST else len(COSTLIEST_FIRST)


def pytest_collection_modifyitems(config, items):
  items.sort(key=_cost_rank)  # stable: a module's tests keep their order
  has_gpu = (
    any(d.platform == "gpu" for d in jax.devices())
    if os.environ.get("JAX_PLATFORMS") != "cpu"
    else False
  )
  skip = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords and not has_gpu:
      item.add_marker(skip)


# The guard: a test over MAX_TEST_SECONDS (setup, call and teardown together, its
# module's fixtures included) fails the run, so the suite keeps within its budget.
MAX_TEST_SECONDS = float(os.environ.get("GIN_TEST_MAX_SECONDS", "90"))
_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
  _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
  if hasattr(session.config, "workerinput"):
    return  # a worker: the controller sees every report
  over = sorted(((s, n) for n, s in _seconds.items() if s > MAX_TEST_SECONDS), reverse=True)
  if over:
    lines = "\n".join(f"  {s:.1f} s  {n}" for s, n in over)
    print(f"\nerror: {len(over)} test(s) took over {MAX_TEST_SECONDS:g} s:\n{lines}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
