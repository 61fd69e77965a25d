"""Tests for jaxret.models.heads: shapes, invariances and numpy references."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret.errors import ConfigError
from jaxret.models import heads as H
from jaxret.models.heads import HEADS

D = 8           # embedding dim
B, L = 3, 2     # batch, positions
K, N, R = 4, 5, 6  # per-position candidates, table size, shared negatives

# Small configurations of every registered head; dropout > 0 everywhere so that
# the dropout tests can fail.
HEAD_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "dot": lambda: H.DotHead(normalize=True, temperature=0.1, dropout=0.3),
    "mlp": lambda: H.MLPHead(hidden=(16, 8), dropout=0.3),
    "fm": lambda: H.FMHead(factor_dim=6, dropout=0.3),
    "neural_fm": lambda: H.NeuralFMHead(factor_dim=6, hidden=(8,), dropout=0.3),
    "mol": lambda: H.MoLHead(num_query_components=3, num_item_components=2,
                             component_dim=4, query_hidden=16, gating_hidden=8),
    "mol_item_swiglu": lambda: H.MoLHead(num_query_components=2, num_item_components=3,
                                         component_dim=4, query_hidden=0, item_hidden=12,
                                         gating_hidden=8, query_dropout=0.2),
    "mol_no_gating": lambda: H.MoLHead(num_query_components=2, num_item_components=2,
                                       component_dim=4, query_hidden=16, gating=False),
}
NAMES = ["dot", "mlp", "fm", "neural_fm", "mol"]


def _rand(seed: int, shape) -> jax.Array:
  """Standard-normal test data (numpy RNG: no per-shape XLA compilation)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _key(seed: int) -> jax.Array:
  """A PRNG key. The 'rbg' implementation compiles much faster on CPU than the
  default threefry (dropout masks of rank >= 3 take seconds), which keeps this
  file fast; the heads are agnostic to the key implementation."""
  return jax.random.key(seed, impl="rbg")


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


Q0, T0 = _rand(0, (B, D)), _rand(1, (N, D))
_CACHE: dict = {}


def _setup(name: str):
  """(head, params, jitted forward) for a named config; cached so that tests share
  parameters and compiled executables (keeps the file fast on CPU)."""
  if name not in _CACHE:
    head = HEAD_FACTORIES[name]()
    params = jax.jit(head.init)(_key(42), Q0, T0)

    def forward(p, q, i, rng=None):
      if rng is None:
        return head.apply(p, q, i)
      return head.apply(p, q, i, deterministic=False, rngs={"dropout": rng})

    _CACHE[name] = (head, params, jax.jit(forward))
  return _CACHE[name]


