"""A two-stage MoL index whose item rows are split over the devices of a mesh.

Each of the D devices on `mesh[axis]` holds ceil(N / D) consecutive item rows (the last
shard padded with rows of id -1, never returned) and runs the whole two-stage retrieve on its
own rows under `jax.shard_map`: stage-1 top ceil(k' / D) of its rows, MoL re-scoring of those,
local top-k. The D `(B, k)` lists are all-gathered and merged. So k' stays the number of
candidates re-scored per query, split evenly over the shards, and nothing crosses devices but
the final lists. At k' = N every row is re-scored and the result is the exact MoL top-k, as on
one device; at smaller k' a shard keeps its own best ceil(k' / D), not its share of the global
top k', so recall differs slightly from one device's at the same k'. Queries are replicated.

  index = MoLIndex.from_model(model, params).sharded(jaxret.sharding.make_mesh())
  ids, scores = index.retrieve(queries, k=100, k_prime=8000, generator="hindexer")
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxret.retrieval.index import _EXACT_BLOCK, IndexArrays, MoLIndex
from jaxret.sharding import DATA_AXIS

Array = jax.Array


def _pad_rows(x: Array | None, rows: int, value=0) -> Array | None:
  if x is None:
    return None
  return jnp.pad(x, ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1), constant_values=value)


class ShardedMoLIndex:
  """`MoLIndex.retrieve` / `exact_mol_topk` with the item rows split over `mesh[axis]`.

  Attributes:
    index: the MoLIndex it was built from (one device's copy of every array).
    mesh, axis: where the rows live.
    num_shards: devices on `axis`.
    rows_per_shard: ceil(N / num_shards).
    arrays: the padded IndexArrays, item rows placed as P(axis), params replicated.
  """

  def __init__(self, index: MoLIndex, mesh: Mesh, axis: str = DATA_AXIS):
    if axis not in mesh.shape:
      raise ValueError(f"mesh has no axis {axis!r} (its axes: {', '.join(mesh.axis_names)})")
    self.index, self.mesh, self.axis = index, mesh, axis
    self.num_shards = int(mesh.shape[axis])
    n = index.num_items
    self.rows_per_shard = -(-n // self.num_shards)
    total = self.rows_per_shard * self.num_shards
    a = index.arrays
    p_x = a.item_components.shape[1]
    padded = IndexArrays(
        item_ids=_pad_rows(a.item_ids, total, -1),
        item_components=_pad_rows(a.item_components, total),
        item_gate=_pad_rows(a.item_gate, total),
        head_params=a.head_params,
        avg_table=a.avg_table.pad_rows(total),
        component_table=a.component_table.pad_rows(total * p_x),
        hindexer_items=_pad_rows(a.hindexer_items, total),
        hindexer_table=None if a.hindexer_table is None else a.hindexer_table.pad_rows(total),
        hindexer_params=a.hindexer_params)
    rows, replicated = P(axis), P()
    self._specs = IndexArrays(
        item_ids=rows, item_components=rows,
        item_gate=None if padded.item_gate is None else rows,
        head_params=jax.tree.map(lambda _: replicated, padded.head_params),
        avg_table=jax.tree.map(lambda _: rows, padded.avg_table),
        component_table=jax.tree.map(lambda _: rows, padded.component_table),
        hindexer_items=None if padded.hindexer_items is None else rows,
        hindexer_table=(None if padded.hindexer_table is None
                        else jax.tree.map(lambda _: rows, padded.hindexer_table)),
        hindexer_params=(None if padded.hindexer_params is None
                         else jax.tree.map(lambda _: replicated, padded.hindexer_params)))
    self.arrays = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                               padded, self._specs)
    self._fns: dict[tuple, Callable] = {}

  @property
  def num_items(self) -> int:
    return self.index.num_items

  @property
  def generators(self) -> tuple[str, ...]:
    return self.index.generators

  def _local_index(self, arrays: IndexArrays) -> MoLIndex:
    """The index over one shard's rows (inside shard_map; its arrays are the local blocks)."""
    ix = self.index
    return MoLIndex(ix.head, arrays, ix.hindexer, ix.quantization, mol_dtype=ix.mol_dtype,
                    backend=ix.backend_choice, recall_target=ix.recall_target,
                    exact_kernel=ix.exact_kernel)

  def _merge(self, ids: Array, scores: Array, k: int) -> tuple[Array, Array]:
    """Each shard's (B, k_local) best -> the (B, k) best over all shards (replicated)."""
    all_scores = jax.lax.all_gather(scores, self.axis, axis=1, tiled=True)
    all_ids = jax.lax.all_gather(ids, self.axis, axis=1, tiled=True)
    best, pos = jax.lax.top_k(all_scores, k)
    return jnp.take_along_axis(all_ids, pos, axis=-1), best

  def _run(self, key: tuple, local: Callable, queries) -> tuple[Array, Array]:
    if key not in self._fns:
      fn = jax.shard_map(local, mesh=self.mesh, in_specs=(self._specs, P()),
                         out_specs=(P(), P()), check_vma=False)
      self._fns[key] = jax.jit(fn)
    return self._fns[key](self.arrays, queries)

  def local_k_prime(self, k_prime: int) -> int:
    """Candidates each shard re-scores for a total of k'."""
    return min(self.rows_per_shard, -(-k_prime // self.num_shards))

  def retrieve(self, queries: Array | np.ndarray, k: int, k_prime: int,
               generator: str = "avg", per_pair_k: int | None = None) -> tuple[Array, Array]:
    """Two-stage top-k over every shard (see the module docstring); the arguments and
    results are `MoLIndex.retrieve`'s. `per_pair_k` is per shard."""
    ix = self.index
    q = ix._check_queries(queries)
    ix._check_k(k, k_prime)
    ix._check_generator(generator)
    if per_pair_k is not None and not 1 <= per_pair_k <= self.rows_per_shard:
      raise ValueError(f"per_pair_k must lie in [1, {self.rows_per_shard}] (the rows of one "
                       f"of the {self.num_shards} shards), got {per_pair_k}")
    kp_local = self.local_k_prime(k_prime)
    k_local = min(k, kp_local)

    def local(arrays: IndexArrays, x: Array):
      ids, scores = self._local_index(arrays)._two_stage(arrays, x, k_local, kp_local,
                                                         generator, per_pair_k)
      return self._merge(ids, scores, k)

    return self._run(("two_stage", k, k_prime, generator, per_pair_k), local, q)

  def exact_mol_topk(self, queries: Array | np.ndarray, k: int,
                     block: int = _EXACT_BLOCK) -> tuple[Array, Array]:
    """Brute-force MoL top-k, each shard scanning its own rows; `MoLIndex.exact_mol_topk`'s
    arguments and results."""
    ix = self.index
    q = ix._check_queries(queries)
    ix._check_k(k)
    k_local = min(k, self.rows_per_shard)

    def local(arrays: IndexArrays, x: Array):
      ids, scores, _ = self._local_index(arrays)._exact(arrays, x, k_local, block)
      return self._merge(ids, scores, k)

    return self._run(("exact", k, block), local, q)
