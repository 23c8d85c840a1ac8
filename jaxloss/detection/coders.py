r"""The ``delta_xywh`` box coder of R-CNN and RetinaNet (mmdetection ``DeltaXYWHBBoxCoder``).

A box :math:`g` is encoded relative to an anchor :math:`a` (centres
:math:`x, y`, sizes :math:`w, h`) as (Girshick et al., "Rich feature
hierarchies", https://arxiv.org/abs/1311.2524):

.. math::
   \delta = \left(\frac{x_g - x_a}{w_a}, \frac{y_g - y_a}{h_a},
   \log\frac{w_g}{w_a}, \log\frac{h_g}{h_a}\right), \quad
   \hat\delta = (\delta - \mu) / \sigma

with ``means`` :math:`\mu` and ``stds`` :math:`\sigma`; decoding inverts it,
the log-sizes clipped to :math:`\pm|\log(\text{wh\_ratio\_clip})|` so that
:math:`\exp` cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes.geometry import check_boxes, stack, unstack

DEFAULT_MEANS = (0.0, 0.0, 0.0, 0.0)
DEFAULT_STDS = (1.0, 1.0, 1.0, 1.0)


def _centre_size(boxes: Array) -> tuple[Array, Array, Array, Array]:
  x1, y1, x2, y2 = unstack(boxes)
  return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


def _stats(means: Sequence[float], stds: Sequence[float], dtype,
           ndim: int) -> tuple[Array, Array]:
  """``means`` and ``stds`` as ``[1, ..., 1, 4]`` arrays of rank ``ndim``."""
  mean, std = jnp.asarray(means, dtype), jnp.asarray(stds, dtype)
  if mean.shape != (4,) or std.shape != (4,):
    raise ValueError(f"means and stds must have 4 values (dx, dy, dw, dh), got shapes "
                     f"{mean.shape} and {std.shape}.")
  shape = (1,) * (ndim - 1) + (4,)
  return mean.reshape(shape), std.reshape(shape)


def _common(a: Array, b: Array) -> tuple[Array, Array]:
  """``a`` and ``b`` in one float dtype and one (explicitly broadcast) shape."""
  dtype, shape = jnp.result_type(a, b), jnp.broadcast_shapes(a.shape, b.shape)
  return (jnp.broadcast_to(a.astype(dtype), shape), jnp.broadcast_to(b.astype(dtype), shape))


def _log_ratio(num: Array, den: Array) -> Array:
  """``log(num / den)``; a side that is not positive counts as the smallest normal
  float (a finite, very negative log instead of ``-inf`` or NaN)."""
  tiny = jnp.finfo(num.dtype).tiny
  return jnp.log(jnp.maximum(num, tiny)) - jnp.log(jnp.maximum(den, tiny))


def delta_xywh_encode(anchors: ArrayLike, boxes: ArrayLike, *,
                      means: Sequence[float] = DEFAULT_MEANS,
                      stds: Sequence[float] = DEFAULT_STDS) -> Array:
  r"""Encodes ``boxes`` relative to ``anchors`` (mmdetection ``bbox2delta``).
  https://arxiv.org/abs/1506.01497

  .. math::
     \hat\delta = \left(\left(\frac{x_g - x_a}{w_a}, \frac{y_g - y_a}{h_a},
     \log\frac{w_g}{w_a}, \log\frac{h_g}{h_a}\right) - \mu\right) / \sigma

  Args:
    anchors: ``[..., 4]`` ``xyxy``.
    boxes: ``[..., 4]`` ``xyxy``, broadcastable against ``anchors``.
    means, stds: 4 values each, the targets' normalisation.

  Returns:
    ``[..., 4]`` deltas ``(dx, dy, dw, dh)``, at least float32. Zero-size
    anchors or boxes (where mmdetection divides by zero) give finite deltas:
    a size that is not positive counts as the smallest normal float.
  """
  anchors, boxes = as_float(anchors), as_float(boxes)
  check_boxes(anchors, "anchors")
  check_boxes(boxes, "boxes")
  anchors, boxes = _common(anchors, boxes)
  ax, ay, aw, ah = _centre_size(anchors)
  gx, gy, gw, gh = _centre_size(boxes)
  tiny = jnp.finfo(anchors.dtype).tiny
  safe_aw, safe_ah = jnp.maximum(aw, tiny), jnp.maximum(ah, tiny)
  deltas = stack(((gx - ax) / safe_aw, (gy - ay) / safe_ah, _log_ratio(gw, aw),
                   _log_ratio(gh, ah)))
  mean, std = _stats(means, stds, deltas.dtype, deltas.ndim)
  return (deltas - mean) / std


def delta_xywh_decode(anchors: ArrayLike, deltas: ArrayLike, *,
                      means: Sequence[float] = DEFAULT_MEANS,
                      stds: Sequence[float] = DEFAULT_STDS, wh_ratio_clip: float = 16 / 1000,
                      add_ctr_clamp: bool = False, ctr_clamp: float = 32.0,
                      max_shape: tuple[int, int] | None = None) -> Array:
  r"""Decodes ``deltas`` around ``anchors`` into ``xyxy`` boxes (mmdetection ``delta2bbox``).
  https://arxiv.org/abs/1506.01497

  With :math:`\delta = \hat\delta \sigma + \mu` and
  :math:`m = |\log(\text{wh\_ratio\_clip})|`:

  .. math::
     x = x_a + w_a \delta_x, \quad w = w_a \exp(\mathrm{clip}(\delta_w, -m, m))

  (likewise :math:`y, h`), and the box is :math:`(x - w/2, y - h/2, x + w/2, y + h/2)`.
  With ``add_ctr_clamp`` the centre shift :math:`w_a \delta_x` is clipped to
  :math:`\pm` ``ctr_clamp`` pixels and the log-sizes only from above (as
  mmdetection). ``max_shape`` ``(height, width)`` clips the boxes to the image.

  Args:
    anchors: ``[..., 4]`` ``xyxy``.
    deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``, broadcastable against ``anchors``.
    means, stds: 4 values each, as given to :func:`delta_xywh_encode`.
    wh_ratio_clip: bound of the size ratio (mmdetection: 16 / 1000).
    add_ctr_clamp, ctr_clamp: clip the centre shift (mmdetection's options).
    max_shape: ``(height, width)`` to clip the decoded boxes to, or ``None``.

  Returns:
    ``[..., 4]`` ``xyxy`` boxes, at least float32.
  """
  anchors, deltas = as_float(anchors), as_float(deltas)
  check_boxes(anchors, "anchors")
  check_boxes(deltas, "deltas")
  if not 0 < wh_ratio_clip <= 1:
    raise ValueError(f"wh_ratio_clip must be in (0, 1], got {wh_ratio_clip!r}.")
  anchors, deltas = _common(anchors, deltas)
  mean, std = _stats(means, stds, deltas.dtype, deltas.ndim)
  dx, dy, dw, dh = unstack(deltas * std + mean)
  ax, ay, aw, ah = _centre_size(anchors)
  shift_x, shift_y = aw * dx, ah * dy
  bound = abs(math.log(wh_ratio_clip))
  if add_ctr_clamp:
    shift_x, shift_y = (jnp.clip(s, -ctr_clamp, ctr_clamp) for s in (shift_x, shift_y))
    dw, dh = jnp.minimum(dw, bound), jnp.minimum(dh, bound)
  else:
    dw, dh = jnp.clip(dw, -bound, bound), jnp.clip(dh, -bound, bound)
  cx, cy = ax + shift_x, ay + shift_y
  half_w, half_h = 0.5 * aw * jnp.exp(dw), 0.5 * ah * jnp.exp(dh)
  x1, y1, x2, y2 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
  if max_shape is not None:
    height, width = max_shape
    x1, x2 = jnp.clip(x1, 0, width), jnp.clip(x2, 0, width)
    y1, y2 = jnp.clip(y1, 0, height), jnp.clip(y2, 0, height)
  return stack((x1, y1, x2, y2))
