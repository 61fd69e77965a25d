"""Data pipeline: raw files -> sequences -> splits -> fixed-shape batches.

`load_sequences(name, data_dir, ...)` reads `data_dir/name/`, filters and sorts, and caches
the processed arrays on disk (keyed by the file's identity and every option), so a second
load takes well under a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from jaxret.data.batches import EvalBatches, TrainBatches, sample_negatives
from jaxret.data.preprocess import Sequences, build_sequences, stats
from jaxret.data.sources import DATASETS, default_data_dir, download, find_file, read_raw
from jaxret.data.splits import PROTOCOLS, Split, make_split, skipped_users

CACHE_ENV = "JAXRET_CACHE_DIR"
_CACHE_VERSION = 2  # 2: exact duplicate rows kept once

__all__ = [
    "DATASETS", "PROTOCOLS", "EvalBatches", "Sequences", "Split", "TrainBatches",
    "default_data_dir", "download", "load_sequences", "make_split", "sample_negatives",
    "skipped_users", "stats",
]


def default_cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxret" / "processed")


def _cache_key(path: Path, min_user: int, min_item: int) -> str:
  st = path.stat()
  ident = json.dumps([_CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns,
                      min_user, min_item])
  return hashlib.sha1(ident.encode()).hexdigest()[:16]


def load_sequences(name: str, data_dir: str | None = None, min_user_interactions: int = 5,
                   min_item_interactions: int | None = None, cache: bool = True,
                   cache_dir: str | None = None) -> Sequences:
  """Loads dataset `name` as k-core filtered chronological sequences (cached on disk).

  min_item_interactions defaults to min_user_interactions; 0 turns a filter off.
  """
  if min_item_interactions is None:
    min_item_interactions = min_user_interactions
  path, _ = find_file(name, data_dir)
  cache_file = None
  if cache:
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = folder / f"{name}-{_cache_key(path, min_user_interactions, min_item_interactions)}.npz"
    if cache_file.is_file():
      try:
        with np.load(cache_file) as z:
          return Sequences(z["user_ptr"], z["items"], z["times"], z["order"],
                           int(z["num_items"]), bool(z["has_timestamps"]))
      except (OSError, ValueError, KeyError):
        pass  # unreadable cache: rebuild it below
  seqs = build_sequences(read_raw(name, data_dir), min_user_interactions, min_item_interactions)
  if cache_file is not None:
    try:
      cache_file.parent.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=cache_file.parent, suffix=".npz",
                                       delete=False) as tmp:
        np.savez(tmp, user_ptr=seqs.user_ptr, items=seqs.items, times=seqs.times,
                 order=seqs.order, num_items=seqs.num_items, has_timestamps=seqs.has_timestamps)
      os.replace(tmp.name, cache_file)
    except OSError:
      pass  # a read-only cache location only costs speed
  return seqs
