"""The one reduction helper of jaxloss, and the masking utilities it rests on.

Every loss computes a per-element loss, then calls :func:`reduce_loss`. The
conventions (the docs' conventions page):

* ``weight`` multiplies the per-element loss. It broadcasts with numpy rules,
  except that a weight exactly one rank short of the loss is aligned to the
  leading axes (a per-sample weight ``[N]`` for a loss ``[N, C]``), as in
  mmdetection.
* ``where`` is a boolean mask with the same broadcasting. Masked elements
  contribute exactly zero to the value and to the gradient and are not counted
  by ``"mean"``. Losses sanitise their *inputs* with :func:`fill_masked` before
  computing, so that no NaN or inf is ever formed under a masked element (the
  "double where"): a ``jnp.where`` on the output alone still lets ``0 * inf``
  into the gradient.
* ``reduction`` is ``"none"``, ``"sum"`` or ``"mean"``; ``"mean"`` divides the
  sum by ``avg_factor`` when given, else by the number of counted elements,
  and returns 0 (with zero gradients) when that is 0.
* ``axis_name``: the divisor is averaged with ``jax.lax.pmean`` over that
  axis, so the ``pmean`` of per-device losses equals the loss of the whole
  batch on one device (mmdetection's ``reduce_mean``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_range, check_reduction
from jaxloss._src.numerics import as_float, safe_divide, sum_fused
from jaxloss._src.typing import Array, ArrayLike, AxisName, Reduction

__all__ = ["align", "broadcast_mask", "combine_masks", "device_mean", "fill_masked",
           "reduce_loss", "reduce_total"]


def align(x: ArrayLike, shape: tuple[int, ...], what: str = "weight") -> Array:
  """Broadcasts ``x`` to ``shape`` with jaxloss's rule.

  A value one rank short of ``shape`` is aligned to the leading axes (it is a
  per-sample value, broadcast over the last axis); otherwise numpy rules.
  """
  x = jnp.asarray(x)
  if x.ndim == len(shape) - 1 and x.ndim > 0:
    x = x[..., None]
  try:
    return jnp.broadcast_to(x, shape)
  except ValueError:
    raise ValueError(
        f"`{what}` of shape {x.shape} does not broadcast to the per-element "
        f"loss shape {shape}; pass a {what} of that shape, one rank short of "
        f"it (per sample), or broadcastable to it.") from None


def broadcast_mask(where: ArrayLike | None, shape: tuple[int, ...]) -> Array | None:
  """Returns ``where`` as a boolean mask of the per-element loss ``shape``."""
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(
        f"`where` must be a boolean mask, got dtype {where.dtype}; pass e.g. "
        "`where=labels != ignore_index`.")
  return align(where, shape, "where")


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not ``None`` (``None`` if all are)."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  out = present[0]
  for m in present[1:]:
    out = jnp.logical_and(out, m)
  return out


def fill_masked(x: ArrayLike, mask: Array | None, fill: ArrayLike = 0.0) -> Array:
  """Replaces the masked-out entries of an input by a harmless ``fill``.

  ``mask`` has the per-element loss shape, which is a prefix of ``x.shape``
  (inputs may carry trailing class or box axes). ``fill`` broadcasts against
  those trailing axes, e.g. a unit box ``[0, 0, 1, 1]`` for box inputs.
  """
  x = jnp.asarray(x)
  if mask is None:
    return x
  mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
  return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def device_mean(x: Array, axis_name: AxisName) -> Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _mean(total: Array, count: Array, avg_factor: ArrayLike | None, axis_name: AxisName) -> Array:
  """``total`` over ``avg_factor`` (else ``count``), the divisor ``pmean``'d; 0 over 0 is 0."""
  den = count if avg_factor is None else as_float(avg_factor)
  return safe_divide(total, device_mean(den, axis_name))


def _check_reduction_args(reduction: str, avg_factor: ArrayLike | None) -> None:
  check_reduction(reduction)
  check_range("avg_factor", avg_factor, 0.0,
              hint=" It divides the 'mean': pass a count or a positive normaliser.")
  if avg_factor is not None and reduction == "sum":
    raise ValueError(
        "avg_factor cannot be used with reduction='sum'; use reduction='mean' "
        "to divide by avg_factor, or drop avg_factor.")


def reduce_total(total: Array, count: int, *, reduction: Reduction = "mean",
                 avg_factor: ArrayLike | None = None, axis_name: AxisName = None) -> Array:
  """:func:`reduce_loss` of a loss that a fused kernel has already summed.

  For ``count`` unweighted, unmasked elements: ``"sum"`` returns ``total``,
  ``"mean"`` divides it by ``avg_factor`` or ``count`` (``pmean``'d over
  ``axis_name``), as :func:`reduce_loss` would.
  """
  _check_reduction_args(reduction, avg_factor)
  if reduction == "none":
    raise ValueError("reduce_total needs reduction='sum' or 'mean'.")
  if reduction == "sum":
    return total
  return _mean(total, jnp.asarray(count, total.dtype), avg_factor, axis_name)


def reduce_loss(
    loss: Array,
    *,
    weight: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: Reduction = "mean",
    avg_factor: ArrayLike | None = None,
    axis_name: AxisName = None,
    count_weight: ArrayLike | None = None,
) -> Array:
  """Applies ``weight`` and ``where`` to a per-element loss and reduces it.

  Args:
    loss: per-element loss, any shape.
    weight: multiplies ``loss`` (see the module docstring for broadcasting).
    where: boolean mask; ``False`` elements give 0 value and 0 gradient and are
      not counted by ``"mean"``.
    reduction: ``"none"`` (per-element), ``"sum"`` or ``"mean"``.
    avg_factor: divisor of ``"mean"`` instead of the count (may be traced).
      ``ValueError`` with ``"sum"``; ignored by ``"none"`` as mmdetection.
    axis_name: mapped axis over which the divisor is averaged (``pmean``).
    count_weight: what each counted element adds to the ``"mean"`` divisor
      (default 1); ``cross_entropy`` passes its class weights here.

  Returns:
    ``loss`` masked and weighted for ``"none"``, else a scalar. Always at
    least float32.
  """
  _check_reduction_args(reduction, avg_factor)
  loss = as_float(loss)
  shape = loss.shape
  mask = broadcast_mask(where, shape)
  if weight is not None:
    loss = loss * align(as_float(weight), shape)
  if mask is not None:
    loss = jnp.where(mask, loss, 0)
  if reduction == "none":
    return loss
  total = sum_fused(loss)
  if reduction == "sum":
    return total
  if count_weight is None:
    count = jnp.size(loss) if mask is None else jnp.sum(mask, dtype=jnp.int32)
    count = jnp.asarray(count, loss.dtype)
  else:
    count = align(as_float(count_weight), shape, "count_weight")
    count = jnp.sum(count if mask is None else jnp.where(mask, count, 0))
  return _mean(total, count, avg_factor, axis_name)
