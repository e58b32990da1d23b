"""Configs: overrides, validation, the two-ratio split with a test file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gin_jax import config as config_lib
from gin_jax.training import recipes

REPO = Path(__file__).resolve().parents[1]


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


def test_linear_start_needs_gin_with_first_order_weights():
  with pytest.raises(ValueError, match="needs model.arch=gin and model.first_order=true"):
    config_lib.override(config_lib.tiny(), {"train.linear_start": "true"})
  cfg = config_lib.override(
    config_lib.tiny(), {"train.linear_start": "true", "model.first_order": "true"}
  )
  floor = recipes.linear_floor(cfg)
  assert (floor.model.arch, floor.train.stages, floor.train.linear_start) == ("lr", "single", False)
  assert (floor.train.learning_rate, floor.train.embedding_l2) == (1e-2, 0.0)


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
  from gin_jax.cluster import detect_cluster

  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0"}
  assert detect_cluster({**slurm, "SLURM_NTASKS": "4"}) == "SLURM"
  assert detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None  # a single task: nothing to join
  assert detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
  assert detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "Cloud TPU pod"
  assert detect_cluster({"PATH": "/bin"}) is None


def _args(**kw):
  import argparse

  from gin_jax.cli import build_parser

  args = build_parser().parse_args([])
  return argparse.Namespace(**{**vars(args), **kw})


def test_config_file_sections_then_flags_then_overrides(tmp_path):
  from gin_jax import cli

  path = tmp_path / "dcnv2.yaml"
  path.write_text(
    "preset: tiny\n"
    "name: study_dcnv2\n"
    "model: {arch: dcnv2, mlp_hidden: [32, 16], mlp_batch_norm: yes}\n"
    "train: {stages: gin, epochs: 4, learning_rate: 0.01}\n"
    "data: {synthetic_rows: 3000}\n"
  )
  cfg = cli.build_config(_args(config=str(path)), {"train.epochs": "2"})
  assert cfg.name == "study_dcnv2" and cfg.data.format == "synthetic"
  assert cfg.model.arch == "dcnv2" and cfg.model.num_layers == 2  # Table 4 default
  assert cfg.model.mlp_hidden == (32, 16) and cfg.model.mlp_batch_norm
  assert cfg.train.epochs == 2 and cfg.train.learning_rate == 0.01  # the override wins
  assert cfg.data.synthetic_rows == 3000
  # A training file in the file makes the default preset the real-data one, and the
  # run is named after the file.
  path.write_text("data: {train: clicks.tsv}\ntrain: {stages: gin}\n")
  cfg = cli.build_config(_args(config=str(path)), {})
  assert cfg.name == "clicks" and cfg.data.format == "criteo"
  assert cfg.train.batch_size is None and cfg.train.embedding_l2 is None  # data-dependent


@pytest.mark.parametrize(
  "text, message",
  [
    ("model: {embed_dims: 8}\n", r"bad\.yaml: unknown key model\.embed_dims"),
    ("optimizer: {lr: 1}\n", r"bad\.yaml: unknown key 'optimizer'"),
    ("train: {epochs: many}\n", r"bad value 'many' for train\.epochs in .*bad\.yaml"),
    ("train: [1, 2]\n", r"bad\.yaml: section 'train' must be a mapping"),
    ("model: {mlp_hidden: {a: 1}}\n", r"bad\.yaml: model\.mlp_hidden must be a value or a list"),
    ("model: {arch: [\n", r"bad\.yaml: not valid YAML"),
  ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path, text, message):
  path = tmp_path / "bad.yaml"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    config_lib.load_file(path)


def test_optional_numbers_parse_as_numbers_and_auto_as_none():
  cfg = config_lib.override(
    config_lib.tiny(), {"train.embedding_l2": "0.1", "train.batch_size": "512"}
  )
  assert cfg.train.embedding_l2 == 0.1 and cfg.train.batch_size == 512
  cfg = config_lib.override(config_lib.tiny(), {"train.embedding_l2": "auto"})
  assert cfg.train.embedding_l2 is None
  auto = config_lib.resolve_auto(cfg, train_rows=50_000, num_devices=8)
  assert auto.train.embedding_l2 == pytest.approx(config_lib.L2_PRIOR / 50_000)
  with pytest.raises(ValueError, match="bad value 'x' for train.batch_size"):
    config_lib.override(config_lib.tiny(), {"train.batch_size": "x"})


def test_auto_batch_size_is_a_power_of_two_in_range_and_fits_the_devices():
  assert config_lib.auto_batch_size(46_000) == 1024
  assert config_lib.auto_batch_size(6_500) == 256
  assert config_lib.auto_batch_size(40_000_000) == 4096
  assert config_lib.auto_batch_size(46_000, num_devices=6) % 6 == 0


def test_ensemble_members_have_their_own_seeds_and_the_floor_is_one_model():
  cfg = config_lib.override(config_lib.default(), {"train.ensemble": "3", "train.seed": "2"})
  assert cfg.train.ensemble == 3
  members = [recipes.ensemble_member(cfg, i) for i in (1, 2)]
  assert [m.train.seed for m in members] == [1002, 2002]
  assert all(m.train.ensemble == 1 for m in members)
  assert members[0].model == cfg.model and members[0].data == cfg.data
  assert recipes.linear_floor(cfg).train.ensemble == 1
  assert recipes.from_linear(cfg).train.ensemble == 1
  for bad in ("0", "-1"):
    with pytest.raises(ValueError, match="ensemble must be an integer >= 1"):
      config_lib.override(cfg, {"train.ensemble": bad})


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("train.epochs", "0", "train.epochs must be >= 1, got 0"),
    ("train.epochs", "-1", "train.epochs must be >= 1, got -1"),
    ("train.patience", "-1", "train.patience must be >= 1, got -1"),
    ("train.learning_rate", "-1", "train.learning_rate must be > 0, got -1.0"),
    ("train.checkpoint_every", "0", "train.checkpoint_every must be >= 1, got 0"),
    ("train.keep_checkpoints", "0", "train.keep_checkpoints must be >= 1, got 0"),
    ("train.lr_decay", "0", "train.lr_decay must be > 0 and <= 1, got 0.0"),
    ("data.min_count", "0", "data.min_count must be >= 1, got 0"),
    ("data.hash_buckets", "-3", "data.hash_buckets must be >= 0, got -3"),
    ("data.max_values", "0", "data.max_values must be >= 1 and <= 1024, got 0"),
    ("data.max_values", "1000000", "data.max_values must be >= 1 and <= 1024, got 1000000"),
    ("model.embed_init_std", "-0.1", "model.embed_init_std must be >= 0, got -0.1"),
    ("model.mlp_hidden", "16,0", "model.mlp_hidden must be widths >= 1"),
    ("train.seed", "-1", "train.seed must be >= 0, got -1"),  # was: no field named
    ("data.seed", "-1", "data.seed must be >= 0, got -1"),
  ],
)
def test_every_numeric_field_is_checked_against_its_range(field, value, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.override(config_lib.tiny(), {field: value})


def _float_fields():
  """section.field of every float config field (optional ones included)."""
  import dataclasses
  import typing

  sections = {"model": config_lib.ModelConfig, "data": config_lib.DataConfig}
  sections["train"] = config_lib.TrainConfig
  return [
    f"{section}.{f.name}"
    for section, cls in sections.items()
    for f in dataclasses.fields(cls)
    if "float" in str(typing.get_type_hints(cls)[f.name]) and "tuple" not in str(f.type)
  ]


def test_the_float_fields_are_all_found():
  assert {"train.learning_rate", "train.lr_decay", "train.embedding_l2", "train.clip_norm",
          "train.embedding_lr_scale", "model.embed_init_std"} <= set(_float_fields())  # fmt: skip


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", _float_fields())
def test_every_float_field_refuses_a_non_finite_value(field, value):
  """Issue 33 item 7: NaN passed every range check (nan < 0 is False); lr_decay=nan trained."""
  with pytest.raises(ValueError, match=re.escape(f"{field} must be a finite number, got {value}")):
    config_lib.override(config_lib.tiny(), {field: value})


def test_a_non_finite_number_from_a_saved_config_is_refused_whatever_the_fields_type():
  saved = config_lib.tiny().to_dict()
  saved["train"]["epochs"] = float("nan")  # config.json may say NaN for an int field
  with pytest.raises(ValueError, match=re.escape("train.epochs must be a finite number, got nan")):
    config_lib.Config.from_dict(saved)
  with pytest.raises(ValueError, match=re.escape("data.split must be finite numbers, got")):
    config_lib.override(config_lib.tiny(), {"data.split": "0.8,nan,0.1"})


def test_an_out_of_range_value_is_one_line_and_exit_2_on_the_command_line(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(tmp_path / "w"),
         "--train.checkpoint_every=0"]  # fmt: skip
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: train.checkpoint_every must be >= 1, got 0"
  cmd[-1] = "--split=nan,0.5,0.5"  # was: "Out of range float values are not JSON compliant"
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: data.split must be finite numbers, got (nan, 0.5, 0.5)"


def _alias_bomb(body: str) -> str:
  """Ten nested aliases: a 1 KB file whose expansion has 10^10 leaves."""
  lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
  lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
  return "\n".join(lines) + "\n" + body


_UNDER_LIMITS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from gin_jax.config import load_file
from gin_jax.data.formats import CsvSchema
try:
  (load_file if sys.argv[2] == "experiment" else CsvSchema.load)(sys.argv[1])
except Exception as e:
  print(f"{type(e).__name__}: {e}")
"""


