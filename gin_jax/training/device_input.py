"""Training input that keeps an accelerator fed (`data.device_resident`).

The grain pipeline (gin_jax.data.pipeline) gathers each batch on the host and
copies it to the devices, slower than one GPU trains (benchmarks.epoch_bench;
docs/scale.md). Two device-side alternatives serve the SAME batches (global batch k of
an epoch is the split's rows `pipeline.ShuffledBatches(n, B, seed, epoch)[k]`,
as in the grain pipeline), with the same `{"next_index": k}` iterator state, so
results and resumption are unchanged:

- resident: the encoded split lives on the devices once for the whole run,
  rows sharded over the mesh. The row indices of `INDEX_CHUNK` batches are
  computed on the host in one vectorised call and copied in one transfer. The
  epoch yields `ResidentBatch(arrays, index chunk, j)` references, and the
  train step gathers batch j inside its own jitted call
  (`training.StepFns.step`): a step's host work is one dispatch. On an H200
  the BARS step takes under a millisecond of host time, so a second call per
  step (a separate gather) cost a quarter of the throughput
  (benchmarks/results/epoch_bench_gpu*.json).
- streamed: for splits larger than the device budget, the host gathers the
  rows of `chunk` consecutive batches at once and copies them in one transfer,
  laid out [chunk, B, f] with the batch axis sharded, so each step slices its
  batch on the devices without communication. The next chunk is prepared on a
  background thread while the current one trains.

`data.device_resident`: "auto" (resident on GPU/TPU when the split takes at
most `data.device_fraction` of a device's memory, streamed beyond; the host
pipeline on CPU), "resident", "streamed" or "off".
"""

from __future__ import annotations

import concurrent.futures
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gin_jax.data import pipeline
from gin_jax.data.meta import Split
from gin_jax.training import partitioning

MODES = ("auto", "resident", "streamed", "off")


def split_bytes(split: Split) -> int:
  """Device bytes of a split's ids, values (unless all 1.0) and labels."""
  n, f = split.ids.shape
  return n * (4 * f * (1 if split.values_are_ones else 2) + 4)


def choose_mode(mode: str, split: Split, mesh: Mesh, fraction: float) -> str:
  """The input mode for `split`: "resident", "streamed" or "off" (host pipeline)."""
  if mode not in MODES:
    raise ValueError(f"data.device_resident must be one of {MODES}, got {mode!r}")
  if mode != "auto":
    return mode
  limit = partitioning.device_memory_bytes(mesh)
  if limit is None:  # CPU: the host pipeline already feeds it
    return "off"
  per_device = split_bytes(split) / partitioning.num_shards(mesh)
  return "resident" if per_device <= fraction * limit else "streamed"


class _Batches:
  """An epoch of device batches with grain's iterator-state protocol."""

  def __init__(self, num_rows: int, batch_size: int, seed: int, epoch: int):
    self._rows = pipeline.ShuffledBatches(num_rows, batch_size, seed, epoch)
    self._next = 0

  def __len__(self) -> int:
    return len(self._rows)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._next >= len(self._rows):
      raise StopIteration
    batch = self._batch(self._next)
    self._next += 1
    return batch

  def get_state(self) -> dict:
    return {"next_index": self._next}

  def set_state(self, state: dict) -> None:
    self._next = int(state["next_index"])

  def _batch(self, k: int) -> dict:
    raise NotImplementedError


class ResidentBatch(NamedTuple):
  """Batch j of a chunk of a resident split: its rows are arrays[index[j]]."""

  arrays: dict  # the split's ids, labels (and values), rows sharded over the mesh
  index: jax.Array  # int32 [chunk, B] row indices, replicated
  j: np.int32  # which batch of the chunk


