"""Shape and dtype checks for the public library API.

Every check raises `ValueError` with one line naming the argument, the expected
shape (with symbolic dims) and the actual shape, e.g.::

  neg_scores must have shape (..., R) with ...=(4, 7), got (4, 8, 3)

Checks only read `.shape` / `.dtype`, which are static under `jax.jit`, so they
work both on concrete arrays before tracing and on tracers at trace time.

Shape patterns are tuples of dims: an int (fixed size), a str (a symbolic dim
such as "B"; the same name must have the same size everywhere it appears in
one `dims` binding) or, as the first entry only, "..." (any number of leading
dims; also bound, so "..." must match across arguments sharing `dims`).
"""
from typing import Any, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

Dim = Union[int, str]
Pattern = Sequence[Dim]
Dims = dict[str, Any]

ELLIPSIS = "..."


class InputDTypeError(ValueError, TypeError):
  """An argument has the wrong dtype (also a TypeError, for older callers)."""


def shape_of(x: Any) -> tuple[int, ...]:
  """Static shape of an array, tracer, ShapeDtypeStruct or array-like."""
  shape = getattr(x, "shape", None)
  return tuple(shape) if shape is not None else np.shape(x)


def dtype_of(x: Any) -> np.dtype:
  """Static dtype of an array, tracer, ShapeDtypeStruct or array-like."""
  dtype = getattr(x, "dtype", None)
  return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def format_shape(shape: Sequence[Any]) -> str:
  """`("B", 3)` -> "(B, 3)"; a 1-tuple is written "(B,)"."""
  parts = [str(d) for d in shape]
  return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _bound_text(pattern: Pattern, dims: Dims) -> str:
  names = [d for d in dict.fromkeys(pattern) if isinstance(d, str) and d in dims]
  if not names:
    return ""
  return " with " + ", ".join(
      f"{n}={format_shape(dims[n]) if n == ELLIPSIS else dims[n]}" for n in names)


def shape_error(name: str, pattern: Pattern, shape: Sequence[int],
                dims: Optional[Dims] = None, hint: str = "") -> ValueError:
  """The standard error for `name` not matching `pattern`."""
  bound = _bound_text(pattern, dims or {})
  return ValueError(f"{name} must have shape {format_shape(pattern)}{bound}, got "
                    f"{format_shape(shape)}{hint}")


def check_shape(name: str, x: Any, pattern: Pattern,
                dims: Optional[Dims] = None) -> Dims:
  """Checks `x`'s shape against `pattern`, binding symbolic dims into `dims`.

  Args:
    name: argument name, used in the message.
    x: the argument.
    pattern: e.g. `("B", "L")`, `("...", "R")`, `("B", 3)`.
    dims: bindings shared across arguments (updated in place); dims already
      bound must agree.

  Returns:
    `dims` (a new dict when None was given).

  Raises:
    ValueError: rank, a fixed dim or a bound dim does not match.
  """
  dims = {} if dims is None else dims
  shape = shape_of(x)
  pattern = tuple(pattern)
  lead = pattern[:1] == (ELLIPSIS,)
  tail = pattern[1:] if lead else pattern
  if ELLIPSIS in tail:
    raise AssertionError(f"'...' must come first in a pattern, got {pattern}")
  if len(shape) < len(tail) or (not lead and len(shape) != len(tail)):
    raise shape_error(name, pattern, shape, dims)
  split = len(shape) - len(tail)
  new: Dims = {}
  if lead:
    new[ELLIPSIS] = shape[:split]
  for want, got in zip(tail, shape[split:]):
    if isinstance(want, str):
      if new.setdefault(want, got) != got:
        raise shape_error(name, pattern, shape, dims)
    elif want != got:
      raise shape_error(name, pattern, shape, dims)
  if any(key in dims and dims[key] != value for key, value in new.items()):
    raise shape_error(name, pattern, shape, dims)
  for key, value in new.items():
    dims.setdefault(key, value)
  return dims


