"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Simulated devices share the real cores; on a loaded machine XLA's default 40 s collective
# timeout can abort an all-gather, so it is raised.
for _flag in ("--xla_force_host_platform_device_count=8",
              "--xla_cpu_collective_call_terminate_timeout_seconds=600"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
