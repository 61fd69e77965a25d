"""Similarity heads: score a query embedding against K item embeddings.

Every head is a `flax.linen.Module` with the same interface::

  scores = head.apply(params, query, items, deterministic=True)

  query:  (..., D_Q) float.
  items:  (..., K, D_I) float; the leading `...` dims broadcast against the
          query's leading dims (numpy rules, aligned from the right).
  scores: (broadcast(...), K) float.

Typical uses:

  * full table:               query (B, D),    items (N, D)       -> (B, N)
  * per-position candidates:  query (B, L, D), items (B, L, K, D) -> (B, L, K)
  * shared negatives:         query (B, L, D), items (R, D)       -> (B, L, R)

Broadcasting is done with ellipsis einsums (which lower to a single
`dot_general` without tiling either side) or by inserting the K axis into the
query-side tensors (`x[..., None, :]`) before elementwise ops; a query is never
tiled against the item table explicitly. Query-only work is computed once per
query and item-only work once per item.

Heads are built from hyper-parameters only: input dims are inferred. Each head
takes `dtype` (computation dtype, default float32) and keeps its parameters in
float32. Dropout draws from the 'dropout' RNG stream and is only active when
`deterministic=False`.

Registered in `HEADS` as: dot, mlp, fm, neural_fm, mol.
"""
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxret import validation as V
from jaxret.errors import ConfigError
from jaxret.models.layers import ByteDropout, byte_keep_mask  # noqa: F401  (re-exported)
from jaxret.registry import Registry

HEADS: Registry = Registry("head")

Array = jax.Array
Dtype = Any

# Squared-norm floor for l2 normalisation: norms below 1e-6 are clamped (as in
# the public MoL code), so zero vectors map to zero with finite gradients.
_NORM_EPS = 1e-12


def l2_normalize(x: Array, eps: float = _NORM_EPS) -> Array:
  """L2-normalises the last axis, safe at zero.

  Args:
    x: (..., D) float.
    eps: floor on the squared norm.

  Returns:
    (..., D), `x / max(||x||, sqrt(eps))` in x's dtype (norm computed in f32).
  """
  x32 = x.astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), eps))
  return (x32 * inv).astype(x.dtype)


def _check_query(query: Array, dim: str = "D") -> int:
  """query must be (..., D) float; returns D."""
  V.check_shape("query", query, ("...", dim))
  V.check_float("query", query, f"(..., {dim}) embeddings")
  return V.shape_of(query)[-1]


def _check_items(items: Array, dim: str = "D", size: Optional[int] = None) -> None:
  """items must be (..., K, D) float, with D == `size` when given."""
  V.check_shape("items", items, ("...", "K", dim), {} if size is None else {dim: size})
  V.check_float("items", items, f"(..., K, {dim}) embeddings")


def _check_broadcast(query: Array, items: Array, dq: str = "D", di: str = "D") -> None:
  V.check_broadcast_leading("query", query, 1, "items", items, 2,
                            f"(..., {dq})", f"(..., K, {di})")


def _check_inputs(query: Array, items: Array, same_dim: bool) -> None:
  """Validates a head's (query, items) pair; raises ValueError."""
  if same_dim:
    _check_items(items, "D", _check_query(query, "D"))
    _check_broadcast(query, items)
  else:
    _check_query(query, "D_Q")
    _check_items(items, "D_I")
    _check_broadcast(query, items, "D_Q", "D_I")


def _activation(name: str):
  """Returns the activation function named `name` (relu, gelu, silu)."""
  acts = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
  if name not in acts:
    raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(sorted(acts))}")
  return acts[name]


# ----------------------------------------------------------------------------
# Dot product.
# ----------------------------------------------------------------------------


