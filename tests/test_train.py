"""End to end: the two-stage trainer on the tiny preset (in-process and as subprocesses)."""

import dataclasses
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from gin_jax import config as config_lib
from gin_jax import scoring, training
from gin_jax.training import checkpointing

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def tiny(**train):
  cfg = config_lib.tiny()
  return config_lib.Config(
    name=cfg.name,
    model=cfg.model,
    data=cfg.data,
    train=dataclasses.replace(cfg.train, **train),
  )


def _losses(workdir):
  lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {(r["stage"], r["step"]): r["loss"] for r in lines if "loss" in r}


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("one")
  return wd, training.run(tiny(), wd, devices=jax.devices()[:1])


def test_tiny_trains_end_to_end_with_report(one_device_run):
  wd, rep = one_device_run
  for stage in ("search", "retrain"):
    assert 0.5 < rep["stages"][stage]["test_auc"] <= 1.0
    assert rep["stages"][stage]["valid_logloss"] > 0
  assert rep["kept_pairs"] and all(len(p) == 2 for p in rep["kept_pairs"])
  assert 0.0 <= rep["planted_pair_recall"] <= 1.0
  assert rep["config"]["name"] == "tiny"
  on_disk = json.loads((wd / "report.json").read_text())
  assert on_disk["stages"] == json.loads(json.dumps(rep["stages"]))
  assert (wd / "alpha_heatmap.png").stat().st_size > 1000
  assert _losses(wd)
  # Issue 36 item 8: the report's pictures, listed in report.json and linked from summary.md.
  assert set(on_disk["figures"]) == {"learning_curves", "reliability", "alpha_heatmap"}
  page = (wd / on_disk["summary_page"]).read_text()
  for path in on_disk["figures"].values():
    assert (wd / path).stat().st_size > 1000 and f"]({path})" in page


def test_eight_devices_match_one_device(one_device_run, tmp_path):
  wd1, rep1 = one_device_run
  rep8 = training.run(tiny(), tmp_path, devices=jax.devices())
  l1, l8 = _losses(wd1), _losses(tmp_path)
  assert l1.keys() == l8.keys()
  # Sharded reductions sum in another order: float32 round-off, amplified a
  # little by ~100 Adam steps. Stated tolerance: 1e-3 relative on every logged
  # loss, 2e-3 absolute on AUC; the kept pairs must be identical.
  np.testing.assert_allclose([l8[k] for k in l1], [l1[k] for k in l1], rtol=1e-3)
  for stage in ("search", "retrain"):
    assert abs(rep8["stages"][stage]["test_auc"] - rep1["stages"][stage]["test_auc"]) < 2e-3
  assert rep8["kept_pairs"] == rep1["kept_pairs"]


def test_pruned_alpha_is_exactly_zero_after_retraining(one_device_run):
  wd, _ = one_device_run
  loaded = scoring.load_checkpoint(wd, devices=jax.devices()[:1])
  params, masks = loaded.state["params"], loaded.state["masks"]
  for name, mask in masks.items():
    alpha, mask = np.asarray(params[name]["alpha"]), np.asarray(mask)
    assert (~mask).any() and mask.any()
    assert np.all(alpha[~mask] == 0.0)
    assert np.all(alpha[mask] != 0.0)


def test_rerun_on_finished_workdir_resumes_without_training(one_device_run, capsys):
  wd, rep = one_device_run
  before = (wd / "metrics.jsonl").read_text()
  again = training.run(tiny(), wd, devices=jax.devices()[:1])
  assert again["stages"] == rep["stages"]
  assert (wd / "metrics.jsonl").read_text() == before


def test_a_run_of_an_older_version_resumes_when_only_new_fields_are_missing(one_device_run):
  """config.json written before train.linear_start/linear_l2/ensemble existed: at their defaults."""
  wd, rep = one_device_run
  saved = json.loads((wd / "config.json").read_text())
  for key in ("linear_start", "linear_l2", "ensemble"):
    del saved["train"][key]
  (wd / "config.json").write_text(json.dumps(saved))
  assert training.run(tiny(), wd, devices=jax.devices()[:1])["stages"] == rep["stages"]
  saved["train"]["epochs"] = 7  # a field it knew, changed: still refused
  (wd / "config.json").write_text(json.dumps(saved))
  with pytest.raises(training.TrainingError, match=r"train.epochs: 7 -> 2"):
    training.run(tiny(), wd, devices=jax.devices()[:1])
  (wd / "config.json").write_text(json.dumps(tiny().to_dict()))


