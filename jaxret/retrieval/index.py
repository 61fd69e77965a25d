"""Two-stage MoL retrieval index: stage-1 candidates by dot product, stage-2 MoL re-scoring.

Build once (from arrays, or from a trained `RetrievalModel` and its params), then::

  index = MoLIndex.from_model(model, params, quantization="int8")
  ids, scores = index.retrieve(queries, k=100, k_prime=2000, generator="avg")
  ref_ids, ref_scores = index.exact_mol_topk(queries, k=100)     # brute-force reference
  k_prime = index.choose_k_prime(held_out_queries, k=100, target_recall=0.99, generator="avg")

Stage-1 generators (`generator=`):
  * 'hindexer': dot product of dedicated low-dim embeddings (`HIndexer`), trained jointly
    (`HIndexedRetrievalModel`) or distilled post hoc (`MoLIndex.fit_hindexer`); with
    `HIndexer(num_probes=M)` an item's stage-1 score is the best of M query probes.
  * 'avg': dot product of the mean query MoL component with the mean item MoL component.
  * 'per_component': for each of the P = P_Q' * P_X (query component, item component)
    pairs, the top ceil(k'/P) items by `<f_a(q), g_b(x)>` (or `per_pair_k`); the P lists are
    concatenated (fixed shape P * m) and duplicates masked with -inf before stage 2.
    Always scanned blockwise (its (B * P, N) score matrix is P times the others').
Stage 2 gathers the candidates' precomputed MoL item sides `(B, k', P_X, d)` and gates
`(B, k', P)`, scores them with `MoLHead.score_sides` (fp32 or bf16) and takes the top k.

Item rows are 0..N-1; `item_ids[row]` (>= 0) is the id returned (1..N for a trained model,
where id 0 is padding; rows with id -1 pad a sharded index and are never returned). Missing
results (fewer than k distinct candidates) have id -1 and score -inf. Hashed user-id MoL
components are not supported (queries are vectors only). `index.sharded(mesh)` splits the
item rows over devices (`jaxret.retrieval.sharded`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxret.kernels import mol_pallas
from jaxret.models.heads import MoLHead, MoLItemSide, MoLQuerySide
from jaxret.retrieval import topk as topk_lib
from jaxret.retrieval.hindexer import HIndexer, embed_item_table, fit_hindexer
from jaxret.retrieval.quantization import QUANTIZATIONS, QuantizedTable, quantize

Array = jax.Array

GENERATORS = ("hindexer", "avg", "per_component")
MOL_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# Floats of one block of stage-1 scores in the blockwise scans (rows * block).
_BLOCK_ELEMS = 1 << 22
# (query, candidate) pairs per step of the stage-2 MoL re-scoring: one step's gathered
# components and gating activations stay small instead of a (B, k', P_X, d) gather of
# gigabytes. Idle 2-core CPU, B=256, 5000 random candidates each out of 1e6 (2026-12-02):
# 1.29 s at 2^15 pairs per step, 1.31-1.32 s at 2^12-2^14, 1.54 s at 2^16, 1.82 s at 2^17.
# With the candidates sorted by row (2026-12-04, B=256, 4096 each out of 1e6, ns per pair):
# 451 at 2^11, 502 at 2^12, 551 at 2^15 (unsorted: 670-717 at any of them). GPUs keep 2^15.
_RESCORE_PAIRS = 1 << 15
_RESCORE_PAIRS_CPU = 1 << 11
# Items per step of the exact MoL scan: 128 (2^15 pairs at B=256) took 17.9 s for B=256 over
# 1e5 items against 19.1 s at 512 (idle machine).
_EXACT_BLOCK = 128
EXACT_KERNELS = ("xla", "pallas")


@flax.struct.dataclass
class IndexArrays:
  """Every array of an index (a pytree; passed to the jitted functions as an argument).

  item_ids: (N,) int32 id of each row.
  item_components: (N, P_X, d) MoL item components (l2-normalised), float32.
  item_gate: (N, P) MoL item-only gating logits, or None without gating.
  head_params: the MoLHead's params.
  avg_table: QuantizedTable (N, d), mean item component.
  component_table: QuantizedTable (N * P_X, d), the item components one per row.
  hindexer_items: (N, h) float32 stage-1 item embeddings, or None.
  hindexer_table: QuantizedTable (N, h), or None.
  hindexer_params: the HIndexer's params, or None.
  """
  item_ids: Array
  item_components: Array
  item_gate: Array | None
  head_params: Any
  avg_table: QuantizedTable
  component_table: QuantizedTable
  hindexer_items: Array | None
  hindexer_table: QuantizedTable | None
  hindexer_params: Any


def _module_config(module) -> dict[str, Any]:
  cfg = {}
  for f in dataclasses.fields(module):
    if f.name in ("parent", "name"):
      continue
    v = getattr(module, f.name)
    cfg[f.name] = jnp.dtype(v).name if f.name == "dtype" else v
  return cfg


def _query_dim(head_params) -> int:
  for name in ("query_gate_proj", "query_out_proj"):
    if name in head_params:
      return int(head_params[name]["kernel"].shape[0])
  raise ValueError("head params lack query_out_proj: not the params of a MoLHead")


def _item_dim(head_params) -> int:
  for name in ("item_gate_proj", "item_out_proj"):
    if name in head_params:
      return int(head_params[name]["kernel"].shape[0])
  raise ValueError("head params lack item_out_proj: not the params of a MoLHead")


# Rows of item_vectors recomputed to check they are the index's own (spread over 0..N-1).
_ITEM_CHECK_ROWS = 64


def _dedupe_mask(rows: Array) -> Array:
  """(B, S) int rows -> (B, S) bool, True at the first occurrence of each row."""
  order = jnp.argsort(rows, axis=-1)
  srt = jnp.take_along_axis(rows, order, axis=-1)
  first = jnp.concatenate([jnp.ones_like(srt[:, :1], bool), srt[:, 1:] != srt[:, :-1]], -1)
  inverse = jnp.argsort(order, axis=-1)
  return jnp.take_along_axis(first, inverse, axis=-1)


def _block_for(rows: int, n: int) -> int:
  """Items per blockwise step so that one block holds about _BLOCK_ELEMS scores."""
  return int(max(128, min(n, _BLOCK_ELEMS // max(rows, 1))))


class MoLIndex:
  """A two-stage MoL retrieval index (see the module docstring).

  Attributes:
    head: the MoLHead (module config; params live in `arrays`).
    hindexer: the HIndexer towers, or None.
    arrays: IndexArrays.
    quantization: stage-1 table format, 'fp32', 'bf16' or 'int8'.
    mol_dtype: stage-2 computation dtype, 'fp32' or 'bf16'.
    exact_kernel: how `exact_mol_topk` scores an item block: 'xla' (`MoLHead.score_sides`)
      or 'pallas' (the fused `jaxret.kernels.mol_pallas.mol_scores`; gated heads, fp32).
    backend: stage-1 top-k backend, one of topk.BACKENDS (default:
      `topk.best_backend()` for the platform, k' and batch of each call).
    recall_target: of the 'approx' backend.
  """

  def __init__(self, head: MoLHead, arrays: IndexArrays, hindexer: HIndexer | None = None,
               quantization: str = "fp32", mol_dtype: str = "fp32",
               backend: str | None = None, recall_target: float = 0.95,
               exact_kernel: str = "xla"):
    if head.uses_user_components:
      raise ValueError("MoLIndex does not support hashed user-id MoL components")
    if exact_kernel not in EXACT_KERNELS:
      raise ValueError(f"unknown exact_kernel {exact_kernel!r}; valid: "
                       f"{', '.join(EXACT_KERNELS)}")
    if exact_kernel == "pallas" and (not head.gating or mol_dtype != "fp32"):
      raise ValueError("exact_kernel='pallas' needs a gated MoL head and mol_dtype='fp32'")
    if mol_dtype not in MOL_DTYPES:
      raise ValueError(f"unknown mol_dtype {mol_dtype!r}; valid: {', '.join(MOL_DTYPES)}")
    if backend is not None and backend not in topk_lib.BACKENDS:
      raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(topk_lib.BACKENDS)}")
    self.head = head
    self.hindexer = hindexer
    self.arrays = arrays
    self.quantization = quantization
    self.mol_dtype = mol_dtype
    self.backend_choice = backend                   # None: best_backend() per call
    self.recall_target = recall_target
    self.exact_kernel = exact_kernel
    self.query_dim = _query_dim(arrays.head_params)
    self._stage2_head = head.clone(dtype=MOL_DTYPES[mol_dtype], parent=None)
    self._fns: dict[tuple, Callable] = {}

  # ------------------------------------------------------------------------- building

  @classmethod
  def from_arrays(cls, head: MoLHead, head_params, item_vectors: Array | np.ndarray, *,
                  item_ids: Array | np.ndarray | None = None,
                  hindexer: HIndexer | None = None, hindexer_params=None,
                  quantization: str = "fp32", chunk: int = 8192, **kwargs) -> "MoLIndex":
    """Builds an index over item vectors.

    Args:
      head: a MoLHead; head_params: its params.
      item_vectors: (N, D_I) float item embeddings (the head's item input).
      item_ids: (N,) int ids returned for each row (default 0..N-1).
      hindexer, hindexer_params: optional stage-1 towers and their params.
      quantization: stage-1 table format.
      chunk: items per item-side computation.
      **kwargs: mol_dtype, backend, recall_target.

    Returns:
      MoLIndex.
    """
    items = np.asarray(item_vectors)
    if items.ndim != 2 or not np.issubdtype(items.dtype, np.floating):
      raise ValueError(f"item_vectors must be float (N, D_I), got {items.dtype} {items.shape}")
    n = items.shape[0]
    ids = np.arange(n, dtype=np.int32) if item_ids is None else np.asarray(item_ids, np.int32)
    if ids.shape != (n,):
      raise ValueError(f"item_ids must be ({n},), got shape {ids.shape}")
    if n and ids.min() < 0:
      raise ValueError(f"item_ids must be >= 0 (-1 marks a missing result), got {ids.min()}")
    side_fn = jax.jit(lambda p, x: head.apply({"params": p}, x, method=MoLHead.item_side))
    comps, gates = [], []
    for s in range(0, n, chunk):
      side = side_fn(head_params, jnp.asarray(items[s:s + chunk], jnp.float32))
      comps.append(np.asarray(side.components, np.float32))
      gates.append(None if side.gate is None else np.asarray(side.gate, np.float32))
    components = jnp.asarray(np.concatenate(comps))
    gate = None if gates[0] is None else jnp.asarray(np.concatenate(gates))
    h_items = None
    if hindexer is not None:
      if hindexer_params is None:
        raise ValueError("hindexer given without hindexer_params")
      h_items = embed_item_table(hindexer, hindexer_params, items, chunk)
    arrays = _make_arrays(jnp.asarray(ids), components, gate, head_params, h_items,
                          hindexer_params, quantization)
    return cls(head, arrays, hindexer, quantization, **kwargs)

  @classmethod
  def from_model(cls, model, params, **kwargs) -> "MoLIndex":
    """Builds an index over every item (ids 1..N) of a trained `RetrievalModel`.

    The model's head must be a MoLHead. With an `HIndexedRetrievalModel` the jointly
    trained towers (params['hindexer']) become the 'hindexer' generator.
    """
    if not isinstance(model.head, MoLHead):
      raise ValueError(f"MoLIndex needs a MoL head, got {type(model.head).__name__}")
    num_items = int(model.encoder.num_items)
    ids = jnp.arange(1, num_items + 1, dtype=jnp.int32)
    vectors = model.apply({"params": params}, ids,
                          method=lambda m, i: m.encoder.embed_items(i))
    hindexer = getattr(model, "hindexer", None)
    if hindexer is not None:
      kwargs.setdefault("hindexer", hindexer)
      kwargs.setdefault("hindexer_params", params["hindexer"])
    return cls.from_arrays(model.head, params["head"], vectors, item_ids=ids, **kwargs)

  def with_options(self, quantization: str | None = None, **kwargs) -> "MoLIndex":
    """A copy with another stage-1 quantization / mol_dtype / backend / recall_target /
    exact_kernel."""
    a = self.arrays
    q = quantization or self.quantization
    arrays = a if q == self.quantization else _make_arrays(
        a.item_ids, a.item_components, a.item_gate, a.head_params, a.hindexer_items,
        a.hindexer_params, q)
    opts = dict(mol_dtype=self.mol_dtype, backend=self.backend_choice,
                recall_target=self.recall_target, exact_kernel=self.exact_kernel)
    opts.update(kwargs)
    return MoLIndex(self.head, arrays, self.hindexer, q, **opts)

  def sharded(self, mesh, axis: str = "data"):
    """This index with its item rows split over `mesh[axis]` (a `ShardedMoLIndex`)."""
    from jaxret.retrieval.sharded import ShardedMoLIndex    # it builds on this module
    return ShardedMoLIndex(self, mesh, axis)

  def with_hindexer(self, hindexer: HIndexer, hindexer_params,
                    item_vectors: Array | np.ndarray, chunk: int = 8192) -> "MoLIndex":
    """A copy whose 'hindexer' generator uses the given towers over the (N, D_I) item
    vectors this index was built from (row r = item row r; checked)."""
    items = self._check_item_vectors(item_vectors)
    return self._with_hindexer(hindexer, hindexer_params, items, chunk)

  def _with_hindexer(self, hindexer: HIndexer, hindexer_params, items: np.ndarray,
                     chunk: int = 8192) -> "MoLIndex":
    h_items = embed_item_table(hindexer, hindexer_params, items, chunk)
    a = self.arrays
    arrays = _make_arrays(a.item_ids, a.item_components, a.item_gate, a.head_params,
                          h_items, hindexer_params, self.quantization)
    return MoLIndex(self.head, arrays, hindexer, self.quantization, mol_dtype=self.mol_dtype,
                    backend=self.backend_choice, recall_target=self.recall_target,
                    exact_kernel=self.exact_kernel)

  def fit_hindexer(self, query_vectors: Array | np.ndarray, item_vectors: Array | np.ndarray,
                   hindexer: HIndexer | None = None, teacher_k: int = 64,
                   teacher_k_prime: int | None = None, **fit_kwargs) -> "MoLIndex":
    """Distils stage-1 towers from this index's MoL and returns an index that uses them.

    Teacher lists are each training query's top `teacher_k` MoL items: exact when
    `teacher_k_prime` is None, else a two-stage 'avg' retrieve with that k' (cheaper).

    Args:
      query_vectors: (M, D_Q) training queries.
      item_vectors: (N, D_I) the vectors this index was built from.
      hindexer: towers to train (default HIndexer(dim=32)).
      teacher_k: teacher list length.
      teacher_k_prime: see above.
      **fit_kwargs: forwarded to `hindexer.fit_hindexer` (steps, batch_size, ...).
    """
    hindexer = hindexer or HIndexer(dim=32)
    items = self._check_item_vectors(item_vectors)
    q = np.asarray(query_vectors, np.float32)
    teacher = self._teacher_rows(q, teacher_k, teacher_k_prime, "avg")
    params = fit_hindexer(hindexer, q, items, self.mol_scores_fn(), teacher, **fit_kwargs)
    return self._with_hindexer(hindexer, params, items)

  def refine_hindexer(self, query_vectors: Array | np.ndarray, item_vectors: Array | np.ndarray,
                      teacher_k: int = 64, teacher_k_prime: int = 20000,
                      num_hard_negatives: int = 256, learning_rate: float = 1e-3,
                      **fit_kwargs) -> "MoLIndex":
    """Fine-tunes this index's h-indexer on the catalog it indexes; returns the refined index.

    A distilled h-indexer learns MoL's top items among the items of its fit; over a large
    catalog the top-k sit much further in the tail of MoL's scores. Here each training
    query's teacher list is its MoL top `teacher_k` over this index's own N items, found by a
    two-stage retrieve with the current h-indexer at k' = `teacher_k_prime` (the exact scan
    when that is >= N), and the hard negatives are mined from the same N items. Training
    starts from the current towers. Queries to evaluate on must not be among `query_vectors`.

    Args:
      query_vectors: (M, D_Q) training queries.
      item_vectors: (N, D_I) the vectors this index was built from (row r = item row r).
      teacher_k: teacher list length.
      teacher_k_prime: stage-1 candidates of the teacher's two-stage retrieve.
      num_hard_negatives, learning_rate, **fit_kwargs: forwarded to `fit_hindexer`.
    """
    if "hindexer" not in self.generators:
      raise ValueError("refine_hindexer needs an index with an h-indexer: fit one first "
                       "(fit_hindexer) or attach one (with_hindexer)")
    items = self._check_item_vectors(item_vectors)
    q = np.asarray(query_vectors, np.float32)
    k_prime = teacher_k_prime if teacher_k_prime < self.num_items else None
    teacher = self._teacher_rows(q, teacher_k, k_prime, "hindexer")
    params = fit_hindexer(self.hindexer, q, items, self.mol_scores_fn(), teacher,
                          params=self.arrays.hindexer_params,
                          num_hard_negatives=num_hard_negatives, learning_rate=learning_rate,
                          **fit_kwargs)
    return self._with_hindexer(self.hindexer, params, items)

  def _teacher_rows(self, queries: np.ndarray, k: int, k_prime: int | None,
                    generator: str, batch: int = 256) -> np.ndarray:
    """(M, k) rows of each query's MoL top k: exact when k_prime is None, else a two-stage
    retrieve with `generator` at k'."""
    rows = []
    for s in range(0, queries.shape[0], batch):
      qb = queries[s:s + batch]
      r = (self._exact_rows(qb, k) if k_prime is None
           else self._two_stage_rows(qb, k, k_prime, generator))
      rows.append(np.asarray(r))
    return np.concatenate(rows)

  # ------------------------------------------------------------------------- properties

  @property
  def backend(self) -> str:
    """The stage-1 backend: the one given, else the platform's default ('auto' choice)."""
    return self.backend_choice or topk_lib.best_backend()

  def stage1_backend(self, k_prime: int, num_scores: int) -> str:
    """The backend of a stage-1 call with k' results over B * N = num_scores scores."""
    return self.backend_choice or topk_lib.best_backend(k=k_prime, num_scores=num_scores)

  @property
  def num_items(self) -> int:
    return int(self.arrays.item_ids.shape[0])

  @property
  def generators(self) -> tuple[str, ...]:
    """The stage-1 generators this index can run."""
    has_h = self.arrays.hindexer_table is not None
    return tuple(g for g in GENERATORS if g != "hindexer" or has_h)

  # ------------------------------------------------------------------------- validation

  def _check_queries(self, queries) -> Array:
    q = jnp.asarray(queries)
    if q.ndim != 2 or q.shape[-1] != self.query_dim:
      raise ValueError(f"queries must be (B, {self.query_dim}), got shape {tuple(q.shape)}")
    if not jnp.issubdtype(q.dtype, jnp.floating):
      raise ValueError(f"queries must be float, got {q.dtype}")
    return q.astype(jnp.float32)

  def _check_item_vectors(self, item_vectors) -> np.ndarray:
    """(N, D_I) float32 item vectors, checked to be the ones this index was built from.

    The MoL item sides of a few rows spread over 0..N-1 are recomputed and compared with
    the stored ones: other vectors, or the right ones in another row order, would give a
    silently wrong stage 1.
    """
    items = np.asarray(item_vectors)
    n, d_i = self.num_items, _item_dim(self.arrays.head_params)
    if items.ndim != 2 or items.shape != (n, d_i) or not np.issubdtype(items.dtype,
                                                                        np.floating):
      raise ValueError(f"item_vectors must be the float (N={n}, D_I={d_i}) item vectors this "
                       f"index was built from, got {items.dtype} {items.shape}")
    items = items.astype(np.float32, copy=False)
    rows = np.unique(np.linspace(0, n - 1, min(n, _ITEM_CHECK_ROWS)).round().astype(np.int64))
    side = self.head.apply({"params": self.arrays.head_params}, jnp.asarray(items[rows]),
                           method=MoLHead.item_side)
    a = self.arrays
    pairs = [(side.components, a.item_components[rows])]
    if a.item_gate is not None:
      pairs.append((side.gate, a.item_gate[rows]))
    tol = 1e-3 if jnp.dtype(self.head.dtype) == jnp.float32 else 5e-2
    for got, stored in pairs:
      got, stored = np.asarray(got, np.float32), np.asarray(stored, np.float32)
      if not np.allclose(got, stored, rtol=tol, atol=tol):
        bad = int(rows[np.argmax(np.abs(got - stored).reshape(len(rows), -1).max(-1))])
        raise ValueError(
            f"item_vectors are not the vectors this index was built from: row {bad}'s MoL "
            "item side differs from the stored one. Pass the same (N, D_I) item vectors, in "
            "the index's row order (row r = the item with id item_ids[r])")
    return items

  def _check_k(self, k: int, k_prime: int | None = None) -> None:
    n = self.num_items
    if not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"k must be a positive int, got {k!r}")
    if k > n:
      raise ValueError(f"k={k} exceeds the {n} items of the index")
    if k_prime is not None:
      if k_prime > n:
        raise ValueError(f"k_prime={k_prime} exceeds the {n} items of the index")
      if k > k_prime:
        raise ValueError(f"k={k} exceeds k_prime={k_prime}; stage 2 needs k <= k_prime")

  def _check_generator(self, generator: str) -> None:
    if generator not in GENERATORS:
      raise ValueError(f"unknown generator {generator!r}; valid: {', '.join(GENERATORS)}")
    if generator not in self.generators:
      raise ValueError("generator 'hindexer' needs an index built with a hindexer "
                       "(HIndexedRetrievalModel, hindexer= or fit_hindexer)")

  # ------------------------------------------------------------------------- pure pieces

  def _q_side(self, arrays: IndexArrays, q: Array) -> MoLQuerySide:
    return self.head.apply({"params": arrays.head_params}, q, method=MoLHead.query_side)

  def _mol_scores(self, arrays: IndexArrays, q_side: MoLQuerySide, rows: Array) -> Array:
    """MoL scores of (B, S) candidate rows -> (B, S) float32, in chunks of candidates."""
    b, s = rows.shape
    pairs = _RESCORE_PAIRS_CPU if jax.default_backend() == "cpu" else _RESCORE_PAIRS
    chunk = max(1, min(s, pairs // max(b, 1)))
    if chunk >= s:
      return self._mol_scores_chunk(arrays, q_side, rows)
    num_chunks = -(-s // chunk)
    padded = jnp.pad(rows, ((0, 0), (0, num_chunks * chunk - s)))      # row 0: sliced off
    chunks = padded.reshape(b, num_chunks, chunk).transpose(1, 0, 2)   # (C, B, chunk)
    scores = jax.lax.map(lambda r: self._mol_scores_chunk(arrays, q_side, r), chunks)
    return scores.transpose(1, 0, 2).reshape(b, -1)[:, :s]

  def _mol_scores_chunk(self, arrays: IndexArrays, q_side: MoLQuerySide, rows: Array) -> Array:
    """MoL scores of (B, S) candidate rows -> (B, S) float32, in one piece."""
    dt = MOL_DTYPES[self.mol_dtype]
    n, p_x, d = arrays.item_components.shape
    # Rows of the (N, P_X * d) view: XLA:CPU gathers whole rows ~3x faster than (P_X, d) slices.
    comps = arrays.item_components.reshape(n, p_x * d)[rows].reshape(rows.shape + (p_x, d))
    comps = comps.astype(dt)                                              # (B, S, P_X, d)
    gate = None if arrays.item_gate is None else arrays.item_gate[rows].astype(dt)
    q_side = MoLQuerySide(q_side.components.astype(dt),
                          None if q_side.gate is None else q_side.gate.astype(dt))
    s = self._stage2_head.apply({"params": arrays.head_params}, q_side,
                                MoLItemSide(comps, gate), method=MoLHead.score_sides)
    return s.astype(jnp.float32)

  def _stage1(self, arrays: IndexArrays, q: Array, q_side: MoLQuerySide, k_prime: int,
              generator: str, per_pair_k: int | None,
              sort: bool = True) -> tuple[Array, Array]:
    """Candidate rows (B, S) and validity (B, S) bool; `sort=False`: in any order."""
    b = q.shape[0]
    if generator in ("avg", "hindexer"):
      if generator == "avg":
        sq, table = jnp.mean(q_side.components.astype(jnp.float32), axis=-2), arrays.avg_table
      else:
        sq = self.hindexer.apply({"params": arrays.hindexer_params}, q,
                                 method=HIndexer.embed_queries)
        table = arrays.hindexer_table
      rows = b * (sq.shape[1] if sq.ndim == 3 else 1)                  # query probes
      backend = self.stage1_backend(k_prime, rows * table.num_rows)
      top = topk_lib.dot_topk(sq, table, k_prime, backend,
                              _block_for(rows, table.num_rows), self.recall_target, sort)
      return top.ids, jnp.ones(top.ids.shape, bool)
    # per_component: (B * P) rows of pair scores, top-m per pair.
    p_x = self.head.num_item_components
    n = self.num_items
    m = per_pair_k or math.ceil(k_prime / self.head.num_logits)
    m = min(m, n)
    tab = arrays.component_table
    values = tab.values.reshape(n, p_x, -1)
    scale = None if tab.scale is None else tab.scale.reshape(n, p_x)
    qc = q_side.components.astype(jnp.float32)                          # (B, P_Q', d)

    def score_fn(ids: Array) -> Array:
      rows = jnp.minimum(ids, n - 1)                                    # last block: masked
      v = values[rows].astype(jnp.float32)                              # (blk, P_X, d)
      s = jnp.einsum("bqd,nxd->bqxn", qc, v)                            # (B, P_Q', P_X, blk)
      if scale is not None:
        s = s * scale[rows].T[None, None]
      return s.reshape(-1, ids.shape[0])                                # (B * P, blk)

    rows_per_block = b * self.head.num_logits
    top = topk_lib.blockwise_topk(score_fn, n, m, _block_for(rows_per_block, n))
    rows = top.ids.reshape(b, -1)                                       # (B, P * m)
    return rows, _dedupe_mask(rows)

  def _finish(self, arrays: IndexArrays, rows: Array, scores: Array, k: int):
    vals, pos = jax.lax.top_k(scores, k)
    best = jnp.take_along_axis(rows, pos, axis=-1)
    ids = jnp.where(jnp.isfinite(vals), arrays.item_ids[best], -1)
    return ids, vals

  def _rescored_candidates(self, arrays: IndexArrays, q: Array, k_prime: int, generator: str,
                           per_pair_k: int | None) -> tuple[Array, Array]:
    """Stage 1's candidate rows (B, S), in row order, and their MoL scores (-inf: invalid)."""
    q_side = self._q_side(arrays, q)
    rows, valid = self._stage1(arrays, q, q_side, k_prime, generator, per_pair_k, sort=False)
    # Candidates in row order: the stage-2 gathers then read the item table front to back,
    # ~20-35% faster per pair on a 2-core CPU at 1e6 items than in stage 1's score order.
    rows, valid = jax.lax.sort((rows, valid), dimension=-1, num_keys=1)
    valid = valid & (arrays.item_ids[rows] >= 0)                      # padding rows: id -1
    return rows, jnp.where(valid, self._mol_scores(arrays, q_side, rows), -jnp.inf)

  def _two_stage(self, arrays: IndexArrays, q: Array, k: int, k_prime: int, generator: str,
                 per_pair_k: int | None):
    rows, scores = self._rescored_candidates(arrays, q, k_prime, generator, per_pair_k)
    return self._finish(arrays, rows, scores, k)

  def _exact(self, arrays: IndexArrays, q: Array, k: int, block: int):
    q_side = self._q_side(arrays, q)
    n = self.num_items

    def score_fn(ids: Array) -> Array:
      rows = jnp.minimum(ids, n - 1)
      gate = None if arrays.item_gate is None else arrays.item_gate[rows]
      side = MoLItemSide(arrays.item_components[rows], gate)           # (blk, P_X, d)
      if self.exact_kernel == "pallas":
        s = mol_pallas.mol_scores(self.head, arrays.head_params, q_side, side)
      else:
        dt = MOL_DTYPES[self.mol_dtype]
        side = jax.tree.map(lambda x: x.astype(dt), side)
        qs = jax.tree.map(lambda x: x.astype(dt), q_side)
        s = self._stage2_head.apply({"params": arrays.head_params}, qs, side,
                                    method=MoLHead.score_sides)       # (B, blk)
      return jnp.where(arrays.item_ids[rows] >= 0, s, -jnp.inf)        # padding rows: id -1

    top = topk_lib.blockwise_topk(score_fn, n, k, block)
    ids = jnp.where(jnp.isfinite(top.scores), arrays.item_ids[top.ids], -1)
    return ids, top.scores, top.ids

  def _jitted(self, key: tuple, fn: Callable) -> Callable:
    if key not in self._fns:
      self._fns[key] = jax.jit(fn)
    return self._fns[key]

  # ------------------------------------------------------------------------- public API

  def retrieve(self, queries: Array | np.ndarray, k: int, k_prime: int,
               generator: str = "avg", per_pair_k: int | None = None) -> tuple[Array, Array]:
    """Two-stage top-k (jitted; compiled once per (B, k, k_prime, generator)).

    Args:
      queries: (B, D_Q) float query vectors (the encoder's output).
      k: results per query, 1 <= k <= k_prime.
      k_prime: stage-1 candidates per query, <= N.
      generator: 'hindexer', 'avg' or 'per_component'.
      per_pair_k: per_component only: list length per pair (default ceil(k' / P)).

    Returns:
      ids (B, k) int32 item ids (-1 where missing) and scores (B, k) float32 MoL scores,
      best first.
    """
    q = self._check_queries(queries)
    self._check_k(k, k_prime)
    self._check_generator(generator)
    if per_pair_k is not None and not 1 <= per_pair_k <= self.num_items:
      raise ValueError(f"per_pair_k must lie in [1, {self.num_items}], got {per_pair_k}")
    key = ("two_stage", k, k_prime, generator, per_pair_k)
    fn = self._jitted(key, lambda a, x: self._two_stage(a, x, k, k_prime, generator,
                                                        per_pair_k))
    return fn(self.arrays, q)

  def stage1(self, queries: Array | np.ndarray, k_prime: int,
             generator: str = "avg") -> tuple[Array, Array]:
    """Stage 1 alone (jitted): candidate item ids (B, S) and validity (B, S) bool.

    S = k' for 'avg' / 'hindexer', P * ceil(k' / P) for 'per_component'.
    """
    q = self._check_queries(queries)
    self._check_k(1, k_prime)
    self._check_generator(generator)

    def fn(a, x):
      rows, valid = self._stage1(a, x, self._q_side(a, x), k_prime, generator, None)
      return a.item_ids[rows], valid

    return self._jitted(("stage1", k_prime, generator), fn)(self.arrays, q)

  def _exact_rows(self, queries, k: int, block: int = _EXACT_BLOCK) -> Array:
    q = self._check_queries(queries)
    self._check_k(k)
    fn = self._jitted(("exact", k, block), lambda a, x: self._exact(a, x, k, block))
    return fn(self.arrays, q)[2]

  def _two_stage_rows(self, queries, k: int, k_prime: int, generator: str) -> Array:
    q = self._check_queries(queries)
    self._check_k(k, k_prime)

    def fn(a, x):
      rows, scores = self._rescored_candidates(a, x, k_prime, generator, None)
      _, pos = jax.lax.top_k(scores, k)
      return jnp.take_along_axis(rows, pos, axis=-1)

    return self._jitted(("two_stage_rows", k, k_prime, generator), fn)(self.arrays, q)

  def exact_mol_topk(self, queries: Array | np.ndarray, k: int,
                     block: int = _EXACT_BLOCK) -> tuple[Array, Array]:
    """Brute-force MoL top-k over all N items, `block` items at a time (the reference).

    Args:
      queries: (B, D_Q) float.
      k: results per query, <= N.
      block: items scored per step (memory ~ B * block * max(P, gating_hidden) floats).

    Returns:
      ids (B, k) int32 item ids and scores (B, k) float32, best first.
    """
    q = self._check_queries(queries)
    self._check_k(k)
    fn = self._jitted(("exact", k, block), lambda a, x: self._exact(a, x, k, block))
    ids, scores, _ = fn(self.arrays, q)
    return ids, scores

  def recall_curve(self, queries: Array | np.ndarray, k: int, k_primes, generator: str,
                   batch: int = 256, stop_at: float | None = None) -> dict[int, float]:
    """Relative recall@k of the two-stage result against the exact MoL top-k, per k'.

    The recall of a query is |two-stage top-k ∩ exact top-k| / k; the curve is its mean
    over `queries` (scored `batch` at a time; the last batch is padded, not recompiled).
    Use queries that stand for the traffic the index serves, not those its h-indexer was
    fitted on.

    Args:
      queries: (M, D_Q) float query vectors.
      k: results per query.
      k_primes: stage-1 candidate counts, each in [k, N].
      generator: stage-1 generator.
      batch: queries per call.
      stop_at: measure k' in increasing order and stop after the first whose recall
        reaches this (None: measure all).

    Returns:
      {k': mean relative recall@k}, in increasing k'.
    """
    q = np.asarray(self._check_queries(queries))
    if q.shape[0] == 0:
      raise ValueError("recall_curve needs at least one query, got 0")
    self._check_generator(generator)
    k_primes = sorted({int(kp) for kp in k_primes})
    if not k_primes:
      raise ValueError("k_primes is empty: give the stage-1 candidate counts to measure")
    for kp in k_primes:
      self._check_k(k, kp)
    if not isinstance(batch, (int, np.integer)) or batch < 1:
      raise ValueError(f"batch must be a positive int, got {batch!r}")
    batches = []                                 # (padded queries, real rows, exact top-k)
    for s in range(0, q.shape[0], batch):
      qb = q[s:s + batch]
      m = qb.shape[0]
      if m < batch and q.shape[0] > batch:
        qb = np.concatenate([qb, np.repeat(qb[-1:], batch - m, axis=0)])
      batches.append((qb, m, np.asarray(self.exact_mol_topk(qb, k)[0])[:m]))
    curve = {}
    for kp in k_primes:
      hits = 0
      for qb, m, exact in batches:
        got = np.asarray(self.retrieve(qb, k, kp, generator)[0])[:m]
        hits += sum(len(np.intersect1d(g[g >= 0], e[e >= 0])) for g, e in zip(got, exact))
      curve[kp] = hits / (q.shape[0] * k)
      if stop_at is not None and curve[kp] >= stop_at:
        break
    return curve

  def default_k_primes(self, k: int) -> list[int]:
    """k * 1, 2, 5, 10, 20, 50, ... below N, then N: the k' that `choose_k_prime` tries."""
    self._check_k(k)
    k_primes, step = [], 0
    while (kp := k * (1, 2, 5)[step % 3] * 10 ** (step // 3)) < self.num_items:
      k_primes.append(kp)
      step += 1
    return k_primes + [self.num_items]

  def choose_k_prime(self, queries: Array | np.ndarray, k: int, target_recall: float,
                     generator: str, k_primes=None, batch: int = 256) -> int:
    """The smallest k' whose relative recall@k (see `recall_curve`) reaches `target_recall`.

    Args:
      queries, k, generator, batch: as in `recall_curve`.
      target_recall: in (0, 1].
      k_primes: candidate k' to try, smallest first, stopping at the first that reaches the
        target (default k * 1, 2, 5, 10, 20, 50, ... below N, and N).

    Raises:
      ValueError: no k' reaches the target (the message names the best one measured).
    """
    if not 0 < target_recall <= 1:
      raise ValueError(f"target_recall must lie in (0, 1], got {target_recall!r}")
    if k_primes is None:
      k_primes = self.default_k_primes(k)
    curve = self.recall_curve(queries, k, k_primes, generator, batch, stop_at=target_recall)
    for kp, r in curve.items():
      if r >= target_recall:
        return kp
    best = max(curve, key=lambda kp: (curve[kp], -kp))
    raise ValueError(f"no k' reaches relative recall@{k} {target_recall} with generator "
                     f"{generator!r}: the best is {curve[best]:.4f} at k'={best} (of "
                     f"{', '.join(map(str, curve))}); try larger k' or a better stage 1 "
                     "(e.g. fit_hindexer / refine_hindexer)")

  def mol_scores_fn(self) -> Callable[[Array, Array], Array]:
    """(queries (b, D_Q), rows (b, C) int32) -> (b, C) MoL scores (jittable)."""
    arrays = self.arrays

    def fn(q: Array, rows: Array) -> Array:
      return self._mol_scores(arrays, self._q_side(arrays, q), rows)

    return fn

  def stage1_query_embeddings(self, queries: Array | np.ndarray, generator: str) -> Array:
    """(B, D_Q) -> (B, d_1) stage-1 query embeddings for 'avg' or 'hindexer'
    ((B, M, d_1) for a hindexer with M > 1 probes)."""
    q = self._check_queries(queries)
    self._check_generator(generator)
    if generator == "per_component":
      raise ValueError("per_component has P query embeddings per query; use 'avg'/'hindexer'")

    def fn(a, x):
      if generator == "avg":
        return jnp.mean(self._q_side(a, x).components.astype(jnp.float32), axis=-2)
      return self.hindexer.apply({"params": a.hindexer_params}, x,
                                 method=HIndexer.embed_queries)

    return self._jitted(("s1q", generator), fn)(self.arrays, q)

  def stage1_table(self, generator: str) -> QuantizedTable:
    """The (N, d_1) stage-1 item table of 'avg' or 'hindexer'."""
    self._check_generator(generator)
    if generator == "per_component":
      return self.arrays.component_table
    return self.arrays.avg_table if generator == "avg" else self.arrays.hindexer_table

  # ------------------------------------------------------------------------- save / load

  def save(self, path: str | Path) -> Path:
    """Writes the index to one `.npz` (arrays, params and a JSON config)."""
    path = Path(path)
    if path.suffix != ".npz":
      path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    a = self.arrays
    out: dict[str, np.ndarray] = {
        "item_ids": np.asarray(a.item_ids), "item_components": np.asarray(a.item_components)}
    if a.item_gate is not None:
      out["item_gate"] = np.asarray(a.item_gate)
    for k, v in traverse_util.flatten_dict(a.head_params, sep="/").items():
      out[f"head_params/{k}"] = np.asarray(v)
    if a.hindexer_params is not None:
      out["hindexer_items"] = np.asarray(a.hindexer_items)
      for k, v in traverse_util.flatten_dict(a.hindexer_params, sep="/").items():
        out[f"hindexer_params/{k}"] = np.asarray(v)
    meta = {"head": _module_config(self.head),
            "hindexer": None if self.hindexer is None else _module_config(self.hindexer),
            "quantization": self.quantization, "mol_dtype": self.mol_dtype,
            "backend": self.backend_choice, "recall_target": self.recall_target,
            "exact_kernel": self.exact_kernel}
    out["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return path

  @classmethod
  def load(cls, path: str | Path, **overrides) -> "MoLIndex":
    """Reads an index written by `save` (`overrides`: quantization, backend, ...)."""
    with np.load(Path(path), allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
    meta = json.loads(data.pop("__meta__").tobytes().decode())
    head_cfg = dict(meta["head"])
    head_cfg["dtype"] = jnp.dtype(head_cfg["dtype"])
    head = MoLHead(**head_cfg)
    hindexer = None if meta["hindexer"] is None else HIndexer(**meta["hindexer"])

    def params_of(prefix: str):
      flat = {k[len(prefix):]: jnp.asarray(v) for k, v in data.items() if k.startswith(prefix)}
      return traverse_util.unflatten_dict(flat, sep="/") if flat else None

    quantization = overrides.pop("quantization", meta["quantization"])
    opts = {k: meta[k] for k in ("mol_dtype", "backend", "recall_target")}
    opts["exact_kernel"] = meta.get("exact_kernel", "xla")           # files before 2026-12-07
    opts.update(overrides)
    gate = data.get("item_gate")
    h_items = data.get("hindexer_items")
    arrays = _make_arrays(jnp.asarray(data["item_ids"]), jnp.asarray(data["item_components"]),
                          None if gate is None else jnp.asarray(gate),
                          params_of("head_params/"),
                          None if h_items is None else jnp.asarray(h_items),
                          params_of("hindexer_params/"), quantization)
    return cls(head, arrays, hindexer, quantization, **opts)


def _make_arrays(item_ids, components, gate, head_params, h_items, h_params,
                 quantization: str) -> IndexArrays:
  if quantization not in QUANTIZATIONS:
    raise ValueError(f"unknown quantization {quantization!r}; valid: {', '.join(QUANTIZATIONS)}")
  n, p_x, d = components.shape
  avg = quantize(jnp.mean(components.astype(jnp.float32), axis=1), quantization)
  comp = quantize(components.reshape(n * p_x, d), quantization)
  h_table = None if h_items is None else quantize(h_items, quantization)
  return IndexArrays(item_ids, components, gate, head_params, avg, comp, h_items, h_table,
                     h_params)
