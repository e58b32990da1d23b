"""Continued training on new days of logs: `--init-from RUN_DIR` (issue #23).

Three days of a drifting synthetic log (the planted pairs persist, ids new each
day appear, the oldest stop). Day 0 trains from nothing; day 1 continues it with
a grown vocabulary; day 2 continues day 1. What is kept is kept bit for bit.
"""

import dataclasses
import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from conftest import subprocess_env

from gin_jax import config as config_lib
from gin_jax import data, scoring, training
from gin_jax import metrics as metrics_lib
from gin_jax import models as model_lib
from gin_jax.data import synthetic
from gin_jax.training import continuation, partitioning, stages, steps
from gin_jax.training.errors import TrainingError
from gin_jax.training.workdir import Workdir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ONE = jax.devices()[:1]


def _cfg(day_file, init_from="", **train):
  cfg = config_lib.override(
    config_lib.tiny(),
    {"data.format": "criteo", "data.train": str(day_file), "train.embedding_l2": "1e-4"},
  )
  stages_ = train.pop("stages", "single" if init_from else "aoanet")
  return dataclasses.replace(
    cfg,
    train=dataclasses.replace(
      cfg.train, epochs=1, init_from=str(init_from), stages=stages_, **train
    ),
  )


@pytest.fixture(scope="module")
def days(tmp_path_factory):
  root = tmp_path_factory.mktemp("days")
  out = []
  for t in range(3):
    path = root / f"day{t}.tsv"
    spec = synthetic.SyntheticSpec(num_rows=3000, max_vocab=120, seed=7, day=t, drift=0.25)
    synthetic.write_criteo_tsv(path, spec)
    out.append(path)
  return out


@pytest.fixture(scope="module", params=["lazy_adam", "rowwise_adagrad"])
def day0(request, days, tmp_path_factory):
  """Day 0 from nothing, per row optimizer: lazy Adam's searches, prunes and retrains."""
  wd = tmp_path_factory.mktemp(f"day0_{request.param}")
  plan = "aoanet" if request.param == "lazy_adam" else "single"
  # deliver=last: the pruned model, whose masks the continued run keeps (the search
  # stage may validate better after one epoch, and would be delivered by default).
  cfg = _cfg(days[0], embedding_optimizer=request.param, stages=plan, deliver="last")
  training.run(cfg, wd, devices=ONE)
  return wd, request.param


# Day 1 replays half as many of day 0's rows as it has (train.init_replay): the tests
# of day 1 (idle rows, resume, 8 devices, 2 processes, the scorer) hold with replay.
REPLAY = 0.5


@pytest.fixture(scope="module")
def day1(day0, days, tmp_path_factory):
  """Day 1 continuing day 0 (with replay); the hashes of day 0's files before it ran."""
  wd0, opt = day0
  before = _hashes(wd0)
  wd = tmp_path_factory.mktemp(f"day1_{opt}")
  cfg = _cfg(days[1], wd0, embedding_optimizer=opt, init_replay=REPLAY)
  rep = training.run(cfg, wd, devices=ONE)
  return wd, rep, before


def _hashes(root: Path) -> dict:
  return {
    str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(root.rglob("*"))
    if p.is_file() and not p.is_symlink()
  }


def _state(wd):
  return jax.tree.map(np.asarray, scoring.load_checkpoint(wd, devices=ONE, report=print).state)


def _prepared(wd):
  """The run's prepared dataset (not its replay-mixed training split, if it has one)."""
  return data.open_prepared(next((wd / "data" / "cache").glob("*/meta.json")).parent)


def _trained_on(wd):
  """The training split the run read: its replay-mixed one (train.init_replay), else the
  prepared one."""
  mixed = sorted((wd / "data" / "cache").glob("train+replay-*/train"))
  return data.meta.load_split(mixed[0]) if mixed else _prepared(wd)[1]["train"]


def _row_tables(state):
  return model_lib.row_tables(state["params"])


# ---------------------------------------------------------------------- vocabulary


