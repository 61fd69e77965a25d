"""Small building blocks shared by the encoders and heads."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def byte_keep_mask(key: Array, shape: tuple[int, ...], rate: float) -> Array:
  """Dropout keep-mask drawing one random byte per element (4 per 32-bit word).

  One byte per element generates a quarter of the random words of
  `jax.random.bernoulli` (about 2.7x faster on CPU, where threefry dominates the cost of
  dropout). The drop probability is `rate` rounded to a multiple of 1/256
  (0.2 -> 51/256 = 0.1992); `byte_rate(rate)` gives the exact value.

  Args:
    key: PRNG key.
    shape: (..., P) mask shape.
    rate: drop probability in [0, 1).

  Returns:
    (..., P) bool, True where kept.
  """
  threshold = int(round(rate * 256))
  words = jax.random.bits(key, tuple(shape[:-1]) + (-(-shape[-1] // 4),), jnp.uint32)
  bytes_ = jax.lax.bitcast_convert_type(words, jnp.uint8)               # (..., ceil(P/4), 4)
  bytes_ = bytes_.reshape(tuple(shape[:-1]) + (-1,))[..., :shape[-1]]
  return bytes_ >= threshold


def byte_rate(rate: float) -> float:
  """The drop probability `byte_keep_mask` actually uses for `rate`."""
  return round(rate * 256) / 256


class ByteDropout(nn.Module):
  """Inverted dropout whose mask comes from `byte_keep_mask` (one random byte per element).

  Same as `nn.Dropout` in distribution up to the rounding of `rate` to a multiple of 1/256;
  kept values are scaled by 1 / (1 - byte_rate(rate)), so the expectation is exact. Draws
  from the 'dropout' rng stream.

  Attributes:
    rate: drop probability in [0, 1).
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    if deterministic or self.rate <= 0.0:
      return x
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"dropout rate must lie in [0, 1), got {self.rate}")
    keep = byte_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
    scale = jnp.asarray(1.0 / (1.0 - byte_rate(self.rate)), x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
