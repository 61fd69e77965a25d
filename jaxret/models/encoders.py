"""Query encoders: map a user's item history to one query vector per position.

Every encoder is a Flax Linen module with the same interface:

* ``__call__(input_ids, *, deterministic=True) -> (B, L, D)``: ``input_ids`` is
  a LEFT-padded ``(B, L)`` int32 batch of item ids (1..num_items, 0 = padding,
  most recent item at position ``L - 1``). The output at position ``t`` is the
  query for "the item after positions <= t" and depends only on the items at
  positions ``<= t`` (causal). Outputs at padded positions are finite but
  meaningless; callers mask them.
* ``embed_items(ids) -> (..., D)``: the item-side vectors (the shared item
  table) that similarity heads score queries against. Id 0 maps to zeros.
* attributes ``num_items`` and ``dim`` (= D).

Encoders are registered in ``ENCODERS`` by name (``"sasrec"``, ``"svd"``).
"""
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from jaxret.models.layers import ByteDropout
from jaxret.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")

Dtype = Any
Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
}


def _check_ids(input_ids: Array) -> None:
  if input_ids.ndim != 2:
    raise ValueError(
        f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")


# ---------------------------------------------------------------------------
# SASRec
# ---------------------------------------------------------------------------


class _CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with a key-padding mask.

  Attributes:
    num_heads: number of heads H; ``dim`` must be divisible by it.
    dim: model width D.
    dropout: dropout rate on the attention probabilities.
    dtype: compute dtype (params are float32); softmax runs in float32.
  """
  num_heads: int
  dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, allowed: Array, *, deterministic: bool,
               kv: Array | None = None) -> Array:
    """Attends from ``x`` over ``kv`` (default ``x``).

    Args:
      x: ``(B, Lq, D)`` query-side inputs.
      allowed: ``(B, 1, Lq, L)`` bool, ``allowed[b, 0, t, s]`` is True when
        query ``t`` may attend to key ``s``. Every row must allow at least one
        key.
      deterministic: disables dropout when True.
      kv: ``(B, L, D)`` key/value-side inputs (default: ``x``, self-attention).

    Returns:
      ``(B, Lq, D)`` attention outputs.
    """
    if self.dim % self.num_heads:
      raise ValueError(
          f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
    head_dim = self.dim // self.num_heads
    dense = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, param_dtype=jnp.float32,
        name=name)
    kv = x if kv is None else kv
    q = dense("query")(x)  # (B, Lq, H, Dh)
    k = dense("key")(kv)
    v = dense("value")(kv)
    q = q / jnp.sqrt(head_dim).astype(q.dtype)
    logits = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32)
    logits = jnp.where(allowed, logits, jnp.float32(-1e9))
    probs = jax.nn.softmax(logits, axis=-1)
    probs = ByteDropout(self.dropout)(probs, deterministic=deterministic)
    out = jnp.einsum("bhts,bshd->bthd", probs.astype(self.dtype), v)
    return nn.DenseGeneral(
        self.dim, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
        name="out")(out)


class _SASRecBlock(nn.Module):
  """One pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""
  num_heads: int
  dim: int
  dropout: float
  activation: str = "relu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, allowed: Array, *, deterministic: bool,
               last_only: bool = False) -> Array:
    """Maps `x` (B, L, D) to (B, L, D); `allowed` is (B, 1, L, L).

    With `last_only`, only the last position's output is computed, (B, 1, D): it attends
    over every position's keys as usual, so it equals the full output's last row.
    """
    ln = lambda name: nn.LayerNorm(
        epsilon=1e-8, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    drop = ByteDropout(self.dropout)
    normed = ln("attention_norm")(x)
    if last_only:
      x, allowed = x[:, -1:], allowed[:, :, -1:]
    h = _CausalSelfAttention(
        self.num_heads, self.dim, self.dropout, dtype=self.dtype,
        name="attention")(normed[:, -x.shape[1]:], allowed, deterministic=deterministic,
                          kv=normed)
    x = x + drop(h, deterministic=deterministic)
    # Point-wise feed-forward: two layers of width D (the original uses two
    # kernel-size-1 convolutions, i.e. per-position dense layers).
    h = ln("ffn_norm")(x)
    h = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name="ffn_in")(h)
    h = _ACTIVATIONS[self.activation](h)
    h = drop(h, deterministic=deterministic)
    h = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name="ffn_out")(h)
    return x + drop(h, deterministic=deterministic)