def test_different_config_is_refused_unless_overwrite(one_device_run, tmp_path):
  wd, _ = one_device_run
  with pytest.raises(training.TrainingError, match=r"different config.*train.keep_ratio"):
    training.run(tiny(keep_ratio=0.5), wd, devices=jax.devices()[:1])
  other = tmp_path / "copy"
  other.mkdir()
  (other / "config.json").write_text((wd / "config.json").read_text())
  rep = training.run(
    tiny(keep_ratio=0.5, epochs=1), other, overwrite=True, devices=jax.devices()[:1]
  )
  assert rep["config"]["train"]["keep_ratio"] == 0.5


def test_the_nonfinite_loss_message_names_only_a_checkpoint_that_exists(tmp_path):
  """Issue 33 item 7: it said the last good checkpoint in checkpoints/ was intact, with none."""
  from types import SimpleNamespace

  from gin_jax.training import loop, stages
  from gin_jax.training.workdir import Workdir

  ckpt = checkpointing.manager(tmp_path / "checkpoints", 3)
  ctx = SimpleNamespace(workdir=Workdir(tmp_path), ckpt=ckpt)
  state = {"nonfinite": np.int32(2), "step": np.int32(5)}
  said = "stage search: the loss was NaN or Inf in 2 step(s) before step 5; stopping without "
  advice = " (try a lower train.learning_rate or train.clip_norm)"
  with pytest.raises(training.TrainingError) as none_yet:
    loop._check_finite(ctx, state, stages.SEARCH)
  assert str(none_yet.value) == said + "saving. No checkpoint was saved before it" + advice
  checkpointing.save(ckpt, 4, {"w": np.zeros(2, np.float32)}, {"note": "finite"})
  with pytest.raises(training.TrainingError) as one:
    loop._check_finite(ctx, state, stages.SEARCH)
  newest = tmp_path / "checkpoints" / "4"
  assert str(one.value) == said + f"saving. The newest checkpoint, {newest}, is intact" + advice


def test_nonfinite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny(learning_rate=1e30, clip_norm=0.0, checkpoint_every=1000, log_every=1)
  with pytest.raises(training.TrainingError, match="NaN or Inf"):
    training.run(cfg, tmp_path, devices=jax.devices()[:1])
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))  # nothing bad was saved