@pytest.mark.parametrize(
  "kind,body",
  [
    ("experiment", "model: {mlp_hidden: *a9}\n"),
    ("experiment", "name: *a9\n"),
    ("schema", "label: y\ncategorical: *a9\n"),
  ],  # fmt: skip
)
def test_an_alias_bomb_is_refused_at_once_under_a_memory_limit(tmp_path, kind, body):
  path = tmp_path / "bomb.yaml"
  path.write_text(_alias_bomb(body))
  proc = subprocess.run([sys.executable, "-c", _UNDER_LIMITS, str(path), kind], timeout=60,
                        capture_output=True, text=True, cwd=REPO)  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-1000:]
  assert f"{path}: " in proc.stdout and "an alias (*a0) is not allowed" in proc.stdout
  assert len(proc.stdout.strip().splitlines()) == 1


def test_duplicate_keys_a_binary_file_and_a_huge_file_are_refused_naming_the_file(tmp_path):
  dup = tmp_path / "dup.yaml"
  dup.write_text("train: {epochs: 2}\ntrain: {epochs: 3}\n")
  with pytest.raises(ValueError, match=re.escape(f"{dup}: not valid YAML (line 2: duplicate key")):
    config_lib.load_file(dup)
  binary = tmp_path / "bin.yaml"
  binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
  with pytest.raises(ValueError, match=re.escape(f"{binary}: not a text experiment file")):
    config_lib.load_file(binary)
  big = tmp_path / "big.yaml"
  big.write_text("# padding\n" * 120_000)
  with pytest.raises(ValueError, match=re.escape(f"{big}: 1,200,000 bytes; experiment files")):
    config_lib.load_file(big)
  nested = tmp_path / "nested.yaml"
  nested.write_text("model: {mlp_hidden: [[1, 2], [3]]}\n")
  with pytest.raises(ValueError, match="model.mlp_hidden must be a value or a list of values"):
    config_lib.load_file(nested)


