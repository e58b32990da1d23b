"""Smoke test of benchmarks/data_bench.py on a tiny input."""

import json

from benchmarks import data_bench


def test_data_bench_runs_and_writes_json(tmp_path, capsys):
  out = tmp_path / "bench.json"
  payload = data_bench.main(
    ["--rows", "5000", "--batch", "256", "--batches", "5", "--json", str(out)]
  )
  saved = json.loads(out.read_text())
  assert saved["rows"] == 5000 and len(saved["prepare"]) == 3
  assert all(r["rows_per_s"] > 0 for r in saved["prepare"])
  assert saved["loader"][0]["samples_per_s"] > 0
  assert set(payload["goals"]) == {"prepare_rows_per_s", "loader_samples_per_s"}
  table = capsys.readouterr().out
  assert "| prepare" in table and "| loader" in table
