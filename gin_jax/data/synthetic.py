"""Criteo-shaped synthetic click logs whose labels come from known field-pair interactions.

The demo and the tests need data where the right answer is known: which field pairs
matter. Each planted pair (a, b) adds w * z_a[a] * z_b[b] to the click logit, with a
random N(0, 1) factor per category of each field (for a numeric field: per bucket of
the bucketize transform, the default), so a factorised model with small embeddings
can learn it from a demo-sized set. Planted fields have 5..60 (bucketized) categories.
A few fields add small main effects, N(0, noise) is added to the logit, a bias is
solved for so that a positive_rate of rows are positive (25% by default), and labels
are Bernoulli(sigmoid(logit)).

Numeric fields are heavy-tailed non-negative integers (I2 is shifted so that it has
small negative values, as in Criteo) with 5-10% missing; categorical fields have
Zipf-distributed ids shown as 8-hex-digit tokens, 2-5% missing. Everything is
vectorised numpy and deterministic for a seed.

Days (`day`, `drift`): a time-ordered log, one file a day. The planted pairs,
their factors and every other choice of the label model stay put across days
(drawn from the seed alone, each category's factor fixed by its id); each day's
rows are drawn afresh, and on day t each categorical field's Zipf ranks start at
id floor(t * drift * size): ids new that day appear, the least recent stop.

write_demo_input is DataConfig.format "synthetic" (the demo): it writes the data of
the config's synthetic_* options once per cache directory, as the input of prepare.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import json
import os

import numpy as np

from gin_jax import files
from gin_jax.config import DataConfig
from gin_jax.data import vocab
from gin_jax.data.errors import write_error
from gin_jax.data.formats import criteo

SYNTHETIC = "synthetic"  # DataConfig.format of the demo data (generated, not a file format).


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Shape and difficulty of a synthetic dataset."""

  num_rows: int = 100_000
  num_numeric: int = 13  # Fields I1..I{num_numeric}.
  num_categorical: int = 26  # Fields C1..C{num_categorical}.
  max_vocab: int = 1000  # Largest categorical vocabulary (sizes are log-spaced from 3).
  num_planted: int = 6  # Planted interacting pairs (at least one numeric x categorical).
  noise: float = 0.5  # Std of the Gaussian noise added to the logit.
  seed: int = 0
  interaction_weight: float = 1.5  # w of every planted pair.
  main_effect_weight: float = 0.3  # Weight of the few main effects.
  num_main_effects: int = 3
  positive_rate: float = 0.25  # Target mean label (the bias is solved for it).
  zipf_exponent: float = 1.1  # Category k has probability ~ (k + 1)^-a.
  # A day of a time-ordered log (None: the one-off dataset, drawn as ever).
  day: int | None = None
  drift: float = 0.0  # With day: the fraction of each field's ids that is new each day.

  def __post_init__(self):
    if self.num_rows < 1 or self.max_vocab < 3:
      raise ValueError("num_rows must be >= 1 and max_vocab >= 3")
    if (self.day is not None and self.day < 0) or self.drift < 0:
      raise ValueError("day and drift must be >= 0")
    if self.drift and self.day is None:
      raise ValueError("drift applies to the days of a log: give day too")
    if self.num_numeric < 1 or self.num_categorical < 1:
      raise ValueError("need at least one numeric and one categorical field")

  @property
  def field_names(self) -> list[str]:
    return [f"I{i + 1}" for i in range(self.num_numeric)] + [
      f"C{i + 1}" for i in range(self.num_categorical)
    ]


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  """Generated rows, in Criteo's column order.

  Attributes:
    labels: int8 [N] in {0, 1}.
    numeric: int64 [N, num_numeric] values (0 where missing).
    numeric_missing: bool [N, num_numeric].
    categorical: int64 [N, num_categorical] category ids, -1 where missing.
    vocab_sizes: int [num_categorical] categories per categorical field (ids below it;
      on day t of a drifting log, those of days 0..t).
    logits: float64 [N] the noiseless logit (for checking what is learnable).
    planted_pairs: the planted pairs by field name, each in field order.
  """

  labels: np.ndarray
  numeric: np.ndarray
  numeric_missing: np.ndarray
  categorical: np.ndarray
  vocab_sizes: np.ndarray
  logits: np.ndarray
  planted_pairs: list[tuple[str, str]]


