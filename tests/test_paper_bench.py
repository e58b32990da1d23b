"""`python -m benchmarks.paper` end to end on tiny synthetic data: Table 3, a Figure 3
sweep, a --config file, and a rerun that reuses every finished run."""

import json
from pathlib import Path

import pytest

from benchmarks import paper

pytestmark = pytest.mark.slow


def test_paper_harness_tables_figure_and_resume(tmp_path, capsys):
  study = tmp_path / "study.yaml"
  study.write_text("train: {epochs: 1, checkpoint_every: 1000}\ndata: {synthetic_rows: 3000}\n")
  argv = ["--preset", "tiny", "--config", str(study), "--models", "fm,aoanet"]
  argv += ["--seeds", "2", "--sweep", "L=1,2", "--name", "ci", "--devices", "1"]
  argv += ["--workdir-root", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out")]
  payload = paper.main(argv)

  rows = {t["row"]: t for t in payload["table3"]}
  assert list(rows) == ["FM", "GIN", "AOANet"]
  for t in rows.values():
    assert t["seeds"] == 2 and 0.5 < t["test_auc"] <= 1.0 and t["test_auc_std"] > 0
    assert t["params"] > t["dense_params"] >= 1 and t["train_samples_per_s"] > 0
  assert rows["GIN"]["params"] == rows["AOANet"]["params"]
  # One protocol: every run read the same prepared data and trained 1 epoch of 3000 rows.
  configs = [json.loads((Path(r["workdir"]) / "config.json").read_text())
             for r in payload["runs"]]  # fmt: skip
  assert len({json.dumps(c["data"], sort_keys=True) for c in configs}) == 1
  assert {c["train"]["seed"] for c in configs} == {0, 1}
  assert payload["model_configs"]["fm"]["arch"] == "fm"
  (sweep,) = payload["sweeps"].values()
  assert [p["value"] for p in sweep["points"]] == ["1", "2"]
  assert all(p["AOANet"]["seeds"] == 2 for p in sweep["points"])
  # The sweep point at the base config is the Table 3 run itself.
  assert sweep["points"][1]["AOANet"]["test_auc"] == rows["AOANet"]["test_auc"]
  out = tmp_path / "out"
  assert (out / "paper_ci_L.png").stat().st_size > 1000
  assert "| AOANet |" in (out / "paper_ci.md").read_text().replace("  ", " ")
  assert json.loads((out / "paper_ci.json").read_text())["table3"][0]["row"] == "FM"
  err = capsys.readouterr().err
  assert "[8/8] aoanet seed 1" in err and "eta" in err
  for r in payload["runs"]:  # --devices 1: each run's mesh (the suite has 8 fake devices)
    assert "mesh: 1 devices over 1 process(es)" in (Path(r["workdir"]) / "quality.log").read_text()

  # A rerun trains nothing: every run is read back from its workdir.
  logs = {p: p.read_text() for p in (tmp_path / "runs").rglob("metrics.jsonl")}
  again = paper.main(argv)
  assert all(p.read_text() == text for p, text in logs.items())
  assert all(r["reused"] for r in again["runs"])
  assert again["table3"] == payload["table3"]


def test_model_bench_tiny_writes_one_row_per_model(tmp_path):
  from benchmarks import model_bench

  out = tmp_path / "models.json"
  argv = ["--preset", "tiny", "--batch", "64", "--rows", "500", "--target-s", "0.02"]
  payload = model_bench.main([*argv, "--models", "gin,dcnv2", "--json", str(out), "--devices", "1"])
  assert payload["backend"]["mesh_devices"] == 1
  assert [r["model"] for r in payload["results"]] == ["gin", "dcnv2"]
  for r in payload["results"]:
    assert r["train_samples_per_s"] > 0 and r["score_samples_per_s"] > 0 and r["timed_steps"] >= 3
  assert payload["results"][0]["train_vs_gin"] == 1.0
  assert json.loads(out.read_text())["batch_size"] == 64
