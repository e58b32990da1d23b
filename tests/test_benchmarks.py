"""Smoke tests of the benchmark scripts and their shared helpers, on tiny shapes."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, einsum_bench


def test_common_helpers():
  assert common.time_fn(jax.jit(jnp.sin), jnp.ones(8), warmup=1, iters=3) > 0
  output, iters = common.warm_up(jax.jit(jnp.sin), jnp.ones(8), target_s=0.01, max_iters=4)
  assert output.shape == (8,) and 3 <= iters <= 4
  assert common.measure_matmul_peak(jnp.float32, n=128, iters=2) > 0
  flops, temp_bytes = common.compiled_cost(jax.jit(jnp.dot), jnp.ones((16, 8)), jnp.ones((8, 4)))
  assert flops is None or flops >= 2 * 16 * 8 * 4
  assert temp_bytes is None or temp_bytes >= 0
  table = common.markdown_table(["a", "bb"], [["1", "2"], ["333", "4"]])
  assert table.splitlines()[1].startswith("|--")


def test_einsum_bench_tiny_shapes_write_json_and_plot(tmp_path):
  # Tiny stand-ins for the paper's two layers, so the goals and chunking run fast.
  paper_l1 = einsum_bench.Shape("paper_l1", "named", 32, 6, 6, 4, 2, chunk_baselines=True)
  paper_l2 = dataclasses.replace(paper_l1, name="paper_l2", m=2)
  sweep_base = {"b": 16, "f": 6, "d": 4, "s": 2}
  shapes = [
    *einsum_bench.parse_shapes(["8,3,3,4,2"], quick=True),
    paper_l1,
    paper_l2,
    *einsum_bench.sweep("sweep_f", (3, 6), base=sweep_base),
  ]
  out, png = tmp_path / "bench.json", tmp_path / "bench.png"
  impls = "reference fuxictr factorized factorized_masked sparse_masked".split()
  argv = ["--quick", "--peak-n", "256", "--impls", *impls, "--sweep-impls", "factorized"]
  argv += ["--json", str(out), "--plot", str(png), "--mem-limit-gb", str(60_000 / 2**30)]
  payload = einsum_bench.main(argv, shapes=shapes)
  saved = json.loads(out.read_text())
  assert png.stat().st_size > 0
  assert saved["backend"] == jax.default_backend() and saved["dtype"] == "float32"
  assert saved["matmul_peak_gflops"] > 0
  records = saved["records"]
  fields = {"shape", "impl", "mode", "status", "time_s", "iters", "flops", "temp_bytes", "chunks"}
  assert all(fields <= set(r) for r in records)
  tiny = {(r["impl"], r["mode"]): r for r in records if r["shape"] == "custom_8_3_3_4_2"}
  assert set(tiny) == {(i, m) for i in payload["impls"] for m in einsum_bench.MODES}
  for r in tiny.values():
    assert r["time_s"] > 0 and r["iters"] > 0
    if r["mode"] == "fwd":
      assert r["max_rel_err_vs_factorized"] < 1e-5
  fb = tiny["factorized", "fwd_bwd"]
  assert fb["speedup_vs_reference"] > 0 and fb["speedup_vs_fuxictr"] > 0
  assert all(len(r["round_s"]) == 5 for r in tiny.values())  # timed in each of 5 rounds
  ref = tiny["reference", "fwd_bwd"]
  assert fb["speedup_vs_reference"] == common.paired_ratio(
    [[t] for t in ref["round_s"]], [[t] for t in fb["round_s"]]
  )
  assert fb["gflops_per_s"] > 0 and fb["peak_fraction"] > 0
  # Over the 60 kB limit the paper's baselines run in batch chunks instead of skipping.
  chunked = [r for r in records if r["shape"].startswith("paper") and r["chunks"] > 1]
  assert chunked and all(r["time_s"] > 0 and r["impl"] in ("reference", "fuxictr") for r in chunked)
  assert len(saved["goals"]) == 4 and all(g["pass"] is not None for g in saved["goals"])
  sweep = [r for r in records if r["group"] == "sweep_f"]
  assert {r["impl"] for r in sweep} == {"factorized"} and len(sweep) == 4
  assert all(r["status"] == "ok" for r in sweep)


def test_paired_ratios_compare_the_times_of_one_round():
  """A load burst in round 2 slows the slow function, in round 3 the fast one: the ratio of
  the overall medians (20 / 10 = 2) is off; each round's ratio is 2, 2, 2 (and their median)."""
  slow, fast = [[2.0], [20.0, 20.0], [2.0, 2.0]], [[1.0], [10.0], [1.0, 1.0]]
  assert common.paired_ratio(slow, fast) == 2.0
  slow, fast = [[2.0], [2.0], [20.0]], [[1.0], [10.0], [10.0]]
  assert common.paired_ratio(slow, fast) == 2.0  # rounds 1 and 3 say 2, round 2 says 0.2
  calls = {"a": lambda: None, "b": lambda: None}
  rounds = common.time_rounds(calls, {"a": 3, "b": 7}, rounds=3)
  assert [len(r) for r in rounds["a"]] == [1, 1, 1] and [len(r) for r in rounds["b"]] == [3, 3, 1]