def generate(spec: SyntheticSpec) -> SyntheticData:
  """Draws a dataset (deterministic for spec.seed).

  Args:
    spec: what to draw.

  Returns:
    SyntheticData, including the planted pairs.
  """
  rng = np.random.default_rng(spec.seed)
  days = spec.day is not None
  # The rows' draws: the structure's own stream for a one-off set, a stream per day
  # otherwise (so that every day shares the structure rng draws alone).
  draw = np.random.default_rng((spec.seed, 1 + spec.day)) if days else rng
  n, nn, nc = spec.num_rows, spec.num_numeric, spec.num_categorical
  f32 = np.float32
  # Numeric: lognormal counts, a different scale per field.
  mu = rng.uniform(0.5, 3.0, nn).astype(f32)
  sigma = rng.uniform(1.0, 2.0, nn).astype(f32)
  normal = draw.standard_normal((n, nn), dtype=f32)
  numeric = np.minimum(np.floor(np.exp(mu + sigma * normal)), 1e9).astype(np.int64)
  if nn > 1:
    numeric[:, 1] -= 2  # Like Criteo's I2: a few small negative values.
  numeric_missing = draw.random((n, nn), dtype=f32) < rng.uniform(0.05, 0.10, nn).astype(f32)
  numeric[numeric_missing] = 0
  # Categorical: log-spaced vocabulary sizes, Zipf ids, 2-5% missing.
  sizes = np.round(np.geomspace(3, spec.max_vocab, nc)).astype(np.int64)
  sizes = sizes[rng.permutation(nc)]
  categorical = _zipf(draw, sizes, n, spec.zipf_exponent)
  categorical[draw.random((n, nc), dtype=f32) < rng.uniform(0.02, 0.05, nc).astype(f32)] = -1
  if days:
    return _day(spec, rng, draw, numeric, numeric_missing, categorical, sizes, mu, sigma)
  # Per-field category index used by the label model (missing is its own category):
  # bucket values are small integers, so they index densely from their minimum.
  cat_index = np.where(categorical < 0, sizes, categorical)
  buckets = vocab.bucketize(numeric.astype(np.float64)).astype(np.int64)
  lo, hi = buckets.min(axis=0), buckets.max(axis=0)
  num_index = np.where(numeric_missing, hi - lo + 1, buckets - lo)
  num_card = np.array([np.count_nonzero(np.bincount(num_index[:, j])) for j in range(nn)])
  index = np.concatenate([num_index, cat_index], axis=1)
  card = np.concatenate([num_card, sizes + 1])
  span = np.concatenate([hi - lo + 2, sizes + 1])
  pairs = _pick_pairs(rng, spec, card)
  factors = [rng.standard_normal(c) for c in span]
  logits = np.zeros(n)
  for a, b in pairs:
    logits += spec.interaction_weight * factors[a][index[:, a]] * factors[b][index[:, b]]
  main = rng.choice(len(card), size=min(spec.num_main_effects, len(card)), replace=False)
  for f in main:
    logits += spec.main_effect_weight * factors[f][index[:, f]]
  return _labelled(spec, draw, numeric, numeric_missing, categorical, sizes, logits, pairs)


def _labelled(spec, draw, numeric, missing, categorical, sizes, logits, pairs) -> SyntheticData:
  """Noise, the bias for spec.positive_rate and Bernoulli labels on the noiseless logits."""
  n, names = len(logits), spec.field_names
  noisy = logits + spec.noise * draw.standard_normal(n)
  bias = _solve_bias(noisy[:100_000], spec.positive_rate)
  labels = (draw.random(n) < 1 / (1 + np.exp(-(noisy + bias)))).astype(np.int8)
  return SyntheticData(
    labels,
    numeric,
    missing,
    categorical,
    sizes,
    logits + bias,
    [(names[a], names[b]) for a, b in pairs],
  )


