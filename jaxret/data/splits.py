"""Evaluation protocols: which interactions train, which are validation / test targets.

Every protocol yields a `Split`: a per-user training prefix length, and validation and test
examples. An example is (user, position of the target in the user's chronological sequence);
its query history is everything the user did before the target (truncated to the model's
`max_len` most recent items when batched), and by default the items of that history are
excluded from the full ranking over all items.

- `loo` (leave-one-out; the paper's protocol): for every user with >= 3 interactions the last
  item is the test target (history: all earlier items), the second-to-last is the validation
  target (history: all items before it), and the rest is training. Users with fewer than 3
  interactions only train.
- `ratio` (the seed study's): all interactions are put in one global chronological order
  (timestamp, ties by file order) and cut at 70% / 90% of their count: the first 70% train,
  the next 20% are validation, the last 10% test. Because each user's sequence is
  chronological, a user's training interactions are a prefix of their sequence. A
  validation/test interaction is kept only if its user and its item each have at least
  `min_history` (default 5) interactions in the training part (cold users/items removed). Each
  kept interaction is one example (`targets="all"`), predicted from the user's entire
  preceding history, which includes the user's earlier validation (and, for test, validation
  and test) interactions. With `targets="first"` each user gives at most one example per part:
  their first kept interaction in it (the next item after the cut). The seed study's
  published numbers are all multiples of 1/450, i.e. one example per user of its ~450
  test-period users; the global cut of ml-1m-half leaves 448 validation / 463 test users.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxret.data.preprocess import Sequences
from jaxret.errors import DataError

PROTOCOLS = ("loo", "ratio")
RATIO_TARGETS = ("all", "first")


@dataclasses.dataclass
class EvalExamples:
  """users: (E,) int32; positions: (E,) int64 index of the target within the user's sequence."""
  users: np.ndarray
  positions: np.ndarray

  def __len__(self) -> int:
    return len(self.users)


@dataclasses.dataclass
class Split:
  """train_len: (U,) int64 length of each user's training prefix."""
  protocol: str
  train_len: np.ndarray
  valid: EvalExamples
  test: EvalExamples

  def eval_examples(self, split: str) -> EvalExamples:
    if split not in ("valid", "test"):
      raise DataError(f"unknown split {split!r}; valid names: valid, test")
    return self.valid if split == "valid" else self.test


def leave_one_out(seqs: Sequences) -> Split:
  lengths = seqs.lengths()
  evaluated = np.flatnonzero(lengths >= 3).astype(np.int32)
  if evaluated.size == 0:
    raise DataError("no user has the 3 interactions leave-one-out needs (train, valid, test)")
  train_len = np.where(lengths >= 3, lengths - 2, lengths)
  valid = EvalExamples(evaluated, lengths[evaluated] - 2)
  test = EvalExamples(evaluated, lengths[evaluated] - 1)
  return Split("loo", train_len.astype(np.int64), valid, test)


def temporal_ratio(seqs: Sequences, ratios: tuple[float, float, float] = (0.7, 0.2, 0.1),
                   min_history: int = 5, targets: str = "all") -> Split:
  if targets not in RATIO_TARGETS:
    raise DataError(f"unknown ratio targets {targets!r}; valid names: {', '.join(RATIO_TARGETS)}")
  if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
    raise DataError(f"split ratios must be 3 non-negative numbers summing to 1, got {ratios}")
  m = seqs.num_interactions
  cut_train = int(round(ratios[0] * m))
  cut_valid = int(round((ratios[0] + ratios[1]) * m))
  users = np.repeat(np.arange(seqs.num_users), seqs.lengths())
  position = np.arange(m) - seqs.user_ptr[users]
  is_train = seqs.order < cut_train
  train_len = np.bincount(users[is_train], minlength=seqs.num_users).astype(np.int64)
  item_train = np.bincount(seqs.items[is_train], minlength=seqs.num_items + 1)
  warm = (train_len[users] >= min_history) & (item_train[seqs.items] >= min_history)

  def examples(lo: int, hi: int) -> EvalExamples:
    sel = (seqs.order >= lo) & (seqs.order < hi) & warm
    idx = np.flatnonzero(sel)
    idx = idx[np.argsort(seqs.order[idx], kind="stable")]
    if targets == "first":
      _, first = np.unique(users[idx], return_index=True)
      idx = idx[np.sort(first)]
    return EvalExamples(users[idx].astype(np.int32), position[idx].astype(np.int64))

  valid, test = examples(cut_train, cut_valid), examples(cut_valid, m)
  if len(valid) == 0 or len(test) == 0:
    raise DataError(f"the temporal split left {len(valid)} validation and {len(test)} test "
                    f"examples after removing users/items with < {min_history} training "
                    f"interactions; use more data or lower min_history")
  return Split("ratio", train_len, valid, test)


def skipped_users(seqs: Sequences, split: Split) -> list[str]:
  """One line per kind of user the split cannot use (none: an empty list): users too short
  for a training sequence and, under loo, users too short to evaluate."""
  notes = []
  untrained = int((split.train_len < 2).sum())
  if untrained:
    notes.append(f"{untrained} of {seqs.num_users} users have < 2 training interactions and "
                 f"give no training sequence")
  if split.protocol == "loo":
    unevaluated = int((seqs.lengths() < 3).sum())
    if unevaluated:
      notes.append(f"{unevaluated} of {seqs.num_users} users have < 3 interactions and are not "
                   f"evaluated (loo needs a training, a validation and a test item; "
                   f"--min_interactions=3 drops them)")
  return notes


def make_split(seqs: Sequences, protocol: str, min_history: int = 5,
               ratio_targets: str = "all") -> Split:
  if protocol == "loo":
    return leave_one_out(seqs)
  if protocol == "ratio":
    if not seqs.has_timestamps:
      raise DataError("the 'ratio' protocol needs timestamps, and this dataset has only an "
                      "order; use --protocol=loo")
    return temporal_ratio(seqs, min_history=min_history, targets=ratio_targets)
  raise DataError(f"unknown protocol {protocol!r}; valid names: {', '.join(PROTOCOLS)}")