@HEADS.register("dot")
class DotHead(nn.Module):
  """Dot-product similarity `<q, i>`, optionally cosine / temperature.

  Attributes:
    normalize: if True, l2-normalise both sides (safe at zero) and divide the
      cosine by `temperature`.
    temperature: divisor of the cosine when `normalize` is True.
    dropout: input dropout rate on both embeddings (default 0: off).
    dtype: computation dtype.
  """
  normalize: bool = False
  temperature: float = 0.05
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: Array, items: Array, *, deterministic: bool = True) -> Array:
    """Scores items against the query.

    Args:
      query: (..., D) float.
      items: (..., K, D) float, leading dims broadcast against the query's.
      deterministic: disables dropout when True.

    Returns:
      (..., K) scores.

    Raises:
      ValueError: wrong ranks, dims or dtypes of query/items.
    """
    _check_inputs(query, items, same_dim=True)
    query = jnp.asarray(query, self.dtype)
    items = jnp.asarray(items, self.dtype)
    if self.dropout > 0.0:
      drop = nn.Dropout(self.dropout)
      query = drop(query, deterministic=deterministic)
      items = drop(items, deterministic=deterministic)
    if self.normalize:
      query = l2_normalize(query)
      items = l2_normalize(items)
    scores = jnp.einsum("...d,...kd->...k", query, items)
    if self.normalize:
      scores = scores / jnp.asarray(self.temperature, self.dtype)
    return scores


# ----------------------------------------------------------------------------
# MLP over [q; i; q * i].
# ----------------------------------------------------------------------------


@HEADS.register("mlp")
class MLPHead(nn.Module):
  """MLP over the concatenation `[q; i; q * i]` -> one logit per pair.

  The first layer is computed as `W_q q + W_i i + W_p (q * i) + b`, which equals
  `Dense([q; i; q * i])` but computes the query term once per query (and the
  item term once per item) instead of materialising the concatenation.
  Requires D_Q == D_I (for `q * i`).

  Attributes:
    hidden: widths of the hidden layers (at least one).
    activation: 'relu', 'gelu' or 'silu'.
    dropout: dropout rate after every hidden activation (`ByteDropout`: rate rounded to 1/256).
    dtype: computation dtype.
  """
  hidden: Sequence[int] = (256, 128)
  activation: str = "relu"
  dropout: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: Array, items: Array, *, deterministic: bool = True) -> Array:
    """Scores items against the query.

    Args:
      query: (..., D) float.
      items: (..., K, D) float, leading dims broadcast against the query's.
      deterministic: disables dropout when True.

    Returns:
      (..., K) logits.

    Raises:
      ValueError: wrong ranks, dims or dtypes of query/items.
    """
    _check_inputs(query, items, same_dim=True)
    if not self.hidden:
      raise ConfigError("MLPHead needs at least one hidden layer, e.g. hidden=(256, 128)")
    act = _activation(self.activation)
    query = jnp.asarray(query, self.dtype)
    items = jnp.asarray(items, self.dtype)
    width = self.hidden[0]
    h_q = nn.Dense(width, dtype=self.dtype, name="first_query")(query)   # (..., H)
    h_i = nn.Dense(width, use_bias=False, dtype=self.dtype,
                   name="first_item")(items)                             # (..., K, H)
    h_p = nn.Dense(width, use_bias=False, dtype=self.dtype,
                   name="first_product")(query[..., None, :] * items)    # (..., K, H)
    h = act(h_q[..., None, :] + h_i + h_p)
    h = ByteDropout(self.dropout)(h, deterministic=deterministic)
    for j, w in enumerate(self.hidden[1:]):
      h = act(nn.Dense(w, dtype=self.dtype, name=f"hidden_{j + 1}")(h))
      h = ByteDropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(1, dtype=self.dtype, name="out")(h)[..., 0]         # (..., K)


# ----------------------------------------------------------------------------
# Factorisation machines.
# ----------------------------------------------------------------------------


def _fm_factor_init(factor_dim: int):
  """Init for factor matrices (D, F) so that the q-i interaction is O(1)."""
  return nn.initializers.variance_scaling(factor_dim ** -0.5, "fan_in", "normal")


