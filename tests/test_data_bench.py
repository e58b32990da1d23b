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