def test_old_categories_keep_their_ids_and_new_ones_are_appended(day0, day1):
  (wd0, _), (wd1, rep, _) = day0, day1
  old, _ = _prepared(wd0)
  new, splits = _prepared(wd1)
  assert new.base == old.fingerprint()
  added_total = 0
  for name, tokens in old.vocab.items():
    grown = new.vocab[name]
    assert grown[: len(tokens)] == tokens  # same ids
    g = new.growth[name]
    assert g["old_size"] == len(tokens) and len(grown) == len(tokens) + g["added"]
    assert g["oov_after"] <= g["oov_before"]
    added_total += g["added"]
  assert added_total > 50  # the drift brought new categories ...
  assert any(new.growth[f"C{i}"]["oov_before"] > 0.05 for i in range(1, 27))
  # ... that the new run's training rows use: ids of the grown part of a block.
  ids = np.asarray(splits["train"].ids)
  grown_rows = np.concatenate(
    [np.arange(f.offset + fo.size, f.offset + f.size) for f, fo in zip(new.fields, old.fields)]
  )
  assert np.isin(ids, grown_rows).any()
  # report.json: the lineage and the growth.
  on_disk = json.loads((wd1 / "report.json").read_text())
  assert on_disk["vocabulary_growth"] == json.loads(json.dumps(new.growth))
  lineage = on_disk["init_from"]
  assert lineage["path"] == str(wd0) and lineage["dataset_fingerprint"] == old.fingerprint()
  assert lineage["step"] == rep["init_from"]["step"] > 0


@pytest.mark.parametrize("read_bytes", [continuation.READ_BYTES, 1])  # in one read, one by one
def test_the_start_state_keeps_old_rows_bit_for_bit_and_new_rows_fresh(
  day0, day1, read_bytes, monkeypatch
):
  (wd0, opt), (wd1, _, _) = day0, day1
  monkeypatch.setattr(continuation, "READ_BYTES", read_bytes)
  reads = []
  restore = continuation.checkpointing.restore_on_host
  monkeypatch.setattr(
    continuation.checkpointing,
    "restore_on_host",
    lambda *a, **k: reads.append(sum(jax.tree.leaves(k["select"]))) or restore(*a, **k),
  )
  cfg = continuation.resolve(_cfg(Path("unused"), wd0, embedding_optimizer=opt))[0]
  source = continuation.source_of(wd0)
  new, _ = _prepared(wd1)
  mesh = partitioning.make_mesh(ONE)
  padded = model_lib.padded_table_rows(new.num_table_rows, 1)
  spec = model_lib.ModelSpec(
    cfg.model, new.num_fields, new.num_table_rows, padded, field_slots=new.field_slots
  )
  fns = steps.build(spec, cfg.train, mesh)
  fresh = fns.init(stages.init_key(cfg.train.seed, stages.plan(cfg.train.stages)[0]))
  fresh_on_host = jax.tree.map(np.array, fresh)  # start_state consumes fresh's row arrays
  start = jax.tree.map(np.asarray, continuation.start_state(source, fresh, fns, new, cfg))
  rows = len(_row_tables(start)) + len(jax.tree.leaves(start["embedding"]["slots"])) + 1  # + last
  # The small arrays in one read, then the row arrays: together, or one read each.
  assert reads[1:] == ([rows] if read_bytes > 1 else [1] * rows), reads
  old = _state(wd0)
  src = continuation.row_map(source.dataset, new, padded)
  keep = src >= 0
  assert keep.sum() == source.meta["model"]["num_rows"] < new.num_table_rows
  fresh = fresh_on_host
  for name, table in _row_tables(start).items():
    np.testing.assert_array_equal(table[keep], _row_tables(old)[name][src[keep]])
    np.testing.assert_array_equal(table[~keep], _row_tables(fresh)[name][~keep])
  for name, slot in jax.tree_util.tree_leaves_with_path(start["embedding"]["slots"]):
    was = dict(jax.tree_util.tree_leaves_with_path(old["embedding"]["slots"]))[name]
    np.testing.assert_array_equal(slot[keep], was[src[keep]])
    assert not slot[~keep].any()  # zero optimizer state for the new rows
  count = old["embedding"]["count"]
  assert start["embedding"]["count"] == count > 0
  last = start["embedding"]["last"]
  np.testing.assert_array_equal(last[keep], old["embedding"]["last"][src[keep]])
  assert np.all(last[~keep] == count)  # no idle steps to catch up on
  dense = model_lib.dense_params(start["params"])
  jax.tree.map(np.testing.assert_array_equal, dense, model_lib.dense_params(old["params"]))
  jax.tree.map(np.testing.assert_array_equal, start["masks"], old["masks"])
  lr = float(optax.tree_utils.tree_get(start["opt_state"], "learning_rate"))
  assert lr == pytest.approx(cfg.train.learning_rate * cfg.train.init_lr_scale)