class _FMParams(nn.Module):
  """Shared FM parameters for one side: linear weights `w` (D,) and factors `V` (D, F)."""
  factor_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array):
    """Per-side FM statistics.

    Args:
      x: (..., D) float.

    Returns:
      lin: (...,) `w . x`;  vx: (..., F) `V^T x`;  v2x2: (..., F) `(V*V)^T (x*x)`.
    """
    d = x.shape[-1]
    w = self.param("w", nn.initializers.zeros, (d,), jnp.float32).astype(self.dtype)
    v = self.param("v", _fm_factor_init(self.factor_dim), (d, self.factor_dim),
                   jnp.float32).astype(self.dtype)
    lin = x @ w
    vx = x @ v
    v2x2 = (x * x) @ (v * v)
    return lin, vx, v2x2


@HEADS.register("fm")
class FMHead(nn.Module):
  """Factorisation machine over the feature vector x = [q; i] (D_Q + D_I features).

  score = w0 + w.x + sum_{j<l} <v_j, v_l> x_j x_l
        = w0 + w_q.q + w_i.i + 0.5 (||V_q^T q + V_i^T i||^2 - sum_j ||v_j||^2 x_j^2)

  V is split into query and item halves, so `a = V_q^T q` (..., F) is computed once
  per query and `b = V_i^T i` (..., K, F) once per item; the squared norm is
  expanded as ||a||^2 + 2 a.b + ||b||^2 so the (..., K, F) sum is never built.

  Attributes:
    factor_dim: F, the factor dimension.
    dropout: input dropout rate on q and i (default 0: off).
    dtype: computation dtype.
  """
  factor_dim: int = 64
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: Array, items: Array, *, deterministic: bool = True) -> Array:
    """Scores items against the query.

    Args:
      query: (..., D_Q) float.
      items: (..., K, D_I) float, leading dims broadcast against the query's.
      deterministic: disables dropout when True.

    Returns:
      (..., K) scores.

    Raises:
      ValueError: wrong ranks or dtypes of query/items.
    """
    _check_inputs(query, items, same_dim=False)
    query = jnp.asarray(query, self.dtype)
    items = jnp.asarray(items, self.dtype)
    if self.dropout > 0.0:
      drop = nn.Dropout(self.dropout)
      query = drop(query, deterministic=deterministic)
      items = drop(items, deterministic=deterministic)
    w0 = self.param("w0", nn.initializers.zeros, (), jnp.float32).astype(self.dtype)
    # (...), (..., F), (..., F) and (..., K), (..., K, F), (..., K, F).
    lin_q, a, a2 = _FMParams(self.factor_dim, self.dtype, name="query")(query)
    lin_i, b, b2 = _FMParams(self.factor_dim, self.dtype, name="item")(items)
    # Query-only terms, (...,): computed once per query.
    q_term = w0 + lin_q + 0.5 * (jnp.sum(a * a, -1) - jnp.sum(a2, -1))
    # Item-only terms, (..., K): computed once per item.
    i_term = lin_i + 0.5 * (jnp.sum(b * b, -1) - jnp.sum(b2, -1))
    cross = jnp.einsum("...f,...kf->...k", a, b)
    return q_term[..., None] + i_term + cross


