"""Library API input validation: wrong shapes/dtypes raise a clear ValueError.

Each rejected case checks that the message names the argument, the expected
(symbolic) shape and the actual shape. Valid inputs must still work.
"""
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret import losses, metrics, validation
from jaxret.models import heads as H

B, L, R, N, D = 4, 7, 3, 10, 8


def _f(*shape: int) -> np.ndarray:
  return np.zeros(shape, np.float32)


def _i(*shape: int) -> np.ndarray:
  return np.ones(shape, np.int32)


def _msg(*parts: str) -> str:
  """Regex matching the literal `parts` in order."""
  return ".*".join(re.escape(p) for p in parts)


# ----------------------------------------------------------------------------
# validation helpers.
# ----------------------------------------------------------------------------


def test_check_shape_binds_and_reports_symbolic_dims():
  dims = validation.check_shape("a", _f(4, 7), ("B", "L"))
  assert dims == {"B": 4, "L": 7}
  with pytest.raises(ValueError, match=_msg("b must have shape (B, L, R) with B=4, L=7, "
                                            "got (4, 6, 3)")):
    validation.check_shape("b", _f(4, 6, 3), ("B", "L", "R"), dims)
  with pytest.raises(ValueError, match=_msg("c must have shape (B,), got (2, 2)")):
    validation.check_shape("c", _f(2, 2), ("B",))


def test_dtype_error_is_also_type_error():
  with pytest.raises(TypeError):
    validation.check_int("x", _f(3))


# ----------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------

SAMPLED = [losses.bce_loss, losses.sampled_softmax_loss]
LOSS_CASES: dict[str, tuple[Callable[[Callable], Any], tuple[str, ...]]] = {
    "neg_leading_mismatch": (
        lambda fn: fn(_f(B, L), _f(B, 8, R), _f(B, L)),
        ("neg_scores", "(..., R)", "(4, 7)", "got (4, 8, 3)")),
    "neg_missing_r_axis": (
        lambda fn: fn(_f(B, L), _f(B, L), _f(B, L)),
        ("neg_scores", "(..., R)", "(4, 7)", "got (4, 7)")),
    "mask_shape": (
        lambda fn: fn(_f(B, L), _f(B, L, R), _f(B)),
        ("mask", "(...,)", "(4, 7)", "got (4,)")),
    "neg_valid_shape": (
        lambda fn: fn(_f(B, L), _f(B, L, R), _f(B, L), np.ones((B, L, 2), bool)),
        ("neg_valid", "(..., R)", "(4, 7, 3)", "got (4, 7, 2)")),
    "neg_valid_dtype": (
        lambda fn: fn(_f(B, L), _f(B, L, R), _f(B, L), _f(B, L, R)),
        ("neg_valid", "bool", "float32", "(4, 7, 3)")),
    "pos_int_dtype": (
        lambda fn: fn(_i(B, L), _f(B, L, R), _f(B, L)),
        ("pos_scores", "floating", "int32", "(4, 7)")),
    "mask_complex_dtype": (
        lambda fn: fn(_f(B, L), _f(B, L, R), np.zeros((B, L), np.complex64)),
        ("mask", "complex64", "(4, 7)")),
}


@pytest.mark.parametrize("fn", SAMPLED, ids=["bce", "ss"])
@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_sampled_losses_reject(fn, case):
  call, parts = LOSS_CASES[case]
  with pytest.raises(ValueError, match=_msg(*parts)):
    call(fn)


def test_ss_rejects_pos_logq_shape():
  with pytest.raises(ValueError, match=_msg("pos_logq", "(...,)", "(4, 7)", "got (3,)")):
    losses.sampled_softmax_loss(_f(B, L), _f(B, L, R), _f(B, L), pos_logq=_f(3))


def test_ss_rejects_neg_logq_shape():
  with pytest.raises(ValueError, match=_msg("neg_logq", "(..., R)", "(4, 7, 3)",
                                            "got (4, 7, 2)")):
    losses.sampled_softmax_loss(_f(B, L), _f(B, L, R), _f(B, L), neg_logq=_f(B, L, 2))


