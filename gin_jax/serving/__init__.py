"""Online serving: TF Serving's REST API over a model base path of sealed exports.

`python -m gin_jax.serve --model-base-path BASE` (module gin_jax.serve) runs it;
docs/serving.md says how to use it. Raw feature values come in, the training
encoding is applied (gin_jax.data.encode_records: the preparation's and the
scorer's own), and concurrent requests are scored together in compiled calls.

model.py     ServedVersion: one export read back, its encoder, calls compiled per batch size
requests.py  predict bodies (instances / inputs / context) -> columns of raw values
batcher.py   the bounded queue and the thread that scores requests in batches
versions.py  the versions of the base path: poll, verify, load, swap, roll back
app.py       the Starlette app: routes, errors in TF Serving's shape, Prometheus metrics
server.py    ServeOptions, Service and serve(): everything under uvicorn until SIGTERM
"""

from gin_jax.serving.model import ServedVersion, batch_ladder
from gin_jax.serving.server import ServeOptions, Service, serve

__all__ = ["ServeOptions", "ServedVersion", "Service", "batch_ladder", "serve"]
