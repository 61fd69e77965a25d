"""Top-k backends behind one interface, plus a blockwise scan and a sharded variant.

Every backend returns `TopK(scores (B, k), ids (B, k))`, best first:

  * `exact_topk(scores, k)`: `jax.lax.top_k` over a materialised `(B, N)` score matrix.
  * `grouped_topk(scores, k, group)`: the same exact result from a full matrix in two
    smaller top-k calls: one over the maxima of `group` consecutive columns, one over the
    columns of the k best groups (on CPU a `lax.top_k` costs ~5 ns per score scanned,
    a max reduction ~0.2 ns).
  * `select_topk(scores, k, group)`: `grouped_topk`'s two steps with each `lax.top_k`
    replaced by a host introselect (`numpy.argpartition` through a host callback, rows
    split over threads) and a sort of the k winners: O(N) per row where XLA:CPU's top-k
    grows with k. For CPU; on an accelerator the callback would copy the scores to the host.
  * `approx_topk(scores, k, recall_target)`: `jax.lax.approx_max_k`; its fast path exists on
    TPU only, on CPU and GPU XLA lowers it to an exact sort (slower than `top_k`).
  * `blockwise_topk(score_fn, num_items, k, block)`: scans the items in blocks of `block`,
    keeping a running `(B, k)` top-k, so the `(B, N)` score matrix never exists.
    `blockwise_dot_topk` is the same scan over a (quantised) embedding table, slicing the
    table instead of gathering rows.
  * `sharded_topk(queries, table, k, mesh)`: the table's rows are split over the mesh's
    'data' axis; each device takes its local top-k, the `(B, k)` results are all-gathered
    and merged. One code path for 1 and N devices.

`best_backend()` names the backend measured fastest on the current platform (and k).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

try:                                     # a jax without it uses pure_callback
  from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:
  _buffer_callback = None

from jaxret import allocator
from jaxret.retrieval.quantization import QuantizedTable

Array = jax.Array

BACKENDS = ("exact", "approx", "blockwise", "grouped", "select")

# CPU (scripts/bench_retrieval.py, results/machine.json; 2-core AMD EPYC, jax 0.10.2, B=256,
#   d=64, N=1e6, fp32): k=100: blockwise 741 q/s (group maxima, see blockwise_dot_topk),
#   exact 291, approx 291, faiss IndexFlatIP 142. But the running top-k costs grow with k
#   (k=10,000: exact 2.5 s, blockwise 13-33 s per batch), so for k > _CPU_BLOCKWISE_MAX_K the
#   CPU default is the full matrix (while it fits in _CPU_EXACT_MAX_SCORES) reduced by
#   `select_topk` (scripts/bench_topk.py, B=256, N=1e6, group 16, idle machine, 2026-12-02):
#   k=1000 / 5000 / 10000 in 0.26 / 0.69 / 1.05 s, against `grouped_topk`'s 0.29 / 1.35 /
#   2.62 s and one `lax.top_k`'s 0.82 / 1.90 / 2.66 s. Its group size follows k
#   (`select_group`): at k=1000 / 5000 / 10000 / 20000, groups of 32 / 16 / 8 / 8 were the
#   fastest of 8, 16, 32, 1.48x / 1x / 1.16x / 1.31x faster than groups of 16 (2026-12-07,
#   machine loaded by two other jobs). Its host selects read XLA's buffers in place
#   (`buffer_callback`); stage 1 at k=1000 / 2000 / 5000 / 10000 / 20000 (matmul included)
#   became 1.11x / 1.25x / 1.12x / 1.44x / 1.71x faster than with pure_callback and groups
#   of 16 (same loaded machine, same run). With `jaxret.allocator.tune_allocator` the 1 GB
#   full matrix stays in the heap instead of being mapped and faulted in per call; then at
#   k=100, N=1e6, B=256 (results/diagnostics/bench_retrieval_mol_s0_refined, idle 2-core AMD
#   EPYC, 2026-12-07) `select` ran 2,112 q/s against blockwise 1,230, grouped 583, exact
#   419, approx 409, so with a kept heap the CPU default is `select` at every k.
# GPU (results/gpu/, one H200, jax 0.11.2, B=256): `grouped_topk` over the full matrix.
#   N=1e6: 1.7 / 2.1 / 4.8 ms at k=100 / 1000 / 10000 against one `lax.top_k`'s 17 ms
#   (10x / 8x / 3.5x); stage 1 at k=100, N=1e5: grouped 496k q/s, blockwise 425k, exact 119k.
#   Above _GPU_FULL_MAX_SCORES the matrix is not materialised (blockwise; not measured there).
# TPU: `approx_max_k` has a dedicated partial-reduce fast path (not measured here).
_BEST = {"cpu": "blockwise", "gpu": "grouped", "cuda": "grouped", "rocm": "grouped",
         "tpu": "approx"}
_CPU_BLOCKWISE_MAX_K = 512
_CPU_EXACT_MAX_SCORES = 1 << 28                 # 1 GiB of float32 scores
_GPU_FULL_MAX_SCORES = 1 << 31                  # 8 GiB of float32 scores


class TopK(NamedTuple):
  """Top-k result, best first.

  scores: (B, k) float32.
  ids: (B, k) int32 item rows (0-based positions in the scored table).
  """
  scores: Array
  ids: Array


def best_backend(platform: str | None = None, k: int | None = None,
                 num_scores: int | None = None, heap_kept: bool | None = None) -> str:
  """The backend measured fastest on `platform` (default: jax's default backend).

  Args:
    platform: 'cpu', 'gpu', 'tpu', ... (default: jax's default backend).
    k: results per query, when known (on CPU a large k favours one full top-k).
    num_scores: B * N of the call, when known (bounds the full matrix on CPU).
    heap_kept: CPU: whether the process keeps freed heap pages
      (`jaxret.allocator.tune_allocator`; default: whether it was applied). Then a full
      score matrix costs no fresh page faults per call and `select` is fastest at any k.
  """
  platform = platform or jax.default_backend()
  best = _BEST.get(platform, "exact")
  if heap_kept is None:
    heap_kept = allocator.heap_kept()
  if (best == "blockwise" and (heap_kept or (k is not None and k > _CPU_BLOCKWISE_MAX_K))
      and (num_scores is None or num_scores <= _CPU_EXACT_MAX_SCORES)):
    return "select"
  if best == "grouped" and num_scores is not None and num_scores > _GPU_FULL_MAX_SCORES:
    return "blockwise"
  return best


def exact_topk(scores: Array, k: int) -> TopK:
  """Exact top-k of a full score matrix.

  Args:
    scores: (B, N) float.
    k: number of results, <= N.

  Returns:
    TopK with (B, k) scores (float32) and ids (int32).
  """
  vals, ids = jax.lax.top_k(scores, k)
  return TopK(vals.astype(jnp.float32), ids.astype(jnp.int32))


def grouped_topk(scores: Array, k: int, group: int = 16) -> TopK:
  """Exact top-k of a full score matrix through group maxima (ties aside).

  The columns are cut into groups of `group` consecutive ones; the k groups with the best
  maxima hold every top-k column (a column outside them is beaten by k group maxima), so
  one top-k over the N / group maxima and one over those k groups' k * group columns give
  the result. Falls back to `exact_topk` unless the two calls scan under half the scores.

  Args:
    scores: (B, N) float.
    k: number of results, <= N.
    group: columns per group.

  Returns:
    TopK with (B, k) scores (float32) and ids (int32), best first.
  """
  return _grouped_two_step(scores, k, group, _lax_columns)


def _lax_columns(x: Array, k: int, sort: bool = True) -> Array:
  """(B, M) -> (B, k) int32 columns of the k largest, best first, by `lax.top_k`."""
  return jax.lax.top_k(x, k)[1].astype(jnp.int32)


def _grouped_two_step(scores: Array, k: int, group: int,
                      columns: Callable[[Array, int, bool], Array], sort: bool = True) -> TopK:
  """`grouped_topk` / `select_topk` with `columns(x, k, sort)` picking each step's k best.

  One pick over the full rows when the two steps would not scan under half the scores.
  `sort=False` leaves the final k in any order, when `columns` can skip ordering them.
  """
  b, n = scores.shape
  if k > n:
    raise ValueError(f"k={k} exceeds the {n} columns")
  scores = scores.astype(jnp.float32)
  num_groups = -(-n // group)
  if group <= 1 or num_groups + k * group >= n // 2:
    cols = columns(scores, k, sort)
    return TopK(jnp.take_along_axis(scores, cols, axis=-1), cols)
  if n % group:                        # only a ragged last group needs a padded copy
    scores = jnp.pad(scores, ((0, 0), (0, num_groups * group - n)), constant_values=-jnp.inf)
  grouped = scores.reshape(b, num_groups, group)
  best = columns(grouped.max(axis=-1), k, False)                         # (B, k) groups
  cand = jnp.take_along_axis(grouped, best[:, :, None], axis=1).reshape(b, k * group)
  pos = columns(cand, k, sort)
  cols = (best[:, :, None] * group + jnp.arange(group, dtype=best.dtype)).reshape(b, -1)
  return TopK(jnp.take_along_axis(cand, pos, axis=-1),
              jnp.take_along_axis(cols, pos, axis=-1).astype(jnp.int32))


_HOST_THREADS = max(1, os.cpu_count() or 1)


@functools.cache
def _host_pool() -> ThreadPoolExecutor:
  return ThreadPoolExecutor(_HOST_THREADS, thread_name_prefix="jaxret-topk")


def host_topk_columns(x: np.ndarray, k: int, sort: bool = True,
                      out: np.ndarray | None = None) -> np.ndarray:
  """Columns of each row's k largest values (ties in any order), on the host.

  numpy's introselect (`argpartition`, which releases the GIL) on row slices spread over
  a thread pool, then (with `sort`) a sort of the k selected values, best first.

  Args:
    x: (B, M) array.
    k: 1 <= k <= M.
    sort: order the k columns best first (else in any order).
    out: (B, k) int32 array to write into (default: a new one).

  Returns:
    (B, k) int32, `out` when given.
  """
  x = np.asarray(x)
  b, m = x.shape
  out = np.empty((b, k), np.int32) if out is None else out

  def rows(start: int, stop: int) -> None:
    part = x[start:stop]
    cols = np.argpartition(part, m - k, axis=1)[:, m - k:] if k < m else \
        np.broadcast_to(np.arange(m), part.shape)
    if sort:
      order = np.argsort(-np.take_along_axis(part, cols, axis=1), axis=1)
      cols = np.take_along_axis(cols, order, axis=1)
    out[start:stop] = cols

  workers = min(b, _HOST_THREADS) if b else 1
  step = -(-b // workers) if b else 1
  list(_host_pool().map(lambda s: rows(s, min(b, s + step)), range(0, b, step)))
  return out


def _select_columns(scores: Array, k: int, sort: bool = True) -> Array:
  """(B, M) -> (B, k) int32 columns of the k largest via `host_topk_columns`.

  On CPU through `buffer_callback`, which hands the host XLA's own buffers: `pure_callback`
  first copies each operand into a fresh array (~2 s per 328 MB on a loaded 2-core machine,
  mostly page faults), which made the second select mostly transfer at large k.
  """
  out = jax.ShapeDtypeStruct(scores.shape[:1] + (k,), jnp.int32)
  if _buffer_callback is not None and jax.default_backend() == "cpu":
    def fill(ctx, result, x):
      host_topk_columns(np.asarray(x), k, sort, out=np.asarray(result))
    return _buffer_callback(fill, out, vmap_method="sequential")(scores)
  return jax.pure_callback(lambda x: host_topk_columns(x, k, sort), out, scores,
                           vmap_method="sequential")


def select_group(n: int, k: int) -> int:
  """The group size of `select_topk` for k of n columns.

  Each host select costs about its number of columns, here N / group + k * group, least at
  group = sqrt(N / k); the candidates are powers of two from 2 to 256, and a group that
  does not divide N pays for a padded copy of the N columns.
  """
  def cost(g: int) -> int:
    return -(-n // g) + k * g + (n if n % g else 0)
  return min((1 << e for e in range(1, 9)), key=cost)


def select_topk(scores: Array, k: int, group: int | None = None, sort: bool = True) -> TopK:
  """Exact top-k of a full score matrix with host selects (ties aside); for CPU.

  As `grouped_topk` (the k best of the N / group group maxima, then the k best of those
  groups' k * group columns), but each step is `host_topk_columns` instead of `lax.top_k`,
  whose cost on XLA:CPU grows with k. Without enough groups to halve the work it is one
  host select over the full rows.

  Args:
    scores: (B, N) float.
    k: number of results, <= N.
    group: columns per group (default `select_group(N, k)`).
    sort: order the result best first; False skips that sort (two thirds of the host
      work at k=5,000), for callers that only need the set.

  Returns:
    TopK with (B, k) scores (float32) and ids (int32), best first when `sort`.
  """
  if group is None:
    group = select_group(scores.shape[-1], k)
  return _grouped_two_step(scores, k, group, _select_columns, sort)


def approx_topk(scores: Array, k: int, recall_target: float = 0.95) -> TopK:
  """Approximate top-k (`jax.lax.approx_max_k`): exact on CPU/GPU, fast on TPU.

  Args:
    scores: (B, N) float.
    k: number of results, <= N.
    recall_target: expected recall of the TPU partial reduction (ignored elsewhere).

  Returns:
    TopK with (B, k) scores and ids.
  """
  vals, ids = jax.lax.approx_max_k(scores, k, recall_target=recall_target)
  return TopK(vals.astype(jnp.float32), ids.astype(jnp.int32))


def merge_topk(a: TopK, b: TopK, k: int) -> TopK:
  """Merges two top lists of the same rows into one top-k.

  Args:
    a, b: TopK with (B, k_a) and (B, k_b) entries; k <= k_a + k_b.
    k: size of the merged list.

  Returns:
    TopK (B, k).
  """
  vals = jnp.concatenate([a.scores, b.scores], axis=-1)
  ids = jnp.concatenate([a.ids, b.ids], axis=-1)
  top, pos = jax.lax.top_k(vals, k)
  return TopK(top, jnp.take_along_axis(ids, pos, axis=-1))


def _empty(batch: int, k: int) -> TopK:
  return TopK(jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.full((batch, k), -1, jnp.int32))


def _block_topk(scores: Array, ids: Array, valid: Array, k: int) -> TopK:
  """Top-min(k, block) of one block; `ids` (block,), `valid` (block,) bool."""
  scores = jnp.where(valid[None, :], scores.astype(jnp.float32), -jnp.inf)
  kb = min(k, scores.shape[-1])
  vals, pos = jax.lax.top_k(scores, kb)
  return TopK(vals, ids[pos].astype(jnp.int32))


def blockwise_topk(score_fn: Callable[[Array], Array], num_items: int, k: int,
                   block: int = 8192) -> TopK:
  """Exact top-k over `num_items` items scored block by block (never `(B, N)` at once).

  Args:
    score_fn: maps item rows `ids` (block,) int32 (contiguous, `ids[0]` a multiple of
      `block`) to scores (B, block). In the last block, ids >= num_items may appear (their
      scores are masked to -inf), so `score_fn` must accept them (jnp indexing clamps).
    num_items: N.
    k: results per row, <= N.
    block: items per step.

  Returns:
    TopK (B, k); ids are rows in [0, N).
  """
  if k > num_items:
    raise ValueError(f"k={k} exceeds the {num_items} items")
  block = max(1, min(block, num_items))
  num_blocks = -(-num_items // block)
  base = jnp.arange(block, dtype=jnp.int32)
  first = score_fn(base)
  init = merge_topk(_empty(first.shape[0], k), _block_topk(first, base, base < num_items, k), k)

  def step(carry: TopK, b: Array):
    ids = b * block + base
    local = _block_topk(score_fn(ids), ids, ids < num_items, k)
    return merge_topk(carry, local, k), None

  out, _ = jax.lax.scan(step, init, jnp.arange(1, num_blocks, dtype=jnp.int32))
  return out


def _scan_table(table: QuantizedTable, block: int, step: Callable, carry):
  """Folds `step(carry, start, rows)` over the table's consecutive row blocks.

  Full blocks are dynamic slices of the table (the table itself is never padded or copied);
  the last `N % block` rows go through one more call with their own (smaller) shape.
  """
  n = table.num_rows
  num_full = n // block
  if num_full:
    def body(c, b):
      start = b * block
      return step(c, start, table.slice_rows(start, block)), None
    carry, _ = jax.lax.scan(body, carry, jnp.arange(num_full, dtype=jnp.int32))
  if n % block:
    carry = step(carry, num_full * block, table.slice_rows(num_full * block, n % block))
  return carry


def probe_max_scores(table: QuantizedTable, queries: Array) -> Array:
  """(B, N) scores of (B, d) queries, or of (B, M, d) multi-probe queries: the best probe."""
  s = table.scores(queries)
  return s if queries.ndim == 2 else jnp.max(s, axis=-2)


def blockwise_dot_topk(queries: Array, table: QuantizedTable, k: int,
                       block: int = 16384, id_offset: Array | int = 0,
                       num_valid: Array | int | None = None, group: int = 16) -> TopK:
  """Blockwise exact top-k of `queries @ table.T` (dequantised inside the dot).

  Multi-probe queries (B, M, d) score each row by its best probe (`probe_max_scores`).

  Scans the table `block` rows at a time keeping a running top-k, so the `(B, N)` score
  matrix never exists. With `group > 1` (the default) the running top-k is over *group
  maxima* (the best score in each run of `group` consecutive rows) and the rows of the k
  best groups are re-scored exactly at the end: each true top-k row lies in one of them
  (ties aside), since a row outside them is beaten by the maxima of k other groups. This
  replaces a top-k over every `(B, block)` score block by one over `(B, block / group)`
  maxima; on CPU, where that per-block top-k cost more than the matmul, the scan runs ~2x
  faster. `group=1` keeps single rows, as does a table of at most one block (where the
  fixed cost of re-scoring k * group rows would dominate).

  Args:
    queries: (B, d) or (B, M, d) float.
    table: QuantizedTable with values (N, d).
    k: results per query, <= N.
    block: rows per step (rounded up to a multiple of `group`).
    id_offset: added to the returned ids (the shard's first row in a sharded table).
    num_valid: rows >= num_valid are masked (padding of a sharded table); default N.
    group: rows per group (1: keep single rows).

  Returns:
    TopK (B, k), ids in [id_offset, id_offset + N).
  """
  n = table.num_rows
  if k > n:
    raise ValueError(f"k={k} exceeds the {n} rows of the table")
  if group < 1:
    raise ValueError(f"group must be >= 1, got {group}")
  block = -(-max(1, min(block, n)) // group) * group
  limit = n if num_valid is None else num_valid
  batch = queries.shape[0]

  if group == 1 or n <= block:                 # one block: plain top-k, nothing to group
    def row_step(carry: TopK, start, tab: QuantizedTable) -> TopK:
      ids = start + jnp.arange(tab.num_rows, dtype=jnp.int32)
      return merge_topk(carry, _block_topk(probe_max_scores(tab, queries), ids + id_offset,
                                           ids < limit, k), k)

    return _scan_table(table, block, row_step, _empty(batch, k))

  num_groups = -(-n // group)
  k_groups = min(k, num_groups)

  def group_step(carry: TopK, start, tab: QuantizedTable) -> TopK:
    size = tab.num_rows
    padded = -(-size // group) * group
    ids = start + jnp.arange(padded, dtype=jnp.int32)
    scores = jnp.pad(probe_max_scores(tab, queries), ((0, 0), (0, padded - size)))
    scores = jnp.where((ids < jnp.minimum(limit, n))[None, :], scores, -jnp.inf)
    maxima = scores.reshape(batch, padded // group, group).max(axis=-1)
    gids = start // group + jnp.arange(padded // group, dtype=jnp.int32)
    return merge_topk(carry, TopK(maxima, jnp.broadcast_to(gids, maxima.shape)), k_groups)

  init = TopK(jnp.full((batch, k_groups), -jnp.inf, jnp.float32),
              jnp.full((batch, k_groups), -1, jnp.int32))
  best = _scan_table(table, block, group_step, init)
  rows = (best.ids[:, :, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(batch, -1)
  valid = jnp.repeat(best.ids >= 0, group, axis=-1) & (rows < limit) & (rows < n)
  cand = table.take(jnp.clip(rows, 0, n - 1))                         # (B, k_groups * group, d)
  v = cand.values if cand.kind == "fp32" else cand.values.astype(jnp.float32)
  q = jnp.asarray(queries, jnp.float32)
  scores = (jnp.einsum("bd,bmd->bm", q, v) if q.ndim == 2
            else jnp.max(jnp.einsum("bpd,bmd->bpm", q, v), axis=1))
  if cand.scale is not None:
    scores = scores * cand.scale
  vals, pos = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), k)
  return TopK(vals, jnp.take_along_axis(rows, pos, axis=-1) + id_offset)


def dot_topk(queries: Array, table: QuantizedTable, k: int, backend: str = "exact",
             block: int = 16384, recall_target: float = 0.95, sort: bool = True) -> TopK:
  """Top-k of `queries @ table.T` with the named backend.

  Args:
    queries: (B, d) float, or (B, M, d) multi-probe queries (a row scores its best probe).
    table: QuantizedTable (N, d).
    k: results per query.
    backend: one of BACKENDS.
    block: rows per step of the blockwise backend.
    recall_target: of the approx backend.
    sort: best first. False lets the `select` backend return the k in any order (the
      other backends sort anyway).

  Returns:
    TopK (B, k).
  """
  if backend == "blockwise":
    return blockwise_dot_topk(queries, table, k, block)
  scores = probe_max_scores(table, queries)
  if backend == "exact":
    return exact_topk(scores, k)
  if backend == "grouped":
    return grouped_topk(scores, k)
  if backend == "select":
    return select_topk(scores, k, sort=sort)
  if backend == "approx":
    return approx_topk(scores, k, recall_target)
  raise ValueError(f"unknown top-k backend {backend!r}; valid: {', '.join(BACKENDS)}")


def sharded_topk(queries: Array, table: QuantizedTable, k: int, mesh: Mesh,
                 axis: str = "data", block: int = 16384, local_backend: str = "exact") -> TopK:
  """Top-k of `queries @ table.T` with the table's rows sharded over `mesh[axis]`.

  Each device scores its N / n_dev rows (local top-k, ids offset to global rows), the
  `(B, k)` lists are all-gathered to `(B, n_dev * k)` and merged. The table is padded with
  masked rows to a multiple of the device count. Call under `jax.jit` (mesh and k static).

  Args:
    queries: (B, d) or (B, M, d) multi-probe float, replicated.
    table: QuantizedTable (N, d); its rows are placed as P(axis).
    k: results per query, at most the rows of one shard (ceil(N / n_dev)).
    mesh: a mesh with axis `axis`.
    axis: the mesh axis that splits the rows.
    block: rows per step of the local blockwise scan.
    local_backend: 'exact' (full local matrix + top_k) or 'blockwise'.

  Returns:
    TopK (B, k), replicated; ids are global rows in [0, N).
  """
  n_dev = mesh.shape[axis]
  n = table.num_rows
  local_n = -(-n // n_dev)
  if k > local_n:
    raise ValueError(f"k={k} exceeds the {local_n} rows of one of the {n_dev} shards")
  padded = table.pad_rows(local_n * n_dev)

  def local(q: Array, tab: QuantizedTable) -> TopK:
    offset = jax.lax.axis_index(axis) * local_n
    if local_backend == "blockwise":
      top = blockwise_dot_topk(q, tab, k, block, id_offset=offset, num_valid=n - offset)
    else:
      scores = probe_max_scores(tab, q)
      rows = jnp.arange(local_n, dtype=jnp.int32)
      scores = jnp.where((rows < n - offset)[None, :], scores, -jnp.inf)
      top = exact_topk(scores, k)
      top = TopK(top.scores, top.ids + offset)
    vals = jax.lax.all_gather(top.scores, axis, axis=1, tiled=True)   # (B, n_dev * k)
    ids = jax.lax.all_gather(top.ids, axis, axis=1, tiled=True)
    best, pos = jax.lax.top_k(vals, k)
    return TopK(best, jnp.take_along_axis(ids, pos, axis=-1))

  table_spec = jax.tree.map(lambda _: P(axis), padded)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), table_spec), out_specs=P(),
                     check_vma=False)
  return fn(queries, padded)


@functools.partial(jax.jit, static_argnames=("k", "mesh", "axis", "block", "local_backend"))
def sharded_topk_jit(queries: Array, table: QuantizedTable, k: int, mesh: Mesh,
                     axis: str = "data", block: int = 16384,
                     local_backend: str = "exact") -> TopK:
  """`sharded_topk` under `jax.jit` (k, mesh and options static)."""
  return sharded_topk(queries, table, k, mesh, axis, block, local_backend)
