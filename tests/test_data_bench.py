"""Smoke test of benchmarks/data_bench.py on a tiny input."""

import json
import sys

import pytest

from benchmarks import data_bench
from gin_jax.data import text


def test_data_bench_runs_and_writes_json(tmp_path, capsys, monkeypatch):
  # Worker processes even for this small input, in several chunks.
  monkeypatch.setattr(sys.modules["gin_jax.data.prepare"], "PROCESS_MIN_BYTES", 0)
  monkeypatch.setattr(sys.modules["gin_jax.data.prepare"], "THREADS_UP_TO", 1)
  monkeypatch.setattr(text, "CHUNK_BYTES", 1 << 18)
  out = tmp_path / "bench.json"
  payload = data_bench.main(
    [
      "--rows",
      "5000",
      "--batch",
      "256",
      "--batches",
      "5",
      "--workers",
      "1,2",
      "--engines",
      "--json",
      str(out),
    ]
  )
  saved = json.loads(out.read_text())
  assert saved["rows"] == 5000
  configs = [r["config"] for r in saved["prepare"]]
  assert configs == [
    "1 worker(s)", "2 worker(s)", "2 thread(s)", "2 process(es)", "spill to disk"
  ]  # fmt: skip
  assert all(r["rows_per_s"] > 0 for r in saved["prepare"])
  two = saved["prepare"][1]
  assert two["same_bytes_as_1"] is True and two["speedup_vs_1"] > 0
  assert two["children_cpu_s"] > 0  # the workers did the parsing
  threads, processes = saved["prepare"][2:4]
  assert threads["same_bytes_as_1"] is True and threads["children_cpu_s"] == 0
  assert processes["same_bytes_as_1"] is True and processes["children_cpu_s"] > 0
  assert saved["prepare"][4]["digest"] == saved["prepare"][0]["digest"]
  assert saved["loader"][0]["samples_per_s"] > 0
  assert set(payload["goals"]) == {"speedup_2_workers", "loader_samples_per_s"}
  table = capsys.readouterr().out
  assert "| prepare" in table and "| loader" in table and "x 1 worker" in table


def test_data_bench_arrow_and_parquet(tmp_path, capsys):
  pytest.importorskip("pyarrow")
  payload = data_bench.main(
    ["--rows", "3000", "--batches", "2", "--batch", "256", "--arrow", "--parquet", "--repeats", "1",
     "--stages"]
  )  # fmt: skip
  assert [r["config"] for r in payload["prepare"]][-1] == "parquet input"
  assert len(payload["parsers"]) == 4 and all(r["rows_per_s"] > 0 for r in payload["parsers"])
  stages = payload["stages"]
  assert stages["rows"] == 3000 and len(stages["stages"]) == 7
  # Every named stage still matches a function of prepare (a rename would zero it), and
  # no two stages overlap (the rest would go negative).
  assert all(0 < r["cpu_s"] <= stages["cpu_s"] for r in stages["stages"])
  out = capsys.readouterr().out
  assert "| pass-1 parsing" in out and "| prepare stage" in out
