"""Offline scoring: CLI == Python API == export, AUC == trainer's, bad rows, errors."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from gin_jax import config as config_lib
from gin_jax import data, scoring, training
from gin_jax import metrics as metrics_lib
from gin_jax.training import checkpointing

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp("score_run")
  rep = training.run(config_lib.tiny(), wd, devices=jax.devices()[:1])
  # The trainer's test split, written back out as a raw Criteo file.
  cache = next(p for p in (wd / "data" / "cache").iterdir() if p.is_dir())
  _, splits = data.open_prepared(cache)
  wanted = set(np.asarray(splits["test"].line_numbers).tolist())
  source = next((wd / "data" / "cache").glob("synthetic-*.tsv"))
  lines = source.read_text().splitlines(keepends=True)
  test_file = wd / "test_rows.tsv"
  test_file.write_text("".join(line for i, line in enumerate(lines, 1) if i in wanted))
  return wd, rep, test_file, len(wanted)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "gin_jax.score", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True)  # fmt: skip


def test_python_api_auc_equals_trainers_test_auc(trained):
  wd, rep, test_file, n_test = trained
  probs, labels, lines, bad = scoring.Scorer.from_checkpoint(wd).predict_file(test_file)
  assert bad.count == 0 and len(probs) == n_test
  m = metrics_lib.evaluate(labels, probs)
  delivered = rep["stages"][rep["delivered_stage"]]  # the model the scorer loads
  assert m["auc"] == pytest.approx(delivered["test_auc"], abs=1e-6)
  assert m["logloss"] == pytest.approx(delivered["test_logloss"], abs=1e-6)
  assert np.all(np.diff(lines) > 0)  # input order


def test_seed_ensemble_scores_each_runs_split_as_the_trainer_did(trained, tmp_path):
  from benchmarks import seed_ensemble

  wd, rep, _, n_test = trained
  out = seed_ensemble.main(
    [str(wd), str(wd), "--split", "test", "--json", str(tmp_path / "e.json")]
  )
  assert out["rows"] == n_test and len(out["runs"]) == 2
  delivered = rep["stages"][rep["delivered_stage"]]
  for r in out["runs"]:  # each run's model on its own prepared test split: the trainer's AUC
    assert r["auc"] == pytest.approx(delivered["test_auc"], abs=1e-6)
  # The same model twice: the averaged probabilities are that model's.
  assert out["ensemble"]["auc"] == pytest.approx(out["runs"][0]["auc"], abs=1e-9)
  assert json.loads((tmp_path / "e.json").read_text())["ensemble"] == out["ensemble"]


def test_cli_equals_api_equals_export(trained, tmp_path):
  wd, _, test_file, _ = trained
  api, _, _, _ = scoring.Scorer.from_checkpoint(wd).predict_file(test_file)
  out = tmp_path / "scores.csv"
  proc = _run("--checkpoint", wd, "--data", test_file, "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert "AUC" in proc.stdout
  rows = _read_csv(out)
  assert [r["status"] for r in rows] == ["ok"] * len(api)
  np.testing.assert_allclose([float(r["probability"]) for r in rows], api, rtol=1e-6, atol=1e-7)

  export_dir = tmp_path / "export"
  scoring.export(wd, export_dir)
  exported = scoring.Scorer.from_export(export_dir)
  probs, _, _, _ = exported.predict_file(test_file)
  np.testing.assert_allclose(probs, api, rtol=1e-5, atol=1e-6)
  out_npy = tmp_path / "scores.npy"
  proc = _run("--exported", export_dir, "--data", test_file, "--out", out_npy)
  assert proc.returncode == 0, proc.stderr
  np.testing.assert_allclose(np.load(out_npy), api, rtol=1e-5, atol=1e-6)


def test_parquet_scores_stream_like_the_csv_with_skipped_rows(trained, tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  wd, _, test_file, _ = trained
  lines = test_file.read_text().splitlines(keepends=True)
  data_file = tmp_path / "with_bad.tsv"
  data_file.write_text("".join(lines[:2] + ["not a row\n"] + lines[2:40]))
  outs = {}
  for suffix in ("csv", "parquet"):
    outs[suffix] = tmp_path / f"scores.{suffix}"
    proc = _run(
      "--checkpoint", wd, "--data", data_file, "--bad-rows", "skip", "--out", outs[suffix]
    )
    assert proc.returncode == 0, proc.stderr
  table = pq.read_table(outs["parquet"]).to_pydict()
  rows = _read_csv(outs["csv"])
  assert table["line"] == [int(r["line"]) for r in rows] == list(range(1, 42))
  assert table["status"] == [r["status"] for r in rows] and table["status"][2].startswith("skipped")
  assert table["probability"][2] is None
  ok = [i for i, r in enumerate(rows) if r["status"] == "ok"]
  np.testing.assert_allclose(
    [table["probability"][i] for i in ok], [float(rows[i]["probability"]) for i in ok], atol=1e-8
  )


def test_export_runs_without_model_code(trained, tmp_path):
  """A fresh interpreter that imports only jax and numpy runs the artifact."""
  wd, _, _, _ = trained
  export_dir = tmp_path / "export"
  scoring.export(wd, export_dir)
  ids = np.zeros((3, 39), np.int32)
  expected = scoring.Scorer.from_export(export_dir).predict_batch(ids, np.ones((3, 39), np.float32))
  code = f"""
