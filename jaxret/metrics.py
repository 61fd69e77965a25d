"""Full-ranking retrieval metrics computed from the rank of the target item.

Conventions:
  * Item ids are ``1..num_items``; id 0 is padding and is never a candidate.
  * A rank is 0-based: the number of competing candidate items ranked ahead of
    the target, so rank 0 means the target is the top item.
  * Ties are counted pessimistically: every other candidate whose score is
    ``>=`` the target's score is ranked ahead of it. Tied models therefore
    never get credit for a tie. NaN is pessimistic too: a NaN candidate score
    counts as ahead of the target, and a NaN target score is beaten by every
    candidate (the test used is ``not (score < target_score)``).
  * Excluded items (e.g. the user's history) and padding id 0 never count. The
    target never counts against itself, even when it is in the exclude list.
  * Targets must lie in ``[1, num_items]``. An out-of-range target (e.g. a
    padding row with target 0 in ``chunked_ranks``) gets the worst rank;
    give such rows weight 0 in `MetricAccumulator`.

Typical evaluation loop::

  acc = MetricAccumulator()
  for batch in batches:
    ranks = eval_step(params, batch)          # jitted, uses chunked_ranks
    acc.update(metrics_from_ranks(ranks), weights=batch['valid'])
  print(acc.result())                         # {'hr@10': ..., 'mrr': ...}
"""
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

from jaxret import validation as V

DEFAULT_KS = (1, 10, 50, 200, 500)

ScoreFn = Callable[[jax.Array], jax.Array]


def _targets_2d(targets: jax.Array, batch: Optional[int]) -> tuple[jax.Array, bool]:
  """Returns targets as int32 `(B, T)` and whether the input was `(B,)`.

  `batch` is the batch size B the targets must have (None: taken from them).
  """
  dims = {} if batch is None else {"B": batch}
  V.check_rank("targets", targets, [("B",), ("B", "T")], dims)
  V.check_int("targets", targets, "(B,) or (B, T) item ids")
  targets = jnp.asarray(targets).astype(jnp.int32)
  if targets.ndim == 1:
    return targets[:, None], True
  return targets, False


def _check_exclude(exclude_ids: jax.Array, batch: int) -> jax.Array:
  V.check_shape("exclude_ids", exclude_ids, ("B", "H"), {"B": batch})
  V.check_int("exclude_ids", exclude_ids, "(B, H) item ids")
  return jnp.asarray(exclude_ids).astype(jnp.int32)


def _count_ahead(scores: jax.Array, item_ids: jax.Array, candidate: jax.Array,
                 targets: jax.Array, target_scores: jax.Array) -> jax.Array:
  """Counts candidates ranked ahead of each target.

  Args:
    scores: `(B, C)` scores of the items `item_ids`.
    item_ids: `(C,)` ids of the scored items.
    candidate: `(B, C)` bool, False for padding, excluded or masked items.
    targets: `(B, T)` target ids.
    target_scores: `(B, T)` scores of the targets.

  Returns:
    `(B, T)` int32 counts.
  """
  ahead = jnp.logical_not(scores[:, None, :] < target_scores[..., None])
  not_self = item_ids[None, None, :] != targets[..., None]
  return jnp.sum(candidate[:, None, :] & ahead & not_self, axis=-1,
                 dtype=jnp.int32)


@jax.jit
def _dense_ranks(scores: jax.Array, targets: jax.Array,
                 exclude_ids: Optional[jax.Array]) -> jax.Array:
  """`(B, N+1)` scores, `(B, T)` targets, `(B, H)` excludes -> `(B, T)` ranks."""
  batch, width = scores.shape
  candidate = jnp.ones((batch, width), bool).at[:, 0].set(False)
  if exclude_ids is not None:
    # Negative ids would wrap around in the scatter; send them out of bounds.
    exclude_ids = jnp.where(exclude_ids < 0, width, exclude_ids)
    rows = jnp.arange(batch)[:, None]
    candidate = candidate.at[rows, exclude_ids].set(False, mode="drop")
  in_range = (targets >= 1) & (targets < width)
  target_scores = jnp.take_along_axis(
      scores, jnp.clip(targets, 0, width - 1), axis=1)
  target_scores = jnp.where(in_range, target_scores, jnp.nan)
  return _count_ahead(scores, jnp.arange(width), candidate, targets,
                      target_scores)


