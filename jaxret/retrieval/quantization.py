"""Quantised stage-1 embedding tables: fp32, bf16, and int8 with per-row scales.

A `QuantizedTable` is a pytree (it passes through `jit`, `scan` and `shard_map`); its scores
are dequantised inside the dot product:

  fp32: q @ V.T
  bf16: q @ V.astype(f32).T                         (half the memory traffic of fp32)
  int8: (q @ V.astype(f32).T) * scale[None, :]      V = round(X / scale), scale = max|X_row| / 127

Scores are always float32.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

QUANTIZATIONS = ("fp32", "bf16", "int8")


@flax.struct.dataclass
class QuantizedTable:
  """A (possibly quantised) `(N, d)` table.

  values: (N, d) float32, bfloat16 or int8.
  scale: (N,) float32 per-row scales for int8; None otherwise.
  kind: 'fp32', 'bf16' or 'int8' (static).
  """
  values: Array
  scale: Array | None
  kind: str = flax.struct.field(pytree_node=False, default="fp32")

  @property
  def num_rows(self) -> int:
    return self.values.shape[0]

  @property
  def dim(self) -> int:
    return self.values.shape[-1]

  def dequantize(self) -> Array:
    """(N, d) float32."""
    v = self.values.astype(jnp.float32)
    return v * self.scale[:, None] if self.scale is not None else v

  def scores(self, queries: Array) -> Array:
    """Dot products with every row, dequantised inside the dot.

    Args:
      queries: (..., d) float.

    Returns:
      (..., N) float32.
    """
    q = jnp.asarray(queries, jnp.float32)
    v = self.values if self.kind == "fp32" else self.values.astype(jnp.float32)
    s = jnp.einsum("...d,nd->...n", q, v)
    return s * self.scale if self.scale is not None else s

  def pad_rows(self, n: int) -> "QuantizedTable":
    """Appends zero rows up to `n` rows (scale 0 for int8)."""
    extra = n - self.num_rows
    if extra <= 0:
      return self
    values = jnp.pad(self.values, ((0, extra), (0, 0)))
    scale = None if self.scale is None else jnp.pad(self.scale, (0, extra))
    return QuantizedTable(values, scale, self.kind)

  def slice_rows(self, start: Array | int, size: int) -> "QuantizedTable":
    """Rows [start, start + size) (`start` may be traced; no copy of the whole table)."""
    values = jax.lax.dynamic_slice_in_dim(self.values, start, size)
    scale = None if self.scale is None else jax.lax.dynamic_slice_in_dim(self.scale, start, size)
    return QuantizedTable(values, scale, self.kind)

  def reshape_blocks(self, num_blocks: int, block: int) -> "QuantizedTable":
    """(num_blocks * block, d) -> a table whose leaves lead with (num_blocks, block)."""
    values = self.values.reshape(num_blocks, block, self.dim)
    scale = None if self.scale is None else self.scale.reshape(num_blocks, block)
    return QuantizedTable(values, scale, self.kind)

  def take(self, rows: Array) -> "QuantizedTable":
    """The table's `rows` (any int shape (...,)) -> leaves (..., d) / (...,)."""
    scale = None if self.scale is None else self.scale[rows]
    return QuantizedTable(self.values[rows], scale, self.kind)

  @property
  def nbytes(self) -> int:
    n = self.values.size * self.values.dtype.itemsize
    return n + (0 if self.scale is None else self.scale.size * 4)


def quantize(table: Array | np.ndarray, kind: str = "fp32") -> QuantizedTable:
  """Quantises a float `(N, d)` table.

  Args:
    table: (N, d) float.
    kind: 'fp32', 'bf16' or 'int8' (symmetric, per-row scale max|x| / 127).

  Returns:
    QuantizedTable.
  """
  x = jnp.asarray(table, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"a stage-1 table must be (N, d), got shape {x.shape}")
  if kind == "fp32":
    return QuantizedTable(x, None, "fp32")
  if kind == "bf16":
    return QuantizedTable(x.astype(jnp.bfloat16), None, "bf16")
  if kind == "int8":
    amax = jnp.max(jnp.abs(x), axis=-1)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    values = jnp.clip(jnp.round(x / scale[:, None]), -127, 127).astype(jnp.int8)
    return QuantizedTable(values, scale.astype(jnp.float32), "int8")
  raise ValueError(f"unknown quantization {kind!r}; valid: {', '.join(QUANTIZATIONS)}")