@pytest.mark.parametrize("quick", [False, True])
def test_every_shape_name_the_tables_print_is_one_shapes_takes(quick):
  """The tables printed paper_criteo_l1 where --shapes took paper_l1."""
  shapes = einsum_bench.parse_shapes(["all", "8,3,3,4,2"], quick)
  assert {"paper_l1", "paper_l2", "bars", "frappe", "f=20", "custom_8_3_3_4_2"} <= {
    s.name for s in shapes
  }
  for shape in shapes:
    assert einsum_bench.parse_shapes([shape.name], quick) == [shape]
  paper = {s.name: s.b for s in shapes if s.name.startswith("paper")}
  assert paper == dict.fromkeys(("paper_l1", "paper_l2"), 32 if quick else 1024)


def test_no_benchmark_writes_into_results_unless_asked(tmp_path, capsys):
  """einsum_bench --quick overwrote the committed einsum_bench_cpu.json the README cites."""
  import ast

  results = Path(common.RESULTS_DIR)
  before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
  argv = "--quick --shapes 8,3,3,4,2 --peak-n 128 --impls reference factorized".split()
  einsum_bench.main(argv)
  assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before
  assert "(not written: --json PATH writes the results, --record updates benchmarks/results/" \
    "einsum_bench_cpu_quick.json)" in capsys.readouterr().out  # fmt: skip
  args = einsum_bench.parse_args(["--record"])
  assert common.output_path(args, "x.json") == str(results / "x.json")
  assert common.output_path(einsum_bench.parse_args(["--json", "o.json"]), "x.json") == "o.json"
  # No script names the results folder but through --record: only docstrings and help do.
  for script in sorted(Path(einsum_bench.__file__).parent.glob("*.py")):
    tree = ast.parse(script.read_text())
    told = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
    told |= {id(k.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
             for k in n.keywords if k.arg == "help"}  # fmt: skip
    told |= {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "print" for a in ast.walk(n)}  # fmt: skip
    if script.name == "common.py":
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in told:
        assert "benchmarks/results" not in node.value, script.name
      if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "join":
        assert "results" not in [getattr(a, "value", None) for a in node.args], script.name


def test_einsum_bench_skips_baselines_over_memory_limit(tmp_path):
  argv = "--shapes 64,12,12,8,3 --quick --no-plot --mem-limit-gb 0.001 --peak-n 128".split()
  argv += ["--impls", "reference", "fuxictr", "factorized", "--json", str(tmp_path / "b.json")]
  payload = einsum_bench.main(argv)
  status = {(r["impl"], r["mode"]): r["status"] for r in payload["records"]}
  assert status["reference", "fwd_bwd"] == "skipped: memory"
  assert status["factorized", "fwd"] == "ok"


def test_einsum_bench_bfloat16_inputs(tmp_path):
  argv = "--shapes 8,3,3,4,2 --quick --no-plot --dtype bfloat16 --peak-n 128".split()
  argv += ["--impls", "reference", "factorized", "--json", str(tmp_path / "b.json")]
  payload = einsum_bench.main(argv)
  assert payload["dtype"] == "bfloat16"
  errors = [r["max_rel_err_vs_factorized"] for r in payload["records"] if r["mode"] == "fwd"]
  assert len(errors) == 2 and max(errors) < 3e-2


def test_train_bench_quick_writes_batch_and_scale_tables(tmp_path):
  out = tmp_path / "tb.json"
  from benchmarks import train_bench

  # The benchmark's paths (batch sweep, scale points in fresh processes) on the tiny
  # model: the paper preset, compiled 7 times, took 4 minutes here.
  argv = ["--quick", "--preset", "tiny", "--json", str(out), "--optimizers", "rowwise_adagrad",
          "--skip-history", "--devices", "1"]  # fmt: skip
  train_bench.main(argv)
  payload = json.loads(out.read_text())
  assert payload["results"] and payload["results"][0]["step_ms"] > 0
  assert payload["backend"]["mesh_devices"] == 1  # --devices 1 of the suite's 8
  scale = {(r["optimizer"], r["table_rows"]): r for r in payload["scale"]}
  assert set(scale) == {("rowwise_adagrad", n) for n in (10_000, 100_000)}
  assert all(r["peak_rss_gib"] > 0 for r in scale.values())
  assert payload["history"] is None


def test_train_bench_quick_writes_the_list_field_section(tmp_path):
  out = tmp_path / "tb.json"
  from benchmarks import train_bench

  train_bench.main(
    ["--quick", "--preset", "tiny", "--only-history", "--json", str(out), "--devices", "1"]
  )
  assert json.loads(out.read_text())["backend"]["mesh_devices"] == 1  # of the suite's 8
  history = json.loads(out.read_text())["history"]  # with a 50-value list field, and without
  assert history["with"]["history"] == 50 and history["without"]["history"] == 0
  assert history["ratio"] > 0
  # ... and pooled by target attention (#35): its ratio to mean pooling; the step at two
  # table sizes (--quick: attention's only, the costlier pooling)
  assert history["attention"]["pooling"] == "attention" and history["attention_over_mean"] > 0
  assert history["attention_scale_growth"] > 0 and history["scale_growth"] is None
  assert sorted((r["pooling"], r["table_rows"]) for r in history["scale"]) == [
    ("attention", 10_000),
    ("attention", 100_000),
  ]


def test_epoch_bench_times_every_mode_for_each_variant(tmp_path):
  from benchmarks import epoch_bench

  out = epoch_bench.main([
    "--rows", "3000", "--max-vocab", "500", "--batch", "256", "--preset", "tiny",
    "--workdir", str(tmp_path), "--json", str(tmp_path / "e.json"),
    "--modes", "step only,host pipeline,resident,resident input only,streamed",
    "--variant", "train.embedding_optimizer=lazy_adam,train.embedding_catch_up=0",
    "--devices", "1",
  ])  # fmt: skip
  saved = json.loads((tmp_path / "e.json").read_text())
  assert saved["backend"]["mesh_devices"] == 1
  assert saved["steps_per_epoch"] == 3000 // 256 and len(saved["variants"]) == 1
  for v in out["variants"]:
    assert (
      set(v["samples_per_s"]) == set(epoch_bench.MODES) and min(v["samples_per_s"].values()) > 0
    )
  assert saved["variants"][0]["overrides"]["train.embedding_catch_up"] == "0"


def test_quality_reuses_a_run_only_once_its_checks_and_ensemble_have_finished(tmp_path):
  """report.json is written before beat_linear's check and before each ensemble
  member: benchmarks.quality must not read those as finished runs. A run whose
  ensemble grows (the same workdir) is finished once it has all its members."""
  from benchmarks import quality
  from gin_jax import config as config_lib

  cfg = config_lib.override(config_lib.default(), {"train.ensemble": "2"})
  (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
  steps = [({"stages": {}}, None), ({"stages": {}, "beat_linear": {}}, None),
           ({"stages": {}, "beat_linear": {}, "ensemble": [{}, {}]}, "done")]  # fmt: skip
  for report, expected in steps:
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert (quality._finished_report(tmp_path, cfg) is not None) == (expected == "done")
  more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ensemble=3))
  assert quality._run_key(more) == quality._run_key(cfg)  # grows in the same workdir
  assert quality._finished_report(tmp_path, more) is None  # config.json still says 2
  (tmp_path / "config.json").write_text(json.dumps(more.to_dict()))  # member 2 training
  assert quality._finished_report(tmp_path, more) is None
  other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=5))
  assert quality._run_key(other) != quality._run_key(cfg)


