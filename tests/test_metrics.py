"""The metrics of gin_jax.metrics: grouped AUC and calibration, against plain loops."""

import numpy as np
import pytest

from gin_jax import metrics


def _loop_gauc(labels, scores, groups):
  num = den = 0.0
  used = skipped = 0
  for g in np.unique(groups):
    rows = groups == g
    auc = metrics.auc(labels[rows], scores[rows])
    if np.isnan(auc):
      skipped += 1
      continue
    num, den, used = num + rows.sum() * auc, den + rows.sum(), used + 1
  return num / den, used, skipped, int(den)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_auc_is_the_row_weighted_mean_of_each_groups_auc(seed):
  """Ties within and across groups, groups of one class (skipped), unsorted group ids."""
  rng = np.random.default_rng(seed)
  n = 4000
  groups = rng.choice(np.array([-5, 3, 10**9, 7, 42, 8, 11]), n) + rng.integers(0, 40, n) * 100
  labels = (rng.random(n) < 0.2).astype(np.float32)
  scores = np.round(rng.random(n) + 0.5 * labels, 1).astype(np.float32)  # many ties
  labels[groups % 100 == 0] = 0  # some groups of one class
  got = metrics.grouped_auc(labels, scores, groups)
  want, used, skipped, rows = _loop_gauc(labels, scores, groups)
  assert got["gauc"] == pytest.approx(want, abs=1e-12)
  assert (got["groups"], got["groups_skipped"], got["rows"]) == (used, skipped, rows)


def test_grouped_auc_of_one_group_is_the_auc_and_of_none_is_nan():
  labels = np.array([0, 1, 0, 1, 1], np.float32)
  scores = np.array([0.1, 0.4, 0.4, 0.8, 0.2], np.float32)
  one = metrics.grouped_auc(labels, scores, np.zeros(5, np.int64))
  assert one["gauc"] == metrics.auc(labels, scores) and one["groups"] == 1
  none = metrics.grouped_auc(labels, scores, np.arange(5))  # one row a group: one class each
  assert np.isnan(none["gauc"]) and (none["groups"], none["groups_skipped"]) == (0, 5)


def test_calibration_bins_and_expected_calibration_error():
  labels = np.array([0, 0, 1, 1, 1, 0, 1, 0], np.float32)
  probs = np.array([0.05, 0.05, 0.05, 0.95, 0.95, 0.95, 0.55, 0.55], np.float32)
  c = metrics.calibration(labels, probs, bins=10)
  assert [b["n"] for b in c["bins"]] == [3, 2, 3]
  assert [b["observed_rate"] for b in c["bins"]] == pytest.approx([1 / 3, 0.5, 2 / 3])
  gaps = [abs(0.05 - 1 / 3) * 3, abs(0.55 - 0.5) * 2, abs(0.95 - 2 / 3) * 3]
  assert c["ece"] == pytest.approx(sum(gaps) / 8, rel=1e-6)
  assert c["mean_predicted"] == pytest.approx(probs.mean()) and c["observed_rate"] == 0.5
  assert metrics.calibration(np.ones(4), np.ones(4))["ece"] == 0.0  # p = 1 is in the last bin