def test_full_softmax_rejects_float_targets():
  with pytest.raises(ValueError, match=_msg("targets", "integer", "float32", "(4, 7)")):
    losses.full_softmax_loss(_f(B, L, N + 1), _f(B, L), _f(B, L))


def test_full_softmax_rejects_targets_shape():
  with pytest.raises(ValueError, match=_msg("targets must have shape (...,)", "(4, 7)",
                                            "got (4, 6)")):
    losses.full_softmax_loss(_f(B, L, N + 1), _i(B, 6), _f(B, L))


def test_full_softmax_rejects_mask_shape():
  with pytest.raises(ValueError, match=_msg("mask must have shape (...,)", "(4, 7)",
                                            "got (4, 7, 1)")):
    losses.full_softmax_loss(_f(B, L, N + 1), _i(B, L), _f(B, L, 1))


def test_full_softmax_rejects_int_scores():
  with pytest.raises(ValueError, match=_msg("all_scores", "int32", "(4, 7, 11)",
                                            "(..., N+1)")):
    losses.full_softmax_loss(_i(B, L, N + 1), _i(B, L), _f(B, L))


def test_loss_check_raises_at_trace_time_under_jit():
  with pytest.raises(ValueError, match=_msg("neg_scores", "(..., R)", "got (4, 8, 3)")):
    jax.jit(losses.bce_loss)(_f(B, L), _f(B, 8, R), _f(B, L))


def test_losses_accept_valid_inputs():
  rng = np.random.default_rng(0)
  pos = rng.normal(size=(B, L)).astype(np.float32)
  neg = rng.normal(size=(B, L, R)).astype(np.float32)
  mask = np.ones((B, L), bool)
  for fn in SAMPLED:
    loss, weight = fn(pos, neg, mask)
    assert np.isfinite(loss) and weight == B * L
    # Flattened (T,) / (T, R) with a shared (R,) validity mask and float weights.
    loss, _ = fn(pos.reshape(-1), neg.reshape(-1, R), np.ones(B * L, np.float32),
                 np.array([True, False, True]))
    assert np.isfinite(loss)
  loss, _ = losses.sampled_softmax_loss(pos, neg, mask, pos_logq=np.float32(-1.0),
                                        neg_logq=np.full((R,), -2.0, np.float32))
  assert np.isfinite(loss)
  loss, _ = losses.bce_loss(jnp.asarray(pos, jnp.bfloat16), jnp.asarray(neg, jnp.bfloat16),
                            mask)
  assert np.isfinite(loss)
  targets = rng.integers(1, N + 1, size=(B, L))
  loss, _ = losses.full_softmax_loss(rng.normal(size=(B, L, N + 1)).astype(np.float32),
                                     targets, mask)
  assert np.isfinite(loss)


# ----------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------


def test_ranks_rejects_1d_scores():
  with pytest.raises(ValueError, match=_msg("scores", "(B, N+1)", "got (11,)")):
    metrics.ranks_from_scores(_f(N + 1), _i(B))


def test_ranks_rejects_3d_scores():
  with pytest.raises(ValueError, match=_msg("scores", "(B, N+1)", "got (4, 2, 11)")):
    metrics.ranks_from_scores(_f(B, 2, N + 1), _i(B))


def test_ranks_rejects_3d_targets():
  with pytest.raises(ValueError, match=_msg("targets", "(B,) or (B, T)", "B=4",
                                            "got (4, 1, 1)")):
    metrics.ranks_from_scores(_f(B, N + 1), _i(B, 1, 1))


def test_ranks_rejects_targets_batch_mismatch():
  with pytest.raises(ValueError, match=_msg("targets", "(B,) or (B, T)", "B=4", "got (3,)")):
    metrics.ranks_from_scores(_f(B, N + 1), _i(3))


def test_ranks_rejects_float_targets():
  with pytest.raises(ValueError, match=_msg("targets", "integer", "float32", "(4,)")):
    metrics.ranks_from_scores(_f(B, N + 1), _f(B))