# ---------------------------------------------------------------------------
# Common interface.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["table", "per_position", "shared_negatives", "broadcast_one"])
def test_output_shapes_and_finite(name, case):
  _, params, forward = _setup(name)
  query, items, expected = {
      "table": (_rand(2, (B, D)), _rand(3, (N, D)), (B, N)),
      "per_position": (_rand(2, (B, L, D)), _rand(3, (B, L, K, D)), (B, L, K)),
      "shared_negatives": (_rand(2, (B, L, D)), _rand(3, (R, D)), (B, L, R)),
      "broadcast_one": (_rand(2, (B, L, D)), _rand(3, (B, 1, K, D)), (B, L, K)),
  }[case]
  out = forward(params, query, items)
  assert out.shape == expected
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite(name):
  head, params, _ = _setup(name)
  # Per-query candidates (B, K, D). (Rank-4 dropout masks compile slowly on CPU
  # with partitionable threefry, so the training-mode tests use rank <= 3.)
  query, items = _rand(2, (B, D)), _rand(3, (B, K, D))

  @jax.jit
  def grads(p, q, i):
    def loss(p, q, i):
      s = head.apply(p, q, i, deterministic=False, rngs={"dropout": _key(7)})
      return jnp.sum(jax.nn.log_softmax(s, -1)[..., 0])
    return jax.grad(loss, argnums=(0, 1, 2))(p, q, i)

  leaves = jax.tree.leaves(grads(params, query, items))
  assert len(leaves) >= 2
  for g in leaves:
    assert np.all(np.isfinite(np.asarray(g)))
  # Something actually receives gradient.
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_only_when_not_deterministic(name):
  head, params, forward = _setup(name)
  det = jax.jit(lambda p, rng: head.apply(p, Q0, T0, deterministic=True, rngs={"dropout": rng}))
  det_a, det_b = det(params, _key(1)), det(params, _key(2))
  np.testing.assert_array_equal(np.asarray(det_a), np.asarray(det_b))
  np.testing.assert_allclose(np.asarray(det_a), np.asarray(forward(params, Q0, T0)),
                             rtol=1e-6, atol=1e-6)
  train_a = forward(params, Q0, T0, _key(1))
  train_b = forward(params, Q0, T0, _key(2))
  assert not np.allclose(np.asarray(det_a), np.asarray(train_a))
  assert not np.allclose(np.asarray(train_a), np.asarray(train_b))


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_per_pair(name):
  _, params, forward = _setup(name)
  query, table = _rand(2, (B, D)), _rand(3, (N, D))
  batched = np.asarray(forward(params, query, table))
  for b in range(B):
    for n in range(N):
      s = forward(params, query[b], table[n:n + 1])
      assert s.shape == (1,)
      np.testing.assert_allclose(float(s[0]), batched[b, n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_per_position_matches_row_scoring(name):
  """(B, L, K, D) candidates score like each (b, l) row on its own."""
  _, params, forward = _setup(name)
  query, cands = _rand(2, (B, L, D)), _rand(3, (B, L, K, D))
  batched = np.asarray(forward(params, query, cands))
  shared = np.asarray(forward(params, query, cands[0, 0]))  # (B, L, K) vs shared (K, D)
  np.testing.assert_allclose(batched[0, 0], shared[0, 0], rtol=1e-5, atol=1e-5)
  for b in range(B):
    for l in range(L):
      row = np.asarray(forward(params, query[b, l], cands[b, l]))
      np.testing.assert_allclose(row, batched[b, l], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_params_float32_with_bfloat16_compute(name):
  head, params, _ = _setup(name)
  head16 = head.clone(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(head16.init, _key(0), Q0, T0)
  for leaf in jax.tree.leaves(shapes):
    assert leaf.dtype == jnp.float32
  out = jax.jit(head16.apply)(params, Q0, T0)
  assert out.shape == (B, N)
  assert out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))


@pytest.mark.parametrize("name", ["dot", "mlp", "fm", "neural_fm", "mol"])
def test_default_heads_construct(name):
  head = HEADS.get(name)()
  assert type(head).__doc__
  shapes = jax.eval_shape(head.init, _key(0), Q0, T0)
  out = jax.eval_shape(head.apply, shapes, Q0, T0)
  assert out.shape == (B, N)
  out = jax.eval_shape(head.apply, shapes, _rand(2, (B, L, D)), _rand(3, (R, D)))
  assert out.shape == (B, L, R)


# ---------------------------------------------------------------------------
# Numpy references for dot / mlp / fm / neural_fm.
# ---------------------------------------------------------------------------


def test_dot_reference_and_zero_safety():
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  plain = H.DotHead()
  np.testing.assert_allclose(np.asarray(plain.apply({}, q, t)), _np(q) @ _np(t).T,
                             rtol=1e-5, atol=1e-5)
  cos = H.DotHead(normalize=True, temperature=0.1)
  qn = _np(q) / np.linalg.norm(_np(q), axis=-1, keepdims=True)
  tn = _np(t) / np.linalg.norm(_np(t), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(cos.apply({}, q, t)), qn @ tn.T / 0.1,
                             rtol=1e-4, atol=1e-4)
  zq, zt = jnp.zeros((B, D)), jnp.zeros((N, D))
  assert np.all(np.asarray(cos.apply({}, zq, zt)) == 0)
  g = jax.grad(lambda a, b: jnp.sum(cos.apply({}, a, b)), argnums=(0, 1))(zq, zt)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def _relu(x):
  return np.maximum(x, 0)


def test_mlp_matches_dense_on_concat():
  _, params, forward = _setup("mlp")   # hidden=(16, 8), relu
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  p = jax.tree.map(_np, params["params"])
  qq, tt = _np(q), _np(t)
  w_concat = np.concatenate([p["first_query"]["kernel"], p["first_item"]["kernel"],
                             p["first_product"]["kernel"]], axis=0)  # (3D, H)
  ref = np.zeros((B, N))
  for b in range(B):
    for n in range(N):
      x = np.concatenate([qq[b], tt[n], qq[b] * tt[n]])
      h = _relu(x @ w_concat + p["first_query"]["bias"])
      h = _relu(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
      ref[b, n] = (h @ p["out"]["kernel"] + p["out"]["bias"])[0]
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), ref, rtol=1e-4, atol=1e-5)


def _fm_ref(p, q, i):
  """Explicit O(F D^2) factorisation machine over x = [q; i]."""
  x = np.concatenate([q, i])
  w = np.concatenate([p["query"]["w"], p["item"]["w"]])
  v = np.concatenate([p["query"]["v"], p["item"]["v"]], axis=0)   # (2D, F)
  pair = 0.0
  for j in range(len(x)):
    for l in range(j + 1, len(x)):
      pair += (v[j] @ v[l]) * x[j] * x[l]
  return p["w0"] + w @ x + pair


def test_fm_matches_pairwise_definition():
  _, params, forward = _setup("fm")     # factor_dim=6
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  # Non-zero linear weights so that every term is exercised.
  params = jax.tree.map(lambda x: x + 0.1, params)
  p = jax.tree.map(_np, params["params"])
  ref = np.array([[_fm_ref(p, _np(q[b]), _np(t[n])) for n in range(N)] for b in range(B)])
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), ref, rtol=1e-4, atol=1e-4)