def ranks_from_scores(scores: jax.Array, targets: jax.Array,
                      exclude_ids: Optional[jax.Array] = None) -> jax.Array:
  """Ranks of the targets among all non-excluded items, from full scores.

  Args:
    scores: `(B, N+1)` float scores over item ids `0..N`; column 0 (padding)
      is ignored.
    targets: `(B,)` int target ids in `[1, N]`, or `(B, T)` for several
      targets per row, each ranked independently (other targets compete;
      the comparison is `(B, T, N+1)`, so keep T small).
    exclude_ids: optional `(B, H)` int ids never counted as competitors,
      padded with 0; may contain duplicates and the target itself.

  Returns:
    int32 ranks, `(B,)` (or `(B, T)` for 2-D targets).
  """
  V.check_shape("scores", scores, ("B", "N+1"))
  V.check_real("scores", scores, "(B, N+1) scores")
  scores = jnp.asarray(scores)
  batch = scores.shape[0]
  targets, squeeze = _targets_2d(targets, batch)
  if exclude_ids is not None:
    exclude_ids = _check_exclude(exclude_ids, batch)
  ranks = _dense_ranks(scores, targets, exclude_ids)
  return ranks[:, 0] if squeeze else ranks


# Default of chunked_ranks' max_buffered_scores (and of --config.eval.max_buffered_scores).
MAX_BUFFERED_SCORES = 1 << 25