def test_a_row_the_new_data_never_touches_is_bit_identical_after_training(day0, day1):
  (wd0, _), (wd1, _, _) = day0, day1
  old_meta, _ = _prepared(wd0)
  new_meta, _ = _prepared(wd1)
  old, new = _state(wd0), _state(wd1)
  src = continuation.row_map(old_meta, new_meta, new["params"]["projection"]["table"].shape[0])
  touched = np.zeros(len(src), bool)  # by the new rows, or the replayed ones
  touched[np.unique(np.asarray(_trained_on(wd1).ids))] = True
  idle = (src >= 0) & ~touched
  assert idle.sum() > 20  # the drift retired some old ids
  for name, table in _row_tables(new).items():
    np.testing.assert_array_equal(table[idle], _row_tables(old)[name][src[idle]])
  changed = (src >= 0) & touched
  table = new["params"]["projection"]["table"]
  assert np.any(table[changed] != old["params"]["projection"]["table"][src[changed]])


def test_pruned_pairs_stay_pruned_with_alpha_exactly_zero(day0, day1):
  (wd0, opt), (wd1, rep, _) = day0, day1
  if opt != "lazy_adam":
    pytest.skip("day 0 is pruned with lazy Adam")
  old, new = _state(wd0), _state(wd1)
  jax.tree.map(np.testing.assert_array_equal, new["masks"], old["masks"])
  for name, mask in new["masks"].items():
    alpha = new["params"][name]["alpha"]
    assert (~mask).any() and np.all(alpha[~mask] == 0.0)
  assert rep["kept_pairs"] == json.loads((wd0 / "report.json").read_text())["kept_pairs"]


def test_run_dir_is_never_written(day0, day1):
  (wd0, _), (_, _, before) = day0, day1
  assert _hashes(wd0) == before


def test_the_scorer_encodes_new_categories_as_the_trainer_did(day1, days):
  wd1, rep, _ = day1
  meta, splits = _prepared(wd1)
  wanted = set(np.asarray(splits["test"].line_numbers).tolist())
  lines = days[1].read_text().splitlines(keepends=True)
  test_file = wd1.parent / f"{wd1.name}_test.tsv"
  test_file.write_text("".join(line for i, line in enumerate(lines, 1) if i in wanted))
  probs, labels, _, bad = scoring.Scorer.from_checkpoint(wd1).predict_file(test_file)
  assert bad.count == 0 and len(probs) == len(wanted)
  auc = metrics_lib.evaluate(labels, probs)["auc"]
  assert auc == pytest.approx(rep["stages"]["train"]["test_auc"], abs=1e-6)
  # The day-0 model still encodes with its own, smaller vocabulary.
  old = scoring.Scorer.from_checkpoint(Path(rep["init_from"]["path"]))
  assert old.meta.vocab == {k: v[: len(old.meta.vocab[k])] for k, v in meta.vocab.items()}
  assert old.meta.num_table_rows < meta.num_table_rows


def test_a_chain_of_days_keeps_growing(day0, day1, days, tmp_path):
  (wd0, opt), (wd1, _, _) = day0, day1
  if opt != "lazy_adam":
    pytest.skip("one chain is enough")
  rep = training.run(_cfg(days[2], wd1, embedding_optimizer=opt), tmp_path, devices=ONE)
  assert rep["init_from"]["path"] == str(wd1)
  m0, m1, m2 = _prepared(wd0)[0], _prepared(wd1)[0], _prepared(tmp_path)[0]
  assert m2.base == m1.fingerprint()
  for name, tokens in m0.vocab.items():
    assert m2.vocab[name][: len(m1.vocab[name])] == m1.vocab[name]
    assert m1.vocab[name][: len(tokens)] == tokens
  assert sum(g["added"] for g in m2.growth.values()) > 0
  assert rep["stages"]["train"]["test_auc"] > 0.6