@HEADS.register("neural_fm")
class NeuralFMHead(nn.Module):
  """Neural factorisation machine (He & Chua, 2017) over x = [q; i].

  f = 0.5 ((V^T x)^2 - (V*V)^T (x*x))   (bi-interaction pooling, (..., K, F))
  score = w0 + w.x + MLP(dropout(f))

  As in `FMHead`, V^T x = V_q^T q + V_i^T i with the query half computed once per
  query. The MLP has ReLU hidden layers with dropout and a final 1-unit layer.
  (The paper's batch norm on f is omitted.)

  Attributes:
    factor_dim: F.
    hidden: widths of the MLP hidden layers (may be empty).
    dropout: dropout rate on f and after each hidden layer (`ByteDropout`: rate rounded to
      1/256).
    dtype: computation dtype.
  """
  factor_dim: int = 64
  hidden: Sequence[int] = (64,)
  dropout: float = 0.2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: Array, items: Array, *, deterministic: bool = True) -> Array:
    """Scores items against the query.

    Args:
      query: (..., D_Q) float.
      items: (..., K, D_I) float, leading dims broadcast against the query's.
      deterministic: disables dropout when True.

    Returns:
      (..., K) scores.

    Raises:
      ValueError: wrong ranks or dtypes of query/items.
    """
    _check_inputs(query, items, same_dim=False)
    query = jnp.asarray(query, self.dtype)
    items = jnp.asarray(items, self.dtype)
    w0 = self.param("w0", nn.initializers.zeros, (), jnp.float32).astype(self.dtype)
    lin_q, a, a2 = _FMParams(self.factor_dim, self.dtype, name="query")(query)
    lin_i, b, b2 = _FMParams(self.factor_dim, self.dtype, name="item")(items)
    # 0.5 ((a + b)^2 - (a2 + b2)) = a * b + self-interaction terms of each side alone.
    f_q = 0.5 * (a * a - a2)                                            # (..., F)
    f_i = 0.5 * (b * b - b2)                                            # (..., K, F)
    f = a[..., None, :] * b + f_q[..., None, :] + f_i                   # (..., K, F)
    h = ByteDropout(self.dropout)(f, deterministic=deterministic)
    for j, w in enumerate(self.hidden):
      h = nn.relu(nn.Dense(w, dtype=self.dtype, name=f"hidden_{j}")(h))
      h = ByteDropout(self.dropout)(h, deterministic=deterministic)
    deep = nn.Dense(1, dtype=self.dtype, name="out")(h)[..., 0]         # (..., K)
    return (w0 + lin_q)[..., None] + lin_i + deep


# ----------------------------------------------------------------------------
# Mixture of Logits.
# ----------------------------------------------------------------------------


class MoLQuerySide(NamedTuple):
  """Query-side MoL tensors (a pytree).

  components: (..., P_Q + P_U, d) l2-normalised query component embeddings.
  gate: (..., P) query-only gating logits, P = (P_Q + P_U) * P_X; None when
    gating is off.
  """
  components: Array
  gate: Optional[Array]


class MoLItemSide(NamedTuple):
  """Item-side MoL tensors (a pytree); precompute once per item table.

  components: (..., K, P_X, d) l2-normalised item component embeddings.
  gate: (..., K, P) item-only gating logits; None when gating is off.
  """
  components: Array
  gate: Optional[Array]


class _GateMLP(nn.Module):
  """Dense(hidden) -> SiLU -> Dense(out): (..., D) -> (..., out)."""
  hidden: int
  out: int
  out_bias: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.xavier_uniform()
    h = nn.silu(nn.Dense(self.hidden, kernel_init=init, dtype=self.dtype)(x))
    return nn.Dense(self.out, use_bias=self.out_bias, kernel_init=init, dtype=self.dtype)(h)


def mol_load_balance_loss(weights: Array, eps: float = 1e-6) -> Array:
  """Mutual-information load-balancing loss of MoL gating weights (RAILS).

  loss = -H(mean_pairs pi) + mean_pairs H(pi)

  i.e. minus the entropy of the component utilisation averaged over all
  (query, item) pairs (rewarding balanced use of the P components) plus the
  mean per-pair entropy (rewarding confident, specialised gating). Its negation
  is the mutual information between pair and component.

  Args:
    weights: (..., P) gating distributions (each sums to ~1).
    eps: added inside the logs.

  Returns:
    () float32 scalar.
  """
  w = weights.reshape(-1, weights.shape[-1]).astype(jnp.float32)       # (pairs, P)
  util = jnp.mean(w, axis=0)                                            # (P,)
  util_entropy = -jnp.sum(util * jnp.log(util + eps))
  pair_entropy = -jnp.mean(jnp.sum(w * jnp.log(w + eps), axis=-1))
  return pair_entropy - util_entropy


