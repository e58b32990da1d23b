"""Sealed checkpoints (gin_jax/training/checkpointing.py) on a small state, without training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gin_jax.training import checkpointing


def _state(scale=1.0):
  return {
    "params": {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.ones(3)},
    "embedding": {"accumulator": jnp.full((4,), 0.5), "count": jnp.zeros((), jnp.int32)},
    "step": jnp.asarray(7, jnp.int32),
  }


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _largest_file(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def test_save_seals_and_restore_verifies(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  checkpointing.save(mngr, 1, _state(), {"note": "one"})
  step_dir = checkpointing.step_dir(mngr, 1)
  seal = json.loads((step_dir / checkpointing.SEAL_FILE).read_text())
  assert seal["algorithm"] == "sha256"
  assert any(name.startswith("state/") for name in seal["files"])
  assert any(name.startswith("meta/") for name in seal["files"])
  state, meta = checkpointing.restore(mngr, 1, _abstract(_state()))
  assert meta == {"note": "one"}
  np.testing.assert_array_equal(state["params"]["w"], _state()["params"]["w"])


def test_restore_on_host_reads_each_array_once_into_numpy_and_checks_it(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  checkpointing.save(mngr, 1, _state(), {"note": "one"})
  state, meta = checkpointing.restore_on_host(mngr, 1, _abstract(_state()))
  assert meta == {"note": "one"}
  assert all(type(x) is np.ndarray for x in jax.tree.leaves(state))
  jax.tree.map(np.testing.assert_array_equal, state, jax.device_get(_state()))
  bad = _state()
  bad["params"]["w"] = bad["params"]["w"].at[1, 2].set(jnp.nan)
  checkpointing.save(mngr, 2, bad, {})
  with pytest.raises(checkpointing.UnusableCheckpoint, match=r"NaN or Inf in \['params'\]\['w'\]"):
    checkpointing.restore_on_host(mngr, 2, _abstract(_state()))
  other = _state()
  other["params"]["w"] = jnp.zeros((3, 3))  # another model's shapes: incompatible, not corrupt
  with pytest.raises(checkpointing.CheckpointError, match=r"\['params'\]\['w'\] has shape") as e:
    checkpointing.restore_on_host(mngr, 1, _abstract(other))
  assert not isinstance(e.value, checkpointing.UnusableCheckpoint)


def test_restore_on_host_with_select_reads_only_the_chosen_leaves(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  bad = _state()
  bad["params"]["b"] = bad["params"]["b"].at[0].set(jnp.inf)  # never read below
  checkpointing.save(mngr, 1, bad, {})
  select = jax.tree_util.tree_map_with_path(
    lambda path, _: path[0].key == "embedding" or jax.tree_util.keystr(path) == "['params']['w']",
    _state(),
  )
  state, _ = checkpointing.restore_on_host(mngr, 1, _abstract(_state()), select=select)
  assert state["params"]["b"] is checkpointing.NOT_READ and state["step"] is checkpointing.NOT_READ
  np.testing.assert_array_equal(state["params"]["w"], np.asarray(_state()["params"]["w"]))
  jax.tree.map(np.testing.assert_array_equal, state["embedding"], jax.device_get(bad["embedding"]))
  with pytest.raises(checkpointing.UnusableCheckpoint, match=r"NaN or Inf in \['params'\]\['b'\]"):
    checkpointing.restore_on_host(mngr, 1, _abstract(_state()))  # read, the Inf is found


@pytest.mark.parametrize("restore", [checkpointing.restore, checkpointing.restore_on_host])
@pytest.mark.parametrize("fault", ["flip", "truncate", "unsealed", "extra_file", "bad_seal"])
def test_any_change_after_sealing_makes_the_checkpoint_unusable(tmp_path, fault, restore):
  mngr = checkpointing.manager(tmp_path, None)
  checkpointing.save(mngr, 1, _state(), {})
  step_dir = checkpointing.step_dir(mngr, 1)
  target = _largest_file(step_dir)
  data = bytearray(target.read_bytes())
  if fault == "flip":
    data[len(data) // 2] ^= 0x01  # a single bit
    target.write_bytes(bytes(data))
  elif fault == "truncate":
    target.write_bytes(bytes(data[:-1]))
  elif fault == "unsealed":
    (step_dir / checkpointing.SEAL_FILE).unlink()
  elif fault == "extra_file":
    (step_dir / "state" / "stray").write_text("x")
  else:
    (step_dir / checkpointing.SEAL_FILE).write_text("{not json")
  kind = "unsealed" if fault == "unsealed" else "altered"
  with pytest.raises(checkpointing.UnusableCheckpoint) as e:
    restore(mngr, 1, _abstract(_state()))
  assert e.value.kind == kind and str(step_dir) in str(e.value)
  with pytest.raises(checkpointing.UnusableCheckpoint):
    checkpointing.read_meta(mngr, 1)


def test_nonfinite_state_is_unusable_and_latest_good_falls_back(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  checkpointing.save(mngr, 1, _state(), {"step": 1})
  bad = _state()
  bad["embedding"]["accumulator"] = bad["embedding"]["accumulator"].at[2].set(jnp.inf)
  checkpointing.save(mngr, 2, bad, {"step": 2})
  with pytest.raises(checkpointing.UnusableCheckpoint, match=r"NaN or Inf in \['embedding'\]"):
    checkpointing.restore(mngr, 2, _abstract(_state()))
  reports = []
  step, state, meta = checkpointing.restore_latest_good(
    mngr, lambda step, meta: _abstract(_state()), report=reports.append
  )
  assert (step, meta) == (1, {"step": 1})
  assert len(reports) == 1 and "checkpoint" in reports[0] and "/2 is unusable" in reports[0]


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  assert checkpointing.restore_latest_good(mngr, lambda s, m: None) is None  # none at all
  checkpointing.save(mngr, 1, _state(), {})
  (checkpointing.step_dir(mngr, 1) / checkpointing.SEAL_FILE).unlink()
  with pytest.raises(checkpointing.NoUsableCheckpoint) as e:
    checkpointing.restore_latest_good(mngr, lambda s, m: _abstract(_state()), report=lambda m: 0)
  assert [p.kind for p in e.value.problems] == ["unsealed"]


def test_an_intact_checkpoint_that_does_not_fit_is_an_error_not_a_skip(tmp_path):
  mngr = checkpointing.manager(tmp_path, None)
  checkpointing.save(mngr, 1, _state(), {})
  other = _abstract({**_state(), "params": {"w": jnp.zeros((5, 3)), "b": jnp.ones(3)}})
  with pytest.raises(checkpointing.CheckpointError, match="cannot restore") as e:
    checkpointing.restore_latest_good(mngr, lambda s, m: other)
  assert not isinstance(e.value, checkpointing.UnusableCheckpoint)
