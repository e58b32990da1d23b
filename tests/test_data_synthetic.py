"""The synthetic generator: Criteo-shaped, deterministic, planted pairs that matter."""

import gzip

import numpy as np
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import SyntheticSpec, generate, prepare, synthetic, vocab, write_criteo_tsv

SPEC = SyntheticSpec(num_rows=20_000, seed=4)


@pytest.fixture(scope="module")
def data():
  return generate(SPEC)


def test_shapes_rates_and_determinism(data):
  n = SPEC.num_rows
  assert data.numeric.shape == (n, 13) and data.categorical.shape == (n, 26)
  assert 0.2 < data.labels.mean() < 0.3  # ~25% positives.
  missing_num = data.numeric_missing.mean(0)
  assert ((missing_num > 0.04) & (missing_num < 0.11)).all()
  missing_cat = (data.categorical < 0).mean(0)
  assert ((missing_cat > 0.015) & (missing_cat < 0.06)).all()
  assert (data.categorical < data.vocab_sizes).all() and data.vocab_sizes.max() <= 1000
  assert data.numeric[:, 1].min() < 0 and data.numeric[:, 0].min() >= 0  # I2 has negatives.
  assert np.percentile(data.numeric[:, 2], 99.9) > 20 * np.median(data.numeric[:, 2])  # Heavy.
  again = generate(SPEC)
  np.testing.assert_array_equal(again.labels, data.labels)
  np.testing.assert_array_equal(again.categorical, data.categorical)
  assert again.planted_pairs == data.planted_pairs
  other = generate(SyntheticSpec(num_rows=20_000, seed=5))
  assert not np.array_equal(other.categorical, data.categorical)


def test_zipf_ids(data):
  sizes = data.vocab_sizes
  j = int(np.argmax(sizes))
  counts = np.bincount(data.categorical[:, j][data.categorical[:, j] >= 0], minlength=sizes[j])
  assert counts[0] > counts[1] > counts[4] > counts[50]  # Head heavy.


def test_planted_pairs(data):
  pairs = data.planted_pairs
  names = SPEC.field_names
  assert len(pairs) == SPEC.num_planted == len(set(pairs))
  assert all(a in names and b in names and names.index(a) < names.index(b) for a, b in pairs)
  assert any(a.startswith("I") and b.startswith("C") for a, b in pairs)  # numeric x cat.
  fields = [f for p in pairs for f in p]
  for f in fields:  # Small-ish (bucketized) cardinality, so a model can learn them.
    j = names.index(f)
    if f.startswith("C"):
      card = data.vocab_sizes[j - 13] + 1
    else:
      b = vocab.bucketize(data.numeric[:, j].astype(float))
      card = len(np.unique(b[~data.numeric_missing[:, j]])) + 1
    assert 5 <= card <= 61, (f, card)


def _auc(scores, labels):
  order = np.argsort(scores)
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  pos = labels == 1
  return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_labels_follow_the_planted_interactions(data):
  assert _auc(data.logits, data.labels) > 0.8
  # A planted pair's joint categories carry signal that neither field has alone:
  # in-sample click rates of the joint cells rank far better than either marginal.
  names = SPEC.field_names
  a, b = (names.index(f) for f in data.planted_pairs[0])
  index = {}
  for f in (a, b):
    col = data.numeric[:, f] if f < 13 else data.categorical[:, f - 13]
    missing = data.numeric_missing[:, f] if f < 13 else col < 0
    b_ = vocab.bucketize(col.astype(float)) if f < 13 else col
    index[f] = np.unique(np.where(missing, -(10**9), b_), return_inverse=True)[1]

  def cell_auc(cells):
    rate = np.bincount(cells, data.labels) / np.maximum(np.bincount(cells), 1)
    return _auc(rate[cells], data.labels)

  joint = index[a] * (index[b].max() + 1) + index[b]
  assert cell_auc(joint) > max(cell_auc(index[a]), cell_auc(index[b])) + 0.05


def test_written_tsv_roundtrips_through_the_criteo_reader(tmp_path, data):
  spec = SyntheticSpec(num_rows=3000, seed=4, max_vocab=200)
  small = generate(spec)
  path = tmp_path / "s.tsv.gz"
  pairs = write_criteo_tsv(path, spec)
  assert pairs == small.planted_pairs
  lines = gzip.decompress(path.read_bytes()).decode().splitlines()
  assert len(lines) == 3000 and all(line.count("\t") == 39 for line in lines)
  first = lines[0].split("\t")
  assert first[0] == str(small.labels[0])
  for j in range(13):
    want = "" if small.numeric_missing[0, j] else str(small.numeric[0, j])
    assert first[1 + j] == want
  cats = [t for t in first[14:] if t]
  assert all(len(t) == 8 and int(t, 16) >= 0 for t in cats)
  cfg = DataConfig(format="criteo", train=str(path), split=(1, 0, 0), min_count=1)
  meta, splits = prepare(cfg, tmp_path / "c", progress=False)
  np.testing.assert_array_equal(splits["train"].labels, small.labels)
  # Distinct ids in, distinct tokens out: the vocabulary sizes match the data.
  for j in range(26):
    seen = np.unique(small.categorical[:, j][small.categorical[:, j] >= 0])
    assert len(meta.vocab[f"C{j + 1}"]) == len(seen)


def test_days_of_a_drifting_log_share_the_label_model_and_shift_the_ids():
  spec = lambda day: SyntheticSpec(num_rows=20_000, seed=4, max_vocab=300, day=day, drift=0.2)
  d0, d1, d2 = (generate(spec(t)) for t in range(3))
  assert d0.planted_pairs == d1.planted_pairs == d2.planted_pairs
  assert not np.array_equal(d0.labels, d1.labels)  # each day's rows are drawn afresh
  np.testing.assert_array_equal(generate(spec(1)).labels, d1.labels)  # deterministic
  big = int(np.argmax(d0.vocab_sizes))
  ids = [set(np.unique(d.categorical[:, big][d.categorical[:, big] >= 0])) for d in (d0, d1, d2)]
  assert len(ids[1] - ids[0]) > 30 and len(ids[0] - ids[1]) > 30  # new ids come, old ones go
  assert min(ids[2]) > min(ids[1]) > min(ids[0])
  assert d2.vocab_sizes[big] > d1.vocab_sizes[big] > d0.vocab_sizes[big]
  # The planted interactions persist: a category's factor is fixed by its id alone.
  z = synthetic._factor(4, 30, np.arange(200_000))
  assert synthetic._factor(4, 30, np.array([7, 199_999]))[1] == z[199_999]
  assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
  assert not np.array_equal(z, synthetic._factor(4, 31, np.arange(200_000)))
  with pytest.raises(ValueError, match="give day too"):
    SyntheticSpec(drift=0.1)
