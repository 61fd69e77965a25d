"""The one place devices appear: a 1-D `data` mesh over all devices, and its shardings.

Data parallelism is `jax.jit` over this mesh: batches are split along their leading axis
(`P('data')`), parameters and optimizer state are replicated (`P()`). One device is the same
code path with a mesh of size 1.
"""
from __future__ import annotations

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


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along its leading axis."""
  return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