def test_neural_fm_matches_reference():
  _, params, forward = _setup("neural_fm")   # factor_dim=6, hidden=(8,)
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  params = jax.tree.map(lambda x: x + 0.05, params)
  p = jax.tree.map(_np, params["params"])
  v = np.concatenate([p["query"]["v"], p["item"]["v"]], axis=0)
  w = np.concatenate([p["query"]["w"], p["item"]["w"]])
  ref = np.zeros((B, N))
  for b in range(B):
    for n in range(N):
      x = np.concatenate([_np(q[b]), _np(t[n])])
      # Bi-interaction = sum_{j<l} x_j v_j * x_l v_l (elementwise).
      f = np.zeros(6)
      for j in range(len(x)):
        for l in range(j + 1, len(x)):
          f += x[j] * v[j] * x[l] * v[l]
      h = _relu(f @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
      ref[b, n] = p["w0"] + w @ x + (h @ p["out"]["kernel"] + p["out"]["bias"])[0]
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# MoL.
# ---------------------------------------------------------------------------


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _dense(p, x):
  return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def _mol_components_ref(head: H.MoLHead, p, q, i):
  """Numpy query (..., P_Q, d) and item (..., K, P_X, d) components from params."""
  x = q
  if head.query_hidden > 0:
    x = _silu(_dense(p["query_gate_proj"], x)) * _dense(p["query_up_proj"], x)
  qc = _dense(p["query_out_proj"], x).reshape(
      q.shape[:-1] + (head.num_query_components, head.component_dim))
  y = i
  if head.item_hidden > 0:
    y = _silu(_dense(p["item_gate_proj"], y)) * _dense(p["item_up_proj"], y)
  ic = _dense(p["item_out_proj"], y).reshape(
      i.shape[:-1] + (head.num_item_components, head.component_dim))
  return _normalize(qc), _normalize(ic)


def _gate_mlp_ref(p, x):
  return _dense(p["Dense_1"], _silu(_dense(p["Dense_0"], x)))


def _mol_ref(head: H.MoLHead, params, q, t):
  """Numpy MoL (deterministic) for query (B, D) and table (N, D): logits, weights, scores."""
  p = jax.tree.map(_np, params["params"])
  qc, ic = _mol_components_ref(head, p, _np(q), _np(t))
  logits = np.einsum("bad,nxd->bnax", qc, ic) / head.temperature
  logits = logits.reshape(logits.shape[:2] + (-1,))                     # (B, N, P)
  if not head.gating:
    w = np.full(logits.shape, 1.0 / logits.shape[-1])
  else:
    g = (_gate_mlp_ref(p["query_gate"], _np(q))[:, None, :]
         * _gate_mlp_ref(p["item_gate"], _np(t))[None, :, :]
         + _gate_mlp_ref(p["logits_gate"], logits))
    g = _silu(g)
    g = g - g.max(-1, keepdims=True)
    w = np.exp(g) / np.exp(g).sum(-1, keepdims=True)
  return logits, w, (w * logits).sum(-1)


def _jit_method(head: nn.Module, method, **kwargs):
  """jax.jit of `head.apply(params, *args, method=method, **kwargs)`."""
  return jax.jit(lambda params, *args: head.apply(params, *args, method=method, **kwargs))


def _mol_parts(m: H.MoLHead, query, items, deterministic=True):
  """(elementary logits (..., K, P), gating weights (..., K, P))."""
  qs, its = m.query_side(query), m.item_side(items)
  logits = m.elementary_logits(qs, its)
  return logits, m.gating_weights(qs, its, logits, deterministic=deterministic)


@pytest.mark.parametrize("query_hidden", [0, 16])
def test_mol_single_component_no_gating_is_cosine_over_tau(query_hidden):
  head = H.MoLHead(num_query_components=1, num_item_components=1, component_dim=5,
                   query_hidden=query_hidden, gating=False, temperature=0.07)
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  params = jax.jit(head.init)(_key(3), q, t)
  p = jax.tree.map(_np, params["params"])
  qc, ic = _mol_components_ref(head, p, _np(q), _np(t))                 # (B, 1, d), (N, 1, d)
  ref = qc[:, 0] @ ic[:, 0].T / 0.07
  forward = jax.jit(head.apply)
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), ref, rtol=1e-4, atol=1e-4)
  for b in range(B):
    np.testing.assert_allclose(np.asarray(forward(params, q[b], t)), ref[b],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mol", "mol_item_swiglu", "mol_no_gating"])
def test_mol_matches_numpy_reference(name):
  head, params, forward = _setup(name)
  q, t = _rand(2, (B, D)), _rand(3, (N, D))
  ref_logits, ref_w, ref_scores = _mol_ref(head, params, q, t)
  logits, w = _jit_method(head, _mol_parts)(params, q, t)
  assert logits.shape == (B, N, head.num_logits)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), ref_scores,
                             rtol=1e-4, atol=1e-4)


