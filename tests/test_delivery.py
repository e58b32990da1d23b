"""The delivery record (delivered.json) under attack (issue #25 items 3-5).

It decides which model is scored and exported: it may name only runs inside
the workdir (., from_linear, ensemble/member_<i>[/from_linear]), must agree
with report.json, and fingerprints each delivered model's config. Scorer,
exporter and trainer verify it; a run whose recipe has not delivered yet is
not scored.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import subprocess_env

from gin_jax import config as config_lib
from gin_jax import scoring, training
from gin_jax.training.workdir import DeliveryError, Workdir

REPO = Path(__file__).resolve().parents[1]


def _tiny(**train):
  cfg = config_lib.tiny()
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1, **train))


@pytest.fixture(scope="module")
def beat(tmp_path_factory):
  wd = tmp_path_factory.mktemp("beat")
  training.run(_tiny(stages="single", beat_linear=True), wd, devices=jax.devices()[:1])
  return wd


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
  wd = tmp_path_factory.mktemp("ens")
  training.run(_tiny(stages="single", ensemble=2), wd, devices=jax.devices()[:1])
  return wd


def _copy(src, tmp_path) -> Path:
  dst = tmp_path / "run"
  shutil.copytree(src, dst, symlinks=True)
  return dst


def _score_cli(wd, tmp_path, out=None, *extra):
  env = subprocess_env(devices=None)
  raw = tmp_path / "rows.tsv"
  data = next((wd / "data" / "cache").glob("*.tsv"), None)
  raw.write_text("\n".join(data.read_text().splitlines()[:50]) + "\n")
  cmd = [sys.executable, "-m", "gin_jax.score", "--checkpoint", str(wd), "--data", str(raw),
         "--out", str(out or tmp_path / "s.csv"), *extra]  # fmt: skip
  return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
  "content,problem",
  [
    ('{"workdir": "fro', "not valid JSON"),
    ('{"workdir": null}', "must be an object naming the delivered workdir"),
    ("[]", "must be an object naming the delivered workdir"),
    ('{"workdir": "../other_run"}', "the run delivers '../other_run', not itself or from_linear"),
    ('{"workdir": ".", "ensemble": []}', "'ensemble' must list distinct workdirs"),
    ('{"workdir": ".", "ensemble": [".", "../x"]}', "names '../x', not a run of this workdir"),
    ('{"workdir": "."}', "but report.json says beat_linear delivered"),
  ],
  ids=["truncated", "null", "a list", "outside", "empty ensemble", "member outside", "swapped"],
)
def test_a_tampered_delivery_record_is_refused_by_scorer_exporter_and_trainer(
  beat, tmp_path, content, problem
):
  wd = _copy(beat, tmp_path)
  assert json.loads((wd / "delivered.json").read_text())["workdir"] == "from_linear"
  (wd / "delivered.json").write_text(content)
  with pytest.raises(scoring.ScoringError, match=problem):
    scoring.Scorer.from_checkpoint(wd)
  with pytest.raises(scoring.ScoringError, match=problem):
    scoring.export(wd, tmp_path / "export")
  with pytest.raises(DeliveryError, match=problem):
    Workdir(wd).ensemble()  # what the trainer reads on a rerun
  proc = _score_cli(wd, tmp_path)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert problem.split("'")[0] in proc.stderr


def test_a_run_whose_recipe_has_not_delivered_is_not_scored(beat, ensemble, tmp_path):
  """delivered.json missing: beat_linear (killed in its linear fit or from_linear run)
  or an ensemble has not delivered; --step N still scores one of the run's checkpoints."""
  for run, recipe in ((beat, "train.beat_linear"), (ensemble, "train.ensemble")):
    wd = _copy(run, tmp_path / recipe)
    (wd / "delivered.json").unlink()
    with pytest.raises(scoring.ScoringError, match=f"the run is not finished \\({recipe}"):
      scoring.Scorer.from_checkpoint(wd)
    step = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert scoring.Scorer.from_checkpoint(wd, step=step).description.endswith(f"/{step}")


def test_a_foreign_ensemble_member_is_refused(ensemble, tmp_path, tmp_path_factory):
  """member_1 replaced, whole, by a run of another config (embed_dim 8)."""
  wd = _copy(ensemble, tmp_path)
  other = tmp_path_factory.mktemp("other")
  cfg = _tiny(stages="single")
  cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=8))
  training.run(cfg, other, devices=jax.devices()[:1])
  member = wd / "ensemble" / "member_1"
  shutil.rmtree(member)
  shutil.copytree(other, member, symlinks=True)
  for call in (lambda: scoring.Scorer.from_checkpoint(wd), lambda: scoring.export(wd, tmp_path)):
    with pytest.raises(scoring.ScoringError, match="another run is in its place"):
      call()


def test_scores_on_stdout_and_the_delivered_model_said_as_info(beat, tmp_path):
  """Issue 36 item 5: every scoring of a beat_linear run said `warning: ... the run delivered
  the model in .../from_linear; using it`, which is what it should do; `--out -` was a file."""
  proc = _score_cli(beat, tmp_path, "-")
  assert proc.returncode == 0, proc.stderr
  rows = proc.stdout.splitlines()
  assert rows[0] == "line,probability,status" and len(rows) == 51
  assert all(r.endswith(",ok") for r in rows[1:])
  assert "warning" not in proc.stderr.lower()
  assert f"info: {beat} delivered the model in {beat}/from_linear (delivered.json): " in proc.stderr
  assert "scored 50 rows with" in proc.stderr  # the summary too goes to stderr


def test_an_unknown_score_file_type_is_refused_before_the_model_loads(tmp_path):
  """--out x.json wrote csv into x.json."""
  (tmp_path / "rows.tsv").write_text("1\t2\n")
  cmd = [sys.executable, "-m", "gin_jax.score", "--checkpoint", str(tmp_path / "no_run"),
         "--data", str(tmp_path / "rows.tsv"), "--out", str(tmp_path / "x.json")]  # fmt: skip
  proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.strip() == (
    f"error: {tmp_path}/x.json: cannot write scores to a .json file; name a .csv, .npy or "
    ".parquet file, or - for csv on standard output"
  )
  assert not (tmp_path / "x.json").exists()
