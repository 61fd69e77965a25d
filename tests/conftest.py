"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Simulated devices share the real cores; on a loaded machine XLA's default 40 s collective
# timeout can abort an all-gather, so it is raised.
# The test programs are tiny, so compiling them dominates: LLVM's optimisation level 0 compiles
# the tiny train steps 2.4-2.8x faster (dot 10.5 -> 3.7 s, MoL 19.9 -> 8.3 s on 2 loaded cores).
for _flag in ("--xla_force_host_platform_device_count=8",
              "--xla_cpu_collective_call_terminate_timeout_seconds=600",
              "--xla_backend_optimization_level=0"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent XLA compilation cache for the whole session, in-process and in the CLI
# subprocesses (train, resume, evaluate, reproduce): a program compiles once per session,
# however many runs, restarts or fresh `jax.jit` wrappers execute it.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402,F401

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxret-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