def test_mol_gating_weights_sum_to_one_with_and_without_dropout():
  head, params, _ = _setup("mol")        # P = 3 * 2, softmax_dropout = 0.2
  q, t = _rand(2, (B, L, D)), _rand(3, (B, L, K, D))
  _, w = _jit_method(head, _mol_parts)(params, q, t)
  w = np.asarray(w)
  assert w.shape == (B, L, K, 6)
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  parts_train = jax.jit(lambda p, a, b, rng: head.apply(
      p, a, b, False, method=_mol_parts, rngs={"dropout": rng}))
  _, wd = parts_train(params, q[:, 0], t[:, 0], _key(3))  # (B, K, P)
  wd = np.asarray(wd)
  assert np.any(wd == 0)                       # some components dropped
  sums = wd.sum(-1)
  np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-5)


def test_mol_item_side_precompute_equals_call():
  head, params, forward = _setup("mol")  # P_Q=3, P_X=2, d=4
  q, t = _rand(2, (B, L, D)), _rand(3, (N, D))
  i_side = _jit_method(head, H.MoLHead.item_side)(params, t)
  assert isinstance(i_side, H.MoLItemSide)
  assert i_side.components.shape == (N, 2, 4)
  assert i_side.gate.shape == (N, 6)
  q_side = _jit_method(head, H.MoLHead.query_side)(params, q)
  assert isinstance(q_side, H.MoLQuerySide)
  assert q_side.components.shape == (B, L, 3, 4)
  assert q_side.gate.shape == (B, L, 6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(i_side.components), axis=-1), 1.0,
                             rtol=1e-5)
  score = _jit_method(head, H.MoLHead.score_sides)
  out = score(params, q_side, i_side)
  np.testing.assert_allclose(np.asarray(out), np.asarray(forward(params, q, t)),
                             rtol=1e-6, atol=1e-6)
  # A slice of the precomputed table scores like the same slice of the raw table.
  part = jax.tree.map(lambda x: x[1:3], i_side)
  np.testing.assert_allclose(np.asarray(score(params, q_side, part)),
                             np.asarray(forward(params, q, t[1:3])), rtol=1e-6, atol=1e-6)
  # Eager (non-jit) apply with method= works too.
  eager = head.apply(params, t[:2], method=H.MoLHead.item_side)
  np.testing.assert_allclose(np.asarray(eager.components), np.asarray(i_side.components[:2]),
                             rtol=1e-6, atol=1e-6)


