"""Tests for jaxret.metrics against plain brute-force numpy references."""
import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret import metrics

KS = (1, 3, 10)


# ----------------------------------------------------------------------------
# Brute-force references, written as plain loops.
# ----------------------------------------------------------------------------

def brute_rank(score_row, target, exclude_row):
  """Number of non-excluded items 1..N (not the target) scoring >= target."""
  excluded = set(int(x) for x in exclude_row)
  target_score = score_row[target]
  rank = 0
  for item in range(1, len(score_row)):
    if item == target or item in excluded:
      continue
    if score_row[item] >= target_score:
      rank += 1
  return rank


def brute_ranks(scores, targets, exclude):
  """targets (B,) or (B, T) -> ranks of the same shape."""
  targets = np.asarray(targets)
  out = np.zeros(targets.shape, np.int64)
  for b in range(scores.shape[0]):
    for idx in np.ndindex(targets.shape[1:]):
      out[(b,) + idx] = brute_rank(scores[b], targets[(b,) + idx], exclude[b])
  return out


def make_case(seed, batch=6, num_items=23, hist=7, num_targets=None):
  """Integer-valued scores (many ties), targets and messy exclude lists."""
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 4, size=(batch, num_items + 1)).astype(np.float32)
  if num_targets is None:
    targets = rng.integers(1, num_items + 1, size=(batch,))
  else:
    targets = np.stack([rng.choice(np.arange(1, num_items + 1), num_targets,
                                   replace=False) for _ in range(batch)])
  exclude = rng.integers(0, num_items + 1, size=(batch, hist))
  exclude[:, -2:] = 0                      # padding
  exclude[:, 1] = exclude[:, 0]            # duplicates
  first_target = targets if targets.ndim == 1 else targets[:, 0]
  exclude[::2, 2] = first_target[::2]      # the target itself, every other row
  return scores, targets.astype(np.int32), exclude.astype(np.int32)


def column_score_fn(scores):
  """score_fn reading columns of a full score matrix; poisons invalid ids."""
  scores = jnp.asarray(scores)
  num_items = scores.shape[1] - 1

  def score_fn(ids):
    s = scores[:, ids]
    # Ids past num_items (passed as anything) must be ignored: make them win.
    return jnp.where((ids == 0) | (ids > num_items), jnp.inf, s)
  return score_fn


# ----------------------------------------------------------------------------
# ranks_from_scores / chunked_ranks.
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_ranks_from_scores_matches_brute_force(seed):
  scores, targets, exclude = make_case(seed)
  got = metrics.ranks_from_scores(scores, targets, exclude)
  assert got.shape == targets.shape and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, brute_ranks(scores, targets, exclude))


def test_ranks_from_scores_without_exclusion():
  scores, targets, _ = make_case(7)
  no_excl = np.zeros((scores.shape[0], 1), np.int32)
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(scores, targets),
      brute_ranks(scores, targets, no_excl))


def test_ranks_hand_example():
  # Items 1..4 with scores 5, 7, 7, 1; column 0 is padding (huge, ignored).
  scores = np.array([[100., 5., 7., 7., 1.]] * 3, np.float32)
  targets = np.array([2, 2, 4], np.int32)
  exclude = np.array([[0, 0], [3, 2], [1, 0]], np.int32)
  # Row 0: item 3 ties item 2 -> counted ahead. Row 1: item 3 excluded, target
  # also listed. Row 2: items 2, 3 ahead, item 1 excluded.
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(scores, targets, exclude), [1, 0, 2])
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 4, exclude,
                            chunk_size=3), [1, 0, 2])


@functools.partial(jax.jit, static_argnames=("chunk_size", "max_buffered"))
def _jitted_chunked(scores, targets, exclude, target_scores, chunk_size, max_buffered):
  """chunked_ranks over a full score matrix; compiled once per chunk size and path."""
  return metrics.chunked_ranks(column_score_fn(scores), targets,
                               scores.shape[1] - 1, exclude,
                               chunk_size=chunk_size,
                               target_scores=target_scores,
                               max_buffered_scores=max_buffered)


