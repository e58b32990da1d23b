"""The configuration schema: typed, frozen dataclasses, one comment per field.

Each list of allowed values is a tuple next to the field it constrains; the
command line (gin_jax.cli), the stage plans (gin_jax.training.stages) and the
format registry (gin_jax.data.formats) read these tuples, never a copy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

# model.arch: GIN / AOANet, the linear floor, FM, and the paper's 9 baselines (section 4);
# gin_jax.models.registry builds each.
ARCHS = (
  "gin", "lr", "fm", "deepfm", "ipnn", "opnn", "fwfm", "afm", "dcn", "dcnv2", "xdeepfm", "autoint",
)  # fmt: skip
PRUNABLE = ("gin",)  # the archs with alpha to prune (train.stages=aoanet)

# The paper's Table 4 (Criteo) layer counts, applied when model.arch switches to
# that model (explicit overrides of the same fields still win): the presets'
# num_layers is GIN's L, not DCN's.
ARCH_DEFAULTS = {
  "dcn": {"num_layers": 3},
  "dcnv2": {"num_layers": 2},
  "xdeepfm": {"num_layers": 2},
  "autoint": {"num_layers": 2},
}


READOUTS = ("last", "all")  # model.readout
INTERACTION_IMPLS = ("factorized", "reference")  # model.interaction_impl


# Each numeric field's valid range (low, high, low_open), checked when a config is built.
MODEL_RANGES = {
  "init_perturbation": (0, None, False), "embed_init_std": (0, None, False),
}  # fmt: skip
# A list field's values kept per row. Every row takes max_values slots of the prepared
# ids and values (8 bytes each, padding included) and of every batch; 1,000,000
# asked for 22 GiB for one column of 3,000 rows. Pooled lists (tags, a recent
# history) need tens to hundreds.
MAX_VALUES = 1024
# The value an attention-pooled list field holds at its missing id (an empty list): the
# model passes that row through with weight 1 instead of attending to it. Written by
# data.encode, read by models.layers: the one place both sides take it from.
ATTENTION_MISSING = -1.0
DATA_RANGES = {
  "max_values": (1, MAX_VALUES, False),
  "min_count": (1, None, False), "hash_buckets": (0, None, False), "num_workers": (0, None, False),
  "prepare_workers": (0, None, False), "seed": (0, None, False),
  "synthetic_rows": (1, None, False), "synthetic_vocab": (3, None, False),
  "synthetic_planted": (0, None, False), "synthetic_noise": (0, None, False),
}  # fmt: skip
TRAIN_RANGES = {
  "epochs": (1, None, False), "learning_rate": (0, None, True), "clip_norm": (0, None, False),
  "lr_decay": (0, 1, True), "patience": (1, None, False), "log_every": (1, None, False),
  "embedding_lr_scale": (0, None, True), "init_lr_scale": (0, None, True),
  "init_epochs": (0, None, False), "init_replay": (0, None, False),
  "checkpoint_every": (1, None, False), "keep_checkpoints": (1, None, False),
  "seed": (0, None, False),
}  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
  """Architecture of GIN / AOANet (DESIGN.md section 1)."""

  arch: str = "gin"  # "gin" (GIN / AOANet), "lr" or a baseline (ARCHS; gin_jax.models.registry).
  embed_dim: int = 16  # d: size of every field embedding.
  num_layers: int = 2  # L: GIN's interaction layers; DCN / DCN-M / CIN / AutoInt layers.
  num_subspaces: int = 3  # S: subspaces (parallel W, h, alpha) per layer.
  mlp_hidden: tuple[int, ...] = (512, 256, 64)  # Deep part hidden widths.
  mlp_batch_norm: bool = False  # Batch norm after each hidden dense layer.
  mlp_dropout: float = 0.0  # Dropout rate after each hidden layer (train only).
  readout: str = "last"  # "last": Q = P_L; "all": concat P_1..P_L.
  init_perturbation: float = 0.0  # Std of noise added to W=I, alpha=1, h=1.
  embed_init_std: float = 0.01  # Std of the normal init of the embedding table.
  first_order: bool = False  # GIN: add sum_f w[id_f] (one weight per category) to the logit.
  interaction_impl: str = "factorized"  # "factorized" (production) or "reference".
  compute_dtype: str = "float32"  # Interaction input dtype ("bfloat16" allowed).
  attention_factor: int = 3  # AFM: F, hidden width of the attention net (Table 4).
  cin_maps: int = 100  # xDeepFM: n, feature maps per CIN layer (Table 4).
  attention_heads: int = 3  # AutoInt: h, heads per self-attention layer (Table 4).
  attention_head_dim: int = 16  # AutoInt: d, query / key / value size per head (Table 4).
  # Hidden widths of the target-attention unit (DIN's local activation unit) of every
  # list field pooled by attention (schema `pooling: attention`); ReLU, one linear output.
  target_attention_hidden: tuple[int, ...] = (32,)

  def __post_init__(self):
    _check_finite("model", self)
    if self.arch not in ARCHS:
      raise ValueError(f"unknown model.arch {self.arch!r}; choose from {ARCHS}")
    if self.readout not in READOUTS:
      raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
    if self.interaction_impl not in INTERACTION_IMPLS:
      raise ValueError(f"unknown interaction_impl {self.interaction_impl!r}")
    if min(self.embed_dim, self.num_layers, self.num_subspaces) < 1:
      raise ValueError("embed_dim, num_layers and num_subspaces must be >= 1")
    if not 0.0 <= self.mlp_dropout < 1.0:
      raise ValueError(f"mlp_dropout must be in [0, 1), got {self.mlp_dropout}")
    sizes = ("attention_factor", "cin_maps", "attention_heads", "attention_head_dim")
    for name in sizes:
      if getattr(self, name) < 1:
        raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("mlp_hidden", "target_attention_hidden"):
      widths = getattr(self, name)
      if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"model.{name} must be widths >= 1, got {widths}")
    _check_ranges("model", self, MODEL_RANGES)


# data.format: the file formats gin_jax reads (gin_jax.data.formats has one module each).
FORMATS = ("criteo", "csv", "libfm", "parquet")
BAD_ROWS = ("error", "skip")  # data.bad_rows
NUMERIC_MODES = ("bucketize", "scale")  # data.numeric
SPLIT_BY = ("hash", "line")  # data.split_by
DEVICE_RESIDENT = ("auto", "resident", "streamed", "off")  # data.device_resident


@dataclass(frozen=True)
class DataConfig:
  """Where examples come from and how raw files are turned into arrays."""

  format: str = "synthetic"  # "criteo", "csv", "libfm", "parquet" or "synthetic" (demo).
  train: str | None = None  # Training file (may be .gz); parquet: file, directory or glob.
  valid: str | None = None  # Optional validation file; else split from train.
  test: str | None = None  # Optional test file; else split from train.
  split: tuple[float, ...] = (0.8, 0.1, 0.1)  # train/valid/test ratios of --train.
  schema: str | None = None  # CSV / Parquet schema file (JSON or YAML).
  bad_rows: str = "error"  # "error": stop at file:line; "skip": count and skip.
  numeric: str = "bucketize"  # Numeric fields: "bucketize" (ids) or "scale".
  min_count: int = 2  # Categories seen fewer times in train map to OOV.
  max_values: int = 32  # A multi-valued field's values kept per row (the last), <= MAX_VALUES.
  hash_buckets: int = 0  # >0: hashing mode with this many rows per field.
  seed: int = 0  # Seed of the random split.
  # How --train is split: "hash" (a seeded hash of each row's line number: a random
  # split) or "line" (by line order: train the oldest rows, then valid, test the
  # newest, for a file written in time order).
  split_by: str = "hash"
  num_workers: int = 0  # grain worker processes for the training pipeline.
  prepare_workers: int = 0  # Processes that prepare the files; 0: the cores available.
  device_resident: str = "auto"  # Train split on the devices: auto/resident/streamed/off.
  device_fraction: float = 0.25  # auto: resident if the split takes <= this of a device.
  synthetic_rows: int = 200_000  # Rows the synthetic generator writes.
  synthetic_vocab: int = 1000  # Largest categorical vocabulary (Zipf ids).
  synthetic_planted: int = 6  # Planted interacting field pairs.
  synthetic_noise: float = 0.5  # Std of the logit noise in synthetic labels.

  def __post_init__(self):
    _check_finite("data", self)
    if self.format not in (*FORMATS, "synthetic"):
      raise ValueError(f"unknown data format {self.format!r}")
    if self.bad_rows not in BAD_ROWS:
      raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {self.bad_rows!r}")
    if self.device_resident not in DEVICE_RESIDENT:
      raise ValueError(f"unknown device_resident {self.device_resident!r}")
    if not 0.0 < self.device_fraction <= 1.0:
      raise ValueError(f"device_fraction must be in (0, 1], got {self.device_fraction}")
    _check_ranges("data", self, DATA_RANGES)
    if self.split_by not in SPLIT_BY:
      raise ValueError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
    if self.numeric not in NUMERIC_MODES:
      raise ValueError(f"numeric must be one of {NUMERIC_MODES}, got {self.numeric!r}")
    if len(self.split) == 2 and self.test:
      # train,valid of --train; the test split is the --test file.
      object.__setattr__(self, "split", (*self.split, 0.0))
    if len(self.split) != 3 or any(r < 0 for r in self.split) or abs(sum(self.split) - 1) > 1e-6:
      raise ValueError(
        f"split must be three non-negative ratios (train, valid, test) summing to 1, or two "
        f"(train, valid) when the test split is a --test file; got {self.split}"
      )


# train.stages: "aoanet" = search -> select -> retrain (paper section 3.5);
# "single" = one training stage, no pruning (gin_jax.training.stages).
STAGE_PLANS = ("aoanet", "single")
STAGE_PLAN_ALIASES = {"gin": "single"}  # the plan's name before 0.2, still accepted
EMBEDDING_OPTIMIZERS = ("lazy_adam", "rowwise_adagrad", "adam")  # train.embedding_optimizer
PRUNE_SCOPES = ("subspace", "layer", "global")  # train.prune_scope
EARLY_STOP_METRICS = ("auc", "logloss")  # train.early_stop_metric: higher / lower is better
DELIVER = ("best", "last")  # train.deliver


@dataclass(frozen=True)
class TrainConfig:
  """Optimisation, the AOANet stages, evaluation and checkpointing."""

  stages: str = "aoanet"  # "aoanet": search -> select -> retrain; "single": one stage.
  batch_size: int | None = 1024  # Global batch (split over all devices); None: auto_batch_size.
  eval_batch_size: int = 4096  # Global batch size for evaluation and scoring.
  epochs: int = 3  # Maximum epochs per stage.
  learning_rate: float = 1e-3  # Adam learning rate.
  clip_norm: float = 10.0  # Global gradient-norm clip (0 disables).
  lr_decay: float = 0.1  # Learning-rate factor on a validation plateau.
  patience: int = 2  # Epochs without improvement before early stopping.
  # The validation metric that early stopping, the plateau decay, each stage's best
  # checkpoint and the delivered stage go by: "auc" (higher is better) or "logloss".
  early_stop_metric: str = "auc"
  # Which stage's model the run delivers: "best", the one that validates best by
  # early_stop_metric (the search stage's where pruning costs quality); "last", the
  # plan's last stage (the pruned model), whatever it scores.
  deliver: str = "best"
  # A field (e.g. user) whose groups' AUC, averaged weighted by rows (gAUC), is
  # reported beside AUC: log, report.json, summary table. "": none.
  group_by: str = ""
  embedding_l2: float | None = 0.0  # lambda/2 ||table||^2 per step (None: auto_embedding_l2).
  linear_l2: float | None = None  # lambda of the first-order weights (None: embedding_l2).
  linear_start: bool = False  # GIN + model.first_order: fit the linear part alone first.
  # GIN only: after the run, fit the logistic regression (WORKDIR/linear); if the
  # model validates below it, train GIN from it (linear_start) in
  # WORKDIR/from_linear and deliver whichever validates better.
  beat_linear: bool = False
  # Seed ensemble: train this many models (the run itself, then WORKDIR/ensemble/
  # member_<i> with train.seed + 1000 i) and deliver the average of their
  # probabilities; report, scoring and export use the average. K times the cost.
  ensemble: int = 1
  embedding_catch_up: int = 64  # lazy_adam: idle steps a touched row replays exactly.
  # Table rows: "lazy_adam", "rowwise_adagrad", "adam" (dense). lazy_adam on every backend:
  # rowwise Adagrad scored below it on Frappe and the Criteo sample (docs/quality.md).
  embedding_optimizer: str = "lazy_adam"
  embedding_lr_scale: float = 1.0  # Row optimizers: the rows' learning rate / the dense one.
  keep_ratio: float = 0.3  # r: fraction of pairs kept by the select stage.
  prune_scope: str = "subspace"  # "subspace", "layer" or "global" ranking.
  warm_start: bool = False  # Retrain from the search weights, not from scratch.
  seed: int = 0  # Seed of parameter init, shuffling and dropout.
  log_every: int = 50  # Steps between metrics.jsonl lines.
  tensorboard: bool = True  # Also write the metrics as TensorBoard scalars (WORKDIR/tensorboard/).
  checkpoint_every: int = 500  # Steps between checkpoints (also at epoch ends).
  keep_checkpoints: int = 3  # Most recent checkpoints kept (the best is kept too).
  # --init-from: continue the model a finished run (this folder) delivers, on this
  # run's data; its vocabularies grow (gin_jax.training.continuation). "": start afresh.
  init_from: str = ""
  reset_optimizer: bool = False  # --init-from: restart the optimizers' state from zero.
  # --init-from: the continued run's learning rate, as a multiple of train.learning_rate.
  # 0.2, chosen by validation AUC over three time-ordered logs (issue #38, docs/quality.md):
  # at 1.0 a model continued on a small new period forgot what the old one taught it.
  init_lr_scale: float = 0.2
  # --init-from: > 0: exactly this many epochs on the new data, without early stopping
  # or plateau decay (0: train.epochs, patience and lr_decay, as for a fresh run).
  init_epochs: int = 0
  # --init-from: also train on a sample of the rows the source trained on, this many
  # per new training row (gin_jax.data.replay; 0: the new rows alone).
  init_replay: float = 0.0

  def __post_init__(self):
    _check_finite("train", self)
    if self.stages in STAGE_PLAN_ALIASES:
      object.__setattr__(self, "stages", STAGE_PLAN_ALIASES[self.stages])
    if self.stages not in STAGE_PLANS:
      raise ValueError(f"stages must be one of {STAGE_PLANS}, got {self.stages!r}")
    if not 0.0 < self.keep_ratio <= 1.0:
      raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
    if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
      raise ValueError(f"unknown embedding_optimizer {self.embedding_optimizer!r}")
    if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 1:
      raise ValueError(f"ensemble must be an integer >= 1 (models averaged), got {self.ensemble!r}")
    if self.embedding_catch_up < 0:
      raise ValueError(f"embedding_catch_up must be >= 0, got {self.embedding_catch_up}")
    if self.embedding_l2 is not None and self.embedding_l2 < 0:
      raise ValueError(f"embedding_l2 must be >= 0, got {self.embedding_l2}")
    if self.linear_l2 is not None and self.linear_l2 < 0:
      raise ValueError(f"linear_l2 must be >= 0, got {self.linear_l2}")
    if self.prune_scope not in PRUNE_SCOPES:
      raise ValueError(f"unknown prune_scope {self.prune_scope!r}")
    if self.deliver not in DELIVER:
      raise ValueError(f"deliver must be one of {DELIVER}, got {self.deliver!r}")
    if self.early_stop_metric not in EARLY_STOP_METRICS:
      raise ValueError(
        f"early_stop_metric must be one of {EARLY_STOP_METRICS}, got {self.early_stop_metric!r}"
      )
    if (self.batch_size is not None and self.batch_size < 1) or self.eval_batch_size < 1:
      raise ValueError("batch sizes must be >= 1")
    _check_ranges("train", self, TRAIN_RANGES)


@dataclass(frozen=True)
class Config:
  """Everything one run needs; saved in every checkpoint and in report.json."""

  name: str = "demo"  # Preset name, for reports.
  model: ModelConfig = field(default_factory=ModelConfig)
  data: DataConfig = field(default_factory=DataConfig)
  train: TrainConfig = field(default_factory=TrainConfig)

  def __post_init__(self):
    if self.model.arch not in PRUNABLE and self.train.stages == "aoanet":
      raise ValueError(
        f"model.arch={self.model.arch!r} has no alpha to prune: use --stages single "
        "(one training stage)"
      )
    if self.train.linear_start and self.train.init_from:
      raise ValueError(
        "train.linear_start starts from a fitted logistic regression and --init-from from a "
        "trained model: choose one"
      )
    if self.train.linear_start and not (self.model.arch == "gin" and self.model.first_order):
      raise ValueError(
        "train.linear_start starts GIN's first-order part from a fitted logistic regression: "
        "it needs model.arch=gin and model.first_order=true"
      )

  def to_dict(self) -> dict:
    """Plain JSON-ready dict (tuples as lists): what config.json and checkpoints hold."""
    return _plain(dataclasses.asdict(self))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> Config:
    return Config(
      name=d["name"],
      model=_from_dict(ModelConfig, d["model"]),
      data=_from_dict(DataConfig, d["data"]),
      train=_from_dict(TrainConfig, d["train"]),
    )


def _check_finite(section: str, obj) -> None:
  """Raises ValueError naming `section.field` for any NaN or infinite number in `obj`.

  Every field, whatever its declared type (config.json and YAML can hold NaN
  anywhere): NaN passes every range check (nan < 0 is False), and no field
  means anything by an infinity.
  """
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{section}.{f.name} must be a finite number, got {value}")
    if isinstance(value, tuple | list) and any(
      isinstance(v, float) and not math.isfinite(v) for v in value
    ):
      raise ValueError(f"{section}.{f.name} must be finite numbers, got {tuple(value)}")


def _check_ranges(section: str, obj, ranges: dict) -> None:
  """Raises ValueError naming `section.field` and its range for a value outside it.

  ranges: field -> (low, high, low_open): low <= value (low < value when
  low_open) and value <= high; None is no bound. Optional fields left None pass.
  """
  for name, (low, high, low_open) in ranges.items():
    value = getattr(obj, name)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int | float):
      raise ValueError(f"{section}.{name} must be a number, got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    if bad_low or (high is not None and value > high):
      want = [f"{'>' if low_open else '>='} {low}"] if low is not None else []
      want += [f"<= {high}"] if high is not None else []
      raise ValueError(f"{section}.{name} must be {' and '.join(want)}, got {value!r}")


# ------------------------------------------------------------ data-dependent defaults

L2_PRIOR = 5000.0  # auto embedding_l2 = L2_PRIOR / training rows (see auto_embedding_l2).


def auto_batch_size(train_rows: int, num_devices: int = 1) -> int:
  """~train_rows / 50 (about 50 steps an epoch), as a power of two in [256, 4096].

  Small data needs enough updates per epoch for early stopping to find its
  point; large data gets the BARS batch. Rounded up to a multiple of the devices.
  """
  target = max(train_rows, 1) / 50
  batch = int(min(4096, max(256, 2 ** round(math.log2(max(target, 1))))))
  return -(-batch // num_devices) * num_devices


def auto_embedding_l2(train_rows: int) -> float:
  """lambda = L2_PRIOR / training rows.

  Per epoch, the objective is (1/B) (sum_i loss_i + N lambda/2 ||table||^2): N
  lambda is a Gaussian prior's precision on every embedding entry, here held
  at L2_PRIOR whatever the data size (on Frappe's size it is BARS's 0.1).
  """
  return L2_PRIOR / max(train_rows, 1)


def resolve_auto(cfg: Config, train_rows: int, num_devices: int = 1) -> Config:
  """cfg with its data-dependent (None) training settings decided for this data."""
  train = cfg.train
  if train.batch_size is None:
    train = dataclasses.replace(train, batch_size=auto_batch_size(train_rows, num_devices))
  if train.embedding_l2 is None:
    train = dataclasses.replace(train, embedding_l2=auto_embedding_l2(train_rows))
  return dataclasses.replace(cfg, train=train)


def _plain(x):
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_plain(v) for v in x]
  return x


def _from_dict(cls, d: dict):
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in d:
      v = d[f.name]
      if isinstance(v, list) and "tuple" in str(hints[f.name]):
        v = tuple(v)
      kwargs[f.name] = v
  return cls(**kwargs)