def _mi_ref(w):
  w = _np(w).reshape(-1, w.shape[-1])
  util = w.mean(0)
  return (-(w * np.log(w + 1e-6)).sum(-1).mean()) + (util * np.log(util + 1e-6)).sum()


def test_mol_aux_loss_sown_scalar_and_matches_reference():
  head, params, forward = _setup("mol")
  q, t = _rand(2, (B, D)), _rand(3, (B, K, D))
  assert "aux_loss" not in jax.eval_shape(head.init, _key(0), q, t)
  out, state = jax.jit(lambda p, a, b: head.apply(p, a, b, mutable=["aux_loss"]))(params, q, t)
  aux = state["aux_loss"]["mol_load_balance"]
  assert jnp.shape(aux) == ()
  assert np.isfinite(float(aux))
  assert out.shape == (B, K)
  _, w = _jit_method(head, _mol_parts)(params, q, t)
  np.testing.assert_allclose(float(aux), _mi_ref(w), rtol=1e-4, atol=1e-5)
  # -H(mean) + mean H lies in [-log P, 0] (up to eps).
  assert -np.log(6) - 1e-3 <= float(aux) <= 1e-3

  # Under dropout, with jit, and differentiable.
  def loss(p):
    s, st = head.apply(p, q, t, deterministic=False, mutable=["aux_loss"],
                       rngs={"dropout": _key(9)})
    return jnp.mean(s) + 0.001 * st["aux_loss"]["mol_load_balance"]

  val, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(val))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  # Not mutable: sow is a no-op and apply returns scores only.
  np.testing.assert_allclose(np.asarray(forward(params, q, t)), np.asarray(out),
                             rtol=1e-6, atol=1e-6)


def test_mol_load_balance_loss_extremes():
  p = 4
  loss = jax.jit(H.mol_load_balance_loss)
  uniform = np.full((2, 4, p), 1.0 / p, np.float32)
  assert abs(float(loss(uniform))) < 1e-4
  one_hot = np.eye(p, dtype=np.float32)[np.arange(8) % p].reshape(2, 4, p)  # balanced, confident
  np.testing.assert_allclose(float(loss(one_hot)), -np.log(p), rtol=1e-4)
  collapsed = np.eye(p, dtype=np.float32)[np.zeros(8, int)].reshape(2, 4, p)  # all on one
  assert abs(float(loss(collapsed))) < 1e-4


def test_mol_zero_vectors_finite_scores_and_grads():
  head, params, forward = _setup("mol")
  zq, zt = jnp.zeros((B, D)), jnp.zeros((N, D))
  assert np.all(np.isfinite(np.asarray(forward(params, zq, zt))))

  @jax.jit
  def grads(p, q, i):
    def loss(p, q, i):
      s, st = head.apply(p, q, i, deterministic=False, mutable=["aux_loss"],
                         rngs={"dropout": _key(4)})
      return jnp.sum(jax.nn.log_softmax(s, -1)[:, 0]) + st["aux_loss"]["mol_load_balance"]
    return jax.grad(loss, argnums=(0, 1, 2))(p, q, i)

  for g in jax.tree.leaves(grads(params, zq, zt)):
    assert np.all(np.isfinite(np.asarray(g)))
  # Zero params too (every component exactly zero).
  zero_params = jax.tree.map(jnp.zeros_like, params)
  assert np.all(np.isfinite(np.asarray(forward(zero_params, Q0, T0))))
  for g in jax.tree.leaves(grads(zero_params, Q0, T0)):
    assert np.all(np.isfinite(np.asarray(g)))