def test_ranks_rejects_1d_exclude():
  with pytest.raises(ValueError, match=_msg("exclude_ids", "(B, H)", "B=4", "got (5,)")):
    metrics.ranks_from_scores(_f(B, N + 1), _i(B), _i(5))


def test_ranks_rejects_exclude_batch_mismatch():
  with pytest.raises(ValueError, match=_msg("exclude_ids", "(B, H)", "B=4", "got (3, 5)")):
    metrics.ranks_from_scores(_f(B, N + 1), _i(B), _i(3, 5))


def test_ranks_rejects_float_exclude():
  with pytest.raises(ValueError, match=_msg("exclude_ids", "integer", "float32", "(4, 5)")):
    metrics.ranks_from_scores(_f(B, N + 1), _i(B), _f(B, 5))


def _score_fn(ids):
  return jnp.zeros((B, ids.shape[0]), jnp.float32) + ids.astype(jnp.float32)


def test_chunked_rejects_3d_targets():
  with pytest.raises(ValueError, match=_msg("targets", "(B,) or (B, T)", "got (4, 1, 1)")):
    metrics.chunked_ranks(_score_fn, _i(B, 1, 1), N)


def test_chunked_rejects_score_fn_output_shape():
  with pytest.raises(ValueError, match=_msg("score_fn output", "(B, C)", "B=4", "C=10",
                                            "got (3, 10)")):
    metrics.chunked_ranks(lambda ids: jnp.zeros((3, ids.shape[0])), _i(B), N)


def test_chunked_rejects_target_scores_shape():
  with pytest.raises(ValueError, match=_msg("target_scores", "(B,)", "B=4", "got (4, 2)")):
    metrics.chunked_ranks(_score_fn, _i(B), N, target_scores=_f(B, 2))


def test_chunked_rejects_exclude_shape():
  with pytest.raises(ValueError, match=_msg("exclude_ids", "(B, H)", "B=4", "got (2, 5)")):
    metrics.chunked_ranks(_score_fn, _i(B), N, exclude_ids=_i(2, 5))


def test_metrics_from_ranks_rejects_2d_ranks():
  with pytest.raises(ValueError, match=_msg("ranks", "(B,)", "got (4, 2)")):
    metrics.metrics_from_ranks(_i(B, 2), ks=(1,))


def test_metrics_from_ranks_rejects_float_ranks():
  with pytest.raises(ValueError, match=_msg("ranks", "integer", "float32", "(4,)")):
    metrics.metrics_from_ranks(_f(B), ks=(1,))


@pytest.mark.parametrize("ks", [(0,), (10, -1), (2.5,), (True,)])
def test_metrics_from_ranks_rejects_bad_ks(ks):
  with pytest.raises(ValueError, match=_msg("ks must be positive ints", repr(tuple(ks)))):
    metrics.metrics_from_ranks(_i(B), ks=ks)


def test_multi_target_rejects_mask_shape():
  with pytest.raises(ValueError, match=_msg("target_mask", "(B, T)", "B=4, T=2",
                                            "got (4, 3)")):
    metrics.multi_target_metrics(_i(B, 2), np.ones((B, 3), bool), ks=(1,))


def test_metrics_accept_valid_inputs():
  scores = np.arange(B * (N + 1), dtype=np.float32).reshape(B, N + 1) % 7
  targets = np.array([1, 2, 3, 4])
  ranks = metrics.ranks_from_scores(scores, targets, np.zeros((B, 2), np.int64))
  assert ranks.shape == (B,)
  assert metrics.ranks_from_scores(scores, targets[:, None]).shape == (B, 1)
  chunked = metrics.chunked_ranks(lambda ids: jnp.asarray(scores)[:, ids], targets, N,
                                  chunk_size=4)
  np.testing.assert_array_equal(chunked, ranks)
  out = metrics.metrics_from_ranks(ranks, ks=(1, 5))
  assert out["hr@5"].shape == (B,)
  out, w = metrics.multi_target_metrics(np.zeros((B, 2), np.int32), np.ones((B, 2), bool),
                                        ks=(1,))
  assert w.shape == (B,)


