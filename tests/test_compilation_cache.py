"""The suite's shared compilation cache (tests/conftest.py) changes no result.

A tiny training run in a fresh process with an empty cache compiles every
program and stores it; the same run again loads every program from the cache
(nothing new is stored) and must log the same losses and report the same
metrics, bit for bit.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow


def _run(workdir, cache):
  env = subprocess_env(1, JAX_COMPILATION_CACHE_DIR=str(cache))
  cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(workdir),
         "--train.epochs=1"]  # fmt: skip
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  report = json.loads((workdir / "report.json").read_text())
  for stage in report["stages"].values():
    del stage["seconds"]  # wall-clock time
  return [r for r in losses if "loss" in r], report["stages"], report["kept_pairs"]


def test_a_warm_compilation_cache_changes_no_result(tmp_path):
  cache = tmp_path / "cache"
  cold = _run(tmp_path / "cold", cache)
  stored = sorted(p.name for p in cache.iterdir())
  assert len([n for n in stored if n.endswith("-cache")]) >= 5  # every program was stored
  warm = _run(tmp_path / "warm", cache)
  assert sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache")) == [
    n for n in stored if n.endswith("-cache")
  ]  # nothing compiled anew: every program came from the cache
  timing = ("samples_per_s",)  # wall-clock
  for a, b in zip(cold[0], warm[0], strict=True):
    assert {k: v for k, v in a.items() if k not in timing} == {
      k: v for k, v in b.items() if k not in timing
    }
  assert cold[1:] == warm[1:]