def test_corrupted_latest_checkpoint_falls_back_to_previous(one_device_run, tmp_path, capsys):
  import shutil

  wd, rep = one_device_run
  shutil.copytree(wd, tmp_path / "wd")
  ckpts = sorted((tmp_path / "wd" / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  assert len(ckpts) >= 2
  for f in (ckpts[-1] / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  again = training.run(tiny(), tmp_path / "wd", devices=jax.devices()[:1])
  assert f"{ckpts[-1]} is unusable" in capsys.readouterr().out
  assert again["stages"]["retrain"]["test_auc"] == pytest.approx(
    rep["stages"]["retrain"]["test_auc"], abs=1e-6
  )


# ------------------------------------------------------------- subprocess runs


def _env(devices=1):
  return subprocess_env(devices)


def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(workdir), *extra]


# The tiny preset as `python -m train --preset tiny --train.checkpoint_every=10`
# (MID_EPOCH) builds it, SIGKILLed by the trainer's on_step hook right after global
# step argv[2].
MID_EPOCH = "--train.checkpoint_every=10"  # checkpoints inside an epoch (25 steps)
_KILL_SCRIPT = """
import os, signal, sys
from gin_jax import config, runtime, training
runtime.init_runtime()
def kill_at(step):
  if step == int(sys.argv[2]):
    os.kill(os.getpid(), signal.SIGKILL)
cfg = config.override(config.tiny(), {"train.checkpoint_every": "10"})
training.run(cfg, sys.argv[1], on_step=kill_at)
"""


def test_sigkill_mid_stage_then_resume_gives_identical_metrics(tmp_path):
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_train_cmd(full, MID_EPOCH), env=_env(), check=True, capture_output=True,
                 cwd=REPO)  # fmt: skip
  # tiny: 25 steps per epoch, checkpoints every 10: step 37 is mid-epoch 2 of
  # the search stage, 7 steps after the last checkpoint.
  cmd = [sys.executable, "-c", _KILL_SCRIPT, str(killed), "37"]
  proc = subprocess.run(cmd, env=_env(), capture_output=True, cwd=REPO)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (killed / "report.json").exists()
  proc = subprocess.run(
    _train_cmd(killed, MID_EPOCH), env=_env(), capture_output=True, cwd=REPO, text=True
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resuming from step 30" in proc.stdout
  a = json.loads((full / "report.json").read_text())
  b = json.loads((killed / "report.json").read_text())
  for stage in ("search", "retrain"):
    for key in ("valid_auc", "valid_logloss", "test_auc", "test_logloss"):
      assert a["stages"][stage][key] == b["stages"][stage][key], (stage, key)
  assert a["kept_pairs"] == b["kept_pairs"]
  la, lb = _losses(full), _losses(killed)
  assert all(la[k] == lb[k] for k in la)  # replayed steps logged identical losses


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The multi-process comparisons train on half the tiny preset's rows (12 steps an
# epoch, both epochs of both stages): the steps are not what they test, and a run
# of 2 processes costs its fixed start (gloo's connections, the compilations) and,
# per epoch, an evaluation and a checkpoint, each behind barriers.
HALF = "--data.synthetic_rows=2000"


@pytest.fixture(scope="module")
def one_process_four_devices(tmp_path_factory):
  """The reference run of the multi-process tests: (its stdout, its report)."""
  one = tmp_path_factory.mktemp("one_x4")
  proc = subprocess.run(
    _train_cmd(one, HALF), env=_env(4), check=True, capture_output=True, cwd=REPO, text=True
  )
  return proc.stdout, json.loads((one / "report.json").read_text())


def test_one_process_spreads_its_batch_over_four_devices(one_process_four_devices):
  """The reference of the multi-process tests is itself a sharded run: one process, a
  mesh of its 4 devices, both stages trained and evaluated. (Run first, it also keeps
  the reference's cost out of the two-process tests' own.)"""
  stdout, report = one_process_four_devices
  assert "mesh: 4 devices over 1 process(es)" in stdout
  assert report["delivered_stage"] == "retrain"
  for stage in ("search", "retrain"):
    assert report["stages"][stage]["epochs"] == 2
    assert 0.5 < report["stages"][stage]["test_auc"] < 1.0


def _slurm_port():
  """A free port that jax's SLURM cluster derives from a job id (61440 + id % 4096)."""
  for _ in range(100):
    port = _free_port()
    if port >= 61440:
      return port
  with socket.socket() as s:
    for port in range(61440, 65536):
      try:
        s.bind(("127.0.0.1", port))
        return port
      except OSError:
        continue
  pytest.skip("no free port in SLURM's range")


@pytest.mark.parametrize("launch", ["flags", "slurm"])
def test_two_processes_agree_with_one_process(tmp_path, one_process_four_devices, launch):
  """2 local processes x 2 devices (jax.distributed on 127.0.0.1) vs 1 process x 4 devices,
  started with --coordinator flags, or as a (fake) SLURM job step that joins by itself."""
  two = tmp_path / "two"
  if launch == "flags":
    port = _free_port()
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    extra = lambda i: [*flags, str(i)]
    env = lambda i: _env(2)
  else:
    job = _slurm_port() - 61440
    slurm = {"SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2"}
    extra = lambda i: []
    env = lambda i: {**_env(2), **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}
  procs = [
    subprocess.Popen(
      _train_cmd(two, HALF, *extra(i)),
      env=env(i),
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "over 2 process(es)" in outs[0][0]
  if launch == "slurm":
    assert "SLURM job detected" in outs[0][1]
  _, a = one_process_four_devices
  b = json.loads((two / "report.json").read_text())
  for stage in ("search", "retrain"):
    assert abs(a["stages"][stage]["test_auc"] - b["stages"][stage]["test_auc"]) < 2e-3
  assert a["kept_pairs"] == b["kept_pairs"]


def _boundary_state(wd, abstract_state):
  """The checkpoint written at the search -> retrain boundary (the retrain stage's start)."""
  mngr = checkpointing.manager(wd / "checkpoints", None)
  for step in mngr.all_steps():
    progress = checkpointing.read_meta(mngr, step)["progress"]
    if progress["stage"] == "retrain" and progress["epoch"] == 0 and not progress["iterator_state"]:
      return checkpointing.restore(mngr, step, abstract_state)[0]
  raise AssertionError("no boundary checkpoint")


@pytest.mark.parametrize("warm", [True, False])
def test_warm_start_begins_retrain_from_the_masked_search_weights(tmp_path, warm):
  training.run(tiny(warm_start=warm, keep_checkpoints=100), tmp_path, devices=jax.devices()[:1])
  loaded = scoring.load_checkpoint(tmp_path, devices=jax.devices()[:1])
  start = _boundary_state(tmp_path, loaded.fns.abstract_state)
  mngr = checkpointing.manager(tmp_path / "best_search", None)
  searched, _ = checkpointing.restore(mngr, mngr.latest_step(), loaded.fns.abstract_state)
  masks = {k: np.asarray(v) for k, v in start["masks"].items()}
  assert any((~m).any() for m in masks.values())
  for name, mask in masks.items():
    alpha = np.asarray(start["params"][name]["alpha"])
    assert np.all(alpha[~mask] == 0.0)  # pruned entries start at exactly 0 either way
    same_alpha = np.array_equal(alpha[mask], np.asarray(searched["params"][name]["alpha"])[mask])
    assert same_alpha == warm
  table = np.asarray(start["params"]["projection"]["table"])
  assert np.array_equal(table, np.asarray(searched["params"]["projection"]["table"])) == warm
  # Either way, retraining keeps pruned alpha at exactly 0.
  for name, mask in masks.items():
    assert np.all(np.asarray(loaded.state["params"][name]["alpha"])[~mask] == 0.0)


def test_failed_preparation_leaves_no_config_and_real_data_reports_no_planted_pairs(tmp_path):
  from gin_jax.data import DataError, SyntheticSpec, write_criteo_tsv

  path = tmp_path / "clicks.tsv"
  write_criteo_tsv(path, SyntheticSpec(num_rows=2000, max_vocab=40, seed=5))
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:100] + ["2\tnot a row\n"] + lines[100:]))
  base = tiny(epochs=1)
  data = dataclasses.replace(base.data, format="criteo", train=str(path))
  cfg = dataclasses.replace(base, data=data)
  wd = tmp_path / "wd"
  with pytest.raises(DataError, match=r"clicks.tsv:101: "):
    training.run(cfg, wd, devices=jax.devices()[:1])
  assert not (wd / "config.json").exists()
  # The corrected command (here: skip the bad row) is a new config, and is not refused.
  fixed = dataclasses.replace(cfg, data=dataclasses.replace(data, bad_rows="skip"))
  rep = training.run(fixed, wd, devices=jax.devices()[:1])
  assert rep["kept_pairs"] and rep["planted_pair_recall"] is None
  assert "planted_pair_chance" not in rep and "planted_pair_ranks" not in rep


def _linear_start(**train):
  cfg = tiny(**{"checkpoint_every": 10, **train})  # a checkpoint inside the first epoch
  return dataclasses.replace(
    cfg,
    model=dataclasses.replace(cfg.model, first_order=True, embed_init_std=1e-4),
    train=dataclasses.replace(cfg.train, linear_start=True),
  )


def _evals(workdir, stage):
  lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r for r in lines if r.get("event") == "eval" and r["stage"] == stage]