def test_mol_user_components():
  head = H.MoLHead(num_query_components=2, num_item_components=2, component_dim=4,
                   query_hidden=8, gating_hidden=8, num_user_components=2,
                   user_hash_buckets=7, user_dropout=0.5, query_dropout=0.0)
  assert head.num_logits == 8
  q, t = _rand(2, (B, L, D)), _rand(3, (R, D))
  uids = jnp.array([[3], [12], [-4]], jnp.int32)             # (B, 1); 12 % 7 = 5, -4 % 7 = 3
  params = jax.jit(head.init)(_key(0), q, t, uids)
  assert params["params"]["user_embedding"]["embedding"].shape == (7, 8)
  forward = jax.jit(lambda p, a, b, u: head.apply(p, a, b, u))
  out = forward(params, q, t, uids)
  assert out.shape == (B, L, R)
  assert np.all(np.isfinite(np.asarray(out)))
  q_side = _jit_method(head, H.MoLHead.query_side)(params, q, uids)
  assert q_side.components.shape == (B, L, 4, 4)
  # The user components are the normalised rows uid % 7 of the embedding.
  emb = _np(params["params"]["user_embedding"]["embedding"]).reshape(7, 2, 4)
  np.testing.assert_allclose(np.asarray(q_side.components[1, 0, 2:]), _normalize(emb[5]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(q_side.components[2, 1, 2:]), _normalize(emb[3]),
                             rtol=1e-5, atol=1e-6)
  # Different users -> different scores for the same query; same bucket -> same.
  same_q = jnp.broadcast_to(q[:1], q.shape)
  s = np.asarray(forward(params, same_q, t, uids))
  assert not np.allclose(s[0], s[1])
  np.testing.assert_allclose(s[0], s[2], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="user_ids"):
    jax.eval_shape(head.apply, params, q, t)
  # Dropout touches the user components: softmax dropout off, so only the user
  # dropout is random here (query/item input dropout are off in this config too).
  no_softmax_drop = head.clone(softmax_dropout=0.0, item_dropout=0.0)
  q2, u2 = q[:, 0], uids[:, 0]                                 # (B, D), (B,)
  fwd = jax.jit(lambda p, rng, det: no_softmax_drop.apply(
      p, q2, t, u2, deterministic=det, rngs={"dropout": rng}), static_argnums=2)
  assert not np.allclose(np.asarray(fwd(params, _key(1), False)),
                         np.asarray(fwd(params, _key(1), True)))


# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------


def test_registry():
  assert HEADS.names() == ["dot", "fm", "mlp", "mol", "neural_fm"]
  assert HEADS.get("mol") is H.MoLHead
  assert HEADS.get("dot") is H.DotHead
  assert HEADS.get("mlp") is H.MLPHead
  assert HEADS.get("fm") is H.FMHead
  assert HEADS.get("neural_fm") is H.NeuralFMHead
  with pytest.raises(ConfigError) as err:
    HEADS.get("nope")
  msg = str(err.value)
  assert "nope" in msg
  for name in ["dot", "fm", "mlp", "mol", "neural_fm"]:
    assert name in msg


def test_models_package_reexports_heads():
  import jaxret.models as models
  assert models.HEADS is HEADS


@pytest.mark.parametrize("shape", [(4000, 32), (3000, 7)])
def test_byte_keep_mask_rate_shape_and_keys(shape):
  """One random byte per element: shape kept (also when P is not a multiple of 4), drop
  rate = round(256 * rate) / 256 within sampling noise, different keys differ."""
  m = np.asarray(H.byte_keep_mask(_key(0), shape, 0.2))
  assert m.shape == shape and m.dtype == bool
  assert abs(1.0 - m.mean() - 51 / 256) < 0.005
  assert not np.array_equal(m, np.asarray(H.byte_keep_mask(_key(1), shape, 0.2)))
  assert np.asarray(H.byte_keep_mask(_key(0), shape, 0.0)).all()
  # Neighbouring components are independent (bytes of one word are not correlated).
  assert abs(np.corrcoef(m[:, 0], m[:, 1])[0, 1]) < 0.05
