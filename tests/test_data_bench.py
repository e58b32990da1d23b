"""Smoke test of benchmarks/data_bench.py on a tiny input."""

import json

import pytest

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


def test_data_bench_arrow_and_parquet(tmp_path, capsys):
  pytest.importorskip("pyarrow")
  payload = data_bench.main(
    ["--rows", "3000", "--batches", "2", "--batch", "256", "--arrow", "--parquet", "--repeats", "1"]
  )
  assert [r["config"] for r in payload["prepare"]][-1] == "parquet input"
  assert len(payload["parsers"]) == 4 and all(r["rows_per_s"] > 0 for r in payload["parsers"])
  assert "| pass-1 parsing" in capsys.readouterr().out
