"""Multi-host start-up: one `jax.distributed.initialize` call before JAX touches a device.

Every process runs the same program; after initialization `jax.devices()` lists the devices of
all processes, the mesh in `jaxret.sharding` spans them, and each process feeds only its own
rows of every batch. Nothing here is needed (or done) for a single process.
"""
from __future__ import annotations

import os

import jax

from jaxret.errors import ConfigError

# JAX's own variable; the process count and id then come from JAX's cluster detection
# (SLURM, Open MPI, Kubernetes, Cloud TPU) when not given.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when any argument (or $JAX_COORDINATOR_ADDRESS) is set.

  Must run before anything creates a JAX backend (`jax.devices()`, any computation). CPU
  processes exchange collectives with gloo. Returns whether the process is now part of a
  multi-process run; a no-op returning False otherwise, or when already initialized.
  """
  if jax.distributed.is_initialized():
    return True
  given = (coordinator_address, num_processes, process_id)
  if all(v is None for v in given) and not os.environ.get(COORDINATOR_ENV):
    return False
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes must be at least 1, got {num_processes}")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  if jax.config.jax_cpu_collectives_implementation != "mpi":
    # Without cross-process collectives a multi-process CPU computation cannot run.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except ValueError as e:  # a missing value that no cluster environment could supply
    raise ConfigError(f"multi-host start-up failed ({e}); pass all of --coordinator_address, "
                      f"--num_processes and --process_id") from None
  return True
