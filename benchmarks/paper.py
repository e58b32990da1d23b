"""The paper's experiments as one command: Table 3 (every model, N seeds) and Figure 3 (L, S, r).

  python -m benchmarks.paper                    # the demo's synthetic data, all models, 5 seeds
  python -m benchmarks.paper --preset tiny --models fm,dcnv2,aoanet --seeds 2 --sweep L=1,2
  python -m benchmarks.paper --name criteo --train train.txt --split 0.9,0.1 --test test.txt \\
      --preset criteo_paper --seeds 3 --sweep paper --per-model study/

Data and config flags are exactly `python -m train`'s (data files, --preset,
--config FILE.yaml, --section.field=value), and every model trains under that
one protocol: the same prepared data (prepared once, shared by every run),
the same seeds (train.seed = 0 .. N-1), the same embedding size, batch,
optimizer and deep part (paper section 4.1). Only model.arch changes (with
its Table 4 defaults, see gin_jax.config.ARCH_DEFAULTS), with
train.stages=single for every model but AOANet. `aoanet` gives two rows: GIN is
its search stage (the same model, seed and batches as a one-stage GIN run)
and AOANet its retrained, pruned model. LR takes the quality benchmark's
floor settings (gin_jax.config.linear_floor). `--per-model DIR` applies
DIR/<model>.yaml (same format as --config) to that model alone, e.g. the
settings BARS published for it.

`--sweep KEY=v1,v2,...` trains AOANet at each value of one setting, the others
at the base config (Figure 3): KEY is L (model.num_layers), S
(model.num_subspaces), r (train.keep_ratio) or any section.field;
`--sweep paper` is L=1,2,3,4 S=1,2,3,4,6 r=0.1,0.2,0.3,0.5,1.0.

Every run keeps its workdir under --workdir-root, keyed by its config
(benchmarks.quality.run_seed): a rerun reuses finished runs and resumes an
interrupted one from its last checkpoint. Progress goes to stderr, one line
per run. Results: the markdown on stdout; with --record (benchmarks/results/) or
--out-dir DIR, paper_<name>.md and .json and one PNG per swept setting
(paper_<name>_<KEY>.png, test AUC mean +- std over seeds).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common, quality
from gin_jax.cli import build_parser, split_overrides

# --models all, in the order of the paper's Table 3 (LR and FM first, as floors).
MODELS = (
  "lr", "fm", "deepfm", "ipnn", "opnn", "fwfm", "afm", "dcn", "dcnv2", "xdeepfm", "autoint",
  "aoanet",
)  # fmt: skip
DISPLAY = {
  "lr": "LR", "fm": "FM", "deepfm": "DeepFM", "ipnn": "IPNN", "opnn": "OPNN", "fwfm": "FwFM",
  "afm": "AFM", "dcn": "DCN", "dcnv2": "DCN-M", "xdeepfm": "xDeepFM", "autoint": "AutoInt",
}  # fmt: skip
STAGE_NAMES = {"search": "GIN", "retrain": "AOANet"}  # the two rows of an aoanet run
HEADERS = {
  "valid_auc": "valid AUC", "valid_logloss": "valid logloss",
  "test_auc": "test AUC", "test_logloss": "test logloss",
}  # fmt: skip
SWEEP_ALIASES = {"L": "model.num_layers", "S": "model.num_subspaces", "r": "train.keep_ratio"}
PAPER_SWEEP = ("L=1,2,3,4", "S=1,2,3,4,6", "r=0.1,0.2,0.3,0.5,1.0")


def parse(argv):
  p = build_parser("python -m benchmarks.paper", __doc__.split("\n\n")[0])
  p.add_argument("--models", default="all", help=f"'all' or a list of {','.join(MODELS)}")
  p.add_argument("--seeds", type=int, default=5, help="train.seed = 0 .. N-1 (default 5)")
  p.add_argument(
    "--sweep", nargs="*", default=[], help="KEY=v1,v2 ... (KEY: L, S, r or section.field), or paper"
  )
  p.add_argument("--per-model", help="folder of <model>.yaml files applied to that model only")
  p.add_argument("--name", help="label of this study (file names); default: the preset's name")
  p.add_argument("--workdir-root", default=os.path.join("/tmp", "gin_paper"))
  common.add_devices_flag(p)
  out = p.add_mutually_exclusive_group()
  out.add_argument(
    "--record",
    action="store_true",
    help="write the committed paper_<name>.md, .json and PNGs into benchmarks/results/",
  )
  out.add_argument("--out-dir", help="write paper_<name>.md, .json and PNGs into this folder")
  p.add_argument("--no-plot", action="store_true", help="skip the Figure 3 PNGs")
  args, rest = p.parse_known_args(argv)
  return args, split_overrides(p, rest)


def model_list(text: str) -> list[str]:
  """The --models tokens, checked, in the given order ('all': MODELS)."""
  names = list(MODELS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)} or all")
  return names


def sweep_list(tokens: list[str]) -> list[tuple[str, str, list[str]]]:
  """[(KEY, section.field, [values])] from --sweep tokens."""
  if tokens == ["paper"]:
    tokens = list(PAPER_SWEEP)
  out = []
  for token in tokens:
    key, sep, values = token.partition("=")
    field = SWEEP_ALIASES.get(key, key)
    if not sep or "." not in field or not values:
      raise SystemExit(f"--sweep: {token!r} is not KEY=v1,v2 (KEY: L, S, r or section.field)")
    out.append((key, field, [v.strip() for v in values.split(",") if v.strip()]))
  return out


def model_config(base_args, overrides: dict, model: str, per_model: str | None):
  """The one protocol's config for `model` (flags, then its arch and stages, then its file)."""
  from gin_jax import cli
  from gin_jax import config as config_lib
  from gin_jax.training import recipes

  # One protocol: no model gets the default recipe's regression check (train.beat_linear).
  if model == "aoanet":
    extra = {"model.arch": "gin", "train.stages": "aoanet", "train.beat_linear": "false"}
  else:
    extra = {"model.arch": model, "train.stages": "single", "train.beat_linear": "false"}
  cfg = cli.build_config(base_args, {**overrides, **extra})
  if model == "lr":
    cfg = recipes.linear_floor(cfg)
  path = Path(per_model or "") / f"{model}.yaml"
  if per_model and path.exists():
    assignments, _ = config_lib.load_file(path)
    cfg = config_lib.override(cfg, assignments)
  return cfg


