"""A run's report as pictures (gin_jax/training/plots.py): the figures, the page, and a
run without matplotlib (issue 36 item 8)."""

import json
import re
import sys

import pytest

from gin_jax.training import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _run_outputs(root):
  """metrics.jsonl and a report of a two-stage run, as the trainer writes them."""
  records = []
  for stage, start in (("search", 0), ("retrain", 40)):
    records += [{"stage": stage, "step": start + s, "epoch": s // 20, "loss": 0.7 - s / 100}
                for s in range(5, 40, 5)]  # fmt: skip
    records += [{"stage": stage, "event": "eval", "split": "valid", "step": start + 20 * e,
                 "epoch": e, "auc": 0.6 + e / 20, "logloss": 0.5 - e / 50}
                for e in (1, 2)]  # fmt: skip
  (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  bins = [{"lo": b / 10, "hi": (b + 1) / 10, "n": 10 + b, "mean_predicted": b / 10 + 0.05,
           "observed_rate": b / 10} for b in range(1, 5)]  # fmt: skip
  stage = {"valid_auc": 0.7, "test_auc": 0.69, "test_logloss": 0.5, "test_ece": 0.05}
  return {
    "stages": {"search": stage, "retrain": stage},
    "delivered_stage": "search",
    "config": {"name": "t"},
    "calibration": {
      "stage": "search",
      "split": "test",
      "ece": 0.05,
      "mean_predicted": 0.3,
      "observed_rate": 0.25,
      "bins": bins,
    },  # fmt: skip
  }


def test_the_figures_are_drawn_listed_and_linked_from_the_page(tmp_path):
  report = _run_outputs(tmp_path)
  (tmp_path / "alpha_heatmap.png").write_bytes(PNG)  # final_report draws it
  out = plots.publish(tmp_path, report)
  assert out["figures"] == {
    "learning_curves": "learning_curves.png",
    "reliability": "reliability.png",
    "alpha_heatmap": "alpha_heatmap.png",
  }
  for name in ("learning_curves.png", "reliability.png"):
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG) and 5_000 < len(data) < 150_000
  page = (tmp_path / out["summary_page"]).read_text()
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
  assert sorted(links) == sorted(out["figures"].values())
  assert all((tmp_path / link).exists() for link in links)
  assert "Delivered: the **search** stage's model" in page and "ECE 0.0500" in page
  assert "| **search** (delivered) |" in page


def test_without_matplotlib_the_run_says_once_how_to_get_the_pictures(
  tmp_path, monkeypatch, capsys
):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
  monkeypatch.setattr(plots, "_said", False)
  report = _run_outputs(tmp_path)
  for _ in range(2):  # a run and its nested runs: said once a process
    out = plots.publish(tmp_path, report)
  said = capsys.readouterr().out
  assert said.count("plots skipped: matplotlib is not installed") == 1
  assert "pip install 'gin-jax[plots]'" in said
  assert out["figures"] == {} and not list(tmp_path.glob("*.png"))
  page = (tmp_path / "summary.md").read_text()
  assert "matplotlib is not installed" in page and "| **search** (delivered) |" in page


@pytest.mark.parametrize("report", [{}, {"calibration": None}, {"calibration": {"bins": []}}])
def test_a_run_without_validation_or_test_rows_draws_what_it_has(tmp_path, report):
  out = plots.publish(tmp_path, {"stages": {}, **report})
  assert out["figures"] == {} and (tmp_path / "summary.md").exists()
