"""Device-side training input: the same batches as the grain pipeline, same resume."""

import json

import jax
import numpy as np
import pytest

from gin_jax import config as config_lib
from gin_jax import training
from gin_jax.data import pipeline
from gin_jax.data.meta import Split, ones_values
from gin_jax.training import device_input, partitioning


def _split(n=203, f=5, ones=False, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 1000, (n, f)).astype(np.int32)
  values = ones_values(n, f) if ones else rng.uniform(0, 2, (n, f)).astype(np.float32)
  return Split(ids, values, rng.integers(0, 2, n).astype(np.float32), np.arange(1, n + 1))


def _host_epoch(split, batch, seed, epoch):
  return list(pipeline.train_iterator(split, batch, seed=seed, epoch=epoch))


@pytest.mark.parametrize("ones", [False, True])
@pytest.mark.parametrize("mode", ["resident", "streamed"])
def test_device_batches_equal_the_grain_pipelines(mode, ones, monkeypatch):
  monkeypatch.setattr(device_input, "INDEX_CHUNK", 4)  # 6 batches: one full chunk, one part
  split, batch = _split(ones=ones), 32
  mesh = partitioning.make_mesh()  # 8 fake devices
  if mode == "resident":
    resident = device_input.ResidentSplit(split, mesh)
    got = [resident.materialize(b) for b in resident.epoch(batch, seed=7, epoch=2)]
  else:
    got = list(device_input.StreamedBatches(split, mesh, batch, seed=7, epoch=2, chunk=3))
  host = _host_epoch(split, batch, 7, 2)
  assert len(got) == len(host) == len(split) // batch
  for a, b in zip(got, host):
    for key in ("ids", "values", "labels"):
      np.testing.assert_array_equal(np.asarray(a[key]), b[key])
    assert a["ids"].sharding.spec == partitioning.batch_sharding(mesh).spec


@pytest.mark.parametrize("mode", ["resident", "streamed"])
def test_device_iterators_resume_from_their_state(mode, monkeypatch):
  monkeypatch.setattr(device_input, "INDEX_CHUNK", 3)  # resume inside the second chunk
  split, batch, mesh = _split(), 16, partitioning.make_mesh()
  resident = device_input.ResidentSplit(split, mesh)
  make = {
    "resident": lambda: resident.epoch(batch, 1, 0),
    "streamed": lambda: device_input.StreamedBatches(split, mesh, batch, 1, 0, chunk=4),
  }[mode]
  ids = lambda b: np.asarray((resident.materialize(b) if mode == "resident" else b)["ids"])
  full = [ids(b) for b in make()]
  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()
  again = make()
  again.set_state(state)
  rest = [ids(b) for b in again]
  assert len(rest) == len(full) - 5
  for a, b in zip(rest, full[5:]):
    np.testing.assert_array_equal(a, b)


def test_auto_mode_uses_the_host_pipeline_on_cpu_and_checks_names():
  split, mesh = _split(), partitioning.make_mesh()
  assert device_input.choose_mode("auto", split, mesh, 0.25) == "off"
  with pytest.raises(ValueError, match="device_resident"):
    device_input.choose_mode("gpu", split, mesh, 0.25)


@pytest.mark.slow
@pytest.mark.parametrize("devices,stages", [(1, "aoanet"), (8, "single")])
def test_training_with_a_resident_split_gives_identical_losses(tmp_path, devices, stages):
  """The fused gather-and-step (resident) trains exactly as host batches do."""
  losses, reports = {}, {}
  for mode in ("off", "resident"):
    cfg = config_lib.override(
      config_lib.tiny(),
      {"data.device_resident": mode, "train.epochs": "1", "train.stages": stages},
    )
    reports[mode] = training.run(cfg, tmp_path / mode, devices=jax.devices()[:devices])
    lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
    losses[mode] = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
  assert losses["off"] and losses["off"] == losses["resident"]
  for stage in reports["off"]["stages"]:
    assert (
      reports["off"]["stages"][stage]["test_auc"]
      == reports["resident"]["stages"][stage]["test_auc"]
    )


def test_resident_index_chunks_have_one_shape(monkeypatch):
  """A shorter last chunk would recompile the fused step at every epoch's end."""
  monkeypatch.setattr(device_input, "INDEX_CHUNK", 4)
  split, mesh = _split(), partitioning.make_mesh()
  refs = list(device_input.ResidentSplit(split, mesh).epoch(32, seed=0, epoch=0))
  assert len(refs) == 6 and {r.index.shape for r in refs} == {(4, 32)}