def test_each_member_of_a_seed_ensemble_continues_its_own_member(tmp_path):
  """train.ensemble=2 on day 0, continued with train.ensemble=2 on day 1 (with replay):
  member i starts from day 0's member i (its rows that neither the new data nor the
  replayed rows touch are that member's, bit for bit, and not the other member's)."""
  small = []
  for t in range(2):
    small.append(tmp_path / f"day{t}.tsv")
    spec = synthetic.SyntheticSpec(num_rows=1000, max_vocab=60, seed=7, day=t, drift=0.25)
    synthetic.write_criteo_tsv(small[-1], spec)
  opt = {"embedding_optimizer": "rowwise_adagrad", "ensemble": 2}
  training.run(_cfg(small[0], stages="single", **opt), tmp_path / "d0", devices=ONE)
  cfg = _cfg(small[1], tmp_path / "d0", init_replay=REPLAY, **opt)
  training.run(cfg, tmp_path / "d1", devices=ONE)
  sources, members = Workdir(tmp_path / "d0").ensemble(), Workdir(tmp_path / "d1").ensemble()
  assert len(sources) == len(members) == 2
  old_meta, new_meta = _prepared(tmp_path / "d0")[0], _prepared(tmp_path / "d1")[0]
  mixed = sorted((tmp_path / "d1" / "data" / "cache").glob("train+replay-*/train"))
  assert len(mixed) == 2  # a member's replay each, from its own source member
  ids = np.concatenate([np.asarray(data.meta.load_split(m).ids) for m in mixed])
  old = [_state(m.root)["params"]["projection"]["table"] for m in sources]
  new = [_state(m.root)["params"]["projection"]["table"] for m in members]
  src = continuation.row_map(old_meta, new_meta, new[0].shape[0])
  idle = src >= 0
  idle[np.unique(ids)] = False
  assert idle.sum() > 20
  for i, member in enumerate(members):
    lineage = json.loads(member.report.read_text())["init_from"]
    assert lineage["path"] == str(sources[i].root) and lineage["replay"]["replayed_rows"] > 0
    np.testing.assert_array_equal(new[i][idle], old[i][src[idle]])
    assert np.any(new[i][idle] != old[1 - i][src[idle]])


# ---------------------------------------------------------------------- refusals


def test_a_model_config_mismatch_is_refused_naming_the_field(day0, days, tmp_path):
  wd0, opt = day0
  cmd = [
    sys.executable, "-m", "train", "--preset", "tiny", "--data.format=criteo",
    "--train", str(days[1]), "--init-from", str(wd0), "--workdir", str(tmp_path / "x"),
    "--model.embed_dim=8", f"--train.embedding_optimizer={opt}",
  ]  # fmt: skip
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env())
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "model.embed_dim" in last and "4" in last and "8" in last
  assert "Traceback" not in proc.stderr


def test_other_encoding_options_are_refused_naming_them(day0, days, tmp_path):
  wd0, opt = day0
  cfg = _cfg(days[1], wd0, embedding_optimizer=opt)
  hashed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, hash_buckets=1000))
  with pytest.raises(data.DataError, match=r"data\.hash_buckets: 0 -> 1000"):
    training.run(hashed, tmp_path / "h", devices=ONE)
  other = "rowwise_adagrad" if opt == "lazy_adam" else "lazy_adam"
  swapped = dataclasses.replace(
    cfg, train=dataclasses.replace(cfg.train, embedding_optimizer=other)
  )
  with pytest.raises(TrainingError, match="reset_optimizer"):
    training.run(swapped, tmp_path / "o", devices=ONE)


def test_an_unfinished_run_cannot_be_continued(days, tmp_path):
  wd0 = tmp_path / "unfinished"

  class Stop(Exception):
    pass

  def stop(step):
    if step == 10:  # just after the first checkpoint
      raise Stop

  with pytest.raises(Stop):
    training.run(_cfg(days[0], stages="single", checkpoint_every=10), wd0, devices=ONE,
                 on_step=stop)  # fmt: skip
  with pytest.raises(TrainingError, match="not finished"):
    training.run(_cfg(days[1], wd0), tmp_path / "next", devices=ONE)


def _copy_of(day0, tmp_path):
  """A copy of day 0's lazy Adam run in tmp_path/runs/src (the other optimizer skips)."""
  wd0, opt = day0
  if opt != "lazy_adam":
    pytest.skip("one source is enough")
  src = tmp_path / "runs" / "src"
  shutil.copytree(wd0, src)
  return src