_MISSING = -(1 << 40)  # The index of a missing value in _factor (no bucket or id is it).


def _day(spec, rng, draw, numeric, missing, categorical, sizes, mu, sigma) -> SyntheticData:
  """One day of a drifting log: generate()'s label model with day-independent choices.

  What generate() reads off its rows (the bucket range, the planted-pair
  candidates) comes here from a reference draw of the seed; the factors are
  fixed per (field, bucket or id) by _factor; the day shifts the ids.
  """
  nn = spec.num_numeric
  shift = np.floor(spec.day * spec.drift * sizes).astype(np.int64)
  categorical = np.where(categorical < 0, -1, categorical + shift)
  reference = np.random.default_rng((spec.seed, 0)).standard_normal((20_000, nn))
  reference = np.minimum(np.floor(np.exp(mu + sigma * reference)), 1e9)
  if nn > 1:
    reference[:, 1] -= 2
  num_card = [len(np.unique(vocab.bucketize(reference[:, j]))) + 1 for j in range(nn)]
  card = np.concatenate([num_card, sizes + 1])
  pairs = _pick_pairs(rng, spec, card)
  main = rng.choice(len(card), size=min(spec.num_main_effects, len(card)), replace=False)
  buckets = vocab.bucketize(numeric.astype(np.float64)).astype(np.int64)
  index = np.concatenate(
    [np.where(missing, _MISSING, buckets), np.where(categorical < 0, _MISSING, categorical)],
    axis=1,
  )
  factor = lambda f: _factor(spec.seed, f, index[:, f])
  logits = np.zeros(len(index))
  for a, b in pairs:
    logits += spec.interaction_weight * factor(a) * factor(b)
  for f in main:
    logits += spec.main_effect_weight * factor(f)
  return _labelled(spec, draw, numeric, missing, categorical, sizes + shift, logits, pairs)


def _factor(seed: int, field: int, index: np.ndarray) -> np.ndarray:
  """A N(0, 1) draw fixed by (seed, field, index), vectorised: splitmix64, Box-Muller."""
  with np.errstate(over="ignore"):
    x = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((int(seed) * 1_000_003 + int(field) + 1) * 0xBF58476D1CE4E5B9 % (1 << 64))
    words = []
    for _ in range(2):
      x = x + np.uint64(0x9E3779B97F4A7C15)
      z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
      z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
      words.append(((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) / 2.0**53)
  u1, u2 = 1.0 - words[0], words[1]  # u1 in (0, 1]
  return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _zipf(rng, sizes: np.ndarray, n: int, a: float) -> np.ndarray:
  """int64 [n, len(sizes)]: ids in [0, size) with P(k) ~ (k + 1)^-a, by inverting the
  continuous power law's CDF (no per-category search)."""
  u = rng.random((n, len(sizes)), dtype=np.float32)  # float32: ids stay < 2^24.
  top = (sizes + 1.0).astype(np.float32)
  if abs(a - 1.0) < 1e-9:
    x = np.exp(u * np.log(top))
  else:
    e = np.float32(1.0 - a)
    x = (np.float32(1.0) + u * (top**e - np.float32(1.0))) ** (np.float32(1.0) / e)
  return np.minimum(x.astype(np.int64) - 1, sizes - 1)  # x >= 1: truncation is floor.


def _pick_pairs(rng, spec: SyntheticSpec, card: np.ndarray) -> list[tuple[int, int]]:
  nn = spec.num_numeric
  ok = [int(f) for f in np.flatnonzero((card >= 5) & (card <= 60))]
  num_ok = [f for f in ok if f < nn] or list(range(nn))
  cat_ok = [f for f in ok if f >= nn] or list(range(nn, len(card)))
  pool = sorted(set(ok) | set(num_ok) | set(cat_ok))
  candidates = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1 :]]
  candidates = [candidates[i] for i in rng.permutation(len(candidates))]
  pairs = []
  if spec.num_planted:
    pairs.append((int(rng.choice(num_ok)), int(rng.choice(cat_ok))))
  # Disjoint pairs first, so that each planted pair is separately identifiable.
  for disjoint in (True, False):
    for a, b in candidates:
      used = {f for p in pairs for f in p}
      if len(pairs) < spec.num_planted and (a, b) not in pairs and not (disjoint and used & {a, b}):
        pairs.append((a, b))
  return sorted(pairs)