def check_rank(name: str, x: Any, patterns: Sequence[Pattern],
               dims: Optional[Dims] = None) -> Dims:
  """Like `check_shape` but accepts any of several patterns (first match wins)."""
  shape = shape_of(x)
  for pattern in patterns:
    trial = dict(dims or {})
    try:
      check_shape(name, x, pattern, trial)
    except ValueError:
      continue
    if dims is not None:
      dims.update(trial)
      return dims
    return trial
  bound = _bound_text([d for p in patterns for d in p], dims or {})
  expected = " or ".join(format_shape(p) for p in patterns)
  raise ValueError(f"{name} must have shape {expected}{bound}, got {format_shape(shape)}")


def check_broadcastable(name: str, x: Any, target: Sequence[int],
                        target_text: str) -> None:
  """Checks that `x` broadcasts to exactly `target` (described as `target_text`)."""
  shape = shape_of(x)
  try:
    ok = np.broadcast_shapes(shape, tuple(target)) == tuple(target)
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"{name} must broadcast to {target_text} = "
                     f"{format_shape(target)}, got {format_shape(shape)}")


def check_broadcast_leading(name_a: str, a: Any, lead_a: int, name_b: str, b: Any,
                            lead_b: int, text_a: str, text_b: str) -> None:
  """Checks that the leading dims of two arguments broadcast (numpy rules).

  `lead_a` / `lead_b` are the numbers of trailing core dims to drop from each.
  """
  sa, sb = shape_of(a), shape_of(b)
  try:
    np.broadcast_shapes(sa[:len(sa) - lead_a], sb[:len(sb) - lead_b])
  except ValueError:
    raise ValueError(
        f"leading dims of {name_a} {text_a} and {name_b} {text_b} must broadcast, "
        f"got {name_a} {format_shape(sa)} and {name_b} {format_shape(sb)}") from None


def _kind_error(name: str, x: Any, what: str, shape_text: str) -> InputDTypeError:
  return InputDTypeError(f"{name} must be {what}, got dtype {dtype_of(x)} "
                         f"(shape {format_shape(shape_of(x))}, expected {shape_text})")


def check_int(name: str, x: Any, shape_text: str = "") -> None:
  """`x` must have an integer dtype (bool is not an integer here)."""
  if not np.issubdtype(dtype_of(x), np.integer):
    raise _kind_error(name, x, "integer", shape_text or "integer ids")


def check_float(name: str, x: Any, shape_text: str = "") -> None:
  """`x` must have a floating dtype (incl. bfloat16)."""
  if not _is_float(dtype_of(x)):
    raise _kind_error(name, x, "floating point", shape_text or "floats")


def check_real(name: str, x: Any, shape_text: str = "") -> None:
  """`x` must be bool, integer or floating (e.g. a mask or weights)."""
  dt = dtype_of(x)
  if not (dt == np.bool_ or np.issubdtype(dt, np.integer) or _is_float(dt)):
    raise _kind_error(name, x, "bool, integer or floating point",
                      shape_text or "bool/int/float")


def check_bool_or_int(name: str, x: Any, shape_text: str = "") -> None:
  """`x` must be bool or integer (a 0/1 validity mask)."""
  dt = dtype_of(x)
  if not (dt == np.bool_ or np.issubdtype(dt, np.integer)):
    raise _kind_error(name, x, "bool or integer", shape_text or "a bool mask")


def _is_float(dt: np.dtype) -> bool:
  # bfloat16 (ml_dtypes) is not a numpy floating subtype; jnp knows it.
  return bool(jnp.issubdtype(dt, jnp.floating))


def check_positive_ints(name: str, values: Sequence[Any]) -> tuple[int, ...]:
  """A sequence of positive Python/numpy ints (not bools) -> tuple of int."""
  values = tuple(values)
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be positive ints, got {values!r}")
  return tuple(int(v) for v in values)