def test_init_from_its_own_workdir_with_overwrite_is_refused_before_anything_is_touched(
  day0, days, tmp_path
):
  """Issue 33 item 1: it discarded the source, then failed to read it ("it has no seal")."""
  src = _copy_of(day0, tmp_path)
  before = _hashes(src)  # .lock included: a refused run must not rewrite it either
  for extra in (["--overwrite"], []):
    cmd = [
      sys.executable, "-m", "train", "--preset", "tiny", "--format", "criteo",
      "--train", str(days[1]), "--init-from", str(src), "--workdir", str(src), *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
      f"error: --init-from {src} and --workdir {src} are the same folder: a continued run "
      "never writes the run it continues; use a --workdir outside it"
    ]
    assert _hashes(src) == before


@pytest.mark.parametrize("where", ["a link to it", "inside it", "above it"])
def test_a_workdir_overlapping_the_source_is_refused(day0, days, tmp_path, where):
  src = _copy_of(day0, tmp_path)
  before = _hashes(src)
  if where == "a link to it":
    workdir = tmp_path / "link"
    workdir.symlink_to(src, target_is_directory=True)
    relation = f"and --workdir {workdir} are the same folder"
  elif where == "inside it":
    workdir = src / "next"
    relation = f"holds --workdir {workdir}"
  else:
    workdir = src.parent
    relation = f"lies inside --workdir {workdir}"
  with pytest.raises(TrainingError, match=re.escape(f"--init-from {src} {relation}: ")):
    training.run(_cfg(days[1], src), workdir, overwrite=True, devices=ONE)
  assert _hashes(src) == before
  assert not (src.parent / ".lock").exists()


def test_an_ensemble_larger_than_the_sources_is_refused_before_member_0_trains(
  day0, days, tmp_path
):
  """Issue 33: member 0 trained for nothing before member 1 found no source member."""
  src = _copy_of(day0, tmp_path)
  cfg = _cfg(days[1], src, embedding_optimizer="lazy_adam", ensemble=3)
  with pytest.raises(TrainingError) as refused:
    training.run(cfg, tmp_path / "bigger", devices=ONE)
  assert str(refused.value) == (
    f"--init-from {src} delivers 1 model, fewer than train.ensemble=3: member i continues "
    "the source's member i (lower train.ensemble to 1, or continue an ensemble of 3)"
  )
  assert not (tmp_path / "bigger" / "checkpoints").exists()


def test_a_tampered_final_checkpoint_is_named_not_called_unfinished(day0, days, tmp_path):
  """Issue 33: its metadata altered, the newest checkpoint was skipped for an older,
  mid-training one, and the run was said to be "not finished"."""
  src = _copy_of(day0, tmp_path)
  newest = src / "checkpoints" / str(max(int(p.name) for p in (src / "checkpoints").iterdir()))
  meta = newest / "meta" / "metadata"
  meta.write_text(meta.read_text().replace('"done"', '"DONE"'))
  with pytest.raises(TrainingError) as refused:
    training.run(_cfg(days[1], src), tmp_path / "next", devices=ONE)
  assert str(refused.value) == (
    f"--init-from {src}: checkpoint {newest} is unusable: meta/metadata does not match its "
    "seal (corrupted or altered on disk); it is the run's newest checkpoint, for which no "
    "older one stands in"
  )


# ---------------------------------------------------------------------- resume, devices


def _env(devices=1):
  return subprocess_env(devices)


_KILL = """
import dataclasses, os, signal, sys
from gin_jax import config, runtime, training
runtime.init_runtime()
cfg = config.override(config.tiny(), {"data.format": "criteo", "data.train": sys.argv[3],
  "train.embedding_l2": "1e-4", "train.epochs": "1", "train.stages": "single",
  "train.init_from": sys.argv[4], "train.embedding_optimizer": sys.argv[5],
  "train.checkpoint_every": "10", "train.init_replay": sys.argv[6]})
def kill_at(step):
  if step == int(sys.argv[2]):
    os.kill(os.getpid(), signal.SIGKILL)
training.run(cfg, sys.argv[1], on_step=kill_at)
"""


