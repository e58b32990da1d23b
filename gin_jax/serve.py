"""Online serving of exported models: TF Serving's REST API.

  python -m gin_jax.score --checkpoint RUN --export BASE --next-version
  python -m gin_jax.serve --model-base-path BASE [--model-name NAME] [--port 8501]

BASE holds numbered versions (BASE/1, BASE/2, ...); the highest one that verifies
and loads serves, and a new one is swapped in while requests go on. The library is
gin_jax.serving; docs/serving.md has the API with examples.
"""

from __future__ import annotations

import os

from gin_jax import hints, runtime

_OPTIONAL = "pip install 'gin-jax[serve]' (in a checkout: pip install -e '.[serve]')"


def parse(argv: list[str] | None = None):
  """The flags of `python -m gin_jax.serve`, as ServeOptions."""
  from gin_jax.serving.server import ServeOptions

  d = ServeOptions("")
  p = hints.ArgumentParser(prog="python -m gin_jax.serve", description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--model-base-path",
    required=True,
    metavar="DIR",
    help="folder of numbered export versions (DIR/1, DIR/2, ...)",
  )
  p.add_argument("--model-name", help="NAME in /v1/models/NAME (default: DIR's folder name)")
  p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
  p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0: any)")
  p.add_argument(
    "--max-batch",
    type=int,
    default=d.max_batch,
    help=f"most candidates one compiled call scores (default {d.max_batch})",
  )
  p.add_argument(
    "--batch-sizes",
    help="compiled batch sizes, e.g. 64,512,4096 (default: the powers of 2 from 16 to --max-batch)",
  )
  p.add_argument(
    "--batch-timeout-us",
    type=int,
    default=d.batch_timeout_us,
    help="how long a batch with room waits for more requests, in microseconds "
    f"(default {d.batch_timeout_us})",
  )
  p.add_argument(
    "--max-queue",
    type=int,
    default=d.max_queue,
    help="most candidates waiting; beyond, 503 (default 8 x --max-batch)",
  )
  p.add_argument(
    "--poll-seconds",
    type=float,
    default=d.poll_seconds,
    help=f"how often DIR is looked at for new versions (default {d.poll_seconds:g})",
  )
  p.add_argument(
    "--deadline-ms",
    type=int,
    default=d.deadline_ms,
    help=f"a request not answered by then gets 504 (default {d.deadline_ms})",
  )
  p.add_argument(
    "--max-body-mb",
    type=float,
    default=d.max_body_mb,
    help=f"a larger request body gets 413 (default {d.max_body_mb:g})",
  )
  args = p.parse_args(argv)
  sizes = ()
  if args.batch_sizes:
    try:
      sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    except ValueError:
      p.error(f"--batch-sizes {args.batch_sizes!r}: expected integers separated by commas")
  return ServeOptions(
    model_base_path=args.model_base_path, model_name=args.model_name, host=args.host,
    port=args.port, max_batch=args.max_batch, batch_sizes=sizes,
    batch_timeout_us=args.batch_timeout_us, max_queue=args.max_queue,
    poll_seconds=args.poll_seconds, deadline_ms=args.deadline_ms, max_body_mb=args.max_body_mb,
  )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
  """`python -m gin_jax.serve`: serve until SIGTERM; bad options or a missing extra exit 2."""
  try:
    import orjson  # noqa: F401
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    runtime.fail(ValueError(f"serving needs {e.name}, an optional dependency: {_OPTIONAL}"))
  options = parse(argv)
  from gin_jax.serving.server import serve

  try:
    runtime.init_runtime()
    serve(options)
  except (ValueError, OSError) as e:
    runtime.fail(e)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
