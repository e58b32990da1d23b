"""Issue 11: faults a hostile user can cause, each reproduced and handled.

Every test here failed before its fix. The trained workdirs come from the real
command line (`python -m train --preset tiny`), copied before each fault.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import _KILL_SCRIPT, MID_EPOCH, _env  # the SIGKILL script; a subprocess environment

from gin_jax import config as config_lib
from gin_jax import training
from gin_jax.training import checkpointing
from gin_jax.training.workdir import Workdir, check_config, discard_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def train(workdir, *extra):
  cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(workdir), *extra]
  return subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)


def score(*args):
  cmd = [sys.executable, "-m", "gin_jax.score", *map(str, args)]
  return subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)


def steps(directory):
  return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def flip_bytes(step_dir, n=64, name=None):
  """Inverts n bytes in the middle of a file of a checkpoint's state: the largest
  (array data), or the one called `name` (e.g. the OCDBT manifest, which makes
  orbax itself fail with DATA_LOSS)."""
  files = [p for p in (Path(step_dir) / "state").rglob("*") if p.is_file()]
  target = max(files, key=lambda p: p.stat().st_size if name is None else p.name == name)
  data = bytearray(target.read_bytes())
  mid = len(data) // 2
  data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
  target.write_bytes(bytes(data))
  return target


def assert_clean(proc):
  """One-line errors and warnings only: no traceback, no asyncio noise."""
  for stream in (proc.stdout, proc.stderr):
    assert "Traceback" not in stream, stream[-3000:]
    assert "Event loop is closed" not in stream, stream[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished tiny run (via the CLI) and a file of 600 of its rows to score."""
  wd = tmp_path_factory.mktemp("trained") / "wd"
  proc = train(wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  source = next((wd / "data" / "cache").glob("synthetic-*.tsv"))
  rows = wd.parent / "rows.tsv"
  rows.write_text("".join(source.read_text().splitlines(keepends=True)[:600]))
  return wd, rows


@pytest.fixture
def workdir(trained, tmp_path):
  wd, _ = trained
  shutil.copytree(wd, tmp_path / "wd")
  return tmp_path / "wd"


def report(workdir):
  return json.loads((Path(workdir) / "report.json").read_text())


def metrics_of(rep):
  """Per-stage results without the wall-clock seconds."""
  return {k: {m: v for m, v in r.items() if m != "seconds"} for k, r in rep["stages"].items()}


# ------------------------------------------------------------- 1. sealed checkpoints


def test_trainer_falls_back_past_flipped_bytes_and_finishes_identically(trained, workdir):
  original = report(trained[0])
  newest = steps(workdir / "checkpoints")[-1]
  flip_bytes(workdir / "checkpoints" / str(newest))
  (workdir / "report.json").unlink()
  proc = train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoints/{newest} is unusable" in proc.stdout
  assert "does not match its seal" in proc.stdout
  assert_clean(proc)
  again = report(workdir)
  assert metrics_of(again) == metrics_of(original)
  assert again["kept_pairs"] == original["kept_pairs"]


@pytest.mark.parametrize("name", [None, "manifest.ocdbt"])
def test_scorer_refuses_a_flipped_checkpoint_and_falls_back_when_asked_for_the_latest(
  trained, workdir, tmp_path, name
):
  _, rows = trained
  newest = steps(workdir / "checkpoints")[-1]
  flip_bytes(workdir / "checkpoints" / str(newest), name=name)
  out = tmp_path / "scores.csv"
  proc = score("--checkpoint", workdir, "--step", newest, "--data", rows, "--out", out)
  assert proc.returncode == 2
  assert f"checkpoints/{newest} is unusable" in proc.stderr and "seal" in proc.stderr
  assert not out.exists()
  assert_clean(proc)
  proc = score("--checkpoint", workdir, "--data", rows, "--out", out)
  assert proc.returncode == 0, proc.stderr
  previous = steps(workdir / "checkpoints")[-2]
  assert f"checkpoints/{newest} is unusable" in proc.stderr
  assert f"using {workdir}/checkpoints/{previous} instead" in proc.stderr
  assert_clean(proc)
  lines = out.read_text().splitlines()[1:]
  assert len(lines) == 600 and all(line.endswith(",ok") for line in lines)
  assert all(np.isfinite(float(line.split(",")[1])) for line in lines)


def test_a_sealed_checkpoint_with_nan_parameters_is_never_scored(trained, workdir, tmp_path):
  from gin_jax import scoring as scoring_lib

  _, rows = trained
  loaded = scoring_lib.load_checkpoint(workdir, devices=jax.devices()[:1])
  mngr = checkpointing.manager(workdir / "checkpoints", None)
  newest = steps(workdir / "checkpoints")[-1]
  meta = checkpointing.read_meta(mngr, newest)
  params = jax.tree.map(np.array, loaded.state["params"])
  params["projection"]["table"][3, 1] = np.nan
  bad = newest + 1000
  checkpointing.save(mngr, bad, {**loaded.state, "params": params}, meta)
  out = tmp_path / "scores.csv"
  proc = score("--checkpoint", workdir, "--step", bad, "--data", rows, "--out", out)
  assert proc.returncode == 2 and "NaN or Inf" in proc.stderr, proc.stderr
  assert not out.exists()
  proc = score("--checkpoint", workdir, "--data", rows, "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert f"using {workdir}/checkpoints/{newest} instead" in proc.stderr
  probs = [float(x.split(",")[1]) for x in out.read_text().splitlines()[1:]]
  assert len(probs) == 600 and np.isfinite(probs).all()


# ------------------------------------------------------------- 4. one run per workdir

# `python -m train --preset tiny` that stops at global step 3 and waits there,
# holding the workdir (as a long run would), until it is killed.
_HOLD_SCRIPT = """
import sys, time
from gin_jax import config, runtime, training
runtime.init_runtime()
def hold(step):
  if step == 3:
    print("holding", flush=True)
    time.sleep(600)
training.run(config.tiny(), sys.argv[1], on_step=hold)
"""


def test_a_second_run_on_a_busy_workdir_exits_2_naming_the_holder(tmp_path):
  wd = tmp_path / "wd"
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD_SCRIPT, str(wd)],
    env=_env(),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    for line in holder.stdout:  # its log, up to the point where it holds the workdir
      if line.strip() == "holding":
        break
    assert holder.poll() is None
    proc = train(wd)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {wd} is in use by process {holder.pid}"
    assert_clean(proc)
  finally:
    holder.kill()
    holder.wait()
  # That the kernel releases a killed holder's lock is shown by every resume
  # after a SIGKILL (test_metrics_jsonl_holds_each_step_once_after_a_resume,
  # test_train.py::test_sigkill_mid_stage_then_resume_gives_identical_metrics).


# ------------------------------------------------------------- 5. the config guard


def test_deleting_config_json_does_not_let_another_config_resume(workdir):
  before = steps(workdir / "checkpoints")
  (workdir / "config.json").unlink()
  proc = train(workdir, "--train.keep_ratio=0.5")
  assert proc.returncode == 2
  assert "different config (train.keep_ratio: 0.3 -> 0.5" in proc.stderr
  assert f"per {workdir}/checkpoints/{before[-1]}" in proc.stderr
  assert_clean(proc)
  assert steps(workdir / "checkpoints") == before  # nothing discarded


def test_checkpoints_that_do_not_fit_are_never_silently_discarded(workdir):
  """Same config, but 8 devices pad the table differently than the 1 it was trained on."""
  before = steps(workdir / "checkpoints")
  cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(workdir)]
  proc = subprocess.run(cmd, env=_env(8), capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2
  assert f"{workdir}/checkpoints/{before[-1]} holds an embedding table of" in proc.stderr
  assert "--overwrite" in proc.stderr
  assert_clean(proc)
  assert steps(workdir / "checkpoints") == before
  proc = subprocess.run(
    cmd + ["--overwrite"], env=_env(8), capture_output=True, text=True, cwd=REPO
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "discarding the run and starting afresh" in proc.stdout
  assert "starting tiny" in proc.stdout


def test_an_unparsable_config_json_is_named(workdir):
  (workdir / "config.json").write_text('{"name": "tiny", ')
  proc = train(workdir)
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith(f"error: {workdir}/config.json: cannot read the run's config (")
  )
  assert_clean(proc)


# Issue 33 item 1: what --overwrite may delete. Only a gin_jax run's own outputs:
# never a folder that is not a run, an input file, a link's target, nor a file
# that merely starts with best_.


def _someone_elses(root):
  """A folder that is not a gin_jax run: another program's config.json, checkpoints, log."""
  (root / "checkpoints" / "7").mkdir(parents=True)
  (root / "checkpoints" / "7" / "weights.bin").write_bytes(b"w")
  (root / "config.json").write_text('{"theme": "dark"}')
  (root / "metrics.jsonl").write_text('{"epoch": 1}\n')
  return root


def _contents(root):
  return {
    str(p.relative_to(root)): p.read_bytes()
    for p in sorted(Path(root).rglob("*"))
    if p.is_file() and p.name != ".lock"
  }


def test_overwrite_never_discards_a_folder_that_is_not_a_gin_jax_run(tmp_path):
  home = _someone_elses(tmp_path / "home")
  before = _contents(home)
  proc = train(home, "--overwrite")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
    f"error: {home}/config.json: cannot read the run's config (not a gin_jax run's config: "
    "it has no model, data and train sections); fix or delete it, or use another --workdir "
    "(--overwrite discards only a gin_jax run, and this folder holds no sealed checkpoint)"
  ]
  assert _contents(home) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_with_a_runs_file_names_but_no_run_is_refused(tmp_path, overwrite):
  """No config.json: a run there would append to its metrics.jsonl and rotate its checkpoints."""
  wd = _someone_elses(tmp_path / "wd")
  (wd / "config.json").unlink()
  before = _contents(wd)
  with pytest.raises(training.TrainingError) as refused:
    check_config(Workdir(wd), config_lib.tiny(), overwrite)
  assert str(refused.value) == (
    f"{wd} holds checkpoints, metrics.jsonl but no config.json nor sealed checkpoint: it is not "
    "a gin_jax run, and a run there would overwrite them; use another --workdir"
  )
  assert _contents(wd) == before