@ENCODERS.register("sasrec")
class SASRec(nn.Module):
  """SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the history.

  Design choices (documented deviations / resolutions of the original):

  * Item embedding table ``(num_items + 1, D)`` initialised N(0, 0.02^2); on
    the query side the looked-up vectors are multiplied by ``sqrt(D)`` as in
    the original implementation. ``embed_items`` returns the *unscaled* table
    rows (the shared item side used by the similarity heads), with id 0
    mapped to zeros.
  * Learned positional embedding ``(max_len, D)`` indexed RIGHT-aligned: the
    item at position ``i`` of a length-``L`` input gets position id
    ``max_len - L + i``, so the most recent item always has id
    ``max_len - 1``. With ``L == max_len`` this equals the original
    left-padded absolute positions, and the output at a real position does not
    depend on how much padding precedes the sequence (nor on ``L``).
  * Pre-LN blocks: ``x += Drop(Attn(LN(x)))``; ``x += Drop(FFN(LN(x)))``, with
    a final LayerNorm after the last block. The FFN has width D and ReLU
    (or GELU via ``activation="gelu"``).
  * Padding: padded inputs are zeroed after adding the positional embedding,
    padded keys are never attended to, and hidden states at padded positions
    are zeroed after every block and at the output. Every query may attend to
    itself, so a padded query (whose causal keys are all padding) sees only
    itself and an all-padding row stays finite.
  * Dropout (rate ``dropout``, masks from one random byte per element: ``ByteDropout``)
    on the embeddings, attention probabilities,
    attention output, FFN hidden and FFN output; only when
    ``deterministic=False`` (needs a ``'dropout'`` rng).
  * ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters are
    float32; attention softmax is computed in float32. Outputs are in
    ``dtype``.

  Defaults follow the public ML-1M configuration.

  Attributes:
    num_items: number of items; ids are 1..num_items, 0 is padding.
    dim: embedding / model width D.
    num_blocks: number of transformer blocks.
    num_heads: attention heads (must divide ``dim``).
    max_len: maximum sequence length L (size of the positional table).
    dropout: dropout rate.
    activation: ``"relu"`` or ``"gelu"`` in the feed-forward layers.
    dtype: compute dtype.
  """
  num_items: int
  dim: int = 50
  num_blocks: int = 2
  num_heads: int = 1
  max_len: int = 200
  dropout: float = 0.2
  activation: str = "relu"
  item_init_std: float = 0.02
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
          f"unknown activation {self.activation!r}; valid: "
          f"{', '.join(sorted(_ACTIVATIONS))}")
    self.item_embedding = nn.Embed(
        self.num_items + 1, self.dim,
        embedding_init=nn.initializers.normal(stddev=self.item_init_std),
        dtype=self.dtype, param_dtype=jnp.float32)
    self.position_embedding = nn.Embed(
        self.max_len, self.dim,
        embedding_init=nn.initializers.normal(stddev=0.02),
        dtype=self.dtype, param_dtype=jnp.float32)
    self.embedding_dropout = ByteDropout(self.dropout)
    self.blocks = [
        _SASRecBlock(self.num_heads, self.dim, self.dropout,
                     activation=self.activation, dtype=self.dtype,
                     name=f"block_{i}")
        for i in range(self.num_blocks)
    ]
    self.final_norm = nn.LayerNorm(
        epsilon=1e-8, dtype=self.dtype, param_dtype=jnp.float32)

  def embed_items(self, ids: Array) -> Array:
    """Item vectors ``(..., D)`` for ``ids`` of any shape; id 0 -> zeros."""
    emb = self.item_embedding(ids)
    return emb * (ids != 0)[..., None].astype(emb.dtype)

  def __call__(self, input_ids: Array, *, deterministic: bool = True,
               last_only: bool = False) -> Array:
    """Encodes a left-padded batch.

    Args:
      input_ids: ``(B, L)`` int32 item ids, 0 = padding, ``L <= max_len``.
      deterministic: disables dropout when True.
      last_only: compute only the last position's output (``(B, 1, D)``).

    Returns:
      ``(B, L, D)`` query vectors (zeros at padded positions).
    """
    _check_ids(input_ids)
    length = input_ids.shape[1]
    if length > self.max_len:
      raise ValueError(
          f"sequence length {length} exceeds max_len={self.max_len}")
    valid = input_ids != 0  # (B, L)
    valid_f = valid[..., None].astype(self.dtype)  # (B, L, 1)

    x = self.item_embedding(input_ids) * jnp.sqrt(self.dim).astype(self.dtype)
    positions = jnp.arange(length) + (self.max_len - length)  # right-aligned
    x = x + self.position_embedding(positions)[None]
    x = self.embedding_dropout(x, deterministic=deterministic)
    x = x * valid_f

    causal = jnp.tril(jnp.ones((length, length), dtype=bool))  # (L, L)
    eye = jnp.eye(length, dtype=bool)
    # (B, 1, L, L): query t attends key s iff s <= t and (s is real or s == t).
    allowed = causal[None, None] & (valid[:, None, None, :] | eye[None, None])

    for i, block in enumerate(self.blocks):
      last = last_only and i == len(self.blocks) - 1
      x = block(x, allowed, deterministic=deterministic, last_only=last)
      if last:
        valid_f = valid_f[:, -1:]
      x = x * valid_f
    return self.final_norm(x) * valid_f

  def last_query(self, input_ids: Array) -> Array:
    """``(B, L)`` histories -> ``(B, D)``: the output at the last position only.

    Equals ``self(input_ids)[:, -1]`` (deterministic); the last block computes one query
    position instead of L, which saves about a third of an evaluation pass.
    """
    return self(input_ids, deterministic=True, last_only=True)[:, 0]