@dataclasses.dataclass
class Job:
  label: str  # the model (workdir prefix): a sweep point at the base config reuses its run
  cfg: object
  seed: int
  tag: dict  # added to the job's rows: {"part": "table3"} or {"part": "sweep", "key", "value"}


def _param_counts(cfg, cache: Path) -> dict:
  from gin_jax import data
  from gin_jax import models as model_lib

  meta, _ = data.prepare(cfg.data, cache, progress=False)
  spec = model_lib.ModelSpec(cfg.model, meta.num_fields, meta.num_table_rows, meta.num_table_rows)
  params = model_lib.abstract_state(spec)[1]
  return {
    "params": model_lib.count_params(params),
    "dense_params": model_lib.count_params(model_lib.dense_params(params)),
  }


def _train_rate(row: dict) -> float | None:
  """Median samples/s the trainer logged for the row's stage (metrics.jsonl)."""
  path = Path(row["workdir"]) / "metrics.jsonl"
  if not path.exists():
    return None
  rates = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if record.get("stage") == row["stage"] and record.get("samples_per_s"):
      rates.append(record["samples_per_s"])
  return float(np.median(rates)) if rates else None


def _clock(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def run_jobs(jobs: list[Job], root: Path, cache: Path, devices: int | None = None) -> list[dict]:
  """Runs (or reuses) every job in order with one progress line each; all their rows
  (devices: each on the first N local devices; None: all)."""
  rows, start, trained_s, trained = [], time.time(), 0.0, 0
  for k, job in enumerate(jobs, 1):
    t0 = time.time()
    prefix = f"[{k}/{len(jobs)}] "
    out = quality.run_seed(
      job.cfg, job.label, job.seed, root, data_cache=cache, prefix=prefix, devices=devices
    )
    for row in out:
      row.update(job.tag, train_samples_per_s=_train_rate(row))
    rows += out
    if not out[0]["reused"]:
      trained_s += time.time() - t0
      trained += 1
    left = (len(jobs) - k) * (trained_s / trained if trained else 0.0)
    auc = ", ".join(f"{r['stage']} test AUC {r['test_auc']:.4f}" for r in out if r.get("test_auc"))
    print(
      f"{prefix}{job.label} seed {job.seed}: {auc or 'done'} "
      f"({time.time() - t0:.0f} s; elapsed {_clock(time.time() - start)}, "
      f"eta {_clock(left)} for {len(jobs) - k} more)",
      file=sys.stderr,
      flush=True,
    )
  return rows


def _label(model: str, stage: str) -> str:
  return STAGE_NAMES[stage] if model == "aoanet" else DISPLAY[model]


def table3(rows: list[dict], counts: dict) -> list[dict]:
  """Mean +- std over seeds per Table 3 row, with parameters and samples/s."""
  rows = [r for r in rows if r["part"] == "table3"]
  out = []
  for entry in quality.summarise(rows):
    group = [r for r in rows if (r["model"], r["stage"]) == (entry["model"], entry["stage"])]
    rates = [r["train_samples_per_s"] for r in group if r.get("train_samples_per_s")]
    out.append({
      "row": _label(entry["model"], entry["stage"]),
      **entry,
      **counts[entry["model"]],
      "train_samples_per_s": float(np.mean(rates)) if rates else None,
    })  # fmt: skip
  return out


def sweep_summary(rows: list[dict], key: str, values: list[str]) -> list[dict]:
  """Per swept value: mean +- std of every metric for GIN (search) and AOANet (retrain)."""
  points = []
  for value in values:
    group = [r for r in rows if r["part"] == "sweep" and (r["key"], r["value"]) == (key, value)]
    point = {"value": value}
    for entry in quality.summarise(group):
      point[STAGE_NAMES.get(entry["stage"], entry["stage"])] = entry
    points.append(point)
  return points


def _cell(entry: dict, metric: str) -> str:
  if metric not in entry:
    return "-"
  return f"{entry[metric]:.4f} +- {entry[metric + '_std']:.4f}"


def markdown(name, command, table, sweeps, seeds) -> str:
  metrics = quality.METRICS
  rows = [
    [t["row"], *(_cell(t, m) for m in metrics), f"{t['params']:,}", f"{t['dense_params']:,}",
     "-" if t["train_samples_per_s"] is None else f"{t['train_samples_per_s']:,.0f}",
     f"{t.get('epochs', 0):.1f}", t["seeds"]]
    for t in table
  ]  # fmt: skip
  headers = [
    "model", *(HEADERS[m] for m in metrics), "params", "dense params", "train samples/s",
    "epochs", "seeds",
  ]  # fmt: skip
  lines = [
    f"# {name}: the paper's Table 3 protocol, {seeds} seed(s)",
    "",
    f"`{command}`",
    "",
    common.markdown_table(headers, rows),
  ]
  for key, sweep in sweeps.items():
    lines += ["", f"## Figure 3: AUC vs {key} ({sweep['field']})", ""]
    sweep_rows = [
      [p["value"], *(_cell(p.get(stage, {}), m) for stage in ("GIN", "AOANet")
                     for m in ("valid_auc", "test_auc"))]
      for p in sweep["points"]
    ]  # fmt: skip
    heads = [key, "GIN valid AUC", "GIN test AUC", "AOANet valid AUC", "AOANet test AUC"]
    lines.append(common.markdown_table(heads, sweep_rows))
  return "\n".join(lines) + "\n"


def plot_sweep(path: str, key: str, sweep: dict, title: str) -> None:
  """Figure 3 panel: AUC (test, else valid) vs the swept value, mean +- std over seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  x = [float(p["value"]) for p in sweep["points"]]
  for stage, marker in (("GIN", "o"), ("AOANet", "s")):
    entries = [p.get(stage, {}) for p in sweep["points"]]
    metric = "test_auc" if all("test_auc" in e for e in entries) else "valid_auc"
    if not all(metric in e for e in entries):
      continue
    y = [e[metric] for e in entries]
    err = [e[metric + "_std"] for e in entries]
    label = f"{stage} ({HEADERS[metric]})"
    ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label)
  ax.set_xticks(x, [p["value"] for p in sweep["points"]])
  ax.set_xlabel(f"{key} ({sweep['field']})")
  ax.set_ylabel("AUC, mean +- std over seeds")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse(argv)
  from gin_jax import config as config_lib
  from gin_jax import runtime

  runtime.init_runtime()
  models, sweeps = model_list(args.models), sweep_list(args.sweep)
  base = model_config(args, overrides, "aoanet", args.per_model)
  name = args.name or base.name
  root = Path(args.workdir_root) / name
  cache = root / "data_cache"
  started = time.time()

  # ---------------------------------------------------------------- the runs
  configs = {m: model_config(args, overrides, m, args.per_model) for m in models}
  table_tag = {"part": "table3"}
  jobs = [Job(m, configs[m], seed, table_tag) for m in models for seed in range(args.seeds)]
  for key, field, values in sweeps:
    for value in values:
      cfg = config_lib.override(base, {field: value})
      tag = {"part": "sweep", "key": key, "value": value}
      jobs += [Job("aoanet", cfg, seed, tag) for seed in range(args.seeds)]
  print(
    f"{len(jobs)} runs: {len(models)} model(s) x {args.seeds} seed(s)"
    + (f" + sweeps {', '.join(k for k, _, _ in sweeps)}" if sweeps else "")
    + f"; workdirs under {root}",
    file=sys.stderr,
    flush=True,
  )
  rows = run_jobs(jobs, root, cache, args.devices)

  # ---------------------------------------------------------------- Table 3
  counts = {m: _param_counts(configs[m], cache) for m in models}
  table = table3(rows, counts)
  sweep_out = {
    key: {"field": field, "points": sweep_summary(rows, key, values)}
    for key, field, values in sweeps
  }

  # ---------------------------------------------------------------- outputs
  command = "python -m benchmarks.paper " + " ".join(argv)
  text = markdown(name, command, table, sweep_out, args.seeds)
  print(text)
  out_dir = common.RESULTS_DIR if args.record else args.out_dir
  if out_dir is None:
    print(f"(not written: --out-dir DIR writes paper_{name}.md, .json and PNGs, --record "
          "into benchmarks/results/)", file=sys.stderr)  # fmt: skip
    return {"name": name, "command": command, "table3": table, "sweeps": sweep_out, "runs": rows}
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f"paper_{name}")
  with open(stem + ".md", "w") as f:
    f.write(text)
  figures = {}
  if not args.no_plot and sweep_out and importlib.util.find_spec("matplotlib") is None:
    print("Figure 3 skipped: matplotlib is not installed (pip install 'gin-jax[plots]')",
          file=sys.stderr)  # fmt: skip
  elif not args.no_plot:
    for key, sweep in sweep_out.items():
      figures[key] = f"{stem}_{key}.png"
      plot_sweep(figures[key], key, sweep, f"{name}: AOANet / GIN vs {key}")
  payload = {
    "name": name,
    "command": command,
    "seeds": args.seeds,
    "models": models,
    "config": base.to_dict(),
    "model_configs": {m: c.to_dict()["model"] for m, c in configs.items()},
    "table3": table,
    "sweeps": sweep_out,
    "figures": figures,
    "runs": rows,
    "wall_seconds": time.time() - started,
    "backend": common.backend_info(),
  }
  common.write_json(stem + ".json", payload)
  print(
    f"wrote {stem}.md, {stem}.json" + "".join(f", {p}" for p in figures.values()), file=sys.stderr
  )
  return payload


if __name__ == "__main__":
  main()