@pytest.mark.slow
def test_incremental_compares_the_four_models_on_day_c_and_reuses_its_runs(tmp_path, capsys):
  from benchmarks import incremental

  argv = ["--preset", "tiny", "--rows", "1500", "--max-vocab", "60", "--seeds", "1",
          "--train.epochs=1", "--train.stages=single", "--workdir-root", str(tmp_path / "w"),
          "--json", str(tmp_path / "i.json"), "--devices", "1"]  # fmt: skip
  out = incremental.main(argv)
  assert [s["model"] for s in out["summary"]] == list(incremental.MODELS)
  for s in out["summary"]:
    assert 0.4 < s["test_auc"] <= 1.0 and s["seconds"] > 0
  runs = {r["model"]: r for r in out["runs"]}
  continued = json.loads((Path(runs["continued"]["workdir"]) / "report.json").read_text())
  assert continued["init_from"]["path"] == runs["day1_model"]["workdir"]
  assert sum(g["added"] for g in continued["vocabulary_growth"].values()) > 0
  log = (Path(runs["continued"]["workdir"]) / "quality.log").read_text()
  assert "mesh: 1 devices" in log  # --devices 1 (the suite has 8 fake devices)
  assert json.loads((tmp_path / "i.json").read_text())["summary"] == out["summary"]
  again = incremental.main(argv)  # every run finished: read back, not trained again
  assert all(r["reused"] for r in again["runs"])
  assert "| continued" in capsys.readouterr().out