# ---------------------------------------------------------------------------
# PureSVD with fold-in
# ---------------------------------------------------------------------------


def svd_item_factors(user_ids: np.ndarray, item_ids: np.ndarray,
                     num_users: int, num_items: int, dim: int,
                     seed: int = 0) -> np.ndarray:
  """Item factors of a truncated SVD of the binary user-item matrix.

  Builds ``X`` of shape ``(num_users, num_items)`` with ``X[u, i - 1] = 1`` for
  every training interaction (duplicates count once) and computes its top-D
  SVD ``X ~= U S V^T``. Returns ``V`` (NOT ``V S^{1/2}``), so that the fold-in
  query ``q = x V`` of a history ``x`` scores items as ``q . V_j = (x V V^T)_j``
  -- exactly the classical PureSVD ranking (Cremonesi et al. 2010); the
  optional ``1/sqrt(n)`` normalisation of the fold-in is a per-user scale and
  does not change the ranking.

  Args:
    user_ids: ``(N,)`` int user row indices in ``[0, num_users)`` (pass
      ``num_users + 1`` for 1-based ids; an empty row changes nothing).
    item_ids: ``(N,)`` int item ids in ``[1, num_items]``.
    num_users: number of rows of X.
    num_items: number of items.
    dim: number of factors D. If ``D`` exceeds the rank bound
      ``min(num_users, num_items)`` the extra columns are zero.
    seed: seeds the ARPACK starting vector (results are deterministic).

  Returns:
    ``(num_items + 1, D)`` float32 array; row 0 (padding) is zero; columns are
    ordered by decreasing singular value (signs are arbitrary).
  """
  user_ids = np.asarray(user_ids, dtype=np.int64).ravel()
  item_ids = np.asarray(item_ids, dtype=np.int64).ravel()
  if user_ids.shape != item_ids.shape:
    raise ValueError("user_ids and item_ids must have the same length")
  if dim < 1:
    raise ValueError(f"dim must be >= 1, got {dim}")
  if user_ids.size and (user_ids.min() < 0 or user_ids.max() >= num_users):
    raise ValueError(f"user ids must lie in [0, {num_users})")
  if item_ids.size and (item_ids.min() < 1 or item_ids.max() > num_items):
    raise ValueError(f"item ids must lie in [1, {num_items}]")

  x = scipy.sparse.csr_matrix(
      (np.ones(user_ids.size, dtype=np.float64), (user_ids, item_ids - 1)),
      shape=(num_users, num_items))
  x.sum_duplicates()
  x.data[:] = 1.0  # binary

  rank_bound = min(num_users, num_items)
  if dim >= rank_bound - 1:
    # ARPACK needs k < min(shape); small problems are cheap densely anyway.
    _, _, vt = np.linalg.svd(x.toarray(), full_matrices=False)
    v = vt.T[:, :dim]  # already sorted by decreasing singular value
  else:
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=rank_bound)
    _, s, vt = scipy.sparse.linalg.svds(x, k=dim, v0=v0)
    order = np.argsort(-s)
    v = vt[order].T

  factors = np.zeros((num_items + 1, dim), dtype=np.float32)
  factors[1:, :v.shape[1]] = v
  return factors