@HEADS.register("mol")
class MoLHead(nn.Module):
  """Mixture-of-Logits learned similarity (Zhai et al. KDD'23; Ding & Zhai 2024, RAILS).

  phi(q, i) = sum_p pi_p(q, i) <f_p(q), g_p(i)> / tau over P = P_Q' * P_X pairs of
  l2-normalised components, P_Q' = P_Q + P_U.

  Query side, (..., D_Q) ->
    * components: dropout(query_dropout) -> SwiGLU(query_hidden) ->
      Dense(P_Q d) -> (..., P_Q, d); with `num_user_components` P_U > 0 and
      `user_hash_buckets` > 0, P_U more components come from an embedding of
      `user_ids % user_hash_buckets` (with `user_dropout`) and are appended:
      (..., P_Q', d). All l2-normalised (safe at zero).
    * gate: Dense(gating_hidden) -> SiLU -> Dense(P, no bias) on the raw query:
      (..., P).
  Item side, (..., K, D_I) ->
    * components: dropout(item_dropout) -> [SwiGLU(item_hidden) if > 0] ->
      Dense(P_X d) -> (..., K, P_X, d), l2-normalised.
    * gate: Dense(gating_hidden) -> SiLU -> Dense(P, no bias) on the raw items:
      (..., K, P).
  Scoring:
    * elementary logits: einsum over d -> (..., K, P_Q', P_X) / tau, flattened to
      (..., K, P).
    * logits gate: Dense(gating_hidden) -> SiLU -> Dense(P) on the elementary
      logits: (..., K, P).
    * g = q_gate[..., None, :] * i_gate + logits_gate; pi = softmax(SiLU(g)) over
      P. This is RAILS' 'glu_silu' combination: the SiLU is applied to the
      combined gating logits, right before the softmax.
    * when not deterministic: dropout(softmax_dropout, drawn by `byte_keep_mask`) on
      pi, then renormalise to sum 1 (sum clamped at 1e-6).
    * score = sum_P pi * logits -> (..., K).
    With `gating=False` pi is uniform (score = mean of the P logits) and the gate
    MLPs are not created.
  Aux loss: `mol_load_balance_loss(pi)` (the pi actually used, i.e. after
  softmax dropout, as in RAILS) is sown as 'aux_loss'/'mol_load_balance' when
  that collection is mutable and the module is not initializing: a () float32
  scalar, summed if `score_sides` runs several times in one apply (it is 0 with
  `gating=False`); the trainer applies the weight (0.001).

  Defaults follow the public RAILS MovieLens configs: query SwiGLU width 512,
  query input dropout 0.0, item input dropout 0.1 and a linear item projection,
  gating hidden 128, softmax dropout 0.2, user-id dropout 0.5. Kernels use
  Xavier-uniform init and zero biases.

  For serving, precompute `item_side` once for the table (e.g.
  `head.apply(params, table, method=MoLHead.item_side)`), then call
  `score_sides(query_side(q), item_sides)`; `__call__` is exactly that
  composition.

  Attributes:
    num_query_components: P_Q (content-based query components).
    num_item_components: P_X.
    component_dim: d.
    temperature: tau.
    query_hidden: SwiGLU width of the query projection (0: linear projection).
    item_hidden: SwiGLU width of the item projection (0: linear projection).
    query_dropout: input dropout on the query before its projection.
    item_dropout: input dropout on the items before their projection.
    gating_hidden: hidden width of the three gating MLPs.
    softmax_dropout: dropout on the gating distribution (then renormalised).
    gating: False -> uniform weights (mean of the logits).
    num_user_components: P_U hashed user-id components (0: off).
    user_hash_buckets: hash buckets of the user-id embedding (0: off).
    user_dropout: dropout on the user-id component embeddings.
    dtype: computation dtype.
  """
  num_query_components: int = 8
  num_item_components: int = 4
  component_dim: int = 64
  temperature: float = 0.05
  query_hidden: int = 512
  item_hidden: int = 0
  query_dropout: float = 0.0
  item_dropout: float = 0.1
  gating_hidden: int = 128
  softmax_dropout: float = 0.2
  gating: bool = True
  num_user_components: int = 0
  user_hash_buckets: int = 0
  user_dropout: float = 0.5
  dtype: Dtype = jnp.float32

  @property
  def uses_user_components(self) -> bool:
    """Whether hashed user-id query components are enabled."""
    return self.num_user_components > 0 and self.user_hash_buckets > 0

  @property
  def num_total_query_components(self) -> int:
    """P_Q' = P_Q + P_U."""
    return self.num_query_components + (
        self.num_user_components if self.uses_user_components else 0)

  @property
  def num_logits(self) -> int:
    """P = P_Q' * P_X."""
    return self.num_total_query_components * self.num_item_components

  def setup(self):
    init = nn.initializers.xavier_uniform()
    d, p_q, p_x = self.component_dim, self.num_query_components, self.num_item_components
    if self.query_hidden > 0:
      self.query_gate_proj = nn.Dense(self.query_hidden, kernel_init=init, dtype=self.dtype)
      self.query_up_proj = nn.Dense(self.query_hidden, kernel_init=init, dtype=self.dtype)
    self.query_out_proj = nn.Dense(p_q * d, kernel_init=init, dtype=self.dtype)
    if self.item_hidden > 0:
      self.item_gate_proj = nn.Dense(self.item_hidden, kernel_init=init, dtype=self.dtype)
      self.item_up_proj = nn.Dense(self.item_hidden, kernel_init=init, dtype=self.dtype)
    self.item_out_proj = nn.Dense(p_x * d, kernel_init=init, dtype=self.dtype)
    self.query_input_dropout = nn.Dropout(self.query_dropout)
    self.item_input_dropout = nn.Dropout(self.item_dropout)
    if self.uses_user_components:
      self.user_embedding = nn.Embed(
          self.user_hash_buckets, self.num_user_components * d, dtype=self.dtype)
      self.user_embedding_dropout = nn.Dropout(self.user_dropout)
    if self.gating:
      p = self.num_logits
      self.query_gate = _GateMLP(self.gating_hidden, p, out_bias=False, dtype=self.dtype)
      self.item_gate = _GateMLP(self.gating_hidden, p, out_bias=False, dtype=self.dtype)
      self.logits_gate = _GateMLP(self.gating_hidden, p, out_bias=True, dtype=self.dtype)

  def query_side(self, query: Array, user_ids: Optional[Array] = None, *,
                 deterministic: bool = True) -> MoLQuerySide:
    """Query component embeddings and query-only gating logits.

    Args:
      query: (..., D_Q) float.
      user_ids: int user ids whose shape broadcasts against the query's leading
        dims (e.g. (B,) for query (B, D), (B, 1) for (B, L, D)); required iff
        user components are enabled.
      deterministic: disables dropout when True.

    Returns:
      MoLQuerySide(components (..., P_Q', d), gate (..., P) or None).

    Raises:
      ValueError: query not (..., D_Q) float; user_ids missing or not integer.
    """
    _check_query(query, "D_Q")
    if self.uses_user_components and user_ids is not None:
      V.check_int("user_ids", user_ids, "(...) user ids")
    query = jnp.asarray(query, self.dtype)
    x = self.query_input_dropout(query, deterministic=deterministic)
    if self.query_hidden > 0:
      x = nn.silu(self.query_gate_proj(x)) * self.query_up_proj(x)    # (..., H_Q)
    comps = self.query_out_proj(x).reshape(
        query.shape[:-1] + (self.num_query_components, self.component_dim))
    if self.uses_user_components:
      if user_ids is None:
        raise ValueError("MoLHead has user-id components; pass user_ids (...) int")
      u = self.user_embedding(jnp.asarray(user_ids) % self.user_hash_buckets)
      u = self.user_embedding_dropout(u, deterministic=deterministic)
      u = u.reshape(u.shape[:-1] + (self.num_user_components, self.component_dim))
      u = jnp.broadcast_to(u, comps.shape[:-2] + u.shape[-2:])
      comps = jnp.concatenate([comps, u.astype(comps.dtype)], axis=-2)
    gate = self.query_gate(query) if self.gating else None
    return MoLQuerySide(l2_normalize(comps), gate)

  def item_side(self, items: Array, *, deterministic: bool = True) -> MoLItemSide:
    """Item component embeddings and item-only gating logits.

    Args:
      items: (..., K, D_I) float.
      deterministic: disables dropout when True.

    Returns:
      MoLItemSide(components (..., K, P_X, d), gate (..., K, P) or None).

    Raises:
      ValueError: items not (..., K, D_I) float.
    """
    _check_items(items, "D_I")
    items = jnp.asarray(items, self.dtype)
    x = self.item_input_dropout(items, deterministic=deterministic)
    if self.item_hidden > 0:
      x = nn.silu(self.item_gate_proj(x)) * self.item_up_proj(x)      # (..., K, H_I)
    comps = self.item_out_proj(x).reshape(
        items.shape[:-1] + (self.num_item_components, self.component_dim))
    gate = self.item_gate(items) if self.gating else None
    return MoLItemSide(l2_normalize(comps), gate)

  def elementary_logits(self, q_side: MoLQuerySide, i_side: MoLItemSide) -> Array:
    """The P = P_Q' * P_X component logits.

    Args:
      q_side: query side with components (..., P_Q', d).
      i_side: item side with components (..., K, P_X, d).

    Returns:
      (..., K, P) logits `<f_a(q), g_b(i)> / tau`, flattened with index a * P_X + b.
    """
    logits = jnp.einsum("...qd,...kxd->...kqx", q_side.components, i_side.components)
    logits = logits / jnp.asarray(self.temperature, logits.dtype)    # (..., K, P_Q', P_X)
    return logits.reshape(logits.shape[:-2] + (-1,))

  def gating_weights(self, q_side: MoLQuerySide, i_side: MoLItemSide, logits: Array, *,
                     deterministic: bool = True) -> Array:
    """Gating distribution over the P logits.

    Args:
      q_side: query side, gate (..., P).
      i_side: item side, gate (..., K, P).
      logits: (..., K, P) elementary logits.
      deterministic: disables the softmax dropout when True.

    Returns:
      (..., K, P) weights, summing to 1 over P (up to the 1e-6 clamp when
      dropout removes every component).
    """
    if not self.gating:
      return jnp.full(logits.shape, 1.0 / logits.shape[-1], logits.dtype)
    g = q_side.gate[..., None, :] * i_side.gate + self.logits_gate(logits)
    g = nn.silu(g)
    w = jax.nn.softmax(g.astype(jnp.float32), axis=-1)
    if self.softmax_dropout > 0.0 and not deterministic:
      keep = byte_keep_mask(self.make_rng("dropout"), w.shape, self.softmax_dropout)
      w = jnp.where(keep, w, 0.0)  # no 1/(1-rate) scaling: the renormalisation undoes it
      w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-6)
    return w.astype(logits.dtype)

  def score_sides(self, q_side: MoLQuerySide, i_side: MoLItemSide, *,
                  deterministic: bool = True) -> Array:
    """Scores precomputed query and item sides; sows the load-balancing loss.

    Args:
      q_side: from `query_side`, components (..., P_Q', d).
      i_side: from `item_side`, components (..., K, P_X, d); leading dims
        broadcast against the query's.
      deterministic: disables dropout when True.

    Returns:
      (..., K) scores.
    """
    logits = self.elementary_logits(q_side, i_side)                    # (..., K, P)
    w = self.gating_weights(q_side, i_side, logits, deterministic=deterministic)
    if self.is_mutable_collection("aux_loss") and not self.is_initializing():
      # A () scalar, summed over `score_sides` calls within one apply.
      self.sow("aux_loss", "mol_load_balance", mol_load_balance_loss(w),
               init_fn=lambda: jnp.zeros((), jnp.float32),
               reduce_fn=lambda acc, v: acc + v)
    return jnp.sum(w * logits, axis=-1)

  def __call__(self, query: Array, items: Array, user_ids: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    """Scores items against the query.

    Args:
      query: (..., D_Q) float.
      items: (..., K, D_I) float, leading dims broadcast against the query's.
      user_ids: (...) int, only with user-id components.
      deterministic: disables dropout when True.

    Returns:
      (..., K) scores.

    Raises:
      ValueError: wrong ranks or dtypes of query/items (or user_ids).
    """
    _check_inputs(query, items, same_dim=False)
    q_side = self.query_side(query, user_ids, deterministic=deterministic)
    i_side = self.item_side(items, deterministic=deterministic)
    return self.score_sides(q_side, i_side, deterministic=deterministic)