def _solve_bias(logits: np.ndarray, rate: float) -> float:
  lo, hi = -30.0, 30.0
  for _ in range(40):
    mid = (lo + hi) / 2
    if np.mean(1 / (1 + np.exp(-(logits + mid)))) > rate:
      hi = mid
    else:
      lo = mid
  return (lo + hi) / 2


def category_tokens(field: int, size: int, seed: int) -> np.ndarray:
  """The 8-hex-digit tokens (S8) of categories 0..size-1 of categorical field `field`.

  An odd multiplier mod 2^32 is a bijection, so distinct ids get distinct tokens.
  """
  k = np.arange(size, dtype=np.uint64)
  h = (
    k * np.uint64(0x9E3779B1) + np.uint64(field * 0x85EBCA77 + seed * 0xC2B2AE3D + 1)
  ) & np.uint64(0xFFFF_FFFF)
  return np.array([f"{int(x):08x}" for x in h], dtype="S8")


def write_criteo_tsv(
  path: str | os.PathLike, spec: SyntheticSpec, block_rows: int = 200_000
) -> list[tuple[str, str]]:
  """Generates a dataset and writes it as Criteo TSV (gzip if path ends in .gz).

  Args:
    path: output file.
    spec: what to generate.
    block_rows: rows formatted at a time (bounds memory).

  Returns:
    The planted pairs.
  """
  data = generate(spec)
  tables = [
    np.frombuffer(category_tokens(j, int(v), spec.seed).tobytes(), np.uint8).reshape(int(v), 8)
    for j, v in enumerate(data.vocab_sizes)
  ]
  opener = gzip.open if str(path).endswith(".gz") else open
  kwargs = {"compresslevel": 1} if str(path).endswith(".gz") else {}
  with opener(path, "wb", **kwargs) as f:
    for start in range(0, spec.num_rows, block_rows):
      rows = slice(start, min(start + block_rows, spec.num_rows))
      f.write(_format_block(data, rows, tables))
  return data.planted_pairs


def _format_block(data: SyntheticData, rows: slice, tables) -> bytes:
  """Formats rows as a fixed-width byte matrix padded with NUL, then drops the NULs.

  This keeps the whole text path vectorised: no per-row Python.
  """
  labels = data.labels[rows]
  numeric, missing = data.numeric[rows], data.numeric_missing[rows]
  cats = data.categorical[rows]
  n = len(labels)
  pieces = [(labels.astype(np.uint8) + ord("0"))[:, None]]
  for j in range(numeric.shape[1]):
    pieces.append(_int_bytes(numeric[:, j], missing[:, j]))
  for j in range(cats.shape[1]):
    ids = cats[:, j]
    col = tables[j][np.maximum(ids, 0)]
    col[ids < 0] = 0
    pieces.append(col)
  tab = np.full((n, 1), ord("\t"), np.uint8)
  out = []
  for p in pieces:
    out += [p, tab]
  out[-1] = np.full((n, 1), ord("\n"), np.uint8)
  return np.concatenate(out, axis=1).tobytes().replace(b"\0", b"")