def test_sigkill_and_resume_of_a_continued_run_is_bit_exact(day0, day1, days, tmp_path):
  (wd0, opt), (wd1, rep, _) = day0, day1
  if opt != "lazy_adam":
    pytest.skip("one optimizer is enough")
  killed = tmp_path / "killed"
  args = [str(days[1]), str(wd0), opt, str(REPLAY)]
  # tiny: 18 steps an epoch here, checkpoints every 10: killed 5 steps after one.
  proc = subprocess.run(
    [sys.executable, "-c", _KILL, str(killed), "15", *args], env=_env(), capture_output=True
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (killed / "report.json").exists()
  proc = subprocess.run(
    [sys.executable, "-c", _KILL, str(killed), "-1", *args],
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resuming from step 10" in proc.stdout + proc.stderr
  again = json.loads((killed / "report.json").read_text())
  first = json.loads(json.dumps(rep))
  assert {**again["stages"]["train"], "seconds": 0} == {**first["stages"]["train"], "seconds": 0}
  assert again["vocabulary_growth"] == first["vocabulary_growth"]
  jax.tree.map(np.testing.assert_array_equal, _state(killed)["params"], _state(wd1)["params"])


def test_eight_devices_continue_as_one_does(day0, day1, days, tmp_path):
  (wd0, opt), (_, rep1, _) = day0, day1
  if opt != "rowwise_adagrad":
    pytest.skip("one optimizer is enough")
  cfg = _cfg(days[1], wd0, embedding_optimizer=opt, init_replay=REPLAY)
  rep8 = training.run(cfg, tmp_path, devices=jax.devices())
  # Sharded reductions sum in another order: float32 round-off (as test_train's
  # eight-device test states it: 2e-3 absolute on AUC).
  for key in ("valid_auc", "test_auc"):
    assert abs(rep8["stages"]["train"][key] - rep1["stages"]["train"][key]) < 2e-3
  assert rep8["vocabulary_growth"] == rep1["vocabulary_growth"]


def test_two_processes_continue_as_one_does(day0, day1, days, tmp_path):
  """--init-from over 2 local processes x 2 devices (jax.distributed on 127.0.0.1): each
  process reads the source on its own host and grows only its own devices' rows."""
  (wd0, opt), (_, rep1, _) = day0, day1
  if opt != "rowwise_adagrad":
    pytest.skip("one optimizer is enough")
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  two = tmp_path / "two"
  cmd = [
    sys.executable, "-m", "train", "--preset", "tiny", "--format", "criteo",
    "--train", str(days[1]), "--init-from", str(wd0), "--workdir", str(two),
    "--train.embedding_l2=1e-4", "--train.epochs=1", f"--train.embedding_optimizer={opt}",
    f"--train.init_replay={REPLAY}",
    "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
  ]  # fmt: skip
  procs = [
    subprocess.Popen(
      [*cmd, str(i)],
      env=_env(2),
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )  # fmt: skip
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "over 2 process(es)" in outs[0][0]
  lineage = rep1["init_from"]
  assert f"started from step {lineage['step']} of {lineage['path']}" in outs[0][0]
  rep2 = json.loads((two / "report.json").read_text())
  assert rep2["vocabulary_growth"] == json.loads(json.dumps(rep1["vocabulary_growth"]))
  assert rep2["init_from"] == json.loads(json.dumps(rep1["init_from"]))
  for key in ("valid_auc", "test_auc"):  # float32 round-off, as on 8 devices
    assert abs(rep2["stages"]["train"][key] - rep1["stages"]["train"][key]) < 2e-3
  # Rows the new data never touches are the source's bit for bit on both processes' shards.
  old_meta, _ = _prepared(wd0)
  new_meta, _ = _prepared(two)
  old, new = _state(wd0), _state(two)
  table = new["params"]["projection"]["table"]
  src = continuation.row_map(old_meta, new_meta, table.shape[0])
  assert (src >= 0).sum() == old_meta.num_table_rows < new_meta.num_table_rows
  same = np.all(table[src >= 0] == old["params"]["projection"]["table"][src[src >= 0]], axis=1)
  assert same.any() and same[-len(same) // 4 :].any()  # the last shard's rows too


def test_init_lr_scale_and_init_epochs_set_the_continued_runs_schedule(day0, days, tmp_path):
  """train.init_lr_scale: the continued run's learning rate is that multiple of
  train.learning_rate; train.init_epochs: exactly that many epochs, no early stop (even
  with patience 1 and no improvement) and no plateau decay."""
  wd0, opt = day0
  if opt != "lazy_adam":
    pytest.skip("the schedule is the row optimizer's business alike: one is enough")
  cfg = _cfg(days[1], wd0, embedding_optimizer=opt, init_lr_scale=0.1, init_epochs=3,
             patience=1, learning_rate=1e-6, log_every=5)  # fmt: skip
  rep = training.run(cfg, tmp_path, devices=ONE)
  assert rep["stages"]["train"]["epochs"] == 3  # patience 1 would have stopped after 2
  logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  rates = {round(r["lr"], 12) for r in logged if "lr" in r}
  assert rates == {1e-7}  # 0.1 x 1e-6, never decayed
  assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 1  # as asked


# ---------------------------------------------------------------------- replay


def _tokens(meta, ids):
  """The (field, token) each id of a prepared row names (its category, OOV or missing)."""
  out = []
  col = 0
  for f in meta.fields:
    for i in ids[col : col + f.max_values]:
      k = int(i) - f.offset
      if int(i) == meta.pad_id:
        out.append((f.name, "<pad>"))
      elif f.transform == "vocab" and k >= 2:
        out.append((f.name, meta.vocab[f.name][k - 2]))
      else:
        out.append((f.name, k))  # OOV, missing, a hash bucket or a value row
    col += f.max_values
  return out


def test_replay_mixes_a_seeded_sample_of_the_source_rows_into_the_new_training_split(
  day0, day1, tmp_path
):
  """train.init_replay=0.5: the continued run trains on its new rows and half as many of
  the rows its source trained on, each naming the same categories in the grown table."""
  (wd0, opt), (wd1, rep, _) = day0, day1
  if opt != "lazy_adam":
    pytest.skip("replay is the data's business, not the optimizer's: one is enough")
  info = rep["init_from"]["replay"]
  old_meta, old_splits = _prepared(wd0)
  new_meta, new_splits = _prepared(wd1)
  n = len(new_splits["train"])
  assert info["new_rows"] == n and info["replayed_rows"] == round(0.5 * n)
  assert info["source_rows"] == len(old_splits["train"])
  mixed = data.meta.load_split(next((wd1 / "data" / "cache").glob("train+replay-*/train")))
  assert len(mixed) == n + info["replayed_rows"]
  np.testing.assert_array_equal(mixed.ids[:n], new_splits["train"].ids)
  np.testing.assert_array_equal(mixed.labels[:n], new_splits["train"].labels)
  lines = -np.asarray(mixed.line_numbers[n:])
  assert np.all(lines > 0) and len(np.unique(lines)) == len(lines)  # without replacement
  row_of = {int(x): i for i, x in enumerate(old_splits["train"].line_numbers)}
  for k, line in enumerate(lines):
    old_row = row_of[int(line)]
    assert mixed.labels[n + k] == old_splits["train"].labels[old_row]
    assert _tokens(new_meta, mixed.ids[n + k]) == _tokens(
      old_meta, old_splits["train"].ids[old_row]
    )
  # The source's rows are replayed from where they are; a next day replays this mix.
  found, split = data.replay.source_train([wd1], new_meta)
  assert found.name.startswith("train+replay-") and len(split) == len(mixed)
  # The same sample again from the same seed (a resumed or repeated run), another by another.
  again, _ = data.replay.mixed_train(new_splits["train"], new_meta, wd0, old_splits["train"],
                                     old_meta, 0.5, 0, tmp_path / "again")  # fmt: skip
  np.testing.assert_array_equal(again.ids, mixed.ids)
  other, _ = data.replay.mixed_train(new_splits["train"], new_meta, wd0, old_splits["train"],
                                     old_meta, 0.5, 1, tmp_path / "other")  # fmt: skip
  assert not np.array_equal(other.line_numbers, mixed.line_numbers)
  # More than the source has: all of it, once each.
  every, record = data.replay.mixed_train(new_splits["train"], new_meta, wd0,
                                          old_splits["train"], old_meta, 100.0, 0,
                                          tmp_path / "every", log=lambda m: None)  # fmt: skip
  assert record["replayed_rows"] == len(old_splits["train"]) == len(every) - n


def test_replay_without_the_sources_prepared_rows_is_refused_naming_the_way_out(
  day0, days, tmp_path
):
  wd0, opt = day0
  if opt != "lazy_adam":
    pytest.skip("one optimizer is enough")
  bare = _copy_of(day0, tmp_path)
  shutil.rmtree(bare / "data")
  with pytest.raises(data.DataError, match=r"init_replay=0 to continue without replay"):
    training.run(_cfg(days[1], bare, embedding_optimizer=opt, init_replay=1.0),
                 tmp_path / "continued", devices=ONE)  # fmt: skip
  assert not (tmp_path / "continued" / "report.json").exists()