# max_buffered 0: two scoring passes; 1 << 25: every chunk scored once and kept.
@pytest.mark.parametrize("max_buffered", [0, 1 << 25])
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 23, 100])
def test_chunked_ranks_matches_brute_force(chunk_size, max_buffered):
  for seed in range(4):
    scores, targets, exclude = make_case(seed)
    want = brute_ranks(scores, targets, exclude)
    got = _jitted_chunked(scores, targets, exclude, None, chunk_size, max_buffered)
    assert got.shape == targets.shape and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
    target_scores = np.take_along_axis(scores, targets[:, None], 1)[:, 0]
    got_ts = _jitted_chunked(scores, targets, exclude, target_scores,
                             chunk_size, max_buffered)
    np.testing.assert_array_equal(got_ts, want, err_msg=f"seed {seed}")
  # Eagerly (outside jit) too.
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 23, exclude,
                            chunk_size=chunk_size, max_buffered_scores=max_buffered), want)


def test_chunked_ranks_scores_each_chunk_once_when_buffered():
  scores, targets, exclude = make_case(2)
  for max_buffered, passes in [(0, 2), (1 << 25, 1)]:
    calls = []

    def counting_score_fn(ids, calls=calls):  # a new function each time: no trace cache
      calls.append(ids.shape)
      return column_score_fn(scores)(ids)

    jax.jit(lambda t, e: metrics.chunked_ranks(
        counting_score_fn, t, 23, e, chunk_size=5,
        max_buffered_scores=max_buffered)).lower(targets, exclude)
    # eval_shape's check + one trace per scoring loop.
    assert len(calls) == 1 + passes, (max_buffered, calls)


def test_chunked_ranks_without_exclusion():
  scores, targets, _ = make_case(11)
  no_excl = np.zeros((scores.shape[0], 1), np.int32)
  got = metrics.chunked_ranks(column_score_fn(scores), targets, 23,
                              chunk_size=4)
  np.testing.assert_array_equal(got, brute_ranks(scores, targets, no_excl))


def test_chunked_ranks_uses_given_target_scores():
  scores, targets, exclude = make_case(3)
  # A target score above every real score leaves nothing ahead.
  got = metrics.chunked_ranks(column_score_fn(scores), targets, 23, exclude,
                              chunk_size=5,
                              target_scores=np.full(targets.shape, 10.0))
  np.testing.assert_array_equal(got, np.zeros_like(targets))


def test_chunked_ranks_with_embedding_score_fn():
  """A realistic dot-product score_fn; small integer embeddings give ties."""
  rng = np.random.default_rng(5)
  batch, num_items, dim = 5, 40, 3
  queries = rng.integers(-1, 2, size=(batch, dim)).astype(np.float32)
  item_emb = rng.integers(-1, 2, size=(num_items + 1, dim)).astype(np.float32)
  full = queries.astype(np.float64) @ item_emb.T.astype(np.float64)
  targets = rng.integers(1, num_items + 1, size=(batch,)).astype(np.int32)
  exclude = rng.integers(0, num_items + 1, size=(batch, 6)).astype(np.int32)
  exclude[0, 0] = targets[0]
  want = brute_ranks(full, targets, exclude)

  def score_fn(ids):
    return jnp.asarray(queries) @ jnp.asarray(item_emb)[ids].T

  for chunk_size in (1, 6, 64):
    got = metrics.chunked_ranks(score_fn, targets, num_items, exclude,
                                chunk_size=chunk_size)
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(full.astype(np.float32), targets, exclude),
      want)


@pytest.mark.parametrize("chunk_size", [1, 6, 100])
def test_multiple_targets_per_row_match_brute_force(chunk_size):
  scores, targets, exclude = make_case(2, num_targets=3)
  assert targets.shape == (6, 3)
  want = brute_ranks(scores, targets, exclude)
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(scores, targets, exclude), want)
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 23, exclude,
                            chunk_size=chunk_size), want)