import sys, json, numpy as np, jax, jax.numpy as jnp
sys.modules['gin_jax'] = None  # any import of the model code would fail
d = {str(export_dir)!r}
exp = jax.export.deserialize(bytearray(open(d + '/score.stablehlo', 'rb').read()))
z = np.load(d + '/params.npz', allow_pickle=False)
w = [jnp.asarray(z[f'leaf_{{i}}']) for i in range(len(z.files))]
print(json.dumps(np.asarray(exp.call(w, jnp.zeros((3, 39), jnp.int32),
                                     jnp.ones((3, 39), jnp.float32))).tolist()))
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  np.testing.assert_allclose(json.loads(proc.stdout), expected, rtol=1e-6)


def test_unseen_categories_score_as_oov(trained):
  wd, _, test_file, _ = trained
  scorer = scoring.Scorer.from_checkpoint(wd)
  row = test_file.read_text().splitlines()[0].split("\t")
  unseen = "\t".join(row[:14] + ["deadbeef"] * 26)
  split = data.encode_rows(scorer.meta, [unseen])
  oov_rows = [f.offset for f in scorer.meta.fields[13:]]  # OOV is row 0 of each block
  assert np.asarray(split.ids)[0, 13:].tolist() == oov_rows
  assert np.isfinite(scorer.predict_rows([unseen])).all()


def test_bad_rows_error_and_skip(trained, tmp_path):
  wd, _, test_file, _ = trained
  good = test_file.read_text().splitlines()[:5]
  bad_file = tmp_path / "bad.tsv"
  bad_file.write_text("\n".join(good[:2] + ["1\tnot\tenough"] + good[2:]) + "\n")
  proc = _run("--checkpoint", wd, "--data", bad_file, "--out", tmp_path / "o.csv")
  assert proc.returncode == 2
  assert f"{bad_file}:3:" in proc.stderr
  out = tmp_path / "skip.csv"
  proc = _run("--checkpoint", wd, "--data", bad_file, "--out", out, "--bad-rows", "skip")
  assert proc.returncode == 0, proc.stderr
  rows = _read_csv(out)
  assert [int(r["line"]) for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[2]["probability"] == "" and rows[2]["status"].startswith("skipped")
  assert all(r["status"] == "ok" for i, r in enumerate(rows) if i != 2)


def test_error_cases_name_what_is_wrong(trained, tmp_path):
  wd, _, test_file, _ = trained
  with pytest.raises(scoring.ScoringError, match="not a training workdir"):
    scoring.Scorer.from_checkpoint(tmp_path)
  with pytest.raises(scoring.ScoringError, match="missing"):
    scoring.Scorer.from_export(tmp_path)
  # A truncated checkpoint: every array file cut short.
  broken = tmp_path / "broken"
  shutil.copytree(wd, broken)
  latest = max((broken / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  for f in (latest / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 16:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  with pytest.raises(scoring.ScoringError, match="does not match its seal"):
    scoring.Scorer.from_checkpoint(broken, step=int(latest.name))
  # Metadata from a different model (the config says 8-dim embeddings), sealed
  # as if a save had written it: intact by its seal, but it does not fit.
  other = tmp_path / "other"
  shutil.copytree(wd, other)
  latest = max((other / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  meta_file = next((latest / "meta").glob("*"))
  meta = json.loads(meta_file.read_text())
  for key in ("config", "effective_config"):
    meta[key]["model"]["embed_dim"] = 8
  meta_file.write_text(json.dumps(meta))
  checkpointing.seal(latest)
  with pytest.raises(scoring.ScoringError, match="cannot restore"):
    scoring.Scorer.from_checkpoint(other)
  proc = _run("--checkpoint", tmp_path / "nowhere", "--data", test_file, "--out", tmp_path / "x")
  assert proc.returncode == 2 and "error:" in proc.stderr


def test_readme_python_snippet_runs_as_written(trained, tmp_path, monkeypatch):
  wd, _, test_file, n_test = trained
  text = (REPO / "README.md").read_text()
  snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
  (tmp_path / "runs").mkdir()
  (tmp_path / "runs" / "demo").symlink_to(wd)
  shutil.copy(test_file, tmp_path / "new.tsv")
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(snippet, "README.md", "exec"), namespace)
  assert len(namespace["probs"]) == n_test and namespace["bad_rows"].count == 0
  np.testing.assert_allclose(namespace["row_probs"], namespace["probs"][:5], rtol=1e-6)


def test_a_small_call_pads_to_a_small_batch_not_to_the_eval_batch_size():
  """One row used to cost a 4,096-row batch (111 ms); now a 16-row one."""
  seen = []

  def score(ids, values):
    seen.append(len(ids))
    return np.zeros(len(ids), np.float32)

  scorer = scoring.Scorer(None, score, 4096, "a stand-in model", batch_multiple=8)
  for n in (1, 16, 17, 100, 4096, 5000):
    probs = scorer.predict_batch(np.zeros((n, 3), np.int32), np.ones((n, 3), np.float32))
    assert probs.shape == (n,)
  assert seen == [16, 16, 32, 128, 4096, 4096, 4096]
  assert scoring.Scorer(None, score, 4096, "6 devices", batch_multiple=6).batch_for(20) == 36
