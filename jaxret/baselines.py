"""Untrained reference rankers, evaluated exactly as the trained models are.

`evaluate_popularity` ranks every item by its number of training interactions (the same
score for every query) and measures it with the trainer's full-ranking evaluation: the same
splits, history exclusion, cutoffs, length buckets and sampled-candidate option. Ties count
against the target, as in `jaxret.metrics`, so items of equal popularity get no credit for
the tie. It is the floor a learned model has to clear on a protocol.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxret import data as data_lib
from jaxret import sharding
from jaxret import train as train_lib
from jaxret.errors import ConfigError
from jaxret.metrics import ScoreFn


def item_popularity(seqs: data_lib.Sequences, split: data_lib.Split,
                    recent_fraction: float = 1.0) -> np.ndarray:
  """(num_items + 1,) int64: each item's interactions in the training prefixes of `split`
  (index 0, the padding id, is 0).

  `recent_fraction` < 1 counts only the latest training interactions by timestamp: those at
  or after the (1 - recent_fraction) quantile of their times (recent popularity, the usual
  baseline under a temporal split, where tastes drift after the cut).
  """
  if not 0.0 < recent_fraction <= 1.0:
    raise ConfigError(f"recent_fraction must be in (0, 1], got {recent_fraction}")
  lengths = seqs.lengths()
  if len(split.train_len) != len(lengths):
    raise ValueError(f"split has {len(split.train_len)} users, the sequences {len(lengths)}")
  starts = np.repeat(seqs.user_ptr[:-1], lengths)
  position = np.arange(len(seqs.items)) - starts
  counted = position < np.repeat(split.train_len, lengths)
  if recent_fraction < 1.0:
    if not seqs.has_timestamps:
      raise ConfigError("recent popularity needs timestamps, and this dataset has only an "
                        "order; use recent_fraction=1")
    times = seqs.times[counted]
    counted &= seqs.times >= np.quantile(times, 1.0 - recent_fraction, method="lower")
  return np.bincount(seqs.items[counted], minlength=seqs.num_items + 1).astype(np.int64)


def _popularity_scorer(counts: jax.Array, batch: dict[str, jax.Array]) -> ScoreFn:
  batch_size = batch["targets"].shape[0]
  return lambda ids: jnp.broadcast_to(counts[ids], (batch_size, ids.shape[0]))


def evaluate_popularity(config: ml_collections.ConfigDict,
                        seqs: data_lib.Sequences | None = None,
                        split: data_lib.Split | None = None,
                        splits: tuple[str, ...] = ("valid", "test"),
                        recent_fraction: float = 1.0) -> dict[str, Any]:
  """Item popularity (`item_popularity`) on `config`'s dataset and protocol (loaded unless
  given).

  Returns {split: {metric: value}} for each of `splits`, plus 'eval_time' (seconds).
  """
  if seqs is None or split is None:
    seqs, split = train_lib.load_data(config)
  num_items = seqs.num_items
  start = time.perf_counter()
  counts = jnp.asarray(item_popularity(seqs, split, recent_fraction), jnp.float32)
  mesh = sharding.make_mesh(config.train.num_devices or None)
  sharding.check_divisible(config.eval.batch_size, mesh, "--config.eval.batch_size")
  eval_step = jax.jit(train_lib.make_ranking_eval_step(_popularity_scorer, config, num_items))
  buckets = train_lib.length_buckets(config)
  sampled = train_lib.eval_sampling(config, num_items)
  out: dict[str, Any] = {}
  for name in splits:
    cap = (config.eval.max_valid_examples or None) if name == "valid" else None
    batches = data_lib.EvalBatches(seqs, split.eval_examples(name), config.max_len,
                                   config.eval.batch_size, config.eval.exclude_history,
                                   max_examples=cap, seed=config.seed, length_buckets=buckets)
    out[name] = train_lib.evaluate(eval_step, counts, batches, mesh, desc=f"popularity {name}",
                                   sampled=sampled)
  out["eval_time"] = time.perf_counter() - start
  return out