def test_nan_scores_are_pessimistic():
  scores = np.array([[0., 3., np.nan, 1.], [0., np.nan, 2., 1.]], np.float32)
  targets = np.array([1, 1], np.int32)
  # Row 0: NaN candidate counts ahead. Row 1: NaN target, both others ahead.
  want = [1, 2]
  np.testing.assert_array_equal(metrics.ranks_from_scores(scores, targets),
                                want)
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 3,
                            chunk_size=2), want)


def test_out_of_range_target_gets_worst_rank():
  scores, _, exclude = make_case(4)
  exclude[:] = 0
  targets = np.array([0, 24, 0, 24, 0, 24], np.int32)   # N = 23
  want = np.full(targets.shape, 23)
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 23, exclude,
                            chunk_size=5), want)
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(scores, np.full_like(targets, 24), exclude),
      want)


def test_negative_exclude_ids_do_not_wrap_around():
  scores = np.array([[0., 1., 2., 3.]], np.float32)
  targets = np.array([1], np.int32)
  exclude = np.array([[-1, -3]], np.int32)   # must not exclude items 3 or 1
  np.testing.assert_array_equal(
      metrics.ranks_from_scores(scores, targets, exclude), [2])
  np.testing.assert_array_equal(
      metrics.chunked_ranks(column_score_fn(scores), targets, 3, exclude,
                            chunk_size=2), [2])


def test_chunked_ranks_under_jit():
  scores, targets, exclude = make_case(9)
  want = brute_ranks(scores, targets, exclude)

  @functools.partial(jax.jit, static_argnames=("num_items", "chunk_size"))
  def eval_ranks(scores, targets, exclude, num_items, chunk_size):
    def score_fn(ids):
      return scores[:, ids]
    return metrics.chunked_ranks(score_fn, targets, num_items, exclude,
                                 chunk_size=chunk_size)

  np.testing.assert_array_equal(eval_ranks(scores, targets, exclude, 23, 5),
                                want)
  np.testing.assert_array_equal(eval_ranks(scores, targets, exclude, 23, 1),
                                want)

  # chunked_ranks itself can be jitted with score_fn static.
  jitted = jax.jit(metrics.chunked_ranks,
                   static_argnames=("score_fn", "num_items", "chunk_size"))
  got = jitted(column_score_fn(scores), jnp.asarray(targets), num_items=23,
               exclude_ids=jnp.asarray(exclude), chunk_size=7)
  np.testing.assert_array_equal(got, want)


