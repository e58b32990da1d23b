"""Issue 25 item 7: a scorer asked for the newest checkpoint survives the trainer's rotation.

A trainer that keeps its newest checkpoints deletes the oldest as it saves, so
a scorer reading "the newest" can have it removed under it. Here the removal is
injected at each place it bit (while the seal's files are hashed, while the
metadata is read, while the arrays are restored), deterministically: before
the fix each was exit 2 (FileNotFoundError, "cannot read its metadata",
"cannot restore"). A checkpoint that is present but altered is still refused,
and --step N is never swapped for another.
"""

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from gin_jax import config as config_lib
from gin_jax import scoring, training
from gin_jax.scoring import checkpoints as checkpoints_lib
from gin_jax.training import checkpointing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  wd = tmp_path_factory.mktemp("race_run") / "wd"
  training.run(config_lib.tiny(), wd, devices=jax.devices()[:1])
  return wd


@pytest.fixture
def workdir(trained, tmp_path):
  shutil.copytree(trained, tmp_path / "wd")
  return tmp_path / "wd"


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _load(workdir, **kw):
  said = []
  loaded = scoring.load_checkpoint(workdir, devices=jax.devices()[:1], report=said.append, **kw)
  return loaded, said


# Where the removal strikes: the function of checkpointing that is running when
# the trainer deletes the checkpoint directory.
PLACES = {
  "hashing its files": "_sha256",
  "reading its metadata": "read_meta",
  "restoring its arrays": "restore",
}


def _delete_when(monkeypatch, place, directory, then=None):
  """Deletes `directory` the first time checkpointing.`place` touches it (then calls `then`)."""
  original = getattr(checkpointing, place)

  def hooked(*args, **kwargs):
    target = args[0] if place == "_sha256" else checkpointing.step_dir(args[0], args[1])
    if Path(target).is_relative_to(directory) and directory.exists():
      if then:
        then()
      shutil.rmtree(directory)
    return original(*args, **kwargs)

  monkeypatch.setattr(checkpointing, place, hooked)


@pytest.mark.parametrize("place", PLACES.values(), ids=PLACES.keys())
def test_the_newest_checkpoint_removed_while_read_gives_the_next_newest(
  workdir, monkeypatch, place
):
  *_, previous, newest = _steps(workdir)
  victim = workdir / "checkpoints" / str(newest)
  _delete_when(monkeypatch, place, victim)
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{previous}"
  assert any(f"checkpoints/{newest} was removed while it was read" in m for m in said), said
  assert not any("unusable" in m for m in said), said  # not mistaken for a damaged one
  monkeypatch.undo()
  again, _ = _load(workdir, step=previous)
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), loaded.state,
                      again.state)  # fmt: skip
  assert all(jax.tree.leaves(same))


def test_a_newer_checkpoint_saved_meanwhile_is_the_one_scored(workdir, monkeypatch):
  """The rotation proper: a save of step N+1 removes the one being read; N+1 is scored."""
  newest = _steps(workdir)[-1]
  victim = workdir / "checkpoints" / str(newest)
  saved = workdir / "checkpoints" / str(newest + 1)
  _delete_when(monkeypatch, "read_meta", victim, then=lambda: shutil.copytree(victim, saved))
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{newest + 1}"
  assert len(said) == 1, said


def test_an_explicit_step_is_never_swapped_for_another(workdir, monkeypatch):
  newest = _steps(workdir)[-1]
  _delete_when(monkeypatch, "read_meta", workdir / "checkpoints" / str(newest))
  with pytest.raises(scoring.ScoringError, match=f"checkpoints/{newest}"):
    _load(workdir, step=newest)


def test_a_run_that_rotates_faster_than_it_is_read_is_one_error(workdir, monkeypatch):
  """Every checkpoint read is replaced by a newer one: a bounded number of tries."""
  original, reads = checkpointing.read_meta, []

  def rotate(mngr, step, **kwargs):
    reads.append(step)
    victim = checkpointing.step_dir(mngr, step)
    shutil.copytree(victim, victim.parent / str(step + 1))
    shutil.rmtree(victim)
    return original(mngr, step, **kwargs)

  monkeypatch.setattr(checkpointing, "read_meta", rotate)
  with pytest.raises(scoring.ScoringError, match="removed while being read, 6 times"):
    _load(workdir)
  assert len(reads) == 6