@pytest.mark.slow
def test_init_from_startup_times_fresh_and_continued_start_ups(tmp_path, capsys):
  from benchmarks import init_from_startup

  out = init_from_startup.main([
    "--rows", "4000", "--preset", "tiny", "--repeats", "1",
    "--scratch", str(tmp_path), "--json", str(tmp_path / "s.json"),
  ])  # fmt: skip
  assert (out["source_rows"], out["table_rows"]) == (3636, 4000)
  assert out["fresh_s"] > 0 and out["restore_and_grow_s"] > 0 and out["first_step_s"] > 0
  assert out["continued_s"] == out["continued_init_s"] + out["restore_and_grow_s"]
  assert out["ratio"] == out["continued_s"] / out["fresh_s"]
  assert json.loads((tmp_path / "s.json").read_text())["ratio"] == out["ratio"]
  assert not (tmp_path / "source").exists()  # the source checkpoint is removed
  assert "| 3,636 -> 4,000" in capsys.readouterr().out


def test_sequences_compares_the_history_schemas(tmp_path, monkeypatch):
  """benchmarks.sequences, cut to one seed of 400 rows, one epoch and two of its four
  schemas (issue #35): a row per schema in the table and the JSON, the command."""
  from benchmarks import sequences

  monkeypatch.setattr(sequences, "VARIANTS", (("attention", True), ("mean", False)))
  out = tmp_path / "seq.json"
  argv = ["--rows", "400", "--seeds", "1", "--epochs", "1", "--json", str(out)]
  payload = sequences.main(argv)
  saved = json.loads(out.read_text())
  assert [(r["pooling"], r["shared"]) for r in saved["summary"]] == list(sequences.VARIANTS)
  assert all(0 < r["valid_auc"] < 1 and r["seeds"] == 1 for r in saved["summary"])
  assert len(payload["runs"]) == 2 and saved["command"] == " ".join(
    ["python -m benchmarks.sequences", *argv]
  )
