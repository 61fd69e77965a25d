"""Retrieval losses on precomputed scores (no model code).

Every loss returns ``(loss_sum, weight_sum)`` float32 scalars: the sum of the
per-position losses weighted by ``mask`` and the sum of the weights. The trainer
divides the two after summing across devices / padded batches, which gives the
exact mean. ``mask`` may be bool (1 = position has a real target) or float
(per-position weights); positions with weight 0 contribute nothing, even if
their scores are inf/NaN.

Registered in ``LOSSES``: ``"bce"``, ``"ss"`` (sampled softmax), ``"softmax"``
(full softmax over all items).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxret import validation as V
from jaxret.registry import Registry

Array = jax.Array

BCE_NEGATIVES = ("sum", "mean")  # how bce_loss reduces the R negatives' terms
LOSSES: Registry[Callable[..., tuple[Array, Array]]] = Registry("loss")


def _reduce(per_position: Array, mask: Array) -> tuple[Array, Array]:
  """Weighted sum of ``(B, L)`` losses; masked positions are dropped exactly."""
  weight = jnp.asarray(mask).astype(jnp.float32)
  keep = weight > 0
  loss_sum = jnp.sum(jnp.where(keep, per_position * weight, 0.0))
  return loss_sum, jnp.sum(weight)


def _keep(mask: Array, shape: tuple[int, ...]) -> Array:
  """Bool of ``shape`` (mask broadcast over trailing axes): position is used."""
  keep = jnp.asarray(mask).astype(jnp.float32) > 0
  keep = keep.reshape(keep.shape + (1,) * (len(shape) - keep.ndim))
  return jnp.broadcast_to(keep, shape)


def _clean(x: Array, mask: Array) -> Array:
  """Zeroes scores at masked positions so inf/NaN there cannot reach grads."""
  return jnp.where(_keep(mask, x.shape), x.astype(jnp.float32), 0.0)


def _neg_valid(neg_scores: Array, neg_valid: Optional[Array]) -> Array:
  if neg_valid is None:
    return jnp.ones(neg_scores.shape, dtype=bool)
  return jnp.broadcast_to(jnp.asarray(neg_valid, dtype=bool), neg_scores.shape)


def _check_sampled(pos_scores: Array, neg_scores: Array, mask: Array,
                   neg_valid: Optional[Array], pos_logq: Optional[Array] = None,
                   neg_logq: Optional[Array] = None) -> None:
  """Shape/dtype checks shared by the sampled losses (raise ValueError)."""
  dims = V.check_shape("pos_scores", pos_scores, ("...",))
  V.check_float("pos_scores", pos_scores, "(...,) logits")
  V.check_shape("neg_scores", neg_scores, ("...", "R"), dims)
  V.check_float("neg_scores", neg_scores, "(..., R) logits")
  V.check_shape("mask", mask, ("...",), dims)
  V.check_real("mask", mask, "(...,) bool/float weights")
  neg_shape = V.shape_of(neg_scores)
  if neg_valid is not None:
    V.check_broadcastable("neg_valid", neg_valid, neg_shape, "neg_scores (..., R)")
    V.check_bool_or_int("neg_valid", neg_valid, "(..., R) bool")
  if pos_logq is not None:
    V.check_broadcastable("pos_logq", pos_logq, V.shape_of(pos_scores),
                          "pos_scores (...,)")
    V.check_float("pos_logq", pos_logq, "(...,) log-probabilities")
  if neg_logq is not None:
    V.check_broadcastable("neg_logq", neg_logq, neg_shape, "neg_scores (..., R)")
    V.check_float("neg_logq", neg_logq, "(..., R) log-probabilities")


def valid_negatives(pos_ids: Array, neg_ids: Array) -> Array:
  """``(B, L, R)`` bool: negatives that are real items other than the target.

  Args:
    pos_ids: ``(B, L)`` target item ids.
    neg_ids: ``(B, L, R)`` (or broadcastable, e.g. ``(R,)`` shared) sampled ids.
  """
  return (neg_ids != 0) & (neg_ids != pos_ids[..., None])


@LOSSES.register("bce")
def bce_loss(pos_scores: Array, neg_scores: Array, mask: Array,
             neg_valid: Optional[Array] = None, negatives: str = "sum") -> tuple[Array, Array]:
  """Binary cross-entropy of the positive against sampled negatives (SASRec).

  Per position: ``softplus(-pos) + sum_r valid_r * softplus(neg_r)``, i.e. the
  SUM of the BCE terms of the positive and each of its valid negatives (with
  R = 1 this is exactly the public SASRec loss; negatives are not averaged, so
  their total weight grows with R). ``negatives="mean"`` averages the negatives'
  terms over the valid ones instead (the positive and all negatives together weigh
  as much as one positive and one negative: a mean-reduced PyTorch BCE over R negatives).

  Args:
    pos_scores: ``(B, L)`` logits of the target items.
    neg_scores: ``(B, L, R)`` logits of sampled negatives.
    mask: ``(B, L)`` bool/float, positions with a real target (or weights).
    neg_valid: optional ``(B, L, R)`` bool; False drops that negative (e.g. it
      collides with the positive or is padding).

  Returns:
    ``(loss_sum, weight_sum)`` float32 scalars.

  Raises:
    ValueError: on shapes/dtypes other than the above (leading dims ``...``
      may be any, e.g. flattened ``(T,)``, but must agree).
  """
  _check_sampled(pos_scores, neg_scores, mask, neg_valid)
  pos = _clean(pos_scores, mask)
  neg = _clean(neg_scores, mask)
  valid = _neg_valid(neg, neg_valid)
  if negatives not in BCE_NEGATIVES:
    raise ValueError(f"bce negatives must be one of {BCE_NEGATIVES}, got {negatives!r}")
  neg_terms = jnp.where(valid, jax.nn.softplus(neg), 0.0)
  neg_total = jnp.sum(neg_terms, axis=-1)
  if negatives == "mean":
    count = jnp.sum(jnp.broadcast_to(valid, neg_terms.shape), axis=-1)
    neg_total = neg_total / jnp.maximum(count, 1)
  per_position = jax.nn.softplus(-pos) + neg_total
  return _reduce(per_position, mask)


@LOSSES.register("ss")
def sampled_softmax_loss(pos_scores: Array, neg_scores: Array, mask: Array,
                         neg_valid: Optional[Array] = None,
                         pos_logq: Optional[Array] = None,
                         neg_logq: Optional[Array] = None
                         ) -> tuple[Array, Array]:
  """Sampled softmax cross-entropy over ``[pos, neg_1..neg_R]``.

  Per position: ``logsumexp([pos', neg'_valid]) - pos'`` where ``x' = x - logq``
  when a log-Q correction is given (a missing ``pos_logq``/``neg_logq`` counts
  as 0). Invalid negatives get logit -inf, so they have no effect and zero
  gradient; the caller masks the positive out of the negatives via
  ``neg_valid`` (see ``valid_negatives``).

  Args:
    pos_scores: ``(B, L)`` logits of the target items.
    neg_scores: ``(B, L, R)`` logits of sampled negatives.
    mask: ``(B, L)`` bool/float, positions with a real target (or weights).
    neg_valid: optional ``(B, L, R)`` bool, False drops that negative.
    pos_logq: optional, broadcastable to ``(B, L)``: log sampling probability
      of the positive.
    neg_logq: optional, broadcastable to ``(B, L, R)``: log sampling
      probabilities of the negatives.

  Returns:
    ``(loss_sum, weight_sum)`` float32 scalars.

  Raises:
    ValueError: on shapes/dtypes other than the above (leading dims ``...``
      may be any, but must agree).
  """
  _check_sampled(pos_scores, neg_scores, mask, neg_valid, pos_logq, neg_logq)
  pos = _clean(pos_scores, mask)
  neg = _clean(neg_scores, mask)
  if pos_logq is not None:
    pos = pos - jnp.asarray(pos_logq, jnp.float32)
  if neg_logq is not None:
    neg = neg - jnp.asarray(neg_logq, jnp.float32)
  valid = _neg_valid(neg, neg_valid)
  neg = jnp.where(valid, neg, -jnp.inf)
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)  # (B, L, 1 + R)
  per_position = jax.nn.logsumexp(logits, axis=-1) - pos
  return _reduce(per_position, mask)


@LOSSES.register("softmax")
def full_softmax_loss(all_scores: Array, targets: Array,
                      mask: Array) -> tuple[Array, Array]:
  """Softmax cross-entropy over all items (column 0 = padding is excluded).

  Args:
    all_scores: ``(B, L, N + 1)`` logits for item ids 0..N.
    targets: ``(B, L)`` int target ids in ``[1, N]`` where ``mask`` is set.
    mask: ``(B, L)`` bool/float, positions with a real target (or weights).

  Returns:
    ``(loss_sum, weight_sum)`` float32 scalars.

  Raises:
    ValueError: on shapes/dtypes other than the above (leading dims may be
      any, e.g. flattened ``(T,)``, but must agree); non-integer targets.
  """
  dims = V.check_shape("all_scores", all_scores, ("...", "N+1"))
  V.check_float("all_scores", all_scores, "(..., N+1) logits")
  V.check_shape("targets", targets, ("...",), dims)
  V.check_int("targets", targets, "(...,) item ids")
  V.check_shape("mask", mask, ("...",), dims)
  V.check_real("mask", mask, "(...,) bool/float weights")
  logits = _clean(all_scores, mask)
  logits = logits.at[..., 0].set(-jnp.inf)
  # Masked positions may carry target 0; point them at a real column.
  safe_targets = jnp.where(targets > 0, targets, 1).astype(jnp.int32)
  target_logit = jnp.take_along_axis(
      logits, safe_targets[..., None], axis=-1)[..., 0]
  per_position = jax.nn.logsumexp(logits, axis=-1) - target_logit
  return _reduce(per_position, mask)
