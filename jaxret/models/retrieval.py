"""An encoder (query tower) and a similarity head, composed into one retrieval model."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RetrievalModel(nn.Module):
  """Scores items for the queries an encoder makes from item-id sequences.

  Attributes:
    encoder: maps left-padded `(B, L)` item ids to `(B, L, D)` queries and owns the item
      embedding table (`embed_items`).
    head: scores `(..., D)` queries against `(..., K, D)` item vectors -> `(..., K)`.
  """
  encoder: nn.Module
  head: nn.Module

  def __call__(self, inputs: jax.Array, targets: jax.Array, negatives: jax.Array,
               positions: jax.Array | None = None, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Training scores of every position, or of selected positions.

    inputs, targets: (B, L) int32; negatives: (R,) shared by all positions, or (B, L, R).
    positions: optional (T,) int32 indices into the flattened B*L positions: only those are
      scored (the head is the expensive part; the encoder still runs on all of them).
    Returns (pos (B, L), neg (B, L, R)), or (pos (T,), neg (T, R)) with `positions`.
    """
    queries = self.encode(inputs, deterministic=deterministic)
    *_, pos, neg = self.score_selected(queries, targets, negatives, positions,
                                       deterministic=deterministic)
    return pos, neg

  def score_selected(self, queries: jax.Array, targets: jax.Array, negatives: jax.Array,
                     positions: jax.Array | None = None, *, deterministic: bool = True):
    """Scores targets and negatives at every position of `queries` (B, L, D), or at the
    flattened `positions` (T,). Returns (queries, targets, negatives, pos, neg) of the scored
    positions: (B, L, D) or (T, D), (B, L) or (T,), negatives as given or (T, R) when per
    position, pos (B, L) or (T,), neg (B, L, R) or (T, R)."""
    if positions is not None:
      queries = queries.reshape(-1, queries.shape[-1])[positions]
      targets = targets.reshape(-1)[positions]
      if negatives.ndim > 1:
        negatives = negatives.reshape(-1, negatives.shape[-1])[positions]
    pos, neg = self.score_pos_neg(queries, targets, negatives, deterministic=deterministic)
    return queries, targets, negatives, pos, neg

  @property
  def has_sides(self) -> bool:
    """Whether the head splits into query and item sides (MoL)."""
    return hasattr(self.head, "query_side")

  def score_pos_neg(self, queries: jax.Array, targets: jax.Array, negatives: jax.Array, *,
                    deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """queries (..., D) against their targets (...) and negatives (R,) or (..., R).

    Returns pos (...) and neg (..., R). A head with separate query and item sides (MoL)
    computes the query side once for both candidate sets.
    """
    if self.has_sides:
      q_side = self.head.query_side(queries, deterministic=deterministic)
      return self.score_sides_pos_neg(q_side, targets, negatives, deterministic=deterministic)
    target_vecs = self.encoder.embed_items(targets[..., None])
    negative_vecs = self.encoder.embed_items(negatives)
    pos = self.head(queries, target_vecs, deterministic=deterministic)
    neg = self.head(queries, negative_vecs, deterministic=deterministic)
    return pos[..., 0], neg

  def query_sides(self, queries: jax.Array, *, deterministic: bool = True):
    """Sided heads only: the head's query side of (..., D) queries."""
    return self.head.query_side(queries, deterministic=deterministic)

  def item_sides(self, item_ids: jax.Array, *, deterministic: bool = True):
    """Sided heads only: the head's item side of (..., K) item ids."""
    return self.head.item_side(self.encoder.embed_items(item_ids), deterministic=deterministic)

  def score_sides_pos_neg(self, q_side, targets: jax.Array, negatives, *,
                          deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Sided heads only: `score_pos_neg` from a precomputed query side (leading dims (...))
    and negatives given as ids (R,) / (..., R) or as a precomputed item side of them."""
    if isinstance(negatives, jax.Array) and jnp.issubdtype(negatives.dtype, jnp.integer):
      negatives = self.item_sides(negatives, deterministic=deterministic)
    p_side = self.item_sides(targets[..., None], deterministic=deterministic)
    pos = self.head.score_sides(q_side, p_side, deterministic=deterministic)
    neg = self.head.score_sides(q_side, negatives, deterministic=deterministic)
    return pos[..., 0], neg

  def encode(self, inputs: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """(B, L) int32 -> (B, L, D) queries; position t sees items at positions <= t."""
    return self.encoder(inputs, deterministic=deterministic)

  def score(self, queries: jax.Array, item_ids: jax.Array, *,
            deterministic: bool = True) -> jax.Array:
    """queries (..., D) against item ids (..., K) (leading dims broadcast) -> (..., K)."""
    return self.head(queries, self.encoder.embed_items(item_ids), deterministic=deterministic)

  def embed_items(self, item_ids: jax.Array) -> jax.Array:
    """(...) item ids -> (..., D) item vectors (the encoder's table)."""
    return self.encoder.embed_items(item_ids)

  def last_query(self, inputs: jax.Array) -> jax.Array:
    """(B, L) left-padded histories -> (B, D) query after the whole history."""
    if hasattr(self.encoder, "last_query"):  # computes the last position only
      return self.encoder.last_query(inputs)
    return self.encode(inputs, deterministic=True)[:, -1]