def chunked_ranks(score_fn: ScoreFn, targets: jax.Array, num_items: int,
                  exclude_ids: Optional[jax.Array] = None,
                  chunk_size: int = 4096,
                  target_scores: Optional[jax.Array] = None,
                  max_buffered_scores: int = MAX_BUFFERED_SCORES) -> jax.Array:
  """Same as `ranks_from_scores` but scores items chunk by chunk.

  Only `(B, C)` score blocks are ever live (C = chunk size), never `(B, N)`.
  The item range `1..num_items` is cut into `ceil(num_items / C)` chunks of
  fixed size C = min(chunk_size, num_items) and scanned with
  `jax.lax.fori_loop`. In the last chunk, ids past `num_items` are passed to
  `score_fn` as 0 (padding) and their scores are ignored.

  If `target_scores` is None, each target's score is picked out of its own
  chunk, so the counting compares values computed by exactly the same code (no
  spurious mismatches from a differently-fused dot product). When the `(B, N)`
  scores fit in `max_buffered_scores` elements (e.g. 256 queries x 12k items
  = 12 MB), every chunk is scored once and kept; above it a first pass finds
  the target scores and the counting pass scores every chunk again (twice the
  `score_fn` calls, `(B, C)` memory).

  Usage under jit (`score_fn` is a Python closure, i.e. static)::

    @functools.partial(jax.jit, static_argnames='num_items')
    def eval_ranks(query, item_emb, targets, history, num_items):
      def score_fn(ids):                   # (C,) -> (B, C)
        return query @ item_emb[ids].T
      return chunked_ranks(score_fn, targets, num_items, exclude_ids=history)

  Args:
    score_fn: maps item ids `(C,)` int32 (values in `[0, num_items]`) to the
      `(B, C)` float scores of the batch's queries against those items.
    targets: `(B,)` int target ids in `[1, num_items]`, or `(B, T)`.
    num_items: number of items N (a Python int, static under jit).
    exclude_ids: optional `(B, H)` int ids to exclude, padded with 0.
    chunk_size: items per chunk (a Python int).
    target_scores: optional precomputed scores of the targets, same shape
      as `targets`. They must equal what `score_fn` returns for the targets
      bit for bit, or ties may be miscounted.
    max_buffered_scores: keep all `(B, num_chunks * C)` scores when they
      are at most this many elements (one scoring pass); 0 never buffers.

  Returns:
    int32 ranks, `(B,)` (or `(B, T)` for 2-D targets).
  """
  if not isinstance(num_items, (int, np.integer)) or num_items < 1:
    raise ValueError(f"num_items must be a positive Python int, got {num_items!r}")
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive Python int, got {chunk_size!r}")
  num_items = int(num_items)
  chunk = min(int(chunk_size), num_items)
  num_chunks = -(-num_items // chunk)
  targets, squeeze = _targets_2d(targets, None)
  batch = targets.shape[0]

  out = jax.eval_shape(score_fn, jax.ShapeDtypeStruct((chunk,), jnp.int32))
  if out.shape != (batch, chunk):
    raise V.shape_error(f"score_fn output for ({chunk},) ids", ("B", "C"), out.shape,
                        {"B": batch, "C": chunk})
  V.check_float("score_fn output", out, "(B, C) scores")

  offsets = jnp.arange(chunk, dtype=jnp.int32)
  rows = jnp.arange(batch)[:, None]

  def chunk_ids(c):
    start = 1 + c * chunk
    ids = start + offsets
    return start, ids, ids <= num_items

  def score_chunk(c):
    start, ids, valid = chunk_ids(c)
    return start, ids, valid, score_fn(jnp.where(valid, ids, 0))

  target_valid = (targets >= 1) & (targets <= num_items)
  buffered = None
  if target_scores is None and batch * num_chunks * chunk <= max_buffered_scores:
    buffered = jax.lax.map(lambda c: score_chunk(c)[3],
                           jnp.arange(num_chunks, dtype=jnp.int32))  # (num_chunks, B, C)
    at = jnp.clip(targets - 1, 0, num_items - 1)                  # id j+1: chunk j // C
    picked = buffered[at // chunk, rows, at % chunk]
    target_scores = jnp.where(target_valid, picked, jnp.nan)
  elif target_scores is None:
    def find_body(c, found):
      start, _, _, scores = score_chunk(c)
      rel = targets - start
      inside = target_valid & (rel >= 0) & (rel < chunk)
      picked = jnp.take_along_axis(scores, jnp.clip(rel, 0, chunk - 1), axis=1)
      return jnp.where(inside, picked, found)

    init = jnp.full(targets.shape, jnp.nan, out.dtype)
    target_scores = jax.lax.fori_loop(0, num_chunks, find_body, init)
  else:
    V.check_shape("target_scores", target_scores, ("B",) if squeeze else ("B", "T"),
                  {"B": batch, "T": targets.shape[1]})
    V.check_real("target_scores", target_scores, "scores shaped like targets")
    target_scores = jnp.asarray(target_scores, out.dtype)
    if squeeze:
      target_scores = target_scores[..., None]
    target_scores = jnp.where(target_valid, target_scores, jnp.nan)

  if exclude_ids is not None:
    exclude_ids = _check_exclude(exclude_ids, batch)

  def count_body(c, counts):
    if buffered is None:
      start, ids, valid, scores = score_chunk(c)
    else:
      (start, ids, valid), scores = chunk_ids(c), buffered[c]
    candidate = jnp.broadcast_to(valid, (batch, chunk))
    if exclude_ids is not None:
      rel = exclude_ids - start
      # Out-of-chunk ids (incl. padding 0) go to index `chunk` and are dropped.
      rel = jnp.where((rel >= 0) & (rel < chunk), rel, chunk)
      candidate = candidate.at[rows, rel].set(False, mode="drop")
    return counts + _count_ahead(scores, ids, candidate, targets, target_scores)

  ranks = jax.lax.fori_loop(0, num_chunks, count_body,
                            jnp.zeros(targets.shape, jnp.int32))
  return ranks[:, 0] if squeeze else ranks


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  return V.check_positive_ints("ks", ks)


def metrics_from_ranks(ranks: jax.Array,
                       ks: Sequence[int] = DEFAULT_KS) -> dict[str, jax.Array]:
  """Per-example metrics of a single target from its 0-based rank.

  Args:
    ranks: `(B,)` int ranks.
    ks: cutoffs K.

  Returns:
    `(B,)` float32 arrays: `hr@K` (rank < K), `recall@K` (same as `hr@K` for
    one target), `ndcg@K` (1/log2(rank+2) if rank < K else 0) for each K, and
    `mrr` (1/(rank+1), no cutoff).
  """
  V.check_shape("ranks", ranks, ("B",))
  V.check_int("ranks", ranks, "(B,) ranks")
  ks = _check_ks(ks)
  hit, ndcg, mrr = _single_target(jnp.asarray(ranks), jnp.asarray(ks, jnp.int32))
  out = {}
  for i, k in enumerate(ks):
    out[f"hr@{k}"] = hit[i]
    out[f"recall@{k}"] = hit[i]
    out[f"ndcg@{k}"] = ndcg[i]
  out["mrr"] = mrr
  return out


def num_candidates(targets: jax.Array, exclude_ids: jax.Array, num_items: int) -> jax.Array:
  """`(B,)` int32 candidates of each row's ranking: the target plus every item of
  1..num_items that is neither padding nor excluded (duplicates in `exclude_ids` counted
  once, the target never excluded)."""
  targets, _ = _targets_2d(targets, None)
  ex = jnp.sort(_check_exclude(exclude_ids, targets.shape[0]), axis=-1)
  first = jnp.concatenate([jnp.ones_like(ex[:, :1], bool), ex[:, 1:] != ex[:, :-1]], -1)
  dropped = first & (ex > 0) & (ex <= num_items) & (ex != targets[:, :1])
  return (num_items - jnp.sum(dropped, axis=-1)).astype(jnp.int32)


def sampled_metrics_from_ranks(ranks, candidates, num_negatives: int,
                               ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
  """Per-example *expected* metrics when the target is ranked against `num_negatives`
  candidates drawn uniformly without replacement from its other candidates (the
  sampled-candidate protocol of many older recommender papers), instead of against all.

  The number X of sampled candidates ranked ahead of a target with full rank r among C
  candidates is hypergeometric (C - 1 items, r of them ahead, S = min(num_negatives, C - 1)
  draws); the metrics are its exact expectations, so they carry no sampling noise:
  hr@K = P(X < K), ndcg@K = E[1{X < K} / log2(X + 2)], mrr = E[1 / (X + 1)]. Computed on
  the host in float64 (float32 log-binomials of catalog-sized arguments lose ~1e-3).

  Args:
    ranks: `(B,)` int full-ranking ranks (as `metrics_from_ranks`).
    candidates: `(B,)` int candidates of each ranking (`num_candidates`).
    num_negatives: S, sampled candidates per example (>= 1).
    ks: cutoffs K.

  Returns:
    `(B,)` float64 numpy arrays with the keys of `metrics_from_ranks`.
  """
  ranks, candidates = np.asarray(ranks), np.asarray(candidates)
  V.check_shape("ranks", ranks, ("B",))
  V.check_shape("candidates", candidates, ("B",), {"B": ranks.shape[0]})
  ks = _check_ks(ks)
  if isinstance(num_negatives, bool) or not isinstance(num_negatives, (int, np.integer)) \
      or num_negatives < 1:
    raise ValueError(f"num_negatives must be a positive int, got {num_negatives!r}")
  pmf = _hypergeom_pmf(ranks, candidates, int(num_negatives))          # (B, S + 1)
  x = np.arange(num_negatives + 1, dtype=np.float64)
  out = {}
  for k in ks:
    below = (x < k).astype(np.float64)
    out[f"hr@{k}"] = pmf @ below
    out[f"recall@{k}"] = out[f"hr@{k}"]
    out[f"ndcg@{k}"] = pmf @ (below / np.log2(x + 2.0))
  out["mrr"] = pmf @ (1.0 / (x + 1.0))
  return out


def _hypergeom_pmf(ranks: np.ndarray, candidates: np.ndarray, num_negatives: int) -> np.ndarray:
  """`(B, S + 1)` P(X = x), X ~ Hypergeom(C - 1 items, r ahead, min(S, C - 1) draws)."""
  others = np.maximum(candidates.astype(np.float64) - 1.0, 0.0)[:, None]
  ahead = np.clip(ranks.astype(np.float64)[:, None], 0.0, others)
  draws = np.minimum(float(num_negatives), others)
  x = np.arange(num_negatives + 1, dtype=np.float64)[None, :]

  def log_choose(n, k):
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)

  ok = (x <= ahead) & (draws - x >= 0) & (draws - x <= others - ahead)
  logp = (log_choose(ahead, np.minimum(x, ahead))
          + log_choose(others - ahead, np.clip(draws - x, 0.0, others - ahead))
          - log_choose(others, draws))
  return np.where(ok, np.exp(np.where(ok, logp, 0.0)), 0.0)


@jax.jit
def _single_target(ranks: jax.Array, ks: jax.Array):
  """`(B,)` ranks, `(K,)` cutoffs -> hit `(K, B)`, ndcg `(K, B)`, mrr `(B,)`."""
  r = ranks.astype(jnp.float32)
  hit = ranks[None, :] < ks[:, None]
  ndcg = jnp.where(hit, 1.0 / jnp.log2(r + 2.0), 0.0)
  return hit.astype(jnp.float32), ndcg, 1.0 / (r + 1.0)


def multi_target_metrics(
    ranks: jax.Array, target_mask: jax.Array, ks: Sequence[int] = DEFAULT_KS,
) -> tuple[dict[str, jax.Array], jax.Array]:
  """Per-example metrics with several relevant (target) items per row.

  Each target must have been ranked independently among all non-excluded
  candidates with the other targets competing (e.g. `chunked_ranks` with
  `(B, T)` targets; do not put targets in the exclude list). Targets in a row
  should be distinct.

  NDCG uses binary relevance: DCG@K sums 1/log2(rank+2) over targets with
  rank < K, and the ideal DCG sums 1/log2(i+2) for i < min(T_b, K), T_b the
  row's number of targets. A target's position in the ranked list is
  approximated by its rank. This is exact when no two targets tie; tied
  targets both count each other as ahead (pessimistic ties), so the
  approximation can only lower NDCG, which stays within [0, 1].

  Args:
    ranks: `(B, T)` int ranks; entries where `target_mask` is False are
      ignored.
    target_mask: `(B, T)` bool, True for real targets.
    ks: cutoffs K.

  Returns:
    `(metrics, weights)`. `metrics` maps `recall@K` (hits / T_b), `hr@K`
    (any target in the top K), `ndcg@K` and `mrr` (reciprocal rank of the
    best target) to `(B,)` float32. Rows without targets get 0 everywhere;
    `weights` `(B,)` float32 is 1 for rows with at least one target, 0
    otherwise; pass it (times any padding mask) to `MetricAccumulator`.
  """
  dims = V.check_shape("ranks", ranks, ("B", "T"))
  V.check_int("ranks", ranks, "(B, T) ranks")
  V.check_shape("target_mask", target_mask, ("B", "T"), dims)
  V.check_bool_or_int("target_mask", target_mask, "(B, T) bool")
  ranks = jnp.asarray(ranks)
  mask = jnp.asarray(target_mask, bool)
  ks = _check_ks(ks)
  hr, recall, ndcg, mrr, weights = _multi_target(
      ranks, mask, jnp.asarray(ks, jnp.int32))
  out = {}
  for i, k in enumerate(ks):
    out[f"hr@{k}"] = hr[i]
    out[f"recall@{k}"] = recall[i]
    out[f"ndcg@{k}"] = ndcg[i]
  out["mrr"] = mrr
  return out, weights


@jax.jit
def _multi_target(ranks: jax.Array, mask: jax.Array, ks: jax.Array):
  """`(B, T)` ranks and mask, `(K,)` cutoffs -> hr, recall, ndcg `(K, B)`,
  mrr `(B,)`, weights `(B,)`."""
  num_targets = jnp.sum(mask, axis=-1, dtype=jnp.int32)          # (B,)
  has = num_targets > 0
  denom = jnp.maximum(num_targets, 1).astype(jnp.float32)
  gain = 1.0 / jnp.log2(ranks.astype(jnp.float32) + 2.0)           # (B, T)
  hit = mask[None] & (ranks[None] < ks[:, None, None])             # (K, B, T)
  hr = jnp.any(hit, axis=-1).astype(jnp.float32)
  recall = jnp.sum(hit, axis=-1, dtype=jnp.float32) / denom
  dcg = jnp.sum(jnp.where(hit, gain[None], 0.0), axis=-1)          # (K, B)
  positions = jnp.arange(ranks.shape[1])
  ideal_gain = 1.0 / jnp.log2(positions.astype(jnp.float32) + 2.0)  # (T,)
  n_ideal = jnp.minimum(num_targets[None], ks[:, None])            # (K, B)
  idcg = jnp.sum(jnp.where(positions < n_ideal[..., None], ideal_gain, 0.0),
                 axis=-1)
  ndcg = jnp.where(has, dcg / jnp.where(has, idcg, 1.0), 0.0)
  best = jnp.min(jnp.where(mask, ranks, jnp.iinfo(ranks.dtype).max), axis=-1)
  mrr = jnp.where(has, 1.0 / (best.astype(jnp.float32) + 1.0), 0.0)
  return hr, recall, ndcg, mrr, has.astype(jnp.float32)


class MetricAccumulator:
  """Weighted running means of per-example metrics, summed on the host.

  Keeps float64 sums and weight totals per metric, so the mean over several
  (possibly padded) batches equals the mean over their concatenation.
  """

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._weights: dict[str, float] = {}

  def update(self, metrics: Mapping[str, jax.Array],
             weights: Optional[jax.Array] = None) -> None:
    """Adds a batch of per-example metrics.

    Args:
      metrics: name -> `(B,)` per-example values.
      weights: optional `(B,)` bool mask or float weights; rows with weight 0
        (e.g. padding) are ignored even if their values are NaN.
    """
    w = None if weights is None else np.asarray(weights, np.float64)
    for name, values in metrics.items():
      v = np.asarray(values, np.float64)
      if v.ndim != 1:
        raise ValueError(f"metric {name!r} must be (B,), got shape {v.shape}")
      if w is None:
        wv = np.ones_like(v)
      elif w.shape != v.shape:
        raise ValueError(f"weights shape {w.shape} does not match metric "
                         f"{name!r} shape {v.shape}")
      else:
        wv = w
      self._sums[name] = self._sums.get(name, 0.0) + float(
          np.sum(np.where(wv != 0, v, 0.0) * wv))
      self._weights[name] = self._weights.get(name, 0.0) + float(np.sum(wv))

  def result(self) -> dict[str, float]:
    """Weighted means; NaN for a metric whose total weight is 0."""
    return {name: (s / self._weights[name] if self._weights[name] else
                   float("nan")) for name, s in self._sums.items()}

  def reset(self) -> None:
    self._sums.clear()
    self._weights.clear()
