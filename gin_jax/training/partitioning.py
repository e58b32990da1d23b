"""All knowledge of the device mesh lives here (DESIGN.md section 3).

Layout: one mesh axis, `data`, over every device of every process. The batch
is sharded over it; the stacked embedding table's rows are sharded over it
too (never replicated, which would all-reduce a table-sized gradient each
step); every dense weight is replicated. Models name logical axes only
(`gin_jax.models.TABLE_ROWS`); `LOGICAL_RULES` maps them to mesh axes.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gin_jax import models as model_lib
from gin_jax.training import embedding as embedding_lib

DATA = "data"
LOGICAL_RULES = {model_lib.TABLE_ROWS: DATA}


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes).

  Auto axis types: under jax 0.10's default Explicit mode `jnp.take` on a
  row-sharded table fails to propagate shardings.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def num_shards(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def _to_mesh_spec(logical: PartitionSpec) -> PartitionSpec:
  return PartitionSpec(*(LOGICAL_RULES.get(a) if a is not None else None for a in logical))


def param_shardings(mesh: Mesh, params):
  """NamedShardings for a params-shaped tree (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, _to_mesh_spec(spec)), model_lib.logical_axes(params)
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA))


def optimizer_shardings(mesh: Mesh, tx, opt_state, params):
  """Shardings for an optax state: params-shaped parts (Adam's moments) follow
  the params' shardings, counters and hyperparameters are replicated.

  Args:
    mesh: the training mesh.
    tx: the optax transformation that built `opt_state`.
    opt_state: abstract (eval_shape) or concrete optimizer state.
    params: abstract or concrete params.

  Returns:
    A tree of NamedShardings with opt_state's structure.
  """
  shardings = param_shardings(mesh, params)
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    opt_state,
    shardings,
    transform_non_params=lambda _: replicated(mesh),
  )


def state_shardings(mesh: Mesh, state, tx, opt_params) -> dict:
  """Shardings of a whole train state (see gin_jax.training for its keys).

  Args:
    mesh: the training mesh.
    state: the abstract (or concrete) train state.
    tx: the optax transformation behind `state["opt_state"]`.
    opt_params: the parameter tree `tx` was initialised on.

  Returns:
    A tree of NamedShardings with the state's structure: the table, its row
    optimizer state and every table-shaped optax state row-sharded, everything
    else replicated.
  """
  rep = replicated(mesh)
  out = jax.tree.map(lambda _: rep, state)
  out["params"] = param_shardings(mesh, state["params"])
  out["opt_state"] = optimizer_shardings(mesh, tx, state["opt_state"], opt_params)
  out["embedding"] = jax.tree.map(
    lambda spec: NamedSharding(mesh, _to_mesh_spec(spec)),
    embedding_lib.logical_axes(state["embedding"]),
  )
  return out


def with_shardings(shapes, shardings):
  """ShapeDtypeStructs carrying their shardings: a restore or jit target."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def shard_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Assembles each process's numpy slice into one global batch-sharded array.

  In a single process this is just the batch placed on the mesh.

  Args:
    mesh: the training mesh.
    local_batch: dict of numpy arrays; leading dim = this process's rows.

  Returns:
    Dict of global jax.Arrays sharded over `data` on dim 0.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def device_memory_bytes(mesh: Mesh) -> int | None:
  """The smallest memory limit among this process's devices of the mesh; None on CPU."""
  limits = []
  for d in mesh.devices.flat:
    if d.process_index != jax.process_index():
      continue
    stats = d.memory_stats() if d.platform != "cpu" else None
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def to_host(x) -> np.ndarray:
  """Fetches a (possibly multi-process sharded) array to every host as numpy."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def check_batch_size(mesh: Mesh, batch_size: int, what: str = "batch_size") -> None:
  """Raises a clear error unless the global batch splits evenly over devices."""
  n = num_shards(mesh)
  if batch_size % n:
    raise ValueError(
      f"{what}={batch_size} must be a multiple of the {n} devices "
      f"(try {batch_size + n - batch_size % n})"
    )