def with_svd_factors(params: Mapping[str, Any], factors: Any) -> Any:
  """Returns a copy of ``params`` with every ``'item_factors'`` leaf replaced.

  Works on a full variables dict (``{'params': {...}}``), on the inner params
  dict, and on models that nest ``SVDEncoder`` as a submodule. Row 0 of
  ``factors`` is forced to zero.

  Args:
    params: a params tree containing at least one ``'item_factors'`` leaf of
      shape ``(num_items + 1, D)``.
    factors: ``(num_items + 1, D)`` array, e.g. from ``svd_item_factors``.

  Returns:
    A new tree of the same structure; the input is not modified.

  Raises:
    ValueError: if there is no ``'item_factors'`` leaf or the shapes differ.
  """
  factors = np.asarray(factors)
  found = []

  def replace(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    out = {}
    for key, value in tree.items():
      if key == "item_factors" and not isinstance(value, Mapping):
        if tuple(value.shape) != factors.shape:
          raise ValueError(
              f"item_factors has shape {tuple(value.shape)}, factors have "
              f"shape {factors.shape}")
        new = jnp.asarray(factors, dtype=value.dtype).at[0].set(0)
        found.append(key)
        out[key] = new
      else:
        out[key] = replace(value)
    return type(tree)(out) if not isinstance(tree, dict) else out

  result = replace(params)
  if not found:
    raise ValueError("params contain no 'item_factors' table")
  return result


@ENCODERS.register("svd")
class SVDEncoder(nn.Module):
  """Non-sequential PureSVD baseline with fold-in queries.

  The item table ``'item_factors'`` ``(num_items + 1, D)`` is initialised with
  small random values; the trainer overwrites it after init with
  ``with_svd_factors(params, svd_item_factors(...))``. The query at position
  ``t`` is the fold-in of the prefix history: the sum of the factors of the
  real items at positions ``<= t``, divided by ``sqrt(count)`` when
  ``normalize_foldin`` (a per-user scale: the ranking equals PureSVD's
  ``x V V^T`` either way). Computed with a cumulative sum, O(L * D). Users
  unseen at fit time get their query from their history in the same way.

  Attributes:
    num_items: number of items; ids 1..num_items, 0 = padding.
    dim: number of factors D.
    normalize_foldin: divide the fold-in sum by sqrt(number of items).
    trainable: when False the table is wrapped in ``stop_gradient`` (frozen);
      when True it is fine-tuned.
    dtype: output dtype (the cumulative sum runs in float32).
  """
  num_items: int
  dim: int = 64
  normalize_foldin: bool = True
  trainable: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    self.item_factors = self.param(
        "item_factors", nn.initializers.normal(stddev=0.01),
        (self.num_items + 1, self.dim), jnp.float32)

  def _table(self) -> Array:
    table = self.item_factors
    return table if self.trainable else jax.lax.stop_gradient(table)

  def embed_items(self, ids: Array) -> Array:
    """Item factors ``(..., D)`` for ``ids`` of any shape; id 0 -> zeros."""
    emb = jnp.take(self._table(), ids, axis=0)
    return (emb * (ids != 0)[..., None]).astype(self.dtype)

  def __call__(self, input_ids: Array, *, deterministic: bool = True) -> Array:
    """Fold-in queries.

    Args:
      input_ids: ``(B, L)`` int32 item ids, 0 = padding.
      deterministic: unused (no dropout); kept for the common interface.

    Returns:
      ``(B, L, D)``: at position t, ``sum_{s<=t, id_s != 0} V[id_s]``
      (``/ sqrt(count)`` if normalised); zeros where no real item precedes.
    """
    del deterministic
    _check_ids(input_ids)
    valid = (input_ids != 0).astype(jnp.float32)  # (B, L)
    emb = jnp.take(self._table(), input_ids, axis=0) * valid[..., None]
    summed = jnp.cumsum(emb, axis=1)  # (B, L, D)
    if self.normalize_foldin:
      count = jnp.cumsum(valid, axis=1)[..., None]
      summed = summed * jax.lax.rsqrt(jnp.maximum(count, 1.0))
    return summed.astype(self.dtype)
