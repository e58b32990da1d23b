"""Named presets: `python -m train --preset NAME` (docs/training.md lists them).

Each preset's tuning, with the figures measured, is in docs/quality.md.
"""

from __future__ import annotations

import dataclasses

from gin_jax.config.schema import Config, DataConfig, ModelConfig, TrainConfig


def demo() -> Config:
  """Synthetic Criteo-shaped data with planted pairs; minutes on 2 CPU cores."""
  return Config(
    name="demo",
    model=ModelConfig(embed_dim=8, num_layers=2, num_subspaces=3, mlp_hidden=(128, 64)),
    data=DataConfig(format="synthetic", synthetic_rows=120_000, min_count=2),
    train=TrainConfig(
      batch_size=512,
      epochs=3,
      learning_rate=2e-3,
      keep_ratio=0.3,
      log_every=50,
      checkpoint_every=200,
    ),
  )


def criteo_paper() -> Config:
  """The paper's Criteo setting: d=16, L=2, S=3, r=0.3, batch 1024, Adam."""
  return Config(
    name="criteo_paper",
    model=ModelConfig(embed_dim=16, num_layers=2, num_subspaces=3, mlp_hidden=(512, 256, 64)),
    data=DataConfig(format="criteo", split=(0.9, 0.0, 0.1), min_count=10),
    train=TrainConfig(batch_size=1024, epochs=5, learning_rate=1e-3, keep_ratio=0.3),
  )


def criteo_bars() -> Config:
  """BARS-tuned GIN on Criteo_x1: d=10, L=1, S=8, MLP 400x3 + BN, dropout 0.1."""
  return Config(
    name="criteo_bars",
    model=_bars_model(num_subspaces=8, dropout=0.1, embed_init_std=ModelConfig.embed_init_std),
    data=DataConfig(format="criteo", split=(0.72, 0.18, 0.1), min_count=10),
    train=TrainConfig(batch_size=4096, epochs=100, learning_rate=1e-3, patience=2, keep_ratio=0.3),
  )


def _bars_model(num_subspaces: int, dropout: float, **fields) -> ModelConfig:
  """BARS's tuned GIN body: d=10, L=1, MLP 400x3 + BN, FuxiCTR's init 1e-4 (unless given)."""
  return ModelConfig(**{
    "embed_dim": 10, "num_layers": 1, "num_subspaces": num_subspaces,
    "mlp_hidden": (400, 400, 400), "mlp_batch_norm": True, "mlp_dropout": dropout,
    "embed_init_std": 1e-4, **fields,
  })  # fmt: skip


def default() -> Config:
  """The recipe for real click logs (`python -m train --train FILE` without --preset).

  Chosen on the validation splits of Frappe and a Criteo sample with
  benchmarks.quality (mean of 3 seeds) to hold on data of any size: batch norm
  and dropout in the deep part, FuxiCTR's embedding L2 with a data-size-aware
  strength (auto_embedding_l2), about 50 steps an epoch (auto_batch_size), lr
  x0.1 on a validation plateau, early stopping on validation AUC with the best
  weights restored, the row-sparse lazy Adam, then `train.beat_linear` (deliver
  the better of GIN and GIN started from the fitted logistic regression).
  docs/quality.md has the figures.
  """
  return Config(
    name="default",
    model=_bars_model(num_subspaces=2, dropout=0.3),
    data=DataConfig(format="criteo", split=(0.8, 0.1, 0.1), min_count=2, numeric="scale"),
    train=TrainConfig(
      stages="aoanet",
      batch_size=None,
      embedding_l2=None,
      epochs=100,
      learning_rate=1e-3,
      patience=3,
      keep_ratio=0.3,
      warm_start=True,
      beat_linear=True,
    ),
  )