def _a_run_of_another_config(wd):
  """A gin_jax workdir whose config.json differs from tiny's (discarded by --overwrite)."""
  (wd / "predictions").mkdir(parents=True)
  other = config_lib.override(config_lib.tiny(), {"train.keep_ratio": "0.5"})
  (wd / "config.json").write_text(other.to_json())
  return wd


@pytest.mark.parametrize("role", ["train", "valid", "test", "schema"])
def test_overwrite_never_deletes_an_input_file(tmp_path, role):
  wd = _a_run_of_another_config(tmp_path / "wd")
  data_file = wd / "predictions" / "day0.tsv"
  data_file.write_text("1\t2\n")
  cfg = config_lib.override(config_lib.tiny(), {f"data.{role}": str(data_file)})
  with pytest.raises(training.TrainingError) as refused:
    check_config(Workdir(wd), cfg, True)
  assert str(refused.value) == (
    f"--overwrite would delete {wd}/predictions, which holds the --{role} file {data_file}: "
    "move it out of the run's outputs, or use another --workdir"
  )
  assert data_file.exists()


def test_overwrite_deletes_no_links_target_and_only_the_stages_best_folders(tmp_path):
  wd = _a_run_of_another_config(tmp_path / "wd")
  (wd / "best_notes.txt").write_text("mine")  # not a stage's best checkpoint
  (wd / "best_search" / "9").mkdir(parents=True)
  elsewhere = tmp_path / "scratch"
  elsewhere.mkdir()
  (wd / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
  with pytest.raises(training.TrainingError) as refused:
    check_config(Workdir(wd), config_lib.tiny(), True)
  assert str(refused.value) == (
    f"--overwrite would delete {wd}/checkpoints, a link to {elsewhere}: it deletes no link's "
    "target; remove the link yourself, or use another --workdir"
  )
  (wd / "checkpoints").unlink()
  assert check_config(Workdir(wd), config_lib.tiny(), True)
  discard_run(Workdir(wd))
  assert sorted(p.name for p in wd.iterdir()) == ["best_notes.txt"]


# ------------------------------------------------------------- 6. a corrupt best_<stage>

# `python -m train --preset tiny`, SIGKILLed when the search stage ends, after its
# last epoch-end checkpoint and best_search were written, before the best
# weights are restored from best_search.
_KILL_BEFORE_BEST = """
import os, signal, sys
from gin_jax import config, runtime, training
runtime.init_runtime()
from gin_jax.training import loop
loop.restore_best = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
training.run(config.tiny(), sys.argv[1])
"""


def test_a_corrupt_best_checkpoint_falls_back_to_the_stages_regular_checkpoints(trained, tmp_path):
  wd = tmp_path / "wd"
  proc = subprocess.run(
    [sys.executable, "-c", _KILL_BEFORE_BEST, str(wd)], env=_env(), capture_output=True, cwd=REPO
  )
  assert proc.returncode == -9, proc.stderr[-3000:]
  (best_step,) = steps(wd / "best_search")
  flip_bytes(wd / "best_search" / str(best_step))
  proc = train(wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"best_search/{best_step} is unusable" in proc.stdout
  assert f"search: checkpoint {best_step} has valid AUC" in proc.stdout
  assert_clean(proc)
  # The search stage's best weights were its last epoch's, which stood in for them.
  assert metrics_of(report(wd)) == metrics_of(report(trained[0]))
  checkpointing.verify_seal(wd / "best_search" / str(best_step))  # replaced, sealed


def test_score_best_falls_back_and_says_which_checkpoint_it_used(trained, workdir, tmp_path):
  _, rows = trained
  (best_step,) = steps(workdir / "best_retrain")
  flip_bytes(workdir / "best_retrain" / str(best_step))
  out = tmp_path / "scores.csv"
  proc = score("--checkpoint", workdir, "--best", "--data", rows, "--out", out)
  assert proc.returncode == 0, proc.stderr
  newest = steps(workdir / "checkpoints")[-1]
  assert f"best_retrain/{best_step} is unusable" in proc.stderr
  assert f"scored 600 rows with {workdir}/checkpoints/{newest} ->" in proc.stdout
  assert_clean(proc)


# ------------------------------------------------------------- 8. smaller items


def _metrics_lines(workdir):
  """metrics.jsonl without its wall-clock figures."""
  out = []
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    out.append({k: v for k, v in record.items() if k not in ("samples_per_s", "seconds")})
  return out


def test_metrics_jsonl_holds_each_step_once_after_a_resume(trained, tmp_path):
  wd = tmp_path / "wd"
  # Step 37: 7 steps (and the log line of step 35) after the checkpoint of step 30.
  cmd = [sys.executable, "-c", _KILL_SCRIPT, str(wd), "37"]
  assert subprocess.run(cmd, env=_env(), capture_output=True, cwd=REPO).returncode == -9
  assert any(r.get("step") == 35 for r in _metrics_lines(wd))
  proc = train(wd, MID_EPOCH)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from step 30" in proc.stdout
  assert _metrics_lines(wd) == _metrics_lines(trained[0])


def test_a_fresh_start_begins_a_fresh_metrics_log(tmp_path, monkeypatch):
  """Issue 33 item 6: a run killed before its first checkpoint leaves its config.json and
  log lines (here step 5's); its rerun starts afresh and appended to them: step 5 twice.
  The rerun stops as its first stage begins, so no train step is compiled."""
  from gin_jax.training import loop

  (tmp_path / "config.json").write_text(config_lib.tiny().to_json())
  stale = {"stage": "search", "step": 5, "epoch": 0, "loss": 0.7}
  (tmp_path / "metrics.jsonl").write_text(json.dumps(stale) + "\n")

  class Stop(Exception):
    pass

  def stop(*args):
    raise Stop

  monkeypatch.setattr(loop, "_train_stage", stop)
  with pytest.raises(Stop):
    training.run(config_lib.tiny(), tmp_path, devices=jax.devices()[:1])
  assert "step" not in (tmp_path / "metrics.jsonl").read_text()


def test_metrics_log_rewinds_by_size_or_by_step(tmp_path):
  from gin_jax.training import report as report_lib

  log = report_lib.MetricsLog(tmp_path / "m.jsonl")
  for step in (5, 10):
    log.write(step=step, loss=1.0)
  size = log.size()
  for step in (15, 20):
    log.write(step=step, loss=1.0)
  log.rewind(size, 10)  # a checkpoint that recorded the log's size
  assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [5, 10]
  log.write(step=15, loss=1.0)
  log.rewind(None, 10)  # one that did not: by step
  assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [5, 10]


# ------------------------------------------------------------- 7. one-line errors


@pytest.fixture
def read_only(tmp_path):
  """(source dir, read-only view of it): a read-only bind mount (root only), else skip."""
  src, view = tmp_path / "src", tmp_path / "ro"
  src.mkdir()
  view.mkdir()
  try:
    for cmd in (["mount", "--bind", src, view], ["mount", "-o", "remount,bind,ro", view]):
      subprocess.run(list(map(str, cmd)), check=True, capture_output=True)
  except (OSError, subprocess.CalledProcessError) as e:
    subprocess.run(["umount", str(view)], check=False, capture_output=True)
    pytest.skip(f"cannot mount read-only here ({e}); test_cannot_write_* cover the paths")
  try:
    yield src, view
  finally:
    subprocess.run(["umount", str(view)], check=False)


def last_line(proc):
  return proc.stderr.strip().splitlines()[-1]


def test_a_read_only_workdir_of_a_finished_run_is_one_line(trained, read_only):
  src, view = read_only
  shutil.copytree(trained[0], src / "wd")
  proc = train(view / "wd")
  assert proc.returncode == 2
  assert last_line(proc) == (
    f"error: {view}/wd/.lock: cannot write to the workdir (Read-only file system)"
  )
  assert_clean(proc)


def test_scores_and_exports_onto_a_read_only_path_are_one_line(trained, read_only):
  wd, rows = trained
  _, view = read_only
  proc = score("--checkpoint", wd, "--data", rows, "--out", view / "s.csv")
  assert proc.returncode == 2
  assert last_line(proc) == f"error: {view}/s.csv: cannot write the scores (Read-only file system)"
  assert_clean(proc)
  proc = score("--checkpoint", wd, "--export", view / "export")
  assert proc.returncode == 2
  assert last_line(proc) == (
    f"error: {view}/export: cannot write the export (Read-only file system)"
  )
  assert_clean(proc)


def test_cannot_write_here_is_one_line_without_a_mount(trained, tmp_path):
  """The same paths where no read-only mount is possible: a file stands where a
  directory should be."""
  from gin_jax import scoring as scoring_lib
  from gin_jax import training

  wd, rows = trained
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(training.TrainingError, match=r"file/wd: cannot write to the workdir \("):
    training.run(__import__("gin_jax").tiny(), blocker / "wd", devices=jax.devices()[:1])
  scorer = scoring_lib.Scorer.from_checkpoint(wd, devices=jax.devices()[:1])
  with pytest.raises(scoring_lib.ScoringError, match=r"file/s\.csv: cannot write the scores \("):
    scoring_lib.score_file(scorer, rows, blocker / "s.csv")
  with pytest.raises(scoring_lib.ScoringError, match=r"file/export: cannot write the export \("):
    scoring_lib.export(wd, blocker / "export")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  from gin_jax import scoring as scoring_lib

  return scoring_lib.export(trained[0], tmp_path_factory.mktemp("export") / "export")


def _broken_export(exported, tmp_path, fault):
  d = tmp_path / "export"
  shutil.copytree(exported, d)
  info = json.loads((d / "export.json").read_text())
  meta = json.loads((d / "dataset.json").read_text())
  if fault.startswith("batch_size="):
    info["batch_size"] = json.loads(fault.split("=", 1)[1])
  elif fault == "extra array":
    with np.load(d / "params.npz") as z:
      arrays = dict(z)
    np.savez(d / "params.npz", **arrays, bonus=np.zeros(3))
  elif fault == "unknown key":
    meta["surprise"] = 1
  elif fault == "offsets":
    meta["fields"][20]["offset"] += 5000  # C8's rows now lie outside the table
  (d / "export.json").write_text(json.dumps(info))
  (d / "dataset.json").write_text(json.dumps(meta))
  checkpointing.seal(d)  # a consistent export with a bad file: what the checks below catch
  return d


@pytest.mark.parametrize(
  "tamper",
  ["two vocabulary entries", "a byte of score.stablehlo", "a byte of params.npz", "no seal"],
)
def test_an_altered_export_is_refused_before_anything_is_deserialized(exported, tmp_path, tamper):
  """Was: edited vocabulary entries changed half the scores with exit 0, and flipped
  bytes of the StableHLO gave tracebacks, a segfault or a hang."""
  from gin_jax import scoring as scoring_lib

  d = tmp_path / "export"
  shutil.copytree(exported, d)
  if tamper == "two vocabulary entries":
    meta = json.loads((d / "dataset.json").read_text())
    vocab = next(v for v in meta["vocab"].values() if len(v) > 2)
    vocab[0], vocab[1] = vocab[1], vocab[0]
    (d / "dataset.json").write_text(json.dumps(meta))
    want = "dataset.json does not match its seal"
  elif tamper == "no seal":
    (d / "seal.json").unlink()
    want = "the export has no seal"
  else:
    name = tamper.split(" of ")[1]
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2] ^= 0x40
    (d / name).write_bytes(bytes(data))
    want = f"{name} does not match its seal"
  with pytest.raises(scoring_lib.ScoringError, match=want):
    scoring_lib.Scorer.from_export(d)


@pytest.mark.parametrize(
  "fault, message",
  [
    ("batch_size=0", r"export\.json: batch_size must be a positive integer, got 0$"),
    ('batch_size="512"', r"export\.json: batch_size must be a positive integer, got '512'$"),
    ("batch_size=-1", r"export\.json: batch_size must be a positive integer, got -1$"),
    ("extra array", r"params\.npz: the exported function takes exactly leaf_0\.\.leaf_\d+; "),
    ("unknown key", r"dataset\.json: dataset metadata: unknown key\(s\) \['surprise'\]$"),
    ("offsets", r"dataset\.json: field 'C8': rows \[\d+, \d+\) of the table, expected "),
  ],
)
def test_a_bad_export_file_is_named_with_its_problem(exported, tmp_path, fault, message):
  from gin_jax import scoring as scoring_lib

  d = _broken_export(exported, tmp_path, fault)
  with pytest.raises(scoring_lib.ScoringError, match=message):
    scoring_lib.Scorer.from_export(d)


def test_a_bad_export_is_one_line_on_the_command_line(trained, exported, tmp_path):
  _, rows = trained
  d = _broken_export(exported, tmp_path, "offsets")
  out = tmp_path / "s.csv"
  proc = score("--exported", d, "--data", rows, "--out", out)  # was: every row NaN, exit 0
  assert proc.returncode == 2 and not out.exists()
  assert last_line(proc).startswith(f"error: {d}/dataset.json: field 'C8': rows [")
  assert_clean(proc)


def test_scoring_a_file_whose_every_row_is_skipped_exits_2(trained, tmp_path):
  wd, _ = trained
  rows = tmp_path / "all_bad.tsv"
  # Criteo rows, each with a bad integer (a file with no Criteo row at all is named as
  # another format before any row is read: test_data_bad_rows.py).
  bad = "\t".join(["1", "x", *["1"] * 12, *["a"] * 26])
  rows.write_text(f"{bad}\n{bad}\n{bad}\n")
  out = tmp_path / "s.csv"
  proc = score("--checkpoint", wd, "--data", rows, "--out", out, "--bad-rows", "skip")
  assert proc.returncode == 2  # was 0, with a file of skipped rows only
  assert last_line(proc).startswith(
    f"error: no row of {rows} could be scored (3 bad row(s) skipped; first: [\"{rows}:1: I1: 'x'"
  )
  assert not out.exists()
  assert_clean(proc)


def test_one_rule_says_which_checkpoints_stand_in_for_an_unusable_best_one():
  """The trainer and `score --best` / `--stage` share it: the stage's own checkpoints, and
  the finished run's for the stage it delivers (the final one unless an earlier stage
  validated better, issue 36 item 7), never a later stage's fresh start."""
  from gin_jax.training import stages

  stands_in = lambda plan, wanted, **progress: stages.stands_in(plan, wanted, progress)
  assert stands_in("aoanet", "search", stage="search")
  assert not stands_in("aoanet", "search", stage="retrain")  # the retrain's fresh start
  assert not stands_in("aoanet", "search", stage=stages.DONE)  # the retrain delivered (old)
  assert stands_in("aoanet", "retrain", stage=stages.DONE)
  assert stands_in("aoanet", "search", stage=stages.DONE, delivered="search")
  assert not stands_in("aoanet", "retrain", stage=stages.DONE, delivered="search")
  assert stands_in("single", "train", stage=stages.DONE, delivered=None)


# ------------------------------------------------------------- Ctrl-C (issue 36 item 4)


def test_ctrl_c_is_one_line_and_exit_130_and_the_same_command_resumes(tmp_path):
  """SIGINT mid-stage printed a 69-line KeyboardInterrupt traceback (from the middle of a
  device read or an orbax save) and exited 1."""
  import signal
  import time

  wd = tmp_path / "wd"
  args = ["--preset", "tiny", "--workdir", str(wd),
          "--train.epochs=1", "--train.log_every=1", "--train.checkpoint_every=2"]  # fmt: skip
  cmd = [sys.executable, "-m", "train", *args]
  env = {**_env(), "TQDM_DISABLE": "1"}  # the training bars off (preparation's stay)
  # `python -m train` with SIGINT as a terminal delivers it: a suite started in the
  # background under xdist hands its children SIGINT ignored, and the run then went on
  # to its end (exit 0). (A preexec_fn would fork the multithreaded test process.)
  with_sigint = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('train', run_name='__main__', alter_sys=True)")  # fmt: skip
  proc = subprocess.Popen([sys.executable, "-c", with_sigint, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
  metrics, deadline = wd / "metrics.jsonl", time.monotonic() + 50
  while not (metrics.exists() and metrics.read_text().count('"loss"') >= 4):
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err + out
  lines = [x for x in err.splitlines() if x.strip() and not re.search(r"\d%\|", x)]  # no bars
  assert len(lines) == 1, err
  (line,) = lines
  step = int(re.fullmatch(r"interrupted at step (\d+); the same command resumes", line)[1])
  assert step >= 4
  # The same command resumes from the newest sealed checkpoint (step 2 or later).
  rerun = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    said = [next(rerun.stdout) for _ in range(3)]
  finally:
    rerun.kill()
    rerun.communicate()
  resumed = re.search(r"resuming from step (\d+): stage search", "".join(said))
  assert resumed and 2 <= int(resumed[1]) <= step, said


def test_a_workdir_orbax_cannot_checkpoint_under_is_refused_before_anything_trains(tmp_path):
  """orbax finds a save's files by glob: under a folder named with [ ] * ?, it wrote
  checkpoints without their arrays and the run failed after its first epoch."""
  from gin_jax import config as config_lib
  from gin_jax import training

  for name in ("continued[e1]", "runs*", "a?b"):
    with pytest.raises(checkpointing.CheckpointError, match="checkpoints cannot be written"):
      training.run(config_lib.tiny(), tmp_path / name / "wd", devices=jax.devices()[:1])
    assert not (tmp_path / name).exists()  # refused before the workdir was made


def test_a_resumed_stage_counts_its_seconds_without_the_time_the_run_lay_dead(monkeypatch):
  """A stage's `seconds` (report.json, the benchmarks' training time) once counted from
  the stage's first start, so a run resumed the next morning reported the night too
  (9,530 s for a 78 s stage in the #38 study). Now: the seconds before the checkpoint,
  then this process's, the replayed steps included."""
  from gin_jax.training import resume

  clock = type("Clock", (), {"now": 1000.0, "time": lambda self: self.now})()
  monkeypatch.setattr(resume, "time", clock)
  progress = resume.Progress(stage="search")
  progress.start("search")
  clock.now += 30.0  # trains 30 s, then checkpoints
  saved = json.loads(json.dumps(progress.to_dict()))
  assert saved["stage_seconds"] == 30.0
  clock.now += 9000.0  # killed; lies dead overnight
  again = resume.Progress.from_dict(saved).resumed()
  clock.now += 12.0  # replays and finishes
  assert clock.now - again.stage_start_time == 42.0
  # A checkpoint written before stage_seconds existed: the resumed stretch alone.
  old = {k: v for k, v in saved.items() if k != "stage_seconds"}
  assert clock.now - resume.Progress.from_dict(old).resumed().stage_start_time == 0.0