def test_linear_start_begins_as_the_fitted_regression_and_never_ends_below_it(tmp_path):
  rep = training.run(_linear_start(), tmp_path, devices=jax.devices()[:1])
  lin = json.loads((tmp_path / "linear" / "report.json").read_text())["stages"]["train"]
  start = _evals(tmp_path, "search")[0]
  # Evaluated before the first step: the regression (the deep part adds ~0 to
  # the logits while the embeddings are at their 1e-4 init).
  assert start["epoch"] == 0
  assert start["auc"] == pytest.approx(lin["valid_auc"], abs=1e-3)
  assert start["logloss"] == pytest.approx(lin["valid_logloss"], rel=1e-3)
  for stage in ("search", "retrain"):  # the best weights by valid AUC, the start included
    assert rep["stages"][stage]["valid_auc"] >= start["auc"] - 1e-9
    assert _evals(tmp_path, stage)[0]["epoch"] == 0


def test_linear_start_resumes_after_an_interruption_with_the_same_results(tmp_path):
  class Stop(Exception):
    pass

  def stop_at_15(step):
    if step == 15:
      raise Stop

  full = training.run(_linear_start(), tmp_path / "full", devices=jax.devices()[:1])
  with pytest.raises(Stop):
    training.run(_linear_start(), tmp_path / "cut", devices=jax.devices()[:1], on_step=stop_at_15)
  again = training.run(_linear_start(), tmp_path / "cut", devices=jax.devices()[:1])
  for stage in ("search", "retrain"):
    for key in ("valid_auc", "test_auc", "test_logloss", "epochs"):
      assert again["stages"][stage][key] == full["stages"][stage][key]
  assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def test_beat_linear_delivers_the_model_started_from_the_regression_when_it_validates_better(
  tmp_path,
):
  """A GIN that cannot learn (lr 1e-6) validates below the regression: the run trains
  GIN from the regression and delivers it, for the report, scoring and reruns alike."""
  from gin_jax import scoring

  cfg = tiny(learning_rate=1e-6, beat_linear=True, stages="single", epochs=1)
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  check = rep["beat_linear"]
  lin = json.loads((tmp_path / "linear" / "report.json").read_text())["stages"]["train"]
  assert check["linear_valid_auc"] == lin["valid_auc"]
  assert check["model_valid_auc"] < check["linear_valid_auc"]
  assert check["from_linear_valid_auc"] > check["model_valid_auc"]  # the rule that delivers it
  assert check["delivered"] == "from_linear"
  record = json.loads((tmp_path / "delivered.json").read_text())
  assert record["workdir"] == "from_linear" and set(record["configs"]) == {"from_linear"}
  second = json.loads((tmp_path / "from_linear" / "report.json").read_text())
  assert rep["stages"] == second["stages"] and rep["first_candidate"]["stages"]
  assert (tmp_path / "from_linear" / "linear").resolve() == (tmp_path / "linear").resolve()
  loaded = scoring.load_checkpoint(tmp_path, best=True, report=lambda m: None)
  assert loaded.cfg.model.first_order and loaded.cfg.train.linear_start
  again = training.run(cfg, tmp_path, devices=jax.devices()[:1])  # finished: read back
  assert again["stages"] == rep["stages"] and again["beat_linear"] == check


