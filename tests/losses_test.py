"""Tests for jaxret.losses against plain numpy loop references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret import losses
from jaxret.errors import ConfigError

B, L, R, N = 3, 4, 5, 7


def _softplus(x: float) -> float:
  return float(np.logaddexp(0.0, x))


def _logsumexp(xs: list[float]) -> float:
  m = max(xs)
  return m + float(np.log(sum(np.exp(x - m) for x in xs)))


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  pos = rng.normal(size=(B, L)).astype(np.float32) * 3
  neg = rng.normal(size=(B, L, R)).astype(np.float32) * 3
  mask = rng.random((B, L)) > 0.3
  mask[0, 0] = True
  mask[1, :] = False  # a whole row without targets
  neg_valid = rng.random((B, L, R)) > 0.25
  return pos, neg, mask, neg_valid


def _ref_bce(pos, neg, mask, neg_valid, mean=False):
  total, weight = 0.0, 0.0
  for b in range(B):
    for t in range(L):
      if not mask[b, t]:
        continue
      weight += 1
      total += _softplus(-pos[b, t])
      terms = [_softplus(neg[b, t, r]) for r in range(R) if neg_valid[b, t, r]]
      total += (sum(terms) / max(len(terms), 1)) if mean else sum(terms)
  return total, weight


def _ref_ss(pos, neg, mask, neg_valid, pos_logq=None, neg_logq=None):
  total, weight = 0.0, 0.0
  for b in range(B):
    for t in range(L):
      if not mask[b, t]:
        continue
      weight += 1
      p = float(pos[b, t]) - (0.0 if pos_logq is None else pos_logq[b, t])
      logits = [p] + [
          float(neg[b, t, r]) - (0.0 if neg_logq is None else neg_logq[b, t, r])
          for r in range(R) if neg_valid[b, t, r]]
      total += _logsumexp(logits) - p
  return total, weight


def _ref_full(scores, targets, mask):
  total, weight = 0.0, 0.0
  for b in range(B):
    for t in range(L):
      if not mask[b, t]:
        continue
      weight += 1
      row = [float(x) for x in scores[b, t, 1:]]
      total += _logsumexp(row) - float(scores[b, t, targets[b, t]])
  return total, weight


def test_registry():
  assert losses.LOSSES.names() == ["bce", "softmax", "ss"]
  assert losses.LOSSES.get("bce") is losses.bce_loss
  assert losses.LOSSES.get("ss") is losses.sampled_softmax_loss
  assert losses.LOSSES.get("softmax") is losses.full_softmax_loss
  with pytest.raises(ConfigError, match="bce"):
    losses.LOSSES.get("nope")


@pytest.mark.parametrize("negatives", ["sum", "mean"])
@pytest.mark.parametrize("use_valid", [False, True])
def test_bce_matches_reference(use_valid, negatives):
  pos, neg, mask, neg_valid = _inputs()
  if not use_valid:
    neg_valid_arg, neg_valid = None, np.ones_like(neg_valid)
  else:
    neg_valid_arg = neg_valid
  loss, weight = losses.bce_loss(pos, neg, mask, neg_valid_arg, negatives=negatives)
  ref_loss, ref_weight = _ref_bce(pos, neg, mask, neg_valid, mean=negatives == "mean")
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(weight) == ref_weight


@pytest.mark.parametrize("use_valid", [False, True])
def test_ss_matches_reference(use_valid):
  pos, neg, mask, neg_valid = _inputs(1)
  if not use_valid:
    neg_valid_arg, neg_valid = None, np.ones_like(neg_valid)
  else:
    neg_valid_arg = neg_valid
  loss, weight = losses.sampled_softmax_loss(pos, neg, mask, neg_valid_arg)
  ref_loss, ref_weight = _ref_ss(pos, neg, mask, neg_valid)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(weight) == ref_weight


def test_ss_logq_matches_reference():
  pos, neg, mask, neg_valid = _inputs(2)
  rng = np.random.default_rng(3)
  pos_logq = np.log(rng.uniform(1e-3, 1.0, size=(B, L))).astype(np.float32)
  neg_logq = np.log(rng.uniform(1e-3, 1.0, size=(B, L, R))).astype(np.float32)
  loss, _ = losses.sampled_softmax_loss(
      pos, neg, mask, neg_valid, pos_logq=pos_logq, neg_logq=neg_logq)
  ref_loss, _ = _ref_ss(pos, neg, mask, neg_valid, pos_logq, neg_logq)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_ss_constant_logq_is_no_correction():
  pos, neg, mask, neg_valid = _inputs(4)
  plain, _ = losses.sampled_softmax_loss(pos, neg, mask, neg_valid)
  corrected, _ = losses.sampled_softmax_loss(
      pos, neg, mask, neg_valid, pos_logq=jnp.full((B, L), -2.5),
      neg_logq=jnp.full((B, L, R), -2.5))
  np.testing.assert_allclose(corrected, plain, rtol=1e-6)


def test_full_softmax_matches_reference():
  rng = np.random.default_rng(5)
  scores = rng.normal(size=(B, L, N + 1)).astype(np.float32) * 3
  scores[..., 0] = 100.0  # the padding column must be ignored
  targets = rng.integers(1, N + 1, size=(B, L)).astype(np.int32)
  mask = rng.random((B, L)) > 0.3
  mask[0, 0] = True
  targets[~mask] = 0  # padding targets at masked positions
  loss, weight = losses.full_softmax_loss(scores, targets, mask)
  ref_loss, ref_weight = _ref_full(scores, targets, mask)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(weight) == ref_weight


def test_float_mask_weights():
  pos, neg, mask, _ = _inputs(6)
  weights = mask.astype(np.float32) * 2.0
  loss_w, weight_w = losses.bce_loss(pos, neg, weights)
  loss, weight = losses.bce_loss(pos, neg, mask)
  np.testing.assert_allclose(loss_w, 2 * loss, rtol=1e-6)
  assert float(weight_w) == 2 * float(weight)


@pytest.mark.parametrize("value", [1e4, -1e4])
def test_extreme_scores_finite(value):
  pos, neg, mask, neg_valid = _inputs(7)
  pos = np.full_like(pos, value)
  neg = np.full_like(neg, -value)
  neg[0, 0, 0] = value
  scores = np.full((B, L, N + 1), -value, np.float32)
  scores[..., 1] = value
  targets = np.full((B, L), 2, np.int32)
  fns = {
      "bce": lambda p, n, s: losses.bce_loss(p, n, mask, neg_valid)[0],
      "ss": lambda p, n, s: losses.sampled_softmax_loss(
          p, n, mask, neg_valid)[0],
      "softmax": lambda p, n, s: losses.full_softmax_loss(s, targets, mask)[0],
  }
  for name, fn in fns.items():
    val, grads = jax.value_and_grad(fn, argnums=(0, 1, 2))(pos, neg, scores)
    assert np.isfinite(val), name
    for g in grads:
      assert np.all(np.isfinite(g)), name


def test_ss_grad_of_invalid_negative_is_zero():
  pos, neg, mask, neg_valid = _inputs(8)
  mask[:] = True
  neg_valid[:] = True
  neg_valid[0, 1, 2] = False
  neg_valid[2, 3, :] = False  # all negatives invalid: loss 0 at that position
  grad = jax.grad(
      lambda n: losses.sampled_softmax_loss(pos, n, mask, neg_valid)[0])(neg)
  assert grad[0, 1, 2] == 0.0
  np.testing.assert_array_equal(grad[2, 3], 0.0)
  assert np.all(grad[0, 1, neg_valid[0, 1]] > 0)
  # Changing an invalid negative changes nothing.
  neg2 = neg.copy()
  neg2[0, 1, 2] = 1e4
  np.testing.assert_allclose(
      losses.sampled_softmax_loss(pos, neg2, mask, neg_valid)[0],
      losses.sampled_softmax_loss(pos, neg, mask, neg_valid)[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["bce", "ss", "softmax"])
def test_masked_positions_contribute_nothing(name):
  pos, neg, mask, neg_valid = _inputs(9)
  scores = np.random.default_rng(9).normal(size=(B, L, N + 1)).astype(
      np.float32)
  targets = np.ones((B, L), np.int32)

  def run(p, n, s):
    if name == "bce":
      return losses.bce_loss(p, n, mask, neg_valid)[0]
    if name == "ss":
      return losses.sampled_softmax_loss(p, n, mask, neg_valid)[0]
    return losses.full_softmax_loss(s, targets, mask)[0]

  base = run(pos, neg, scores)
  # Garbage (incl. inf / NaN) at masked positions changes neither value nor
  # gradient anywhere, and the gradient there is zero.
  pos2, neg2, scores2 = pos.copy(), neg.copy(), scores.copy()
  pos2[~mask] = np.nan
  neg2[~mask] = np.inf
  scores2[~mask] = -np.inf
  val, grads = jax.value_and_grad(run, argnums=(0, 1, 2))(pos2, neg2, scores2)
  np.testing.assert_allclose(val, base, rtol=1e-6)
  for g in grads:
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[~mask], 0.0)
  zero_loss, zero_weight = (
      losses.bce_loss(pos, neg, np.zeros((B, L), bool)))
  assert float(zero_loss) == 0.0 and float(zero_weight) == 0.0


def test_jit_and_bf16_inputs():
  pos, neg, mask, neg_valid = _inputs(10)
  ref, _ = losses.sampled_softmax_loss(pos, neg, mask, neg_valid)
  out, _ = jax.jit(losses.sampled_softmax_loss)(
      jnp.asarray(pos, jnp.bfloat16), jnp.asarray(neg, jnp.bfloat16), mask,
      neg_valid)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=2e-2)


def test_valid_negatives():
  pos_ids = jnp.array([[1, 2]])
  neg_ids = jnp.array([[[1, 3, 0], [2, 2, 5]]])
  np.testing.assert_array_equal(
      losses.valid_negatives(pos_ids, neg_ids),
      [[[False, True, False], [False, False, True]]])
