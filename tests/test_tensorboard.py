"""TensorBoard scalars: what the tiny preset's run writes equals its metrics.jsonl."""

import json

import jax
import pytest

from gin_jax import config as config_lib
from gin_jax import training
from gin_jax.training import tensorboard


def test_scalars_of_each_kind_of_record():
  train = {"stage": "search", "step": 5, "epoch": 0, "loss": 0.5, "lr": 1e-3, "grad_norm": 2.0}
  assert tensorboard.scalars_of({**train, "samples_per_s": 10}) == {
    "train/loss": 0.5,
    "train/learning_rate": 1e-3,
    "train/grad_norm": 2.0,
    "train/samples_per_s": 10.0,
  }
  evaluation = {"stage": "search", "event": "eval", "split": "valid", "step": 9, "auc": 0.7}
  assert tensorboard.scalars_of({**evaluation, "epoch": 1, "logloss": 0.4}) == {
    "valid/auc": 0.7,
    "valid/logloss": 0.4,
  }
  end = {"stage": "retrain", "event": "stage_end", "step": 9, "epochs": 2, "seconds": 3.0}
  assert tensorboard.scalars_of({**end, "test_auc": 0.6, "valid_logloss": 0.5}) == {
    "retrain/test_auc": 0.6,
    "retrain/valid_logloss": 0.5,
  }
  assert tensorboard.scalars_of({"event": "x", "note": "text", "flag": True}) == {}


@pytest.mark.slow
def test_tiny_run_writes_the_logged_scalars(tmp_path):
  report = training.run(config_lib.tiny(), tmp_path, devices=jax.devices()[:1])
  scalars = tensorboard.read_scalars(tmp_path / "tensorboard")
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

  def expect(tag, kind, key):
    rows = [r for r in records if r.get("event") == kind and key in r]
    assert rows, (tag, kind, key)
    got = scalars[tag]
    assert [step for step, _ in got] == [r["step"] for r in rows], tag
    assert [v for _, v in got] == pytest.approx([r[key] for r in rows], rel=1e-6), tag

  for tag, key in [
    ("train/loss", "loss"),
    ("train/grad_norm", "grad_norm"),
    ("train/learning_rate", "lr"),
    ("train/samples_per_s", "samples_per_s"),
  ]:
    expect(tag, None, key)
  expect("valid/auc", "eval", "auc")
  expect("valid/logloss", "eval", "logloss")
  for stage, result in report["stages"].items():
    for key in ("valid_auc", "valid_logloss", "test_auc", "test_logloss"):
      [(_, value)] = scalars[f"{stage}/{key}"]
      assert value == pytest.approx(result[key], rel=1e-6)
  assert len(scalars["train/loss"]) >= 4 and len(scalars["valid/auc"]) == 4  # 2 stages x 2.


@pytest.mark.slow
def test_tensorboard_false_writes_none(tmp_path):
  cfg = config_lib.override(
    config_lib.tiny(),
    {"train.tensorboard": "false", "train.stages": "single", "train.epochs": "1"},
  )
  assert cfg.train.tensorboard is False
  training.run(cfg, tmp_path, devices=jax.devices()[:1])
  assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()