def test_a_present_but_altered_newest_checkpoint_is_still_refused(workdir):
  *_, previous, newest = _steps(workdir)
  victim = workdir / "checkpoints" / str(newest)
  target = max(
    (p for p in (victim / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
  )
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  target.write_bytes(bytes(data))
  started = time.monotonic()
  assert not checkpoints_lib._rotated_out(victim)  # at once: every sealed file is there
  assert time.monotonic() - started < 0.5
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{previous}"
  assert any(f"checkpoints/{newest} is unusable" in m and "seal" in m for m in said), said
  assert not any("removed while" in m for m in said), said
  with pytest.raises(scoring.ScoringError, match="does not match its seal"):
    _load(workdir, step=newest)


# Issue 33: two gaps the loop of a live trainer (keep 2, a save every 2 steps) still hit.


def test_a_committed_checkpoint_is_given_time_for_its_seal(workdir, monkeypatch):
  """Caught after orbax committed it but before the trainer sealed it, while the older
  ones rotate out: it was called unsealed, and the relist then skipped it ("no usable
  checkpoint"). Now the scorer waits for the seal while the workdir's run lives."""
  *older, newest = _steps(workdir)
  victim = workdir / "checkpoints" / str(newest)
  seal = (victim / checkpointing.SEAL_FILE).read_bytes()
  (victim / checkpointing.SEAL_FILE).unlink()
  (workdir / ".lock").write_text(f"{os.getpid()}\n")  # the run is alive: this process

  def trainer_meanwhile():  # the trainer seals the newest and has rotated the others out
    for step in older:
      shutil.rmtree(workdir / "checkpoints" / str(step))
    (victim / checkpointing.SEAL_FILE).write_bytes(seal)

  real_sleep, pauses = time.sleep, []

  def sleep(seconds):  # the scorer's first pause is when the trainer acts
    pauses.append(seconds)
    if len(pauses) == 1:
      trainer_meanwhile()
    real_sleep(seconds)

  monkeypatch.setattr(
    checkpoints_lib, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
  )
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{newest}"
  assert said == []


def test_an_unsealed_checkpoint_of_a_run_that_is_gone_is_not_waited_for(workdir, monkeypatch):
  *_, previous, newest = _steps(workdir)
  (workdir / "checkpoints" / str(newest) / checkpointing.SEAL_FILE).unlink()
  (workdir / ".lock").write_text("999999999\n")  # no such process: nobody will seal it

  def sleep(seconds):
    raise AssertionError("the scorer waits for a seal that nobody will write")

  monkeypatch.setattr(
    checkpoints_lib, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
  )
  monkeypatch.setattr(checkpoints_lib, "_DELETION_GRACE", 0.0)
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{previous}"
  assert len(said) == 2 and "has no seal" in said[0], said


def test_another_checkpoint_removed_while_the_manager_lists_them_is_no_error(workdir, monkeypatch):
  """orbax's CheckpointManager reads every step's metadata as it is built: one rotated
  out meanwhile raised FileNotFoundError, and only the step being read was checked."""
  oldest, *_, newest = _steps(workdir)
  real, built = checkpointing.ocp.CheckpointManager, []

  def listing(directory, *args, **kwargs):
    built.append(directory)
    if len(built) == 2:  # the scorer's manager for reading the newest
      gone = workdir / "checkpoints" / str(oldest)
      shutil.rmtree(gone)
      raise FileNotFoundError(2, "No such file or directory", str(gone / "_CHECKPOINT_METADATA"))
    return real(directory, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", listing)
  loaded, said = _load(workdir)
  assert loaded.description == f"{workdir}/checkpoints/{newest}"
  assert said == [] and len(built) > 2