@pytest.mark.parametrize("kind", ["experiment", "schema"])
@pytest.mark.parametrize(
  "body",
  ["[" * 1000 + "]" * 1000, '{"a": ' * 1000 + "1" + "}" * 1000, "x: " + "[" * 32 + "]" * 32],
  ids=["1000 lists", "1000 mappings", "33 levels"],
)
def test_a_deeply_nested_file_is_refused_in_one_line_naming_it(tmp_path, kind, body):
  # Issue 33 item 4: 1,000 `[` in 2 KB were a RecursionError with a 998-frame traceback.
  from gin_jax.config import yaml_files
  from gin_jax.data.formats import CsvSchema

  path = tmp_path / "deep.json"
  path.write_text(body)
  load = config_lib.load_file if kind == "experiment" else CsvSchema.load
  with pytest.raises(ValueError) as e:
    load(path)
  assert str(e.value) == (
    f"{path}: nested deeper than {yaml_files.MAX_DEPTH} levels (line 1); "
    f"{'experiment file' if kind == 'experiment' else kind}s need a few"
  )


def test_default_workdirs_of_two_files_of_one_name_differ(tmp_path, monkeypatch):
  """Issue 36 item 3: two train.csv files shared runs/train, where the guard refused the second
  run and advised --overwrite, which deletes the first."""
  from gin_jax import cli

  monkeypatch.chdir(tmp_path)
  a, b = tmp_path / "a" / "train.csv", tmp_path / "b" / "train.csv"
  work = lambda *argv: cli.default_workdir(cli.build_config(*cli.parse(list(argv))))
  assert work() == os.path.join("runs", "demo") and work("--preset", "tiny") == "runs/tiny"
  first, second = work("--train", str(a)), work("--train", str(b))
  assert re.fullmatch(r"runs/train-[0-9a-f]{6}", first) and first != second
  assert work("--train", "a/train.csv") == first  # the same file, however it is named
  assert work("--train", str(a), "--preset", "frappe") == first
  assert work("--train", str(a), "--test", str(b)) != first
  assert re.fullmatch(r"runs/clicks-[0-9a-f]{6}", work("--train", "data/clicks/part-*.parquet"))
  help_text = cli.full_parser().format_help()
  assert "runs/<preset> without --train" in " ".join(help_text.split())


