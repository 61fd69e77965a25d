"""Fixed-shape batches for training and evaluation, and uniform negative sampling.

Sequences are LEFT-padded with 0 to `max_len`, so the most recent item sits at position
L-1. Every batch of a run has the same shapes (the last one is padded with empty rows that
carry zero weight), so jitted steps never retrace; with training `length_buckets` there is
one shape per bucket, all known before the first step.
"""
from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxret.data.preprocess import Sequences
from jaxret.data.splits import EvalExamples, Split


def left_pad(rows: list[np.ndarray], width: int) -> np.ndarray:
  """Right-aligns each row's last `width` items in a (len(rows), width) int32 zero array."""
  out = np.zeros((len(rows), width), dtype=np.int32)
  for r, row in enumerate(rows):
    row = row[-width:]
    if len(row):
      out[r, width - len(row):] = row
  return out


class TrainBatches:
  """Next-item training examples: one per user with >= 2 training interactions.

  A user's example is the last `max_len + 1` items of their training prefix:
  inputs = items[:-1], targets = items[1:], both left-padded to (max_len,).

  With `length_buckets` (increasing lengths reaching max_len; see `check_buckets`), each
  example goes to the shortest bucket that holds its inputs and every batch holds examples
  of one bucket only, cut to that bucket's length: (B, L_b) instead of (B, max_len).
  SASRec's positions count from the most recent item, so a real position's query is the
  same at any padding, and attention's O(L^2) cost shrinks with the batch length. The
  epoch's batches come from all buckets in one shuffled order; a jitted step compiles once
  per bucket length.
  """

  def __init__(self, seqs: Sequences, split: Split, max_len: int, batch_size: int,
               length_buckets: tuple[int, ...] | list[int] | None = None):
    users = np.flatnonzero(split.train_len >= 2)
    rows = [seqs.items[seqs.user_ptr[u]:seqs.user_ptr[u] + split.train_len[u]] for u in users]
    self.windows = left_pad(rows, max_len + 1)  # (U_train, L+1)
    self.users = users.astype(np.int32)
    self.batch_size = batch_size
    self.max_len = max_len
    self.buckets = check_buckets(length_buckets, max_len)
    lengths = np.minimum(split.train_len[users] - 1, max_len)          # real inputs
    self.bucket_of = np.searchsorted(np.asarray(self.buckets), lengths)  # (U_train,)

  @property
  def num_examples(self) -> int:
    return len(self.users)

  @property
  def steps_per_epoch(self) -> int:
    counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
    return int(sum(-(-int(c) // self.batch_size) for c in counts))

  def _plan(self, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """The epoch's batches as (bucket, example indices), shuffled by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(self.num_examples)
    if len(self.buckets) == 1:
      return [(0, perm[s:s + self.batch_size])
              for s in range(0, self.num_examples, self.batch_size)]
    plan = []
    for b in range(len(self.buckets)):
      members = perm[self.bucket_of[perm] == b]
      plan += [(b, members[s:s + self.batch_size])
               for s in range(0, len(members), self.batch_size)]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]

  def epoch(self, seed: int, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields the batches of one epoch, shuffled by (seed, epoch); resumable at start_step.

    Each batch: inputs (B, L) int32, targets (B, L) int32, mask (B, L) float32 (1 where the
    position has a real input and a real target), users (B,) int32 (-1 for padding rows).
    L = max_len, or the batch's bucket length with `length_buckets`.
    """
    for bucket, idx in self._plan(seed, epoch)[start_step:]:
      width = self.buckets[bucket] + 1
      win = np.zeros((self.batch_size, width), np.int32)
      users = np.full((self.batch_size,), -1, np.int32)
      win[:len(idx)] = self.windows[idx, -width:]
      users[:len(idx)] = self.users[idx]
      inputs, targets = win[:, :-1], win[:, 1:]
      mask = (inputs > 0) & (targets > 0)  # the first item of a window is never a target
      yield {"inputs": inputs, "targets": targets, "mask": mask.astype(np.float32),
             "users": users}


def check_buckets(length_buckets, max_len: int) -> tuple[int, ...]:
  """Validated bucket lengths: increasing positive ints; lengths above max_len are clipped to
  it (so (64, 128, 200) under max_len=100 is (64, 100)), and the last must reach max_len.
  None or () gives (max_len,).

  Raises:
    ValueError: naming the problem and a valid setting.
  """
  if not length_buckets:
    return (max_len,)
  try:
    buckets = tuple(int(b) for b in length_buckets)
  except (TypeError, ValueError):
    raise ValueError(f"length_buckets must be lengths (ints), got {length_buckets!r}; e.g. "
                     f"(64, 128, {max_len})") from None
  if any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise ValueError(f"length_buckets must be increasing positive lengths, got {buckets}; e.g. "
                     f"(64, 128, {max_len})")
  clipped = tuple(b for b in buckets if b < max_len) + (max_len,)
  if buckets[-1] < max_len:
    raise ValueError(f"the last of length_buckets={buckets} must be max_len={max_len} (the "
                     f"longest inputs go there); e.g. {clipped}")
  return clipped


class EvalBatches:
  """Full-ranking evaluation examples of one split, in fixed-shape batches.

  Each batch: inputs (B, L) int32 (the history's last L items), targets (B,) int32,
  exclude (B, H) int32 (the whole history, 0-padded; zeros everywhere when history items are
  kept), weight (B,) float32 (0 for padding rows), users (B,) int32.

  With `length_buckets` (as `TrainBatches`), examples are grouped by the bucket of their
  history length (file order within a bucket) and each batch's inputs are (B, L_b); the
  metrics, sums over examples, do not change.
  """

  def __init__(self, seqs: Sequences, examples: EvalExamples, max_len: int, batch_size: int,
               exclude_history: bool = True, max_examples: int | None = None, seed: int = 0,
               length_buckets: tuple[int, ...] | list[int] | None = None):
    users, positions = examples.users, examples.positions
    if max_examples is not None and len(users) > max_examples:
      keep = np.sort(np.random.default_rng(seed).choice(len(users), max_examples,
                                                        replace=False))
      users, positions = users[keep], positions[keep]
    self.users = users.astype(np.int32)
    starts = seqs.user_ptr[users]
    self.targets = seqs.items[starts + positions].astype(np.int32)
    self.histories = [seqs.items[s:s + p] for s, p in zip(starts, positions)]
    self.exclude_history = exclude_history
    self.history_width = max(1, int(positions.max(initial=0))) if exclude_history else 1
    self.batch_size = batch_size
    self.max_len = max_len
    self.buckets = check_buckets(length_buckets, max_len)
    bucket_of = np.searchsorted(np.asarray(self.buckets), np.minimum(positions, max_len))
    self._batches = [(self.buckets[k], idx[s:s + batch_size])
                     for k in range(len(self.buckets))
                     for idx in [np.flatnonzero(bucket_of == k)]
                     for s in range(0, len(idx), batch_size)]

  def __len__(self) -> int:
    return len(self.targets)

  @property
  def num_batches(self) -> int:
    return len(self._batches)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    b = self.batch_size
    for length, idx in self._batches:
      hist = [self.histories[i] for i in idx]
      n = len(hist)
      pad = [np.zeros(0, np.int32)] * (b - n)
      inputs = left_pad(hist + pad, length)
      if self.exclude_history:
        exclude = left_pad(hist + pad, self.history_width)
      else:
        exclude = np.zeros((b, 1), np.int32)
      targets = np.zeros(b, np.int32)
      targets[:n] = self.targets[idx]
      weight = np.zeros(b, np.float32)
      weight[:n] = 1.0
      users = np.full(b, -1, np.int32)
      users[:n] = self.users[idx]
      yield {"inputs": inputs, "targets": targets, "exclude": exclude, "weight": weight,
             "users": users}


def sample_negatives(key: jax.Array, shape: tuple[int, ...], num_items: int,
                     positives: jax.Array | None = None) -> jax.Array:
  """Uniform item ids in 1..num_items, deterministic given `key`.

  With `positives` (broadcastable to `shape[:-1]`), each row's negatives are uniform over
  the items other than its positive (drawn from num_items - 1 ids, then shifted past it).
  Returns int32 of `shape`.
  """
  if positives is None:
    return jax.random.randint(key, shape, 1, num_items + 1, dtype=jnp.int32)
  neg = jax.random.randint(key, shape, 1, num_items, dtype=jnp.int32)
  return neg + (neg >= positives[..., None]).astype(jnp.int32)
