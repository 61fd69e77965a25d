"""The h-indexer: dedicated low-dimensional stage-1 embeddings for two-stage MoL retrieval.

Stage 1 finds k' candidates with a cheap dot product `<h_q(q), h_x(x)>` over compact
(e.g. 16/32-dim) embeddings; stage 2 re-scores them with MoL. The stage-1 towers are two
small projections of the query vector and of the item vector (`HIndexer`), trained either

  * jointly with the model, with an auxiliary sampled-softmax loss on the same targets and
    negatives as the main loss (`hindexer_loss`; `HIndexedRetrievalModel` sows it), or
  * post hoc, by distillation from a trained MoL head (`fit_hindexer`): a listwise
    cross-entropy between the stage-1 softmax and the MoL softmax over each query's MoL
    top items plus uniform random negatives. This needs no change to training.

With `num_probes` M > 1 the query tower emits M embeddings and an item's stage-1 score is its
best probe, `max_m <h_q(q)_m, h_x(x)>`: one dot product cannot cover a MoL query whose top
items are spread over several component pairs, M probes of dim d/M cost the same as one of d.
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxret.losses import sampled_softmax_loss, valid_negatives
from jaxret.models.heads import l2_normalize
from jaxret.models.retrieval import RetrievalModel

Array = jax.Array


class HIndexer(nn.Module):
  """Query and item towers of the stage-1 index: (..., D) -> (..., dim).

  Each tower is [Dense(hidden) -> SiLU ->] Dense(dim), l2-normalised when `normalize`
  (so the stage-1 score is a cosine; `temperature` only matters in the losses). With
  `num_probes` M > 1 the query tower ends in Dense(M * dim), read as M embeddings, each
  normalised, and `score` takes the best probe.

  Attributes:
    dim: stage-1 embedding size (16 or 32 in the paper's spirit).
    hidden: width of an optional hidden layer per tower (0: linear).
    normalize: l2-normalise both embeddings.
    num_probes: query embeddings per query.
  """
  dim: int = 32
  hidden: int = 0
  normalize: bool = True
  num_probes: int = 1

  def setup(self):
    init = nn.initializers.xavier_uniform()
    if self.hidden > 0:
      self.query_hidden = nn.Dense(self.hidden, kernel_init=init)
      self.item_hidden = nn.Dense(self.hidden, kernel_init=init)
    if self.num_probes < 1:
      raise ValueError(f"num_probes must be >= 1, got {self.num_probes}")
    self.query_out = nn.Dense(self.dim * self.num_probes, kernel_init=init)
    self.item_out = nn.Dense(self.dim, kernel_init=init)

  def embed_queries(self, queries: Array) -> Array:
    """(..., D_Q) query vectors -> (..., dim), or (..., num_probes, dim) when
    num_probes > 1, float32 stage-1 query embeddings."""
    x = jnp.asarray(queries, jnp.float32)
    if self.hidden > 0:
      x = nn.silu(self.query_hidden(x))
    x = self.query_out(x)
    if self.num_probes > 1:
      x = x.reshape(x.shape[:-1] + (self.num_probes, self.dim))
    return l2_normalize(x) if self.normalize else x

  def embed_items(self, items: Array) -> Array:
    """(..., D_I) item vectors -> (..., dim) float32 stage-1 item embeddings."""
    x = jnp.asarray(items, jnp.float32)
    if self.hidden > 0:
      x = nn.silu(self.item_hidden(x))
    x = self.item_out(x)
    return l2_normalize(x) if self.normalize else x

  def score(self, query_emb: Array, item_emb: Array, spec: str) -> Array:
    """Stage-1 scores by `jnp.einsum(spec, query_emb, item_emb)`, `spec` written for
    one probe ('...d' query operand); with num_probes > 1 the best probe's score."""
    if self.num_probes == 1:
      return jnp.einsum(spec, query_emb, item_emb)
    per_probe = jax.vmap(lambda q: jnp.einsum(spec, q, item_emb))(jnp.moveaxis(query_emb, -2, 0))
    return jnp.max(per_probe, axis=0)

  def __call__(self, queries: Array, items: Array) -> tuple[Array, Array]:
    """Both towers: ((..., dim), (..., dim)); used by `init`."""
    return self.embed_queries(queries), self.embed_items(items)


@functools.partial(jax.jit, static_argnums=0)
def _embed_items(hindexer: HIndexer, params, items: Array) -> Array:
  return hindexer.apply({"params": params}, items, method=HIndexer.embed_items)


def embed_item_table(hindexer: HIndexer, params, item_vectors: Array | np.ndarray,
                     chunk: int = 65536) -> Array:
  """(N, dim) stage-1 embeddings of the (N, D_I) item vectors (host or device), `chunk`
  rows per call so the towers' hidden activations stay bounded for any N."""
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  n = item_vectors.shape[0]
  return jnp.concatenate([_embed_items(hindexer, params, jnp.asarray(item_vectors[s:s + chunk]))
                          for s in range(0, n, chunk)])


def init_hindexer(hindexer: HIndexer, query_dim: int, item_dim: int, rng: Array):
  """Parameters of `hindexer` for (.., query_dim) queries and (.., item_dim) items."""
  return hindexer.init(rng, jnp.zeros((1, query_dim)), jnp.zeros((1, item_dim)))["params"]


def hindexer_loss(params, hindexer: HIndexer, queries: Array, pos_items: Array,
                  neg_items: Array, mask: Array, neg_valid: Array | None = None,
                  temperature: float = 0.05, stop_gradient: bool = True
                  ) -> tuple[Array, Array]:
  """Auxiliary sampled-softmax loss of the stage-1 embeddings.

  Args:
    params: the HIndexer's params.
    hindexer: the module.
    queries: (..., D_Q) query vectors (e.g. (B, L, D) or (T, D)).
    pos_items: (..., D_I) vectors of the targets.
    neg_items: (R, D_I) shared negatives, or (..., R, D_I) per position.
    mask: (...) bool/float, positions with a real target.
    neg_valid: optional (..., R) bool (False drops a negative, e.g. equal to the target).
    temperature: divisor of the stage-1 cosine.
    stop_gradient: if True (default) the loss trains only the stage-1 towers and leaves
      the encoder and item table to the main loss.

  Returns:
    (loss_sum, weight_sum) float32 scalars, as `jaxret.losses` (divide for the mean).
  """
  if stop_gradient:
    queries, pos_items, neg_items = jax.lax.stop_gradient((queries, pos_items, neg_items))
  hq = hindexer.apply({"params": params}, queries, method=HIndexer.embed_queries)
  hp = hindexer.apply({"params": params}, pos_items, method=HIndexer.embed_items)
  hn = hindexer.apply({"params": params}, neg_items, method=HIndexer.embed_items)
  pos, neg = _pos_neg_scores(hindexer, hq, hp, hn, temperature)
  return sampled_softmax_loss(pos, neg, mask, neg_valid)


def _pos_neg_scores(hindexer: HIndexer, hq: Array, hp: Array, hn: Array,
                    temperature: float) -> tuple[Array, Array]:
  """Stage-1 logits of the targets (...) and of shared (R, h) or per-position (..., R, h)
  negatives (..., R), divided by `temperature`."""
  pos = hindexer.score(hq, hp, "...d,...d->...")
  neg = hindexer.score(hq, hn, "...d,rd->...r" if hn.ndim == 2 else "...d,...rd->...r")
  return pos / temperature, neg / temperature


class HIndexedRetrievalModel(RetrievalModel):
  """`RetrievalModel` plus jointly trained h-indexer towers.

  Identical scores to `RetrievalModel`; in addition, when the 'hindexer_loss' collection is
  mutable, it sows `(loss_sum, weight_sum)` of `hindexer_loss` (stage-1 towers only, the
  inputs are stop-gradiented) under 'hindexer_loss'/'ss'. Its parameters live under
  params['hindexer'].

  Attributes:
    hindexer: the HIndexer towers.
    hindexer_temperature: temperature of the auxiliary loss.
  """
  hindexer: nn.Module = None
  hindexer_temperature: float = 0.05

  def __call__(self, inputs: Array, targets: Array, negatives: Array,
               positions: Array | None = None, *,
               deterministic: bool = True) -> tuple[Array, Array]:
    """As `RetrievalModel.__call__` (pos (B, L), neg (B, L, R) or (T,), (T, R))."""
    queries, targets, negatives, pos, neg = self.score_selected(
        self.encode(inputs, deterministic=deterministic), targets, negatives, positions,
        deterministic=deterministic)
    # Stage-1 towers on stop-gradiented inputs (the main loss owns encoder and table).
    q, pos_vec, neg_vec = jax.lax.stop_gradient(
        (queries, self.encoder.embed_items(targets), self.encoder.embed_items(negatives)))
    hq, hp = self.hindexer(q, pos_vec)
    hn = self.hindexer.embed_items(neg_vec)
    t = self.hindexer_temperature
    s_pos, s_neg = _pos_neg_scores(self.hindexer, hq, hp, hn, t)
    if self.is_mutable_collection("hindexer_loss") and not self.is_initializing():
      mask = targets != 0
      self.sow("hindexer_loss", "ss",
               sampled_softmax_loss(s_pos, s_neg, mask, valid_negatives(targets, negatives)))
    return pos, neg


def fit_hindexer(hindexer: HIndexer, query_vectors: Array | np.ndarray,
                 item_vectors: Array | np.ndarray,
                 mol_scores_fn: Callable[[Array, Array], Array],
                 teacher_rows: Array | np.ndarray, *, steps: int = 300, batch_size: int = 128,
                 num_negatives: int = 512, learning_rate: float = 3e-3,
                 temperature: float = 0.05, teacher_temperature: float = 1.0,
                 num_hard_negatives: int = 0, mine_every: int = 250,
                 seed: int = 0, params=None, log: Callable[[str], None] | None = None):
  """Trains stage-1 towers post hoc by distillation from MoL.

  For a batch of queries, the candidate list is each query's MoL top rows (`teacher_rows`)
  followed by `num_negatives` uniformly sampled rows (shared by the batch); the loss is the
  cross-entropy between softmax(MoL scores / teacher_temperature) and
  softmax(stage-1 cosine / temperature) over that list.

  With `num_hard_negatives` H > 0 each query's list also holds its H stage-1 top rows outside
  its teacher rows, mined with the towers of the last refresh (every `mine_every` steps): the
  items the student ranks high now, scored by MoL like the rest, so the fit learns where the
  dot product disagrees with MoL instead of only separating the teacher's top from random items.

  Args:
    hindexer: the towers.
    query_vectors: (M, D_Q) training queries (e.g. encoder outputs of training histories).
    item_vectors: (N, D_I) the item table (row r is item row r of the index).
    mol_scores_fn: (queries (b, D_Q), rows (b, C) int32) -> (b, C) MoL scores; jittable.
    teacher_rows: (M, T) int32 rows of each query's MoL top-T items (e.g. from
      `MoLIndex.exact_mol_topk` or a two-stage retrieve with a large k').
    steps, batch_size, num_negatives, learning_rate: the Adam schedule.
    temperature: stage-1 softmax temperature.
    teacher_temperature: MoL softmax temperature (MoL logits already include 1/tau).
    num_hard_negatives: H, student-mined rows per query (0: none).
    mine_every: steps between two refreshes of the mined rows.
    seed: RNG seed.
    params: initial params (default: fresh init).
    log: optional progress callback.

  Returns:
    The trained params.
  """
  queries = jnp.asarray(query_vectors, jnp.float32)
  items = jnp.asarray(item_vectors, jnp.float32)
  teacher_rows = jnp.asarray(teacher_rows, jnp.int32)
  m, n = queries.shape[0], items.shape[0]
  if teacher_rows.ndim != 2 or teacher_rows.shape[0] != m:
    raise ValueError(f"teacher_rows must be (M={m}, T), got shape {teacher_rows.shape}")
  if not 0 <= num_hard_negatives <= n - teacher_rows.shape[1]:
    raise ValueError(f"num_hard_negatives must be in [0, N - T = {n - teacher_rows.shape[1]}], "
                     f"got {num_hard_negatives}")
  if mine_every < 1:
    raise ValueError(f"mine_every must be >= 1, got {mine_every}")
  rng = jax.random.key(seed)
  init_rng, rng = jax.random.split(rng)
  if params is None:
    params = init_hindexer(hindexer, queries.shape[-1], items.shape[-1], init_rng)
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)
  b = min(batch_size, m)

  mine = jax.jit(lambda p, q, table, top: _mine_hard_rows(hindexer, p, q, table, top,
                                                           num_hard_negatives))

  def mine_all(params):
    table = embed_item_table(hindexer, params, items)
    return jnp.concatenate([mine(params, queries[s:s + 256], table, teacher_rows[s:s + 256])
                            for s in range(0, m, 256)])

  @jax.jit
  def step(params, opt_state, i, hard_rows):
    qrng, nrng = jax.random.split(jax.random.fold_in(rng, i))
    qi = jax.random.choice(qrng, m, (b,), replace=False)
    negs = jax.random.randint(nrng, (num_negatives,), 0, n)
    top = jnp.concatenate([teacher_rows[qi], hard_rows[qi]], axis=-1)      # (b, T + H)
    rows = jnp.concatenate([top, jnp.broadcast_to(negs, (b, num_negatives))], axis=-1)
    q = queries[qi]
    target = jax.nn.softmax(mol_scores_fn(q, rows).astype(jnp.float32) / teacher_temperature)
    target = jax.lax.stop_gradient(target)

    def loss_fn(p):
      hq = hindexer.apply({"params": p}, q, method=HIndexer.embed_queries)          # (b, h)
      h_top = hindexer.apply({"params": p}, items[top], method=HIndexer.embed_items)  # (b, T, h)
      h_neg = hindexer.apply({"params": p}, items[negs], method=HIndexer.embed_items)  # (R, h)
      logits = jnp.concatenate([hindexer.score(hq, h_top, "bh,bth->bt"),
                                hindexer.score(hq, h_neg, "bh,rh->br")], axis=-1) / temperature
      return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  hard_rows = jnp.zeros((m, 0), jnp.int32)
  for i in range(steps):
    if num_hard_negatives and i % mine_every == 0:
      hard_rows = mine_all(params)
    params, opt_state, loss = step(params, opt_state, i, hard_rows)
    if log is not None and (i + 1) % max(1, steps // 5) == 0:
      log(f"fit_hindexer step {i + 1}/{steps}: loss {float(loss):.4f}")
  return params


def _mine_hard_rows(hindexer: HIndexer, params, queries: Array, table: Array,
                    teacher_rows: Array, num: int) -> Array:
  """(b, num) int32: each query's stage-1 top rows of the (N, dim) item embeddings `table`,
  its `teacher_rows` excluded."""
  hq = hindexer.apply({"params": params}, queries, method=HIndexer.embed_queries)
  scores = hindexer.score(hq, table, "bd,nd->bn")
  scores = jax.vmap(lambda s, t: s.at[t].set(-jnp.inf))(scores, teacher_rows)
  return jax.lax.top_k(scores, num)[1].astype(jnp.int32)