def _int_bytes(x: np.ndarray, missing: np.ndarray) -> np.ndarray:
  """Decimal digits of int64 x as a [n, width] uint8 matrix, NUL-padded, NUL if missing."""
  neg = x < 0
  a = np.abs(x)
  width = max(1, len(str(int(a.max())))) if len(a) else 1
  powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
  digits = (a[:, None] // powers) % 10 + ord("0")
  lead = (a[:, None] < powers) & (powers > 1)  # Leading zeros (keep the last digit).
  digits[lead] = 0
  sign = np.where(neg, ord("-"), 0)[:, None]
  out = np.concatenate([sign, digits], axis=1).astype(np.uint8)
  out[missing] = 0
  return out


# ------------------------------------------------------------------ the demo input


def write_demo_input(cfg: DataConfig, cache_dir: str | os.PathLike) -> tuple[DataConfig, list]:
  """Writes cfg's synthetic data as a Criteo TSV into cache_dir (once per spec).

  Args:
    cfg: a config of format SYNTHETIC; its synthetic_* options and seed give the spec.
    cache_dir: where the file and its planted pairs (a .pairs.json next to it) go.

  Returns:
    (cfg reading that file as criteo, training split only; the planted pairs).
    Raises DataError when the disk fills up (the partial file is removed).
  """
  spec = SyntheticSpec(
    num_rows=cfg.synthetic_rows,
    max_vocab=cfg.synthetic_vocab,
    num_planted=cfg.synthetic_planted,
    noise=cfg.synthetic_noise,
    seed=cfg.seed,
  )
  key = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
  path = os.path.join(cache_dir, f"synthetic-{key.hexdigest()[:16]}.tsv")
  pairs_path = path + ".pairs.json"
  if not os.path.exists(pairs_path):
    os.makedirs(cache_dir, exist_ok=True)
    _write_demo_files(path, pairs_path, spec)
  with open(pairs_path) as f:
    pairs = [list(p) for p in json.load(f)]
  real = dataclasses.replace(cfg, format=criteo.FORMAT.name, train=path, valid=None, test=None)
  return real, pairs


def _write_demo_files(path: str, pairs_path: str, spec: SyntheticSpec) -> None:
  """The TSV, then its pairs file (whose existence says the TSV is complete)."""
  try:
    pairs = write_criteo_tsv(path, spec)
    files.atomic_write(pairs_path, json.dumps(pairs))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EFBIG):
      raise
    written = os.path.getsize(path) if os.path.exists(path) else 0
    if os.path.exists(path):
      os.remove(path)  # A partial file: give the space back.
    raise write_error(path, e, written, at_least=True) from None


def write_list_csv(path: str | os.PathLike, num_rows: int = 8000, seed: int = 0):
  """A CSV of clicks with a multi-valued field whose values interact with another field.

  Columns: label, c0..c4 (categorical, 12 categories each) and `tags`, a list of
  0-6 of 40 Zipf-distributed tags joined by "|" (an empty list in ~10% of rows).
  Planted: (c1, tags), w * z[c1] * mean over the row's tags of z[tag], and
  (c2, c3), w * z[c2] * z[c3]; the rest is noise. With mean pooling, the first
  is exactly the kind of pair GIN finds between a pooled list and a field.

  Returns:
    (the schema as a dict, for CsvSchema.from_dict / a schema file; the planted
    pairs by column name).
  """
  rng = np.random.default_rng(seed)
  n, cats, num_tags = num_rows, 12, 40
  c = rng.integers(0, cats, (n, 5))
  z = rng.normal(size=(5, cats))
  z_tag = rng.normal(size=num_tags)
  counts = np.where(rng.random(n) < 0.1, 0, rng.integers(1, 7, n))
  p = (np.arange(num_tags) + 1.0) ** -1.1
  tags = [rng.choice(num_tags, k, replace=False, p=p / p.sum()) for k in counts]
  tag_mean = np.array([z_tag[t].mean() if len(t) else 0.0 for t in tags])
  logit = 2.0 * z[1, c[:, 1]] * tag_mean + 1.5 * z[2, c[:, 2]] * z[3, c[:, 3]]
  logit += 0.3 * rng.normal(size=n)
  logit += _solve_bias(logit, 0.3)
  labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
  with open(path, "w") as f:
    f.write("label,c0,c1,c2,c3,c4,tags\n")
    for i in range(n):
      row = ",".join(f"v{c[i, j]}" for j in range(5))
      f.write(f"{labels[i]},{row},{'|'.join(f't{t}' for t in tags[i])}\n")
  schema = {"label": "label", "categorical": [f"c{j}" for j in range(5)],
            "multi_valued": {"tags": "|"}}  # fmt: skip
  return schema, [("c1", "tags"), ("c2", "c3")]


