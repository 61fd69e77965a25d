"""Raw interactions -> k-core filtered, chronological per-user sequences with contiguous ids.

Item ids become 1..num_items (0 is reserved for padding), user ids 0..num_users-1, both in
ascending order of the raw id. Each user's interactions are sorted by timestamp with ties
broken by file order (a stable sort); without timestamps file order is time order.

Exact duplicate rows (same user, item and timestamp) are one event recorded twice and are
kept once, before k-core filtering; without timestamps a repeated (user, item) is a repeat
consumption and is kept.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxret.data.sources import RawInteractions
from jaxret.errors import DataError


@dataclasses.dataclass
class Sequences:
  """All users' chronological item sequences in CSR form.

  user_ptr: (U+1,) int64, user u's interactions are [user_ptr[u], user_ptr[u+1]).
  items: (M,) int32 item ids in 1..num_items.
  times: (M,) int64 timestamps, or file positions where the data has no timestamps.
  order: (M,) int64 global chronological rank of each interaction (0..M-1; ties by file order).
  """
  user_ptr: np.ndarray
  items: np.ndarray
  times: np.ndarray
  order: np.ndarray
  num_items: int
  has_timestamps: bool

  @property
  def num_users(self) -> int:
    return len(self.user_ptr) - 1

  @property
  def num_interactions(self) -> int:
    return len(self.items)

  def user_items(self, u: int) -> np.ndarray:
    return self.items[self.user_ptr[u]:self.user_ptr[u + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.user_ptr)


def first_occurrences(*columns: np.ndarray) -> np.ndarray:
  """(M,) bool mask of the rows whose values in `columns` (each (M,)) no earlier row has."""
  m = len(columns[0])
  perm = np.lexsort((np.arange(m),) + columns[::-1])  # grouped by value, file order within
  same = np.ones(max(m - 1, 0), dtype=bool)
  for c in columns:
    same &= c[perm[1:]] == c[perm[:-1]]
  keep = np.ones(m, dtype=bool)
  keep[perm[1:][same]] = False
  return keep


def kcore_mask(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int,
               keep: np.ndarray | None = None) -> np.ndarray:
  """Iterative k-core: keeps rows until every user has >= min_user and item >= min_item rows.

  users, items: (M,) dense int codes; keep: (M,) bool rows to start from (default all).
  Returns a (M,) bool mask. 0 turns a side's filter off.
  """
  keep = np.ones(len(users), dtype=bool) if keep is None else keep.copy()
  if min_user <= 0 and min_item <= 0:
    return keep
  while True:
    changed = False
    for codes, k in ((users, min_user), (items, min_item)):
      if k <= 0:
        continue
      counts = np.bincount(codes[keep], minlength=codes.max() + 1)
      drop = keep & (counts[codes] < k)
      if drop.any():
        keep &= ~drop
        changed = True
    if not changed:
      return keep


def build_sequences(raw: RawInteractions, min_user_interactions: int = 5,
                    min_item_interactions: int = 5) -> Sequences:
  """k-core filter, remap ids, and sort each user's interactions chronologically."""
  if len(raw.users) == 0:
    raise DataError(f"{raw.path}: no interactions")
  _, user_codes = np.unique(raw.users, return_inverse=True)
  _, item_codes = np.unique(raw.items, return_inverse=True)
  has_ts = raw.timestamps is not None
  unique = first_occurrences(user_codes, item_codes, raw.timestamps) if has_ts else None
  keep = kcore_mask(user_codes, item_codes, min_user_interactions, min_item_interactions, unique)
  if not keep.any():
    raise DataError(
        f"{raw.path}: the {min_user_interactions}-core user / {min_item_interactions}-core item "
        f"filter removed every interaction; lower --min_interactions (0 turns it off)")
  position = np.flatnonzero(keep)
  user_codes, item_codes = user_codes[keep], item_codes[keep]
  _, users = np.unique(user_codes, return_inverse=True)
  _, items = np.unique(item_codes, return_inverse=True)
  times = raw.timestamps[keep] if has_ts else position.astype(np.int64)
  # Global chronological order: by time, ties by file position.
  global_perm = np.lexsort((position, times))
  order = np.empty(len(times), dtype=np.int64)
  order[global_perm] = np.arange(len(times))
  # Per-user order: by user, then chronological rank.
  perm = np.lexsort((order, users))
  counts = np.bincount(users, minlength=users.max() + 1)
  user_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return Sequences(user_ptr=user_ptr, items=(items[perm] + 1).astype(np.int32),
                   times=times[perm].astype(np.int64), order=order[perm],
                   num_items=int(items.max()) + 1, has_timestamps=has_ts)


def stats(seqs: Sequences) -> dict[str, float]:
  """The columns of the seed study's dataset table."""
  n = seqs.num_interactions
  return {"users": seqs.num_users, "items": seqs.num_items, "interactions": n,
          "avg_per_user": n / seqs.num_users, "avg_per_item": n / seqs.num_items}