def test_ensemble_delivers_the_average_of_its_members_to_report_scoring_and_export(tmp_path):
  """train.ensemble=2: a second seed in ensemble/member_1; the report, the scorer and
  the export all give the average of the two models' probabilities."""
  from gin_jax import data, metrics

  cfg = tiny(ensemble=2, epochs=1)
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  member = tmp_path / "ensemble" / "member_1"
  record = json.loads((tmp_path / "delivered.json").read_text())
  assert (record["workdir"], record["ensemble"]) == (".", [".", "ensemble/member_1"])
  assert set(record["configs"]) == {".", "ensemble/member_1"}
  assert [m["seed"] for m in rep["ensemble"]] == [0, 1000]
  assert json.loads((member / "config.json").read_text())["train"]["seed"] == 1000
  # Each stage's metrics are those of the members' averaged probabilities.
  for stage in ("search", "retrain"):
    runs = [np.load(wd / "predictions" / f"{stage}_valid.npz") for wd in (tmp_path, member)]
    for r, own in zip(runs, rep["ensemble"]):
      assert metrics.evaluate(r["labels"], r["probs"])["auc"] == pytest.approx(
        own["stages"][stage]["valid_auc"], abs=1e-9
      )
    mean = (runs[0]["probs"].astype(np.float64) + runs[1]["probs"]) / 2
    auc = metrics.evaluate(runs[0]["labels"], mean)["auc"]
    assert rep["stages"][stage]["valid_auc"] == pytest.approx(auc, abs=1e-9)
    assert rep["stages"][stage]["models"] == 2
  # Each member's pruning is in the report, and how many members kept each pair.
  own = json.loads((member / "report.json").read_text())
  assert rep["ensemble"][1]["kept_pairs"] == own["kept_pairs"]
  assert rep["ensemble"][0]["kept_pairs"] == rep["kept_pairs"]
  kept = [{tuple(p) for p in m["kept_pairs"]} for m in rep["ensemble"]]
  votes = {tuple(v["pair"]): v["members"] for v in rep["kept_pairs_votes"]}
  assert votes == {p: (p in kept[0]) + (p in kept[1]) for p in kept[0] | kept[1]}
  assert [v["members"] for v in rep["kept_pairs_votes"]] == sorted(votes.values(), reverse=True)
  # Scoring the workdir averages the two delivered models.
  _, splits = data.open_prepared(next(p for p in (tmp_path / "data" / "cache").iterdir()
                                      if p.is_dir()))  # fmt: skip
  valid = splits["valid"]
  both = scoring.Scorer.from_checkpoint(tmp_path).predict_split(valid)
  alone = scoring.Scorer.from_checkpoint(tmp_path, step=rep["final_step"]).predict_split(valid)
  other = scoring.Scorer.from_checkpoint(member).predict_split(valid)
  assert np.abs(alone - other).max() > 1e-3  # two seeds, two models
  np.testing.assert_allclose(both, (alone.astype(np.float64) + other) / 2, atol=1e-6)
  # The members each deliver the stage that validates best for them (issue 36 item 7); the
  # report says which, with the metrics of the average that scoring gives.
  chosen = [m["delivered_stage"] for m in rep["ensemble"]]
  assert chosen[1] == own["delivered_stage"]
  if len(set(chosen)) == 1:
    assert rep["delivered_stage"] == chosen[0]
    delivered = rep["stages"][chosen[0]]
  else:
    assert rep["delivered_stage"] == chosen
    delivered = rep["delivered_metrics"]
  assert metrics.evaluate(np.asarray(valid.labels), both)["auc"] == pytest.approx(
    delivered["valid_auc"], abs=1e-6
  )
  exported = scoring.Scorer.from_export(scoring.export(tmp_path, tmp_path / "export"))
  np.testing.assert_allclose(exported.predict_split(valid), both, atol=1e-6)
  assert json.loads((tmp_path / "export" / "export.json").read_text())["models"] == 2
  again = training.run(cfg, tmp_path, devices=jax.devices()[:1])  # finished: read back
  assert again["stages"] == rep["stages"] and again["ensemble"] == rep["ensemble"]


