"""Two-stage retrieval for learned similarities: stage-1 top-k' by dot product over compact
(optionally quantised) embeddings, stage-2 MoL re-scoring, and the exact MoL reference.

  topk.py          exact / grouped / select / approx / blockwise / sharded top-k behind one interface
  quantization.py  fp32, bf16, int8 (per-row scales) stage-1 tables
  hindexer.py      the h-indexer towers, their auxiliary loss and post-hoc distillation
  index.py         MoLIndex: build, retrieve, exact_mol_topk, save / load
  sharded.py       ShardedMoLIndex: the same with the item rows split over a mesh
"""
from jaxret.retrieval.hindexer import (HIndexedRetrievalModel, HIndexer, fit_hindexer,
                                       hindexer_loss, init_hindexer)
from jaxret.retrieval.index import GENERATORS, IndexArrays, MoLIndex
from jaxret.retrieval.quantization import QUANTIZATIONS, QuantizedTable, quantize
from jaxret.retrieval.sharded import ShardedMoLIndex
from jaxret.retrieval.topk import (BACKENDS, TopK, approx_topk, best_backend, blockwise_dot_topk,
                                   blockwise_topk, dot_topk, exact_topk, grouped_topk, merge_topk,
                                   select_topk, sharded_topk, sharded_topk_jit)

__all__ = [
    "BACKENDS", "GENERATORS", "QUANTIZATIONS", "HIndexedRetrievalModel", "HIndexer",
    "IndexArrays", "MoLIndex", "QuantizedTable", "ShardedMoLIndex", "TopK", "approx_topk",
    "best_backend", "blockwise_dot_topk", "blockwise_topk", "dot_topk", "exact_topk",
    "fit_hindexer", "grouped_topk", "hindexer_loss", "init_hindexer", "merge_topk", "quantize",
    "select_topk", "sharded_topk", "sharded_topk_jit",
]
