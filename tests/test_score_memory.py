"""Issue 11 item 3: scoring memory does not grow with the number of rows.

Peak RSS of `python -m gin_jax.score` (a fresh process each) at 300k rows must
stay within 1.1x of the peak at 30k rows, for .csv and .npy outputs. Before the
streaming writer 500k rows needed ~2x the peak of 50k (all probabilities, then a
sorted list of (line, probability) tuples, were held at once): the growth is
linear in the rows over a fixed start (jax, the model), so 300k against 30k
still needed ~1.6x. benchmarks/score_memory.py runs the issue's own sizes (200k
and 2M rows).
"""

import subprocess
import sys

import numpy as np
import pytest
from conftest import subprocess_env

from benchmarks import score_memory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  """A directory holding a finished tiny run (`workdir`), as score_memory.run uses it."""
  path = tmp_path_factory.mktemp("score_memory")
  # The run score_memory.train_tiny would start (it reuses a finished one), with the
  # suite's compilation cache; the measured scorers run as the benchmark runs them.
  cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(path / "workdir")]
  subprocess.run(cmd, env=subprocess_env(), check=True, capture_output=True, cwd=score_memory.REPO)
  assert score_memory.train_tiny(path / "workdir") == path / "workdir"
  return path


def test_peak_rss_does_not_grow_with_rows(scratch):
  result = score_memory.run([30_000, 300_000], ["csv", "npy"], scratch)
  peaks = {(r["rows"], r["output"]): r["peak_rss_mib"] for r in result["records"]}
  for goal in result["goals"]:
    assert goal["pass"], (goal, peaks)
  # The outputs are complete: every row scored, AUC printed from the labels.
  big = [r for r in result["records"] if r["rows"] == 300_000]
  assert all("scored 300000 rows" in r["stdout"] and "AUC" in r["stdout"] for r in big)


def test_streamed_outputs_equal_the_in_memory_writer(scratch, tmp_path):
  """score_file (chunk by chunk, regrouped batches) writes what write_scores writes."""
  import jax

  from gin_jax import metrics as metrics_lib
  from gin_jax import scoring

  workdir = scratch / "workdir"
  rows = score_memory.criteo_file(tmp_path / "rows.tsv", 12_345).read_text().splitlines(True)
  rows[100] = "1\tbad row\n"
  rows[9000] = "0\tanother\n"
  path = tmp_path / "with_bad.tsv"
  path.write_text("".join(rows))
  scorer = scoring.Scorer.from_checkpoint(workdir, devices=jax.devices()[:1])
  probs, labels, lines, bad = scorer.predict_file(path, bad_rows="skip")
  for suffix in (".csv", ".npy"):
    whole, streamed = tmp_path / f"whole{suffix}", tmp_path / f"streamed{suffix}"
    scoring.write_scores(whole, probs, lines, bad)
    summary = scoring.score_file(scorer, path, streamed, bad_rows="skip")
    assert summary.rows == len(probs) == 12_343 and summary.bad.count == 2
    if suffix == ".csv":
      assert streamed.read_text() == whole.read_text()
    else:
      np.testing.assert_array_equal(np.load(streamed), np.load(whole))
      assert np.isnan(np.load(streamed)[[100, 9000]]).all()
      assert (tmp_path / "streamed.npy.skipped.json").read_text() == (
        tmp_path / "whole.npy.skipped.json"
      ).read_text()
  expected = metrics_lib.evaluate(labels, probs)
  assert summary.metrics["n"] == expected["n"]
  assert summary.metrics["auc"] == pytest.approx(expected["auc"], abs=1e-12)
  assert summary.metrics["logloss"] == pytest.approx(expected["logloss"], rel=1e-12)
