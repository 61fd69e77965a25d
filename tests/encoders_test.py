"""Tests for jaxret.models.encoders (SASRec and the PureSVD fold-in encoder)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret.errors import ConfigError
from jaxret.models import encoders

NUM_ITEMS = 30
DIM = 16
MAX_LEN = 12


def _sasrec(**kwargs) -> encoders.SASRec:
  config = dict(num_items=NUM_ITEMS, dim=DIM, num_blocks=2, num_heads=2,
                max_len=MAX_LEN, dropout=0.2)
  config.update(kwargs)
  return encoders.SASRec(**config)


def _left_pad(seq: list[int], length: int) -> np.ndarray:
  return np.array([0] * (length - len(seq)) + list(seq), dtype=np.int32)


def _batch() -> jnp.ndarray:
  return jnp.asarray(np.stack([
      _left_pad([3, 7, 1, 9, 4], 8),
      _left_pad([5, 2, 8, 8, 11, 30, 1, 6], 8),
      _left_pad([], 8),  # all padding
      _left_pad([12], 8),
  ]))


@pytest.fixture(scope="module")
def sasrec_and_params():
  model = _sasrec()
  params = model.init(jax.random.key(0), _batch())
  return model, params


# ------------------------------- registry ----------------------------------


def test_registry():
  assert encoders.ENCODERS.get("sasrec") is encoders.SASRec
  assert encoders.ENCODERS.get("svd") is encoders.SVDEncoder
  assert {"sasrec", "svd"} <= set(encoders.ENCODERS.names())
  with pytest.raises(ConfigError, match="sasrec"):
    encoders.ENCODERS.get("gru4rec_typo")


# -------------------------------- SASRec -----------------------------------


def test_sasrec_defaults():
  model = encoders.SASRec(num_items=5)
  assert (model.num_blocks, model.num_heads, model.dim, model.max_len,
          model.dropout) == (2, 1, 50, 200, 0.2)


def test_sasrec_shapes_and_finite(sasrec_and_params):
  model, params = sasrec_and_params
  ids = _batch()
  out = model.apply(params, ids)
  assert out.shape == (4, 8, DIM)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  # Padded positions (incl. the all-padding row) are zero.
  np.testing.assert_array_equal(np.asarray(out)[np.asarray(ids) == 0], 0.0)
  items = model.apply(params, jnp.array([[0, 1, NUM_ITEMS]]),
                      method=model.embed_items)
  assert items.shape == (1, 3, DIM)
  np.testing.assert_array_equal(items[0, 0], 0.0)
  assert np.any(items[0, 1] != 0)
  assert model.num_items == NUM_ITEMS and model.dim == DIM


def test_sasrec_causal(sasrec_and_params):
  model, params = sasrec_and_params
  ids = np.asarray(_batch()).copy()
  base = np.asarray(model.apply(params, jnp.asarray(ids)))
  for t in range(ids.shape[1] - 1):
    changed = ids.copy()
    changed[:, t + 1:] = (changed[:, t + 1:] % NUM_ITEMS) + 1  # new real ids
    out = np.asarray(model.apply(params, jnp.asarray(changed)))
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5)
    assert not np.allclose(out[1, -1], base[1, -1])


def test_sasrec_left_padding_invariance(sasrec_and_params):
  model, params = sasrec_and_params
  # The outputs at a sequence's real positions must not change with more
  # padding in front (right-aligned position ids): L = 8 vs L = MAX_LEN.
  batch = np.asarray(_batch())
  base = np.asarray(model.apply(params, jnp.asarray(batch)))
  longer = np.concatenate(
      [np.zeros((batch.shape[0], MAX_LEN - batch.shape[1]), np.int32), batch],
      axis=1)
  out = np.asarray(model.apply(params, jnp.asarray(longer)))
  out = out[:, -batch.shape[1]:]
  real = batch != 0
  np.testing.assert_allclose(out[real], base[real], atol=1e-5)
  # Row 0 ([3, 7, 1, 9, 4]) and row 3 ([12]) are shorter than L = 8 and row 1
  # fills it, so this covers 3, 4 and 7 extra padding positions.


def test_sasrec_last_query_equals_the_full_last_position(sasrec_and_params):
  model, params = sasrec_and_params
  batch = _batch()
  full = np.asarray(model.apply(params, batch))[:, -1]
  last = np.asarray(model.apply(params, batch, method=encoders.SASRec.last_query))
  assert last.shape == full.shape
  np.testing.assert_allclose(last, full, rtol=1e-5, atol=1e-6)
  three = _sasrec(num_blocks=3)
  p3 = three.init(jax.random.key(3), batch)
  np.testing.assert_allclose(
      np.asarray(three.apply(p3, batch, method=encoders.SASRec.last_query)),
      np.asarray(three.apply(p3, batch))[:, -1], rtol=1e-5, atol=1e-6)


def test_sasrec_too_long_raises(sasrec_and_params):
  model, params = sasrec_and_params
  with pytest.raises(ValueError, match="max_len"):
    model.apply(params, jnp.ones((1, MAX_LEN + 1), jnp.int32))


def test_sasrec_dropout_only_when_training(sasrec_and_params):
  model, params = sasrec_and_params
  ids = _batch()
  eval1 = model.apply(params, ids, deterministic=True)
  eval2 = model.apply(params, ids)
  np.testing.assert_array_equal(eval1, eval2)
  train1 = model.apply(params, ids, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  train2 = model.apply(params, ids, deterministic=False,
                       rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(train1, eval1)
  assert not np.allclose(train1, train2)
  assert np.all(np.isfinite(train1))
  no_drop = _sasrec(dropout=0.0)
  np.testing.assert_allclose(
      no_drop.apply(params, ids, deterministic=False,
                    rngs={"dropout": jax.random.key(1)}),
      eval1, atol=1e-6)


def test_sasrec_grads_finite(sasrec_and_params):
  model, params = sasrec_and_params
  ids = _batch()

  def loss_fn(p):
    q = model.apply(p, ids, deterministic=False,
                    rngs={"dropout": jax.random.key(3)})
    items = model.apply(p, jnp.arange(NUM_ITEMS + 1), method=model.embed_items)
    return jnp.sum(jax.nn.log_softmax(q[:, -1] @ items.T)[:, 1])

  grads = jax.grad(loss_fn)(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


def test_sasrec_gelu_and_bf16(sasrec_and_params):
  _, params = sasrec_and_params
  ids = _batch()
  ref = _sasrec().apply(params, ids)
  out = _sasrec(dtype=jnp.bfloat16).apply(params, ids)
  assert out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1)
  gelu = _sasrec(activation="gelu")
  assert np.all(np.isfinite(gelu.apply(params, ids)))
  with pytest.raises(ValueError, match="activation"):
    _sasrec(activation="tanh").init(jax.random.key(0), ids)
  # Params stay float32 under bf16 compute.
  bf16_params = jax.eval_shape(
      _sasrec(dtype=jnp.bfloat16).init, jax.random.key(0), ids)
  assert all(x.dtype == jnp.float32
             for x in jax.tree_util.tree_leaves(bf16_params))


# ---------------------------------- SVD ------------------------------------


def _interactions(num_users=20, num_items=15, seed=0):
  rng = np.random.default_rng(seed)
  dense = rng.random((num_users, num_items)) < 0.3
  users, items = np.nonzero(dense)
  return users, items + 1, dense.astype(np.float64)


@pytest.mark.parametrize("dim", [4, 14, 15, 20])
def test_svd_item_factors_subspace(dim):
  users, items, dense = _interactions()
  # Duplicated interactions must not change the binary matrix.
  users = np.concatenate([users, users[:5]])
  items = np.concatenate([items, items[:5]])
  factors = encoders.svd_item_factors(users, items, 20, 15, dim, seed=1)
  assert factors.shape == (16, dim)
  assert factors.dtype == np.float32
  np.testing.assert_array_equal(factors[0], 0.0)
  _, s, vt = np.linalg.svd(dense, full_matrices=False)
  k = min(dim, len(s))
  v_ref = vt[:k].T
  v = factors[1:].astype(np.float64)
  np.testing.assert_allclose(v @ v.T, v_ref @ v_ref.T, atol=1e-4)
  # PureSVD ranking: fold-in scores equal x V V^T.
  np.testing.assert_allclose(
      dense @ v @ v.T, dense @ v_ref @ v_ref.T, atol=1e-4)


def test_svd_item_factors_validates():
  with pytest.raises(ValueError, match="item ids"):
    encoders.svd_item_factors([0], [0], 2, 3, 1)
  with pytest.raises(ValueError, match="user ids"):
    encoders.svd_item_factors([2], [1], 2, 3, 1)


def _svd_setup(normalize=True, trainable=False):
  model = encoders.SVDEncoder(num_items=15, dim=4, normalize_foldin=normalize,
                              trainable=trainable)
  ids = jnp.asarray(np.stack([
      _left_pad([3, 7, 1, 9, 4], 6),
      _left_pad([15, 2, 8, 8, 11, 1], 6),
      _left_pad([], 6),
  ]))
  params = model.init(jax.random.key(0), ids)
  users, items, _ = _interactions()
  factors = encoders.svd_item_factors(users, items, 20, 15, 4)
  return model, ids, encoders.with_svd_factors(params, factors), factors


@pytest.mark.parametrize("normalize", [True, False])
def test_svd_foldin(normalize):
  model, ids, params, factors = _svd_setup(normalize)
  out = np.asarray(model.apply(params, ids))
  assert out.shape == (3, 6, 4)
  ids_np = np.asarray(ids)
  for b in range(ids_np.shape[0]):
    for t in range(ids_np.shape[1]):
      hist = [i for i in ids_np[b, :t + 1] if i != 0]
      expected = factors[hist].sum(axis=0) if hist else np.zeros(4)
      if normalize and hist:
        expected = expected / np.sqrt(len(hist))
      np.testing.assert_allclose(out[b, t], expected, atol=1e-5)
  items = model.apply(params, jnp.array([0, 3]), method=model.embed_items)
  np.testing.assert_array_equal(items[0], 0.0)
  np.testing.assert_allclose(items[1], factors[3], atol=1e-7)


def test_with_svd_factors_tree_forms():
  model, ids, params, factors = _svd_setup()
  fresh = model.init(jax.random.key(0), ids)
  inner = encoders.with_svd_factors(fresh["params"], factors)
  np.testing.assert_allclose(inner["item_factors"], factors)
  # Input tree untouched; nested submodule trees work too.
  assert not np.allclose(fresh["params"]["item_factors"], factors)
  nested = encoders.with_svd_factors({"params": {"encoder": fresh["params"]}},
                                     factors)
  np.testing.assert_allclose(nested["params"]["encoder"]["item_factors"],
                             factors)
  with pytest.raises(ValueError, match="shape"):
    encoders.with_svd_factors(fresh, factors[:, :2])
  with pytest.raises(ValueError, match="item_factors"):
    encoders.with_svd_factors({"params": {"w": jnp.zeros(3)}}, factors)


@pytest.mark.parametrize("trainable", [False, True])
def test_svd_frozen_vs_trainable(trainable):
  model, ids, params, _ = _svd_setup(trainable=trainable)

  def loss_fn(p):
    q = model.apply(p, ids)[:, -1]
    items = model.apply(p, jnp.arange(16), method=model.embed_items)
    return jnp.sum(jax.nn.log_softmax(q @ items.T)[:, 1])

  grad = jax.grad(loss_fn)(params)["params"]["item_factors"]
  assert np.all(np.isfinite(grad))
  if trainable:
    assert np.any(grad != 0)
  else:
    np.testing.assert_array_equal(grad, 0.0)