# ----------------------------------------------------------------------------
# Heads.
# ----------------------------------------------------------------------------

HEADS = {
    "dot": lambda: H.DotHead(),
    "mlp": lambda: H.MLPHead(hidden=(8,), dropout=0.0),
    "fm": lambda: H.FMHead(factor_dim=4),
    "neural_fm": lambda: H.NeuralFMHead(factor_dim=4, hidden=(4,)),
    "mol": lambda: H.MoLHead(num_query_components=2, num_item_components=2,
                             component_dim=4, query_hidden=8, gating_hidden=4),
}
KEY = jax.random.PRNGKey(0)


def _init(name, query, items):
  return HEADS[name]().init(KEY, query, items)


@pytest.mark.parametrize("name", ["dot", "mlp"])
def test_head_rejects_dim_mismatch(name):
  with pytest.raises(ValueError, match=_msg("items must have shape (..., K, D)", "D=8",
                                            "got (5, 6)")):
    _init(name, _f(B, D), _f(5, 6))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_1d_items(name):
  with pytest.raises(ValueError, match=_msg("items must have shape (..., K, D", "got (8,)")):
    _init(name, _f(B, D), _f(D))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_scalar_query(name):
  with pytest.raises(ValueError, match=_msg("query must have shape (..., D", "got ()")):
    _init(name, _f(), _f(5, D))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_int_query(name):
  with pytest.raises(ValueError, match=_msg("query", "floating", "int32", "(4, 8)")):
    _init(name, _i(B, D), _f(5, D))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_int_items(name):
  with pytest.raises(ValueError, match=_msg("items", "floating", "int32", "(5, 8)")):
    _init(name, _f(B, D), _i(5, D))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_rejects_unbroadcastable_leading_dims(name):
  with pytest.raises(ValueError, match=_msg("leading dims of query", "items", "broadcast",
                                            "(4, 3, 8)", "(5, 6, 8)")):
    _init(name, _f(B, 3, D), _f(5, 6, D))


@pytest.fixture(scope="module")
def mol_params():
  return HEADS["mol"]().init(KEY, _f(B, D), _f(5, D))


def test_mol_query_side_rejects_int_query(mol_params):
  with pytest.raises(ValueError, match=_msg("query", "floating", "int32", "(4, 8)")):
    HEADS["mol"]().apply(mol_params, _i(B, D), method=H.MoLHead.query_side)


def test_mol_item_side_rejects_1d_items(mol_params):
  with pytest.raises(ValueError, match=_msg("items must have shape (..., K, D_I)",
                                            "got (8,)")):
    HEADS["mol"]().apply(mol_params, _f(D), method=H.MoLHead.item_side)


def test_mol_rejects_float_user_ids():
  head = H.MoLHead(num_query_components=2, num_item_components=2, component_dim=4,
                   query_hidden=0, gating_hidden=4, num_user_components=1,
                   user_hash_buckets=5)
  with pytest.raises(ValueError, match=_msg("user_ids", "integer", "float32", "(4,)")):
    head.init(KEY, _f(B, D), _f(5, D), _f(B))


def test_head_check_raises_at_trace_time_under_jit(mol_params):
  with pytest.raises(ValueError, match=_msg("items", "(..., K, D_I)", "got (8,)")):
    jax.jit(HEADS["mol"]().apply)(mol_params, _f(B, D), _f(D))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_accept_valid_inputs(name):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(B, D)).astype(np.float32)
  table = rng.normal(size=(5, D)).astype(np.float32)
  head = HEADS[name]()
  params = head.init(KEY, q, table)
  assert head.apply(params, q, table).shape == (B, 5)
  # Per-position candidates (B, L, K, D) against (B, L, D), bf16 inputs.
  q3 = jnp.asarray(rng.normal(size=(B, 2, D)), jnp.bfloat16)
  cands = jnp.asarray(rng.normal(size=(B, 2, 3, D)), jnp.bfloat16)
  assert head.apply(params, q3, cands).shape == (B, 2, 3)
