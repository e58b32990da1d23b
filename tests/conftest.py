"""Test setup: 8 fake CPU devices, absl flags parsed for grain."""

import os
import subprocess
import sys
from pathlib import Path

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_benchmark():
  """Runs `python -m benchmarks.NAME *argv` in a fresh process; returns the CompletedProcess.

  For the benchmark smoke tests, which check what a benchmark writes, not how fast
  it runs: their time goes into XLA's compiles, and XLA's CPU backend compiles
  2-3x faster with its LLVM optimisations off (`--xla_backend_optimization_level=0`),
  a flag read once per process. The process (and any it starts) sees this one's
  8 CPU devices and matmul precision. Fails the test with its stderr if it fails.
  """

  def run(module: str, argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    env["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc

  return run


def pytest_collection_modifyitems(config, items):
  has_gpu = (
    any(d.platform == "gpu" for d in jax.devices())
    if os.environ.get("JAX_PLATFORMS") != "cpu"
    else False
  )
  skip = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords and not has_gpu:
      item.add_marker(skip)
