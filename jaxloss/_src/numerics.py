"""Numerically careful building blocks shared by the losses.

Each is written so that no NaN or inf is formed for any finite input, in the value or in
the gradient (the losses run under ``jax_debug_nans``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._src.typing import Array, ArrayLike

__all__ = ["as_float", "divide_or_eps", "divide_plus_eps", "safe_divide", "safe_pow",
           "sigmoid_pieces", "static_positive", "sum_fused"]


def as_float(x: ArrayLike) -> Array:
  """Returns ``x`` as a float array of at least float32 precision.

  bfloat16/float16 inputs are computed in float32 (and so return float32);
  integer and boolean inputs become float32; float64 stays float64.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
    return x.astype(jnp.float32)
  return x


def safe_divide(num: Array, den: Array) -> Array:
  """``num / den``, and 0 (with zero gradients) where ``den == 0``."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def static_positive(eps: object) -> bool:
  """Whether ``eps`` is a Python or NumPy number known at trace time to be positive."""
  return isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0


def divide_plus_eps(num: Array, den: Array, eps: float) -> Array:
  """``num / (den + eps)`` for ``den >= 0`` (the IoU family's form).

  A static ``eps > 0`` needs no guard (and each guard costs compile time); otherwise
  :func:`safe_divide` makes ``0 / 0`` a 0.
  """
  if static_positive(eps):
    return num / (den + eps)
  return safe_divide(num, den + eps)


def divide_or_eps(num: Array, den: Array, eps: float) -> Array:
  """``num / den``, with ``eps`` as the denominator only where ``den`` is 0 (region losses).

  ``den >= 0`` (a sum of soft counts and ``smooth``), so ``eps`` never overrides a
  positive ``smooth``; where both are 0 the ratio is 0, with zero gradients.
  """
  return safe_divide(num, jnp.where(den > 0, den, eps))


def safe_pow(x: Array, p: float) -> Array:
  """``x ** p`` for ``x >= 0`` and a Python number ``p >= 0``.

  Multiplications for a small integer ``p``; for ``0 < p < 1`` the gradient at ``x = 0``
  is 0, not inf (and ``0 * inf`` never reaches the plain-autodiff gradient).
  """
  if p == 0:
    return jnp.ones_like(x)
  if float(p).is_integer() and 0 < p <= 8:
    return lax.integer_pow(x, int(p))
  if p > 1:
    return jnp.power(x, p)
  positive = x > 0
  base = jnp.where(positive, x, 1)
  return jnp.where(positive, jnp.sqrt(base) if p == 0.5 else jnp.power(base, p), 0)


def sigmoid_pieces(x: Array) -> tuple[Array, Array, Array, Array]:
  """``(p, q, r, lg)``: ``p = sigmoid(x)``, ``q = sigmoid(-x)``, ``r = max(x, 0)``,
  ``lg = log1p(exp(-|x|))``.

  One ``exp`` and one ``log1p``. ``q`` is not ``1 - p`` (which cancels to 0
  for ``x > 17`` in float32), and the softplus is left in pieces,
  ``softplus(x) = r + lg`` and ``softplus(-x) = (r - x) + lg``: a BCE
  assembled as ``(r - t x) + lg`` adds two non-negative terms, where
  ``softplus(x) - t x`` cancels (0 instead of 3e-7 at ``t = 1, x = 15``).
  """
  e = jnp.exp(-jnp.abs(x))
  s = 1 / (1 + e)
  pos = x >= 0
  p = jnp.where(pos, s, e * s)
  q = jnp.where(pos, e * s, s)
  return p, q, jnp.maximum(x, 0), jnp.log1p(e)


def sum_fused(loss: Array) -> Array:
  """``jnp.sum(loss)``, in a form XLA:CPU fuses with the loss computation.

  XLA:CPU hands a bare float reduce to its YNN fusion, which takes the sum's
  cheap producers (multiply, add) but not transcendental ones (exp, log1p,
  divide), so the per-element loss is split into several materialised passes
  (3-4x slower for the focal loss). A ``reduce_precision`` to the array's own
  format is an exact identity that YNN does not take, so the loss stays one
  loop fusion.
  """
  info = jnp.finfo(loss.dtype)
  return jnp.sum(jax.lax.reduce_precision(loss, info.nexp, info.nmant))