def write_history_csv(
  path: str | os.PathLike,
  num_rows: int = 8000,
  seed: int = 0,
  *,
  num_items: int = 100,
  num_groups: int = 4,
  max_history: int = 20,
  weight: float = 0.6,
):
  """A CSV of clicks whose label depends on the candidate item AND the row's history.

  Each of `num_items` items belongs to one of `num_groups` latent groups. A row is a
  candidate `item_id`, a `user` (60) and a `context` (8) category (noise), and a
  `history`: 0..max_history items ("|"-joined, empty in ~10% of rows), drawn mostly
  (80%) from one or two groups the row is interested in, the rest at random.
  Planted: the click logit rises by `weight` with every history item in the
  candidate's group (centred), plus a small per-item effect and N(0, 0.3) noise.
  The effect is target-dependent (which history items count depends on the
  candidate), counts rather than averages, and is learnable from the items' ids
  alone: exactly what a history pooled by attention over rows shared with the
  candidate finds (DESIGN.md section 9).

  Returns:
    (the schema as a dict: history pooled by attention against item_id, sharing its
    rows (see `history_schema` for the other variants); item -> group, int [num_items]).
  """
  rng = np.random.default_rng(seed)
  n, g = num_rows, num_groups
  group = rng.permutation(np.arange(num_items) % g)
  members = [np.flatnonzero(group == k) for k in range(g)]
  p = (np.arange(num_items) + 1.0) ** -0.8
  item = rng.choice(num_items, n, p=p / p.sum())
  user, context = rng.integers(0, 60, n), rng.integers(0, 8, n)
  lengths = np.where(rng.random(n) < 0.1, 0, rng.integers(1, max_history + 1, n))
  interests = rng.integers(0, g, (n, 2))
  total = int(lengths.sum())
  row = np.repeat(np.arange(n), lengths)
  which = interests[row, rng.integers(0, 2, total)]
  focused = rng.random(total) < 0.8
  pick = rng.random(total)
  from_interest = np.array([members[k][int(u * len(members[k]))] for k, u in zip(which, pick)])
  hist = np.where(focused, from_interest, rng.integers(0, num_items, total))
  match = np.bincount(row, weights=group[hist] == group[item[row]], minlength=n)
  logit = weight * (match - match.mean()) + 0.3 * rng.normal(size=num_items)[item]
  logit += 0.3 * rng.normal(size=n)
  logit += _solve_bias(logit, 0.3)
  labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
  starts = np.concatenate([[0], np.cumsum(lengths)])
  with open(path, "w") as f:
    f.write("label,user,item_id,context,history\n")
    for i in range(n):
      h = "|".join(f"i{x}" for x in hist[starts[i] : starts[i + 1]])
      f.write(f"{labels[i]},u{user[i]},i{item[i]},c{context[i]},{h}\n")
  return history_schema("attention", shared=True, max_history=max_history), group


def history_schema(pooling: str, *, shared: bool, max_history: int = 20) -> dict:
  """write_history_csv's schema with the history pooled by `pooling` ("mean", "sum",
  "attention" against item_id), sharing item_id's rows or with a vocabulary of its own."""
  entry = {"separator": "|", "max_values": max_history, "pooling": pooling}
  if pooling == "attention":
    entry["target"] = "item_id"
  schema = {
    "label": "label",
    "categorical": ["user", "item_id", "context"],
    "multi_valued": {"history": entry},
  }
  if shared:
    schema["share_embedding"] = {"history": "item_id"}
  return schema
