"""FCOS's summed head losses as ``custom_vjp`` kernels: the sigmoid focal sum over the
levels' class logits, and the GIoU + centerness sums over the positives.

One pass over the logits forward and one per level backward, each level's gradient computed
from its own logits, keeps the step within a few times a bare ``softplus``. Inside the loss
every per-point quantity is one ``[N, ...]`` array of rows ordered level, image, point
(``N = B * P``), so each term compiles once, not once per level.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._src.kernels.core import recompute_barrier
from jaxloss._src.kernels.sigmoid import bce_parts, focal_label_terms, sigmoid_parts
from jaxloss._src.numerics import sum_fused
from jaxloss._src.tracing import inlined
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes.geometry import Planes, rectangle_area

# mmdetection's GIoULoss / IoULoss eps (floor of the union, and of the IoU before the log)
BOX_EPS = 1e-6

__all__ = ["BOX_EPS", "box_and_centerness_rows", "box_ctr_sums", "focal_sum", "level_major", "nhwc"]


def nhwc(x: ArrayLike, channels: int, what: str) -> Array:
  """One level's ``[B, H, W, K]`` map (for ``K = 1`` the channel axis may be missing)."""
  x = jnp.asarray(x)
  if channels == 1 and x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(
        f"{what} must be per-level NHWC maps [B, H, W, {channels}], got {x.shape}.")
  return x


def level_major(levels: Sequence[Array]) -> Array:
  """Per-level ``[B, H_l, W_l, K]`` maps as one ``[N, K]``, ``N = B * P`` rows ordered
  level, image, point.

  Each level is one contiguous block, so joining the levels and splitting their
  gradients back are block copies; joining along the points axis of
  ``[B, P_l, K]`` instead interleaves the images, which XLA:CPU compiles to
  loops several times as long.
  """
  return jnp.concatenate([x.reshape(-1, x.shape[-1]) for x in levels])


@inlined
def _focal_sum_value(levels: tuple[Array, ...], labels: Array, alpha, gamma) -> Array:
  """Sum of the sigmoid focal loss of the levels' rows (:func:`level_major`) against
  integer ``labels [N]`` (the sigmoid focal sum of the joined logits).

  The gradient is computed level by level from the levels themselves, straight
  into each level's gradient, so neither pass keeps anything of the other:
  the forward pass is one loop over the joined logits, the backward one loop
  per level (XLA:CPU otherwise materialises ``exp``, ``1 / (1 + exp)`` and
  ``log1p`` of the joined logits for the backward pass and recomputes the
  gradient inside each level's copy: four passes and five kernels more).
  """
  return sum_fused(focal_label_terms(level_major(levels), labels, alpha, gamma)[0])


focal_sum = functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))(_focal_sum_value)


def _focal_sum_fwd(levels, labels, alpha, gamma):
  return _focal_sum_value(levels, labels, alpha, gamma), (levels, labels)


@inlined
def _focal_sum_bwd(alpha, gamma, residuals, g):
  levels, labels = residuals
  bounds = np.cumsum([0] + [math.prod(x.shape[:-1]) for x in levels])
  grads = []
  for x, a, b in zip(levels, bounds[:-1], bounds[1:], strict=True):
    _, slope = focal_label_terms(x, labels[a:b].reshape(x.shape[:-1]), alpha, gamma)
    grads.append(g * slope)
  return tuple(grads), None


focal_sum.defvjp(_focal_sum_fwd, _focal_sum_bwd)


def _min_slope(a: Array, b: Array) -> Array:
  """``d min(a, b) / da`` as autodiff has it: 1 where ``a < b``, 1/2 where equal, else 0."""
  return 0.5 + 0.5 * jnp.sign(b - a)


def _rectangle(sides: Sequence[Array]) -> tuple[Array, Array, Array, Array]:
  """Width, height, area (:func:`jaxloss.boxes.rectangle_area`) and whether both
  sides are positive (where the area has a gradient), of ``ltrb`` sides."""
  w, h = sides[0] + sides[2], sides[1] + sides[3]
  return w, h, rectangle_area(w, h), (w > 0) & (h > 0)


def _giou_ltrb(pred: Planes, target: Planes):
  """``(1 - GIoU, parts)`` of ``ltrb`` boxes, as :func:`jaxloss.giou_loss` with
  ``box_format="ltrb"`` and ``eps=BOX_EPS``; ``parts`` for :func:`_giou_ltrb_grad`."""
  inner = _rectangle([jnp.minimum(a, b) for a, b in zip(pred, target, strict=True)])
  outer = _rectangle([jnp.maximum(a, b) for a, b in zip(pred, target, strict=True)])
  own = _rectangle(pred)
  union = own[2] + _rectangle(target)[2] - inner[2]
  iou_ = inner[2] / (union + BOX_EPS)
  pen = (outer[2] - union) / (outer[2] + BOX_EPS)
  return 1 - iou_ + pen, (inner, own, outer, union, iou_, pen)