class ResidentSplit:
  """A split held on the devices for the whole run, rows sharded over the mesh."""

  def __init__(self, split: Split, mesh: Mesh):
    self.split, self.mesh = split, mesh
    rows = NamedSharding(mesh, PartitionSpec(partitioning.DATA))
    n = len(split)
    padded = -(-n // partitioning.num_shards(mesh)) * partitioning.num_shards(mesh)

    def put(host):
      def shard(index):
        part = np.asarray(host[index[0].start or 0 : min(index[0].stop or padded, n)])
        pad = (index[0].stop or padded) - (index[0].start or 0) - len(part)
        return np.pad(part, [(0, pad)] + [(0, 0)] * (part.ndim - 1))

      return jax.make_array_from_callback((padded, *host.shape[1:]), rows, shard)

    self.arrays = {"ids": put(split.ids), "labels": put(split.labels)}
    if not split.values_are_ones:
      self.arrays["values"] = put(split.values)
    self._replicated = partitioning.replicated(mesh)
    self._gather = jax.jit(gather_batch, out_shardings=partitioning.batch_sharding(mesh))

  def epoch(self, batch_size: int, seed: int, epoch: int) -> _Batches:
    resident = self

    class Epoch(_Batches):
      _chunk: tuple[int, jax.Array] | None = None  # (first batch, its [c, B] indices)

      def _batch(self, k):
        first = k - k % INDEX_CHUNK
        if self._chunk is None or self._chunk[0] != first:
          idx = self._rows.batches(first, INDEX_CHUNK).astype(np.int32)
          # The epoch's last chunk is padded to the full shape (never read), so
          # the step compiles once: a new shape recompiled it at every epoch end.
          idx = np.pad(idx, [(0, INDEX_CHUNK - len(idx)), (0, 0)])
          idx = jax.make_array_from_process_local_data(resident._replicated, idx)
          self._chunk = (first, idx)
        return ResidentBatch(resident.arrays, self._chunk[1], np.int32(k - first))

    return Epoch(len(self.split), batch_size, seed, epoch)

  def materialize(self, batch: ResidentBatch) -> dict:
    """The batch dict a ResidentBatch stands for, gathered on the devices."""
    return self._gather(batch.arrays, batch.index, batch.j)


INDEX_CHUNK = 64  # resident mode: batches whose row indices travel in one copy


def gather_batch(arrays: dict, idx_chunk, j) -> dict:
  """Batch j of a chunk from the resident arrays (inside jit); all-1.0 values made here."""
  idx = jax.lax.dynamic_index_in_dim(idx_chunk, j, keepdims=False)
  out = {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}
  if "values" not in out:
    out["values"] = jnp.ones(out["ids"].shape, jnp.float32)
  return out


class StreamedBatches(_Batches):
  """An epoch whose batches reach the devices `chunk` at a time (see the module doc)."""

  def __init__(self, split: Split, mesh: Mesh, batch_size: int, seed: int, epoch: int,
               chunk: int):  # fmt: skip
    super().__init__(len(split), batch_size, seed, epoch)
    self.split, self.mesh, self.chunk = split, mesh, max(1, chunk)
    p, n = jax.process_index(), jax.process_count()
    local = batch_size // n
    self._gather = pipeline.Gather(split, p * local, (p + 1) * local)
    self._sharding = NamedSharding(mesh, PartitionSpec(None, partitioning.DATA))
    self._slice = jax.jit(
      lambda chunk, j: jax.tree.map(lambda x: x[j], chunk),
      out_shardings=partitioning.batch_sharding(mesh),
    )
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._loaded: tuple[int, concurrent.futures.Future] | None = None
    self._current: tuple[int, dict] | None = None

  def _load(self, first: int):
    ks = range(first, min(first + self.chunk, len(self._rows)))
    parts = [self._gather(self._rows[k]) for k in ks]
    host = {key: np.stack([b[key] for b in parts]) for key in parts[0]}
    return {
      key: jax.make_array_from_process_local_data(self._sharding, v) for key, v in host.items()
    }

  def _chunk(self, first: int):
    if self._loaded is None or self._loaded[0] != first:
      self._loaded = (first, self._pool.submit(self._load, first))
    chunk = self._loaded[1].result()
    following = first + self.chunk
    if following < len(self._rows):  # prepare the next chunk while this one trains
      self._loaded = (following, self._pool.submit(self._load, following))
    return chunk

  def _batch(self, k: int) -> dict:
    first = k - k % self.chunk
    if self._current is None or self._current[0] != first:
      self._current = (first, self._chunk(first))
    return self._slice(self._current[1], k - first)


def chunk_batches(split: Split, batch_size: int, mesh: Mesh, fraction: float) -> int:
  """Batches per streamed chunk: two chunks (current + next) within the device budget."""
  limit = partitioning.device_memory_bytes(mesh) or (1 << 30)
  per_batch = split_bytes(split) / max(len(split), 1) * batch_size / partitioning.num_shards(mesh)
  return int(max(1, min(4096, fraction * limit / 2 / per_batch)))


INPUT_NAMES = {
  "off": "grain pipeline (host)",
  "resident": "split resident on the devices",
  "streamed": "streamed to the devices in chunks",
}


class HostBatches:
  """The grain pipeline's host batches, placed on the mesh; grain's iterator state."""

  def __init__(self, it, mesh):
    self._it, self._mesh = it, mesh

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return partitioning.shard_batch(self._mesh, next(self._it))

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)
