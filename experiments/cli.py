"""Shared entry-point plumbing: flags common to every command, one-line errors."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from typing import Callable, Iterator

from absl import app, flags, logging

from jaxret.errors import JaxretError


def define_data_flags() -> None:
  flags.DEFINE_string("dataset", "ml-1m-half", "Dataset name (a folder under --data_dir).")
  flags.DEFINE_string("data_dir", None,
                      "Folder holding one sub-folder per dataset; default: $JAXRET_DATA_DIR, "
                      "else ./data.")
  flags.DEFINE_integer("min_interactions", 5,
                       "Iterative k-core: minimum interactions per user and per item (0 = off).")


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8


def tune_allocator() -> bool:
  """Keeps freed memory in the process instead of returning it to the OS after every step.

  XLA:CPU allocates and frees each step's large temporaries; glibc's defaults map and unmap
  them (and trim its heaps), so every step pays page faults to zero fresh pages: on the
  2-core machine a quarter of a SASRec run's CPU time was kernel time (strace: ~16k mmap /
  munmap and ~68k mprotect calls in 3 epochs). Heap allocations up to 1 GB (no mmap) and no
  trimming below 4 GB: a dot epoch 7.9 -> 6.8 s, MoL's step unchanged. JAXRET_MALLOC_ARENAS=N
  also limits glibc to N arenas: with 1 or 2 a dot epoch took 5.3-6.1 s, but MoL's step was
  20-30% slower, so it is off by default. glibc only (a no-op elsewhere);
  JAXRET_TUNE_MALLOC=0 turns it all off. Returns whether it was applied.
  """
  if os.environ.get("JAXRET_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  settings = [(_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (4 << 30) - 1),
              (_M_TOP_PAD, 256 << 20)]
  arenas = os.environ.get("JAXRET_MALLOC_ARENAS", "")
  if arenas.isdigit() and int(arenas) > 0:
    settings.append((_M_ARENA_MAX, int(arenas)))
  return all(mallopt(param, value) == 1 for param, value in settings)


def run_main(main: Callable[[list[str]], None]) -> None:
  """absl `app.run`, with user errors printed as one line and exit status 2."""

  def wrapped(argv: list[str]) -> None:
    tune_allocator()
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    try:
      main(argv)
    except JaxretError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag reported in one line and exit status 2."""
  with flag_errors_in_one_line():
    return flags.FLAGS(argv)


@contextlib.contextmanager
def flag_errors_in_one_line() -> Iterator[None]:
  """Turns a bad flag into one `error:` line and exit status 2.

  Also wraps `config_flags.DEFINE_config_*`: without an explicit `--config=FILE` the
  `--config.FIELD=VALUE` overrides are read when the flag is defined, at import, where a
  misspelt field raises `AttributeError(KeyError(...))` rather than a `flags.Error`.
  """
  try:
    yield
  except (flags.Error, AttributeError, KeyError) as e:
    print(f"error: {_flag_error_text(e)}; run with --helpshort to list the flags",
          file=sys.stderr)
    sys.exit(2)


def _flag_error_text(e: BaseException) -> str:
  while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(e.args[0],
                                                                            BaseException):
    e = e.args[0]  # ConfigDict wraps the KeyError naming the field in an AttributeError
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  if isinstance(e, (AttributeError, KeyError)):
    text = f"unknown config field {text}"
  return "; ".join(ln.strip() for ln in str(text).splitlines() if ln.strip())  # one line
