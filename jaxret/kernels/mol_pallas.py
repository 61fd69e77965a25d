"""Fused MoL scoring of every (query, item) pair in Pallas (forward only, for serving).

XLA computes MoL's per-pair gating (logits -> Dense(H) -> SiLU -> Dense(P), softmax over P)
as separate ops with (pairs, H) and (pairs, P) intermediates in memory; the H200 run in
results/gpu/README.md found the MoL step far below the chip's matmul rate. This kernel
computes one (query, item block) tile end to end, so those intermediates need not leave the
chip, with every contraction a 2D matmul:

  logits (bN, P)  = item components (bN, P_X*d) @ block-diagonal query matrix (P_X*d, P) / tau
  gate   (bN, P)  = SiLU(q_gate * i_gate + SiLU(logits @ W1 + b1) @ W2 + b2)
  score  (bN,)    = sum_P softmax(gate) * logits

where the block-diagonal query matrix puts query component a in rows x*d:(x+1)*d of column
a*P_X + x, so one matmul gives all P_Q' * P_X elementary logits in MoLHead's order.

The result equals `MoLHead.score_sides` in deterministic mode (tested on the CPU in
interpret mode). Not yet measured on a GPU: `scripts/gpu_checks.sh` times it next to the XLA
path when a GPU is lent.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxret.models.heads import MoLHead, MoLItemSide, MoLQuerySide

Array = jax.Array


def block_diagonal_queries(components: Array, num_item_components: int) -> Array:
  """(B, P_Q, d) -> (B, P_X * d, P_Q * P_X): column a * P_X + x holds component a in rows
  x * d : (x + 1) * d, so `item_components.reshape(N, P_X * d) @ it` is MoL's logit order."""
  b, p_q, d = components.shape
  p_x = num_item_components
  eye = jnp.eye(p_x, dtype=components.dtype)                       # (x, y)
  big = jnp.einsum("bad,xy->bxday", components, eye)               # (B, P_X, d, P_Q, P_X)
  return big.reshape(b, p_x * d, p_q * p_x)


def _silu(x: Array) -> Array:
  return x / (1.0 + jnp.exp(-x))      # from exp alone: the fewest ops for a backend to lower


def _kernel(qbig_ref, qgate_ref, icomp_ref, igate_ref, w1_ref, b1_ref, w2_ref, b2_ref,
            out_ref, *, inv_tau: float):
  logits = jnp.dot(icomp_ref[...], qbig_ref[0],
                   preferred_element_type=jnp.float32) * inv_tau            # (bN, P)
  hidden = _silu(jnp.dot(logits, w1_ref[...], preferred_element_type=jnp.float32)
                  + b1_ref[...])                                             # (bN, H)
  mixed = jnp.dot(hidden, w2_ref[...], preferred_element_type=jnp.float32) + b2_ref[...]
  gate = _silu(qgate_ref[...] * igate_ref[...] + mixed)                     # (bN, P)
  gate = gate - jnp.max(gate, axis=-1, keepdims=True)
  weights = jnp.exp(gate)
  weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  out_ref[...] = jnp.sum(weights * logits, axis=-1)[None, :]


def mol_scores(head: MoLHead, head_params: Any, q_side: MoLQuerySide, i_side: MoLItemSide,
               block_items: int = 128, interpret: bool | None = None) -> Array:
  """(B, N) MoL scores of every query against every item, fused in one Pallas kernel.

  Args:
    head: the MoLHead (gating on) whose `query_side` / `item_side` made the sides.
    head_params: its params (the logits gate's weights are read from them).
    q_side: components (B, P_Q', d), gate (B, P).
    i_side: components (N, P_X, d), gate (N, P).
    block_items: items per kernel program (a multiple of 16 on a GPU).
    interpret: run the kernel in the Pallas interpreter (default: off a GPU).

  Raises:
    ValueError: a head without gating, or sides of other ranks than above.
  """
  if not head.gating:
    raise ValueError("mol_scores needs a gated MoLHead; without gating the score is the mean "
                     "of the logits (MoLHead.score_sides)")
  qc, qg, ic, ig = q_side.components, q_side.gate, i_side.components, i_side.gate
  if qc.ndim != 3 or ic.ndim != 3 or qg.ndim != 2 or ig.ndim != 2:
    raise ValueError(f"mol_scores takes query components (B, P_Q, d) and item components "
                     f"(N, P_X, d); got {qc.shape} and {ic.shape}")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  gate = head_params["logits_gate"]
  w1, b1 = gate["Dense_0"]["kernel"], gate["Dense_0"]["bias"][None, :]
  w2, b2 = gate["Dense_1"]["kernel"], gate["Dense_1"]["bias"][None, :]
  b, n = qc.shape[0], ic.shape[0]
  p_x, d = ic.shape[1], ic.shape[2]
  p = qg.shape[-1]
  n_pad = -n % block_items
  icomp = jnp.pad(ic.reshape(n, p_x * d), ((0, n_pad), (0, 0))).astype(jnp.float32)
  igate = jnp.pad(ig, ((0, n_pad), (0, 0))).astype(jnp.float32)
  qbig = block_diagonal_queries(qc.astype(jnp.float32), p_x)
  full = lambda shape: pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))
  scores = pl.pallas_call(
      functools.partial(_kernel, inv_tau=1.0 / head.temperature),
      out_shape=jax.ShapeDtypeStruct((b, n + n_pad), jnp.float32),
      grid=(b, (n + n_pad) // block_items),
      in_specs=[
          pl.BlockSpec((1, p_x * d, p), lambda i, j: (i, 0, 0)),   # this query's matrix
          pl.BlockSpec((1, p), lambda i, j: (i, 0)),               # its gate
          pl.BlockSpec((block_items, p_x * d), lambda i, j: (j, 0)),
          pl.BlockSpec((block_items, p), lambda i, j: (j, 0)),
          full(w1.shape), full(b1.shape), full(w2.shape), full(b2.shape)],
      out_specs=pl.BlockSpec((1, block_items), lambda i, j: (i, j)),
      interpret=interpret,
  )(qbig, qg.astype(jnp.float32), icomp, igate, w1, b1, w2, b2)
  return scores[:, :n]
