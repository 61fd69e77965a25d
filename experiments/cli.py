"""Shared entry-point plumbing: flags common to every command, one-line errors."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from absl import app, flags, logging

from jaxret.allocator import tune_allocator  # noqa: F401  (entry points and scripts use it)
from jaxret.errors import JaxretError


def define_data_flags() -> None:
  flags.DEFINE_string("dataset", "ml-1m-half", "Dataset name (a folder under --data_dir).")
  flags.DEFINE_string("data_dir", None,
                      "Folder holding one sub-folder per dataset; default: $JAXRET_DATA_DIR, "
                      "else ./data.")
  flags.DEFINE_integer("min_interactions", 5,
                       "Iterative k-core: minimum interactions per user and per item (0 = off).")


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
