"""Shared entry-point plumbing: flags common to every command, one-line errors."""
from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging

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
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    try:
      main(argv)
    except JaxretError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag reported in one line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; run with --helpshort to list the flags", file=sys.stderr)
    sys.exit(2)