def _giou_ltrb_grad(pred: Array, target: Array) -> Array:
  r"""Derivative of :func:`_giou_ltrb` by ``pred``, for ``ltrb`` boxes ``[N, 4]``.

  With intersection :math:`I`, union :math:`U = A_p + A_t - I`, enclosing area
  :math:`C`, :math:`\mathrm{IoU} = I / (U + \epsilon)` and
  :math:`\mathrm{pen} = (C - U) / (C + \epsilon)`:
  :math:`\partial\ell = (\partial C\,(1 - \mathrm{pen}) - \partial U) / (C + \epsilon)
  - (\partial I - \mathrm{IoU}\,\partial U) / (U + \epsilon)`, where a side moves
  an area by the rectangle's other extent (zero for a zero-area rectangle) and
  the ``min``/``max`` of two sides splits ties in half, as autodiff does.
  Every per-box quantity is computed at the ``[N, 4]`` shape (each box's four
  times), so that XLA fuses the whole gradient into one loop.
  """
  planes = lambda x: tuple(jnp.broadcast_to(x[:, k, None], x.shape) for k in range(4))
  _, (inner, own, outer, union, iou_, pen) = _giou_ltrb(planes(pred), planes(target))
  horizontal = jax.lax.broadcasted_iota(jnp.int32, pred.shape, 1) % 2 == 0  # l and r

  def extent(rect):  # d area / d side: the other extent
    w, h, _, ok = rect
    return jnp.where(ok, jnp.where(horizontal, h, w), 0.0)

  d_inter = extent(inner) * _min_slope(pred, target)
  d_union = extent(own) - d_inter
  d_area_c = extent(outer) * _min_slope(target, pred)
  return ((d_area_c * (1 - pen) - d_union) / (outer[2] + BOX_EPS)
          - (d_inter - iou_ * d_union) / (union + BOX_EPS))


def _box_ctr_inputs(rows: Array, box_targets: Array, positive: Array):
  """The box/centerness rows ``[N, 5]`` and box targets, other rows made harmless."""
  unit = jnp.array([0.0, 0.0, 1.0, 1.0], rows.dtype)
  return (jnp.where(positive[:, None], rows[:, :4], unit),
          jnp.where(positive[:, None], box_targets.astype(rows.dtype), unit),
          jnp.where(positive, rows[:, 4], 0.0))


@inlined
def _box_ctr_value(box_levels, ctr_levels, box_targets, ctr_targets, positive):
  """``(sum of c (1 - GIoU), sum of BCE(z, c))`` over the positive rows of the levels'
  box outputs and centerness logits (``[B, H_l, W_l, 4]`` and ``[..., 1]``), ``c`` the
  centerness target.

  A ``custom_vjp`` (:data:`box_ctr_sums`): the forward pass reads the joined
  ``[N, 5]`` rows once per sum; the backward pass computes the analytic gradient
  (:func:`_giou_ltrb_grad`) in one pass and splits it into the levels. Equal
  to autodiff of :func:`jaxloss.giou_loss` and :func:`centerness_loss`
  (``jaxloss.fused_kernels(False)``), in fewer kernels.
  """
  pred, target, z = _box_ctr_inputs(box_and_centerness_rows(box_levels, ctr_levels), box_targets,
                                    positive)
  giou, _ = _giou_ltrb(tuple(pred[:, k] for k in range(4)),
                       tuple(target[:, k] for k in range(4)))
  bce = bce_parts(z, ctr_targets)[0]
  return (sum_fused(jnp.where(positive, ctr_targets * giou, 0.0)),
          sum_fused(jnp.where(positive, bce, 0.0)))


box_ctr_sums = jax.custom_vjp(_box_ctr_value)


def _box_ctr_sums_fwd(*args):
  return _box_ctr_value(*args), args


@inlined
def _box_ctr_sums_bwd(residuals, g):
  box_levels, ctr_levels, box_targets, ctr_targets, positive = recompute_barrier(residuals)
  pred, target, z = _box_ctr_inputs(box_and_centerness_rows(box_levels, ctr_levels), box_targets,
                                    positive)
  scale = jnp.where(positive, ctr_targets, 0.0)
  d_box = _giou_ltrb_grad(pred, target) * (g[0] * scale)[:, None]
  d_ctr = jnp.where(positive, sigmoid_parts(z)[0] - ctr_targets, 0.0) * g[1]
  # one [N, 5] buffer that the levels copy from: the concatenation is the last op, or
  # XLA:CPU fuses the gradient into each level's copy
  grad = jnp.concatenate([d_box, d_ctr[:, None]], 1)
  bounds = np.cumsum([0] + [math.prod(x.shape[:-1]) for x in box_levels])
  blocks = [grad[a:b].reshape(*box.shape[:-1], 5)
            for a, b, box in zip(bounds[:-1], bounds[1:], box_levels, strict=True)]
  return tuple(x[..., :4] for x in blocks), tuple(x[..., 4:] for x in blocks), None, None, None


box_ctr_sums.defvjp(_box_ctr_sums_fwd, _box_ctr_sums_bwd)


def box_and_centerness_rows(box_levels, ctr_levels) -> Array:
  """The levels' box outputs and centerness logits joined as one ``[N, 5]``.

  One join, so that their gradients are written once, into one ``[N, 5]``
  buffer that the levels copy from; joined separately, XLA:CPU recomputes the
  centerness gradient inside each level's copy and compiles 15-20% more code.
  """
  return level_major([jnp.concatenate([box, ctr], -1)
                       for box, ctr in zip(box_levels, ctr_levels, strict=True)])

