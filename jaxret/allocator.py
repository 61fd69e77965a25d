"""Host memory allocator settings for XLA:CPU (glibc's malloc)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_INT_MAX = (1 << 31) - 1                 # mallopt takes a C int
_applied = False                         # mallopt is process-wide; so is this record of it


def heap_kept() -> bool:
  """Whether `tune_allocator` was applied in this process (large temporaries reuse heap
  pages instead of being mapped and faulted in afresh on every call)."""
  return _applied


def tune_allocator() -> bool:
  """Keeps freed memory in the process instead of returning it to the OS after every call.

  XLA:CPU allocates and frees each executable's large temporaries per call; glibc's defaults
  map and unmap them (and trim its heaps), so every call pays page faults to zero fresh
  pages. On the 2-core machine a quarter of a SASRec run's CPU time was kernel time (strace:
  ~16k mmap / munmap and ~68k mprotect calls in 3 epochs); a dot epoch went 7.9 -> 6.8 s.
  A two-stage retrieve over 1e6 items (B=256, k'=5000) materialises a 1 GB stage-1 score
  matrix each call: keeping it in the heap made stage 1 2.4x faster (0.498 -> 0.206 s) and
  the whole retrieve 1.45x (0.943 -> 0.649 s; idle 2-core CPU, 2026-12-07). So allocations
  up to 2 GB come from the heap (no mmap) and the heap is never trimmed: a process keeps
  its peak footprint. JAXRET_MALLOC_ARENAS=N also limits glibc to N arenas (with 1 or 2 a
  dot epoch took 5.3-6.1 s but MoL's step was 20-30% slower, so it is off by default).
  glibc only (a no-op elsewhere); JAXRET_TUNE_MALLOC=0 turns it all off. Call it once at
  the start of a process. Returns whether it was applied.
  """
  if os.environ.get("JAXRET_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = [(_M_MMAP_THRESHOLD, _INT_MAX), (_M_TRIM_THRESHOLD, -1),      # -1: never trim
              (_M_TOP_PAD, 256 << 20)]
  arenas = os.environ.get("JAXRET_MALLOC_ARENAS", "")
  if arenas.isdigit() and int(arenas) > 0:
    settings.append((_M_ARENA_MAX, int(arenas)))
  global _applied
  _applied = all(mallopt(param, value) == 1 for param, value in settings) or _applied
  return _applied