def test_the_config_guard_advises_another_workdir_not_the_deletion(tmp_path):
  from gin_jax.training import TrainingError
  from gin_jax.training.workdir import Workdir, check_config

  cfg = config_lib.tiny()
  (tmp_path / "config.json").write_text(cfg.to_json())
  other = config_lib.override(cfg, {"train.keep_ratio": "0.5"})
  with pytest.raises(TrainingError) as e:
    check_config(Workdir(tmp_path), other, overwrite=False)
  assert "give this run another --workdir DIR (--overwrite would delete that run)" in str(e.value)
  assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
  "argv, hint",
  [
    (["--workdr", "x"], "unrecognised argument '--workdr' (config overrides look like "
     "--train.epochs=2); did you mean --workdir?"),
    (["--overwirte"], "did you mean --overwrite?"),
    (["--epochs=2"], "did you mean --train.epochs=2?"),
    (["--learnig_rate=0.1"], "did you mean --train.learning_rate=0.1?"),
  ],
)  # fmt: skip
def test_a_misspelt_flag_is_answered_with_the_nearest(argv, hint, capsys):
  from gin_jax import cli

  with pytest.raises(SystemExit) as e:
    cli.parse(argv)
  assert e.value.code == 2 and hint in capsys.readouterr().err


@pytest.mark.parametrize(
  "key, hint",
  [
    ("train.epoch", "unknown config field train.epoch; did you mean train.epochs?"),
    ("model.embed_dims", "did you mean model.embed_dim?"),
    (
      "trian.epochs",
      "unknown config section 'trian' in 'trian.epochs'; did you mean train.epochs?",
    ),
    ("data.keep_ratio", "unknown config field data.keep_ratio; did you mean train.keep_ratio?"),
    ("model.zzz", "unknown config field model.zzz; known: ["),
  ],
)
def test_a_misspelt_config_field_is_answered_with_the_nearest(key, hint, tmp_path):
  with pytest.raises(ValueError) as e:
    config_lib.override(config_lib.tiny(), {key: "1"})
  assert hint in str(e.value)
  section, _, name = key.partition(".")
  path = tmp_path / "x.yaml"
  path.write_text(f"{section}: {{{name}: 1}}\n")
  if section in ("model", "data", "train"):
    with pytest.raises(
      ValueError, match=re.escape(f"x.yaml: unknown key {key}{hint[len(key) + 21 :]}")
    ):
      config_lib.load_file(path)


def test_the_scorer_names_the_nearest_flag_before_a_missing_one(capsys):
  from gin_jax import score

  with pytest.raises(SystemExit) as e:
    score.main(["--chekpoint", "runs/x", "--data", "d.tsv", "--out", "s.csv"])
  err = capsys.readouterr().err
  assert (
    e.value.code == 2 and "unrecognized arguments: --chekpoint; did you mean --checkpoint?" in err
  )
