"""Configs: overrides, validation, the two-ratio split with a test file."""

import pytest

from gin_jax import config as config_lib


def test_two_split_ratios_are_train_and_valid_when_test_is_a_file():
  cfg = config_lib.override(config_lib.tiny(), {"data.split": "0.9,0.1", "data.test": "t.tsv"})
  assert cfg.data.split == (0.9, 0.1, 0.0)
  with pytest.raises(ValueError, match="two \\(train, valid\\) when the test split is a --test"):
    config_lib.override(config_lib.tiny(), {"data.split": "0.9,0.1"})


def test_overrides_across_sections_are_checked_together():
  cfg = config_lib.override(config_lib.tiny(), {"model.arch": "lr", "train.stages": "gin"})
  assert cfg.model.arch == "lr"
  with pytest.raises(ValueError, match="has no alpha to prune"):
    config_lib.override(config_lib.tiny(), {"model.arch": "lr"})


def test_unknown_fields_and_bad_values_are_named():
  with pytest.raises(ValueError, match="unknown config field train.epoch"):
    config_lib.override(config_lib.tiny(), {"train.epoch": "3"})
  with pytest.raises(ValueError, match="bad value 'x' for train.epochs"):
    config_lib.override(config_lib.tiny(), {"train.epochs": "x"})
  with pytest.raises(ValueError, match="embedding_optimizer"):
    config_lib.override(config_lib.tiny(), {"train.embedding_optimizer": "sgd"})


def test_to_dict_round_trips_through_json():
  import json

  for name in config_lib.PRESETS:
    cfg = config_lib.preset(name)
    assert config_lib.Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_cluster_launchers_are_detected_from_their_environment():
  from gin_jax.cli import detect_cluster

  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0"}
  assert detect_cluster({**slurm, "SLURM_NTASKS": "4"}) == "SLURM"
  assert detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None  # a single task: nothing to join
  assert detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
  assert detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "Cloud TPU pod"
  assert detect_cluster({"PATH": "/bin"}) is None