def frappe_x1() -> Config:
  """BARS's tuned AOANet on Frappe_x1 (reczoo/BARS AOANet_frappe_x1).

  d=10, L=1, S=2, MLP 400x3 + BN, dropout 0.3, embedding regulariser 0.1,
  batch 4096, Adam 1e-3, lr x0.1 on plateau, early stop patience 2, min count 1,
  FuxiCTR's embedding init N(0, 1e-4). FuxiCTR's `embedding_regularizer: 0.1` is
  lambda/p ||table||_p^p = 0.05 ||table||^2 added to the batch-mean loss every
  step: exactly `train.embedding_l2` = 0.1 here (the same per-step form). BARS
  trains GIN alone (no pruning stage): stages "single"; `--stages aoanet` prunes.
  For the BARS split files: --train train.csv --valid valid.csv --test test.csv
  --format csv --schema (label + the 10 categorical columns), or the libfm files.
  """
  return Config(
    name="frappe_x1",
    model=_bars_model(num_subspaces=2, dropout=0.3),
    data=DataConfig(format="libfm", min_count=1),
    train=TrainConfig(
      stages="single",
      batch_size=4096,
      epochs=100,
      learning_rate=1e-3,
      patience=2,
      embedding_l2=0.1,
    ),
  )


def frappe() -> Config:
  """The default recipe tuned for Frappe-sized logs (tens of thousands of rows, 10 fields).

  Tuned on the validation split of the public Frappe rows only (docs/quality.md
  has the coordinate search and its figures): two interaction layers with
  d = 32, a smaller deep part (200 x 2), a seed ensemble of five models
  (train.ensemble = 5: five times the training) and a gentler plateau decay
  (lr x0.3). Everything else is the default's. `--train.ensemble=1` trains one
  model.
  """
  cfg = default()
  return dataclasses.replace(
    cfg,
    name="frappe",
    model=dataclasses.replace(cfg.model, embed_dim=32, num_layers=2, mlp_hidden=(200, 200)),
    data=dataclasses.replace(cfg.data, format="libfm"),
    train=dataclasses.replace(cfg.train, ensemble=5, lr_decay=0.3),
  )


def criteo_x1() -> Config:
  """BARS's best AOANet run on Criteo_x1 (reczoo/BARS AOANet_criteo_x1_005).

  d=10, L=1, S=8, MLP 400x3 + BN, dropout 0.1, embedding regulariser 1e-5,
  batch 4096, Adam 1e-3, lr x0.1 on plateau, early stop patience 2, min count 1;
  its numeric columns are values times a field vector (`numeric: scale`). The
  regulariser converts as for frappe_x1: `train.embedding_l2` = 1e-5. GIN alone
  (stages "single"), as BARS ran it.
  """
  return Config(
    name="criteo_x1",
    model=_bars_model(num_subspaces=8, dropout=0.1),
    data=DataConfig(format="criteo", min_count=1, numeric="scale"),
    train=TrainConfig(
      stages="single",
      batch_size=4096,
      epochs=100,
      learning_rate=1e-3,
      patience=2,
      embedding_l2=1e-5,
    ),
  )


def tiny() -> Config:
  """A few-second run for tests."""
  return Config(
    name="tiny",
    model=ModelConfig(embed_dim=4, num_layers=2, num_subspaces=2, mlp_hidden=(16,)),
    data=DataConfig(format="synthetic", synthetic_rows=4000, synthetic_vocab=50, min_count=1),
    train=TrainConfig(
      batch_size=128,
      eval_batch_size=512,
      epochs=2,
      learning_rate=3e-3,
      log_every=5,
      # An epoch is 25 steps: a checkpoint at each epoch's end (the tests that resume
      # mid-epoch ask for one every 10 steps). Saving costs more than the steps here.
      checkpoint_every=25,
      keep_ratio=0.3,
    ),
  )


PRESETS = {
  "demo": demo,
  "default": default,
  "criteo_paper": criteo_paper,
  "criteo_bars": criteo_bars,
  "frappe": frappe,
  "frappe_x1": frappe_x1,
  "criteo_x1": criteo_x1,
  "tiny": tiny,
}


def preset(name: str) -> Config:
  """Returns the named preset; raises ValueError listing the known names."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]()