def _all_avals(jaxpr):
  """Yields the abstract values of every equation output, recursively."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield var.aval
    for param in eqn.params.values():
      subs = param if isinstance(param, (tuple, list)) else [param]
      for sub in subs:
        if hasattr(sub, "eqns"):
          yield from _all_avals(sub)
        elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
          yield from _all_avals(sub.jaxpr)


def test_chunked_ranks_never_materialises_full_scores():
  batch, num_items, dim, chunk = 4, 1000, 8, 16
  queries = jnp.ones((batch, dim))
  item_emb = jnp.ones((num_items + 1, dim))
  targets = jnp.ones((batch,), jnp.int32)
  exclude = jnp.zeros((batch, 5), jnp.int32)

  def largest(max_buffered):
    def run(queries, item_emb, targets, exclude):
      return metrics.chunked_ranks(lambda ids: queries @ item_emb[ids].T,
                                   targets, num_items, exclude, chunk_size=chunk,
                                   max_buffered_scores=max_buffered)

    closed = jax.make_jaxpr(run)(queries, item_emb, targets, exclude)
    sizes = [math.prod(getattr(a, "shape", ())) for a in _all_avals(closed.jaxpr)]
    assert sizes
    return max(sizes)

  padded = batch * (-(-num_items // chunk)) * chunk       # the buffered (B, N) scores
  assert largest(0) < batch * num_items
  assert largest(padded - 1) < batch * num_items           # over the budget: not buffered
  assert largest(padded) >= batch * num_items              # within it: kept
  # Sanity check of the checker: the dense version does materialise it.
  dense = jax.make_jaxpr(lambda q, e, t, x: metrics.ranks_from_scores(
      q @ e.T, t, x))(queries, item_emb, targets, exclude)
  assert max(math.prod(getattr(a, "shape", ()))
             for a in _all_avals(dense.jaxpr)) >= batch * num_items


def test_chunked_ranks_validates_arguments():
  scores, targets, exclude = make_case(0)
  fn = column_score_fn(scores)
  with pytest.raises(ValueError):
    metrics.chunked_ranks(fn, targets, 23, exclude, chunk_size=0)
  with pytest.raises(ValueError):
    metrics.chunked_ranks(lambda ids: jnp.zeros((2, ids.shape[0])), targets, 23)
  with pytest.raises(ValueError):
    metrics.chunked_ranks(fn, targets, 23, exclude[:3])


# ----------------------------------------------------------------------------
# metrics_from_ranks.
# ----------------------------------------------------------------------------

def test_metrics_from_ranks_hand_values():
  got = metrics.metrics_from_ranks(np.array([0, 1, 9, 10]), ks=(1, 10))
  assert set(got) == {"hr@1", "hr@10", "ndcg@1", "ndcg@10", "recall@1",
                      "recall@10", "mrr"}
  for v in got.values():
    assert v.shape == (4,) and v.dtype == jnp.float32
  np.testing.assert_allclose(got["hr@1"], [1, 0, 0, 0])
  np.testing.assert_allclose(got["hr@10"], [1, 1, 1, 0])
  np.testing.assert_allclose(got["recall@10"], [1, 1, 1, 0])
  np.testing.assert_allclose(got["ndcg@1"], [1, 0, 0, 0])
  np.testing.assert_allclose(got["ndcg@10"],
                             [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(got["mrr"], [1.0, 0.5, 0.1, 1 / 11], rtol=1e-6)


def test_metrics_from_ranks_matches_numpy():
  ranks = np.random.default_rng(0).integers(0, 700, size=50)
  got = metrics.metrics_from_ranks(ranks)
  assert set(got) == ({f"{m}@{k}" for m in ("hr", "ndcg", "recall")
                       for k in metrics.DEFAULT_KS} | {"mrr"})
  for k in metrics.DEFAULT_KS:
    hit = (ranks < k).astype(np.float64)
    np.testing.assert_allclose(got[f"hr@{k}"], hit)
    np.testing.assert_allclose(got[f"recall@{k}"], hit)
    np.testing.assert_allclose(got[f"ndcg@{k}"], hit / np.log2(ranks + 2),
                               rtol=1e-6)
  np.testing.assert_allclose(got["mrr"], 1 / (ranks + 1), rtol=1e-6)


def test_metrics_from_ranks_rejects_bad_cutoffs():
  for ks in [(0,), (10, -1), (2.5,), (True,)]:
    with pytest.raises(ValueError):
      metrics.metrics_from_ranks(np.array([0]), ks=ks)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    ranks=st.lists(st.integers(0, 600), min_size=6, max_size=6),
    ks=st.lists(st.integers(1, 600), min_size=4, max_size=4, unique=True))
def test_metrics_monotone_in_k(ranks, ks):
  ks = sorted(ks)
  got = metrics.metrics_from_ranks(np.array(ranks), ks=ks)
  for lo, hi in zip(ks, ks[1:]):
    assert np.all(got[f"hr@{lo}"] <= got[f"hr@{hi}"])
    assert np.all(got[f"ndcg@{lo}"] <= got[f"ndcg@{hi}"])
  for k in ks:
    hr, ndcg = np.asarray(got[f"hr@{k}"]), np.asarray(got[f"ndcg@{k}"])
    assert np.all(ndcg <= hr)
    # With a hit, 1/log2(r+2) >= 1/(r+1).
    assert np.all(ndcg >= hr * np.asarray(got["mrr"]) - 1e-6)


# ----------------------------------------------------------------------------
# multi_target_metrics.
# ----------------------------------------------------------------------------

def brute_multi(ranks, mask, ks):
  out = {f"{m}@{k}": [] for m in ("hr", "recall", "ndcg") for k in ks}
  out["mrr"] = []
  weights = []
  for row_ranks, row_mask in zip(ranks, mask):
    rs = [int(r) for r, m in zip(row_ranks, row_mask) if m]
    weights.append(1.0 if rs else 0.0)
    for k in ks:
      if not rs:
        for m in ("hr", "recall", "ndcg"):
          out[f"{m}@{k}"].append(0.0)
        continue
      hits = [r for r in rs if r < k]
      out[f"hr@{k}"].append(1.0 if hits else 0.0)
      out[f"recall@{k}"].append(len(hits) / len(rs))
      dcg = sum(1 / math.log2(r + 2) for r in hits)
      idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rs), k)))
      out[f"ndcg@{k}"].append(dcg / idcg)
    out["mrr"].append(1 / (min(rs) + 1) if rs else 0.0)
  return out, weights


def test_multi_target_metrics_matches_numpy():
  rng = np.random.default_rng(1)
  ranks = rng.integers(0, 15, size=(20, 5))
  mask = rng.random((20, 5)) < 0.5
  mask[0] = False                          # a row without targets
  mask[1] = True
  got, weights = metrics.multi_target_metrics(ranks, mask, ks=KS)
  want, want_w = brute_multi(ranks, mask, KS)
  assert set(got) == set(want)
  for name in want:
    assert got[name].shape == (20,) and got[name].dtype == jnp.float32
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7,
                               err_msg=name)
  np.testing.assert_array_equal(weights, want_w)
  assert weights[0] == 0 and all(got[n][0] == 0 for n in got)


def test_multi_target_hand_example():
  # Targets at ranks 0 and 2 of 2 targets: DCG = 1 + 1/log2(4) = 1.5,
  # IDCG@10 = 1 + 1/log2(3); @1 only the first counts: ndcg@1 = 1/1.
  got, _ = metrics.multi_target_metrics(np.array([[0, 2, 99]]),
                                        np.array([[True, True, False]]),
                                        ks=(1, 2, 10))
  np.testing.assert_allclose(got["ndcg@10"], [1.5 / (1 + 1 / math.log2(3))],
                             rtol=1e-6)
  np.testing.assert_allclose(got["ndcg@1"], [1.0])
  np.testing.assert_allclose(got["ndcg@2"], [1 / (1 + 1 / math.log2(3))],
                             rtol=1e-6)
  np.testing.assert_allclose(got["recall@2"], [0.5])
  np.testing.assert_allclose(got["hr@1"], [1.0])
  np.testing.assert_allclose(got["mrr"], [1.0])


def test_multi_target_single_target_equals_metrics_from_ranks():
  ranks = np.random.default_rng(2).integers(0, 30, size=(12,))
  single = metrics.metrics_from_ranks(ranks, ks=KS)
  multi, weights = metrics.multi_target_metrics(
      ranks[:, None], np.ones((12, 1), bool), ks=KS)
  np.testing.assert_array_equal(weights, np.ones(12))
  for name in single:
    np.testing.assert_allclose(multi[name], single[name], rtol=1e-6)


def test_multi_target_ndcg_bounded_with_tied_targets():
  scores, targets, exclude = make_case(6, num_targets=4)
  ranks = metrics.ranks_from_scores(scores, targets, exclude)
  mask = np.ones(targets.shape, bool)
  mask[:, 3] = False
  got, _ = metrics.multi_target_metrics(ranks, mask, ks=(1, 3, 50))
  for k in (1, 3, 50):
    assert np.all(np.asarray(got[f"ndcg@{k}"]) <= 1 + 1e-6)
    assert np.all(np.asarray(got[f"ndcg@{k}"]) >= 0)


# ----------------------------------------------------------------------------
# MetricAccumulator.
# ----------------------------------------------------------------------------

def test_accumulator_ignores_padded_rows():
  acc = metrics.MetricAccumulator()
  ranks = np.array([0, 3, 5, 0, 0])
  valid = np.array([True, True, True, False, False])
  per_example = metrics.metrics_from_ranks(ranks, ks=(1, 4))
  per_example["mrr"] = per_example["mrr"].at[3].set(jnp.nan)   # garbage row
  acc.update(per_example, weights=valid)
  res = acc.result()
  assert set(res) == set(per_example)
  assert all(isinstance(v, float) for v in res.values())
  assert res["hr@1"] == pytest.approx(1 / 3)
  assert res["hr@4"] == pytest.approx(2 / 3)
  assert res["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 6) / 3)


def test_accumulator_two_batches_equal_concatenation():
  rng = np.random.default_rng(3)
  r1, r2 = rng.integers(0, 20, size=7), rng.integers(0, 20, size=3)
  acc = metrics.MetricAccumulator()
  acc.update(metrics.metrics_from_ranks(r1, ks=KS))
  # Second batch padded to size 7 with junk ranks.
  padded = np.concatenate([r2, np.zeros(4, r2.dtype)])
  acc.update(metrics.metrics_from_ranks(padded, ks=KS),
             weights=np.arange(7) < 3)
  full = metrics.metrics_from_ranks(np.concatenate([r1, r2]), ks=KS)
  res = acc.result()
  for name, values in full.items():
    assert res[name] == pytest.approx(float(np.mean(values)), rel=1e-6)
  acc.reset()
  assert acc.result() == {}


def test_accumulator_with_multi_target_weights():
  ranks = np.array([[0, 5], [1, 0], [7, 7]])
  mask = np.array([[True, True], [False, False], [True, False]])
  per_example, weights = metrics.multi_target_metrics(ranks, mask, ks=(1,))
  acc = metrics.MetricAccumulator()
  acc.update(per_example, weights=weights)
  assert acc.result()["recall@1"] == pytest.approx((0.5 + 0.0) / 2)
  assert acc.result()["mrr"] == pytest.approx((1.0 + 1 / 8) / 2)


def test_accumulator_rejects_mismatched_weights():
  acc = metrics.MetricAccumulator()
  with pytest.raises(ValueError):
    acc.update({"mrr": np.ones(4)}, weights=np.ones(3))


def test_num_candidates_against_numpy():
  rng = np.random.default_rng(7)
  n = 20
  targets = rng.integers(1, n + 1, 50)
  exclude = rng.integers(0, n + 3, (50, 12))                        # padding, dupes, > n
  got = np.asarray(metrics.num_candidates(jnp.asarray(targets), jnp.asarray(exclude), n))
  want = [n - len({e for e in row if 1 <= e <= n and e != t}) for t, row in
          zip(targets, exclude)]
  np.testing.assert_array_equal(got, want)


def test_sampled_metrics_match_monte_carlo_sampling():
  """The expected sampled metrics against literally sampling S of the other candidates."""
  rng = np.random.default_rng(8)
  cands = np.array([40, 40, 25, 60, 7])
  ranks = np.array([0, 12, 24, 30, 3])
  s, ks = 10, (1, 5, 10)
  got = metrics.sampled_metrics_from_ranks(ranks, cands, s, ks)
  draws = 20000
  for i, (r, c) in enumerate(zip(ranks, cands)):
    ahead = np.zeros(c - 1, bool)
    ahead[:r] = True                                                # r of the c-1 others beat it
    x = np.array([ahead[rng.choice(c - 1, min(s, c - 1), replace=False)].sum()
                  for _ in range(draws)])
    for k in ks:
      assert got[f"hr@{k}"][i] == pytest.approx(np.mean(x < k), abs=0.015), (i, k)
      ndcg = np.mean(np.where(x < k, 1 / np.log2(x + 2), 0))
      assert got[f"ndcg@{k}"][i] == pytest.approx(ndcg, abs=0.015), (i, k)
    assert got["mrr"][i] == pytest.approx(np.mean(1 / (x + 1)), abs=0.01), i
  # S at least every ranking's other candidates: the full-ranking metrics.
  full = metrics.metrics_from_ranks(jnp.asarray(ranks), ks)
  every = metrics.sampled_metrics_from_ranks(ranks, cands, 100, ks)
  for k in full:
    np.testing.assert_allclose(every[k], np.asarray(full[k]), atol=1e-9)
  with pytest.raises(ValueError, match="num_negatives"):
    metrics.sampled_metrics_from_ranks(ranks, cands, 0)
