"""Peak memory of `python -m gin_jax.score` against the number of rows scored.

  python -m benchmarks.score_memory [--rows 200000 2000000] [--outputs csv npy] [--json OUT]

Trains the tiny preset once (or reuses --workdir), writes one synthetic Criteo
file per row count, and scores each into each output format in a fresh
process, reading that process's peak resident set size (VmHWM, Linux) when
it ends. Scoring streams its input and output chunk by chunk, so the peak should
not grow with the rows: the goal is peak(largest) <= 1.1 x peak(smallest) for
every output format (issue 11). tests/test_score_memory.py runs the same
measurement at 50k and 500k rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.1

# Runs the scoring CLI and reports the peak RSS of this process image on stderr.
# VmHWM, not getrusage's ru_maxrss: subprocess starts children with vfork, and
# ru_maxrss then keeps the high-water mark of the parent it was forked from.
_MEASURED_SCORE = """
import runpy, sys
sys.argv = ["python -m gin_jax.score", *sys.argv[1:]]
try:
  runpy.run_module("gin_jax.score", run_name="__main__", alter_sys=True)
finally:
  hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
  print("peak_rss_kib", hwm.split()[1], file=sys.stderr)
"""


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  return env


def train_tiny(workdir: Path) -> Path:
  """A finished `python -m train --preset tiny` run in `workdir` (reused if present)."""
  if not (workdir / "report.json").exists():
    cmd = [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(workdir)]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, cwd=REPO)
  return workdir


def criteo_file(path: Path, rows: int) -> Path:
  """A labelled synthetic Criteo TSV of `rows` rows (reused if present)."""
  from gin_jax.data import SyntheticSpec, write_criteo_tsv

  if not path.exists():
    write_criteo_tsv(path, SyntheticSpec(num_rows=rows, max_vocab=50, seed=11))
  return path


def measure(workdir: Path, data: Path, out: Path) -> dict:
  """Scores `data` into `out` in a fresh process: {"peak_rss_mib", "seconds", "stdout"}."""
  cmd = [sys.executable, "-c", _MEASURED_SCORE, "--checkpoint", str(workdir)]
  cmd += ["--data", str(data), "--out", str(out)]
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=REPO)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"scoring failed ({proc.returncode}): {proc.stderr[-2000:]}")
  peak = next(x for x in proc.stderr.splitlines() if x.startswith("peak_rss_kib"))
  return {"peak_rss_mib": int(peak.split()[1]) / 1024, "seconds": seconds, "stdout": proc.stdout}


def run(rows: list[int], outputs: list[str], scratch: Path) -> dict:
  """Every (rows, output) measurement and the goal per output format."""
  workdir = train_tiny(scratch / "workdir")
  records = []
  for n in sorted(rows):
    data = criteo_file(scratch / f"criteo_{n}.tsv", n)
    for fmt in outputs:
      out = scratch / f"scores_{n}.{fmt}"
      m = measure(workdir, data, out)
      out.unlink()
      records.append({"rows": n, "output": fmt, **m})
  goals = []
  for fmt in outputs:
    mine = sorted((r for r in records if r["output"] == fmt), key=lambda r: r["rows"])
    ratio = mine[-1]["peak_rss_mib"] / mine[0]["peak_rss_mib"]
    goals.append(
      {
        "output": fmt,
        "goal": f"peak RSS at {mine[-1]['rows']:,} rows <= {GOAL_RATIO} x at {mine[0]['rows']:,}",
        "ratio": ratio,
        "pass": ratio <= GOAL_RATIO,
      }
    )
  return {"records": records, "goals": goals}


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(prog="python -m benchmarks.score_memory", description=__doc__)
  p.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000])
  p.add_argument("--outputs", nargs="+", default=["csv", "npy"], choices=["csv", "npy"])
  p.add_argument("--scratch", default="/tmp/gin_jax_score_memory", help="data and workdir")
  common.add_output_flags(p, "score_memory_<backend>.json")
  args = p.parse_args(argv)
  scratch = Path(args.scratch)
  scratch.mkdir(parents=True, exist_ok=True)
  result = run(args.rows, args.outputs, scratch)
  base = {r["output"]: r["peak_rss_mib"] for r in result["records"] if r["rows"] == min(args.rows)}
  table = [
    [
      f"{r['rows']:,}",
      r["output"],
      f"{r['peak_rss_mib']:.0f}",
      f"{r['peak_rss_mib'] / base[r['output']]:.3f}",
      f"{r['seconds']:.1f}",
    ]
    for r in result["records"]
  ]
  print(common.markdown_table(["rows", "output", "peak RSS MiB", "x smallest", "seconds"], table))
  for g in result["goals"]:
    print(f"- {g['output']}: {g['goal']}: {g['ratio']:.3f} ({'PASS' if g['pass'] else 'FAIL'})")
  payload = {
    "command": "python -m benchmarks.score_memory " + " ".join(argv or sys.argv[1:]),
    **common.backend_info(),
    "records": [{k: v for k, v in r.items() if k != "stdout"} for r in result["records"]],
    "goals": result["goals"],
  }
  common.write_result(payload, args, common.backend_file("score_memory"))
  return payload


if __name__ == "__main__":
  main()