def test_changing_train_ensemble_on_a_workdir_trains_only_the_members_it_lacks(tmp_path):
  """One model, then two (member 0 is not retrained), then one again: the report,
  delivered.json and the scorer follow train.ensemble each time."""
  from gin_jax import data

  devices = jax.devices()[:1]
  one = training.run(tiny(epochs=1), tmp_path, devices=devices)
  logged = (tmp_path / "metrics.jsonl").read_bytes()
  _, splits = data.open_prepared(next(p for p in (tmp_path / "data" / "cache").iterdir()
                                      if p.is_dir()))  # fmt: skip
  alone = scoring.Scorer.from_checkpoint(tmp_path).predict_split(splits["valid"])

  two = training.run(tiny(epochs=1, ensemble=2), tmp_path, devices=devices)
  assert (tmp_path / "metrics.jsonl").read_bytes() == logged  # member 0 read back
  assert two["ensemble"][0]["stages"] == one["stages"]
  assert [m["seed"] for m in two["ensemble"]] == [0, 1000]
  assert two["stages"]["retrain"]["models"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["train"]["ensemble"] == 2
  both = scoring.Scorer.from_checkpoint(tmp_path).predict_split(splits["valid"])
  assert np.abs(both - alone).max() > 1e-4

  again = training.run(tiny(epochs=1), tmp_path, devices=devices)
  assert again["stages"] == one["stages"] and "ensemble" not in again
  assert json.loads((tmp_path / "delivered.json").read_text())["workdir"] == "."
  assert json.loads((tmp_path / "report.json").read_text())["stages"] == one["stages"]
  np.testing.assert_array_equal(
    scoring.Scorer.from_checkpoint(tmp_path).predict_split(splits["valid"]), alone
  )
  # Any other field still refuses the workdir.
  with pytest.raises(training.TrainingError, match=r"different config.*train.seed"):
    training.run(tiny(epochs=1, ensemble=2, seed=1), tmp_path, devices=devices)


def test_beat_linear_keeps_a_model_that_validates_above_the_regression(tmp_path):
  cfg = tiny(beat_linear=True, epochs=3, stages="single")
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  check = rep["beat_linear"]
  assert check["model_valid_auc"] >= check["linear_valid_auc"]
  assert check["delivered"] == "." and not (tmp_path / "from_linear").exists()
  assert json.loads((tmp_path / "delivered.json").read_text())["workdir"] == "."


# ------------------------------------------------------------- issue 36 item 7


def test_the_stage_that_validates_best_is_delivered_and_the_pruned_one_stays(tmp_path, capsys):
  """One epoch a stage: the retrain validates below the search (0.55 vs 0.61 AUC), yet the
  run delivered the retrain. Now the search model is what the run delivers (report, log,
  scoring, --best, a rerun); the pruned model stays: best_retrain, --stage retrain."""
  from gin_jax import data

  cfg = tiny(epochs=1)
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  search, retrain = rep["stages"]["search"], rep["stages"]["retrain"]
  assert search["valid_auc"] > retrain["valid_auc"]  # what the test stands on
  assert rep["delivered_stage"] == "search"
  assert (
    "delivering the search stage's model: it validates best (valid AUC " in capsys.readouterr().out
  )
  assert json.loads((tmp_path / "report.json").read_text())["delivered_stage"] == "search"
  assert rep["kept_pairs"] and 0 < rep["kept_fraction"] < 1  # the pruned model's pairs still
  _, splits = data.prepare(cfg.data, tmp_path / "data" / "cache", progress=False)
  saved = {s: np.load(tmp_path / "predictions" / f"{s}_test.npz")["probs"] for s in rep["stages"]}
  one = jax.devices()[:1]
  picks = [({}, "search"), ({"best": True}, "search"), ({"stage": "retrain"}, "retrain")]
  for which, stage in [*picks, ({"stage": "search"}, "search")]:
    scorer = scoring.Scorer.from_checkpoint(tmp_path, devices=one, **which)
    np.testing.assert_allclose(scorer.predict_split(splits["test"]), saved[stage], rtol=1e-5)
  pruned = scoring.load_checkpoint(tmp_path, stage="retrain", devices=one).state["masks"]
  assert not all(np.asarray(m).all() for m in pruned.values())
  with pytest.raises(scoring.ScoringError, match="has no 'train' stage: its runs' stages are"):
    scoring.Scorer.from_checkpoint(tmp_path, stage="train")
  again = training.run(cfg, tmp_path, devices=one)  # finished: read back, the same delivery
  assert again["delivered_stage"] == "search" and again["kept_pairs"] == rep["kept_pairs"]


def test_early_stopping_on_logloss_keeps_the_epoch_of_the_lowest_validation_logloss(tmp_path):
  """Early stopping on AUC alone delivered a model of validation logloss 0.3046 against
  0.2493 at epoch 1 (Frappe). train.early_stop_metric=logloss keeps each stage's epoch of
  the lowest validation logloss, and delivers the stage of the lowest; the report holds the
  test calibration."""
  cfg = tiny(early_stop_metric="logloss", patience=5)
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  for stage, r in rep["stages"].items():
    evals = [x["logloss"] for x in lines if x.get("event") == "eval" and x["stage"] == stage]
    assert r["valid_logloss"] == pytest.approx(min(evals), rel=1e-6)
  best = min(rep["stages"], key=lambda s: rep["stages"][s]["valid_logloss"])
  assert rep["delivered_stage"] == best
  c = rep["calibration"]
  assert c["stage"] == best and c["split"] == "test" and 0 <= c["ece"] < 1
  assert c["observed_rate"] == pytest.approx(rep["stages"][best]["test_observed_rate"])
  assert sum(b["n"] for b in c["bins"]) == 411  # every test row in a bin


def test_the_best_epoch_is_the_one_of_train_early_stop_metric(monkeypatch):
  """Epoch 2 raises the validation AUC and the logloss both: AUC keeps epoch 2 as the
  stage's best, logloss keeps epoch 1 and counts epoch 2 as a bad epoch."""
  import types

  from gin_jax.training import loop
  from gin_jax.training.resume import Progress

  evals = [{"auc": 0.70, "logloss": 0.25}, {"auc": 0.72, "logloss": 0.30}]
  for metric, kept, bad in (("auc", [0.70, 0.72], 0), ("logloss", [0.25], 1)):
    said, kept_values = iter(evals), []
    monkeypatch.setattr(loop, "validate", lambda *a, said=said: next(said))
    monkeypatch.setattr(
      loop,
      "keep_as_best",
      lambda c, s, st, p, v, kept_values=kept_values: (
        kept_values.append(v),
        setattr(p, "best_value", v),
      ),
    )
    cfg = tiny(early_stop_metric=metric)
    ctx = types.SimpleNamespace(cfg=cfg, splits={"valid": [0]})
    progress = Progress(stage="search")
    for _ in evals:
      loop._end_of_epoch(ctx, None, None, progress)
    assert kept_values == kept and progress.bad_epochs == bad and progress.best_value == kept[-1]


@pytest.mark.parametrize(
  "train, valid, chosen",
  [
    ({}, {"search": 0.61, "retrain": 0.55}, "search"),
    ({}, {"search": 0.55, "retrain": 0.61}, "retrain"),
    ({}, {"search": 0.61, "retrain": 0.61}, "retrain"),  # a tie keeps the pruned model
    ({"deliver": "last"}, {"search": 0.61, "retrain": 0.55}, "retrain"),
    ({"early_stop_metric": "logloss"}, {"search": 0.30, "retrain": 0.25}, "retrain"),
    ({"early_stop_metric": "logloss"}, {"search": 0.25, "retrain": 0.30}, "search"),
    ({}, {}, "retrain"),  # no validation split
  ],
)
def test_the_delivered_stage_is_chosen_by_the_early_stop_metric(monkeypatch, train, valid, chosen):
  import types

  from gin_jax.training import loop
  from gin_jax.training.resume import Progress
  from gin_jax.training.workdir import Workdir

  restored = []
  monkeypatch.setattr(loop, "restore_best", lambda c, stage, s: restored.append(stage.name) or s)
  cfg = tiny(**train)
  key = f"valid_{cfg.train.early_stop_metric}"
  progress = Progress(stage="retrain", results={s: {key: v} for s, v in valid.items()})
  ctx = types.SimpleNamespace(cfg=cfg, workdir=Workdir("w"))
  assert loop._deliver(ctx, "state", progress) == "state"
  assert progress.delivered == chosen and restored == ([] if chosen == "retrain" else [chosen])


# ------------------------------------------------------------- issue 36 item 9


def test_grouped_auc_in_the_log_the_report_and_the_scorer(tmp_path, capsys):
  """--group-by C1: gAUC beside AUC in the log, report.json, the summary table and
  `gin_jax.score --group-by C1`, each the rows-weighted mean of the groups' AUCs."""
  from gin_jax import data, metrics
  from gin_jax import score as score_cli

  cfg = tiny(epochs=1, stages="single", group_by="C1")
  rep = training.run(cfg, tmp_path, devices=jax.devices()[:1])
  out = capsys.readouterr().out
  assert "train epoch 1: valid AUC " in out and ", gAUC " in out and "(by C1)" in out
  assert "| test gAUC |" in out
  meta, splits = data.prepare(cfg.data, tmp_path / "data" / "cache", progress=False)
  column = meta.group_column("C1")
  for split in ("valid", "test"):
    saved = np.load(tmp_path / "predictions" / f"train_{split}.npz")
    groups = np.asarray(splits[split].ids[:, column])
    np.testing.assert_array_equal(saved["groups"], groups)
    want = metrics.grouped_auc(saved["labels"], saved["probs"], groups)
    assert rep["stages"]["train"][f"{split}_gauc"] == want["gauc"] and want["groups"] > 5
    assert want["gauc"] != rep["stages"]["train"][f"{split}_auc"]
  assert rep["summary"]["train"]["test_gauc"] == rep["stages"]["train"]["test_gauc"]
  # The scorer, on the test rows as a file.
  source = next((tmp_path / "data" / "cache").glob("*.tsv")).read_text().splitlines(keepends=True)
  rows = tmp_path / "test_rows.tsv"
  rows.write_text("".join(source[i - 1] for i in np.asarray(splits["test"].line_numbers)))
  score_cli.main(["--checkpoint", str(tmp_path), "--data", str(rows), "--out",
                  str(tmp_path / "s.csv"), "--group-by", "C1"])  # fmt: skip
  said = capsys.readouterr().out
  gauc = float(said.split("gAUC ")[1].split()[0])
  assert gauc == pytest.approx(rep["stages"]["train"]["test_gauc"], abs=1e-6)
  assert "groups with both classes, each weighted by its rows)" in said
  scorer = scoring.Scorer.from_checkpoint(tmp_path)
  with pytest.raises(data.DataError, match="--group-by C01: not a field of the data .*; did you"):
    scoring.score_file(scorer, rows, tmp_path / "t.csv", group_by="C01")
  # A misspelt field stops a run before it writes config.json (which would hold the workdir).
  with pytest.raises(data.DataError, match="did you mean C1"):
    training.run(tiny(group_by="C01"), tmp_path / "typo", devices=jax.devices()[:1])
  assert not (tmp_path / "typo" / "config.json").exists()
