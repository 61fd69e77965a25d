"""The one place devices appear: a 1-D `data` mesh over all devices, and its shardings.

Data parallelism is `jax.jit` over this mesh: batches are split along their leading axis
(`P('data')`), parameters and optimizer state are replicated (`P()`). One device is the same
code path with a mesh of size 1, and several processes (hosts) the same again: the mesh spans
every process's devices and each process places only the rows its own devices hold.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxret.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A ('data',) mesh over the first `num_devices` devices (default: all of them)."""
  available = jax.device_count()
  n = num_devices or available
  if n > available:
    raise ConfigError(f"asked for {n} devices but only {available} are visible; lower "
                      f"--num_devices or expose more devices")
  if jax.process_count() > 1 and n != available:
    raise ConfigError(f"--config.train.num_devices={n} in a run of {jax.process_count()} "
                      f"processes; use 0 (all {available} devices of all processes)")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what} {batch_size} is not divisible by the {n} devices; use a multiple "
                      f"of {n} (e.g. {max(n, batch_size // n * n)})")


@functools.lru_cache(maxsize=64)
def process_rows(global_rows: int, mesh: Mesh) -> slice:
  """The rows of a (global_rows, ...) batch that this process's devices hold (all of them in a
  single-process run). A data pipeline may read just these rows; `shard_batch` slices them."""
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
  bounds = sorted(idx[0].indices(global_rows)[:2] for idx in indices)
  start, stop = bounds[0][0], bounds[-1][1]
  if sum(b - a for a, b in bounds) != stop - start:
    raise ValueError(f"this process's devices hold non-contiguous rows {bounds} of the batch")
  return slice(start, stop)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns the global host batch (the same on every process) into global arrays split along
  their leading axis on the mesh; each process transfers only its own rows."""
  sharding = batch_sharding(mesh)

  def put(x: np.ndarray) -> jax.Array:
    x = np.asarray(x)
    local = x[process_rows(x.shape[0], mesh)]
    return jax.make_array_from_process_local_data(sharding, local, x.shape)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
