r"""IoU-based box regression losses: IoU, GIoU, DIoU, CIoU, EIoU and SIoU.

Every loss takes ``pred`` and ``target`` boxes ``[..., 4]`` (broadcastable
batch shapes) in ``box_format`` ``"xyxy"`` (default), ``"xywh"``,
``"cxcywh"`` or ``"ltrb"`` (distances from a point to the sides, as FCOS
predicts them; both inputs are decoded around the same point, which IoU does
not depend on), and returns a per-box loss ``[...]`` (the box axis is
dropped) for ``reduction="none"``. ``weight`` and ``where`` have that shape
(a ``weight [..., 4]`` of the boxes' shape is averaged over its last axis,
as mmdetection does).

Degenerate boxes never give NaN or inf, in values or gradients:

* an inverted box (``x2 < x1`` or ``y2 < y1``) and a zero-area box have area
  0 (:func:`jaxloss.boxes.rectangle_area`), so the union is never negative
  (torchvision multiplies the raw sides, so a box inverted on one axis has a
  negative area there); an inverted prediction is then moved by the penalty
  terms (enclosing box, centre distance, aspect), not by the IoU term. For
  valid boxes the numbers are torchvision's/mmdetection's;
* every division is guarded (:func:`jaxloss.safe_divide` or an ``eps``
  floor), the aspect angle of CIoU is finite for zero-height boxes and the
  angle cost of SIoU for coincident centres;
* masked boxes (``where=False``) are replaced by a unit box before anything
  is computed, so padded all-zero or NaN boxes get exactly zero gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_choice, check_range, check_static
from jaxloss._src.numerics import as_float, divide_plus_eps, safe_divide, static_positive
from jaxloss._src.reduce import broadcast_mask, fill_masked, reduce_loss
from jaxloss._src.typing import Array, ArrayLike, Reduction
from jaxloss.boxes.geometry import (
  Planes,
  area,
  box_pair,
  enclosing_box,
  intersection_union,
  planes_to_xyxy,
  unstack,
)

IOU_MODES = ("linear", "square", "log")
_UNIT_BOX = (0.0, 0.0, 1.0, 1.0)
# Bound on the SIoU distance ratios; valid boxes have rho <= 1, and exp(2 * 16) is finite.
_MAX_RHO = 16.0


def _prepare(pred: ArrayLike, target: ArrayLike, where: ArrayLike | None,
             box_format: str, eps: float) -> tuple[Planes, Planes, Array | None]:
  """Both inputs as float ``xyxy`` planes of one batch shape, masked boxes made unit boxes
  (``eps`` checked: a negative one can make a denominator 0 or negative)."""
  check_range("eps", eps, 0.0)
  pred, target = box_pair(pred, target, ("pred", "target"))
  try:
    shape = jnp.broadcast_shapes(pred.shape[:-1], target.shape[:-1])
  except ValueError:
    raise ValueError(f"pred {pred.shape} and target {target.shape} boxes do not "
                     "broadcast against each other.") from None
  mask = broadcast_mask(where, shape)
  planes = []
  for x in (pred, target):
    xyxy = planes_to_xyxy(unstack(x), box_format)
    planes.append(tuple(fill_masked(jnp.broadcast_to(c, shape), mask, fill)
                        for c, fill in zip(xyxy, _UNIT_BOX, strict=True)))
  return planes[0], planes[1], mask


def _reduce(loss: Array, weight, mask, reduction, avg_factor, axis_name) -> Array:
  if weight is not None:
    weight = jnp.asarray(weight)
    if weight.ndim == loss.ndim + 1 and weight.shape[-1] == 4:
      weight = jnp.mean(as_float(weight), axis=-1)
  return reduce_loss(loss, weight=weight, where=mask, reduction=reduction,
                     avg_factor=avg_factor, axis_name=axis_name)


def box_size(boxes: Planes) -> tuple[Array, Array]:
  x1, y1, x2, y2 = boxes
  return x2 - x1, y2 - y1


def _centre_offset(pred: Planes, target: Planes) -> tuple[Array, Array]:
  """Centre of ``target`` minus centre of ``pred``, per axis."""
  px1, py1, px2, py2 = pred
  tx1, ty1, tx2, ty2 = target
  return 0.5 * (tx1 + tx2 - px1 - px2), 0.5 * (ty1 + ty2 - py1 - py2)


def _resolvable(x: Array) -> Array:
  """``|x| >= sqrt(finfo.tiny)``: ``1 / x ** 2``, which the gradient of a ratio by ``x``
  holds, is finite (float32: ``|x| >= 1.1e-19``; below, ``x ** 2`` underflows).

  Two comparisons, not one on ``abs(x)`` or ``x * x``: with those, XLA:CPU
  compiles SIoU's backward pass 2x slower.
  """
  bound = math.sqrt(jnp.finfo(x.dtype).tiny)
  return (x >= bound) | (x <= -bound)


def _scaled(num: Array, den: Array) -> Array:
  """``num / den``, 0 with zero gradient where ``den`` is not :func:`_resolvable`."""
  ok = _resolvable(den)
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _iou_with_eps(pred: Planes, target: Planes, eps: float) -> tuple[Array, Array]:
  """``inter / (union + eps)`` (torchvision's loss IoU) and the union."""
  inter, union = intersection_union(pred, target)
  return divide_plus_eps(inter, union, eps), union


def diou_terms(pred: Planes, target: Planes, eps: float) -> tuple[Array, Array]:
  """IoU and the DIoU penalty :math:`\\rho^2 / (c^2 + \\epsilon)`."""
  iou, _ = _iou_with_eps(pred, target, eps)
  cw, ch = box_size(enclosing_box(pred, target))
  dx, dy = _centre_offset(pred, target)
  return iou, divide_plus_eps(dx * dx + dy * dy, cw * cw + ch * ch, eps)


# atan(a) ~ a * P(a^2) on [0, 1]: a least-squares fit toward minimax (Chebyshev nodes,
# Lawson reweighting), max error 1.2e-7 (2 ulp at pi/4) when evaluated in float32.
_ATAN_COEFFS = (-0.004054560326039791, 0.021862952038645744, -0.055912356823682785,
                0.09642203897237778, -0.13908633589744568, 0.19946567714214325,
                -0.33329862356185913, 0.9999993443489075)


@jax.custom_jvp
def _atan2(y: Array, x: Array) -> Array:
  r"""``jnp.arctan2`` for ``(x, y) != (0, 0)``, as a polynomial below float64.

  XLA:CPU calls a scalar libm ``atan2``, 35x the time of an ``exp``; this
  vectorises. The derivative is the exact :math:`(x\,dy - y\,dx) / (x^2 + y^2)`.
  """
  if y.dtype == jnp.float64:
    return jnp.arctan2(y, x)
  ax, ay = jnp.abs(x), jnp.abs(y)
  a = jnp.minimum(ax, ay) / jnp.maximum(ax, ay)
  s = a * a
  r = jnp.zeros_like(a)
  for c in _ATAN_COEFFS:
    r = r * s + c
  r = r * a
  r = jnp.where(ay > ax, math.pi / 2 - r, r)
  r = jnp.where(x < 0, math.pi - r, r)
  return jnp.where(y < 0, -r, r)


@_atan2.defjvp
def _atan2_jvp(primals, tangents):
  (y, x), (dy, dx) = primals, tangents
  # x^2 + y^2 underflows for |x|, |y| below ~1e-19 (CIoU: boxes below ~1e-10); the
  # floor keeps the derivative finite there (and 0 at the origin)
  return _atan2(y, x), (x * dy - y * dx) / jnp.maximum(x * x + y * y, jnp.finfo(x.dtype).tiny)


def aspect_gap(w: Array, h: Array, wg: Array, hg: Array) -> Array:
  r""":math:`\arctan(w_g / h_g) - \arctan(w / h)`, finite with finite gradients for any sizes.

  Each box is the vector :math:`(|h|, w\,\mathrm{sign}\,h)`, whose angle is
  :math:`\arctan(w / h)` wherever ``h != 0`` and its limit :math:`\pm\pi/2`
  at ``h = 0``; ``w = h = 0`` has angle 0. The difference of the two angles
  is one ``atan2`` of the vectors' cross and dot products (the angles lie in
  :math:`[-\pi/2, \pi/2]`, so it needs no unwrapping, up to :math:`\pm\pi`,
  whose square is the same).
  """
  def vector(w, h):
    nonzero = (w * w + h * h) > 0
    return jnp.where(nonzero, jnp.abs(h), 1.0), jnp.where(nonzero, jnp.where(h < 0, -w, w), 0.0)
  (x, y), (xg, yg) = vector(w, h), vector(wg, hg)
  return _atan2(yg * x - xg * y, xg * x + yg * y)


def iou_loss(pred: ArrayLike, target: ArrayLike, *, mode: str = "log", eps: float = 1e-6,
             box_format: str = "xyxy", weight=None, where=None, reduction: Reduction = "mean",
             avg_factor=None, axis_name=None) -> Array:
  r"""IoU loss (Yu et al., UnitBox, 2016), as mmdetection's ``iou_loss``.
  https://arxiv.org/abs/1608.01471

  With :math:`u = \max(|A \cup B|, \epsilon)` and
  :math:`\mathrm{IoU} = \max(|A \cap B| / u, \epsilon)`:
  ``"linear"`` :math:`1 - \mathrm{IoU}`, ``"square"`` :math:`1 - \mathrm{IoU}^2`,
  ``"log"`` :math:`-\log \mathrm{IoU}` (FCOS's default box loss). Disjoint boxes
  get the constant :math:`-\log \epsilon` (``"log"``) with zero gradient.

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    mode: ``"linear"``, ``"square"`` or ``"log"``.
    eps: floor of the union and of the IoU.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  check_choice("iou_loss mode", mode, IOU_MODES)
  check_range("eps", eps, 0.0, low_open=True, hint=" iou_loss floors the IoU at eps before "
              "the log.")
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  inter, union = intersection_union(p, t)
  iou = jnp.maximum(inter / jnp.maximum(union, eps), eps)
  if mode == "linear":
    loss = 1 - iou
  elif mode == "square":
    loss = 1 - iou * iou
  else:
    loss = -jnp.log(iou)
  return _reduce(loss, weight, mask, reduction, avg_factor, axis_name)


def giou_loss(pred: ArrayLike, target: ArrayLike, *, eps: float = 1e-7,
              box_format: str = "xyxy", weight=None, where=None, reduction: Reduction = "mean",
              avg_factor=None, axis_name=None) -> Array:
  r"""Generalized IoU loss (Rezatofighi et al., CVPR 2019), as torchvision's.
  https://arxiv.org/abs/1902.09630

  .. math::
     \ell = 1 - \frac{|A \cap B|}{|A \cup B| + \epsilon}
            + \frac{|C| - |A \cup B|}{|C| + \epsilon}

  with :math:`C` the smallest box enclosing both; in ``[0, 2]``. Matches
  ``torchvision.ops.generalized_box_iou_loss``; mmdetection places ``eps``
  as a floor instead (a difference of order ``eps``).

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    eps: added to the union and to the enclosing area.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  iou, union = _iou_with_eps(p, t, eps)
  area_c = area(enclosing_box(p, t))
  loss = 1 - iou + divide_plus_eps(area_c - union, area_c, eps)
  return _reduce(loss, weight, mask, reduction, avg_factor, axis_name)


def diou_loss(pred: ArrayLike, target: ArrayLike, *, eps: float = 1e-7,
              box_format: str = "xyxy", weight=None, where=None, reduction: Reduction = "mean",
              avg_factor=None, axis_name=None) -> Array:
  r"""Distance-IoU loss (Zheng et al., AAAI 2020), as torchvision's.
  https://arxiv.org/abs/1911.08287

  .. math::
     \ell = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2 + \epsilon}

  with :math:`\rho` the distance between the box centres, :math:`c` the
  diagonal of the enclosing box and :math:`\mathrm{IoU} = |A \cap B| /
  (|A \cup B| + \epsilon)`. Matches ``torchvision.ops.distance_box_iou_loss``.

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    eps: added to the union and to :math:`c^2`.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  iou, penalty = diou_terms(p, t, eps)
  return _reduce(1 - iou + penalty, weight, mask, reduction, avg_factor, axis_name)


def ciou_loss(pred: ArrayLike, target: ArrayLike, *, eps: float = 1e-7,
              box_format: str = "xyxy", weight=None, where=None, reduction: Reduction = "mean",
              avg_factor=None, axis_name=None) -> Array:
  r"""Complete-IoU loss (Zheng et al., AAAI 2020), as torchvision's.
  https://arxiv.org/abs/1911.08287

  .. math::
     \ell = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2 + \epsilon} + \alpha v, \quad
     v = \frac{4}{\pi^2}\Big(\arctan\frac{w_g}{h_g} - \arctan\frac{w}{h}\Big)^2, \quad
     \alpha = \frac{v}{1 - \mathrm{IoU} + v + \epsilon}

  with :math:`\alpha` under ``stop_gradient`` and always kept (torchvision's
  ``complete_box_iou_loss``; mmdetection 3 zeroes it where IoU <= 0.5 and
  clamps). :math:`\arctan(w/h)` is taken as its limit :math:`\pm\pi/2` for a
  zero-height box, and :math:`\alpha = 0` for identical boxes (:math:`0/0`).

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    eps: added to the union, to :math:`c^2` and to the denominator of :math:`\alpha`.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  iou, penalty = diou_terms(p, t, eps)
  (w, h), (wg, hg) = box_size(p), box_size(t)
  v = (4 / math.pi**2) * jnp.square(aspect_gap(w, h, wg, hg))
  alpha = jax.lax.stop_gradient(divide_plus_eps(v, 1 - iou + v, eps))
  return _reduce(1 - iou + penalty + alpha * v, weight, mask, reduction, avg_factor, axis_name)


def _smooth_extended_iou(p: Planes, t: Planes, smooth_point: float, eps: float) -> Array:
  """mmdetection's ``eiou_loss``: smooth L1 of 1 - IoU, with a signed intersection."""
  px1, py1, px2, py2 = p
  tx1, ty1, tx2, ty2 = t
  ex1, ey1 = jnp.minimum(px1, tx1), jnp.minimum(py1, ty1)
  ix1, iy1 = jnp.maximum(px1, tx1) - ex1, jnp.maximum(py1, ty1) - ey1
  ix2, iy2 = jnp.minimum(px2, tx2) - ex1, jnp.minimum(py2, ty2) - ey1
  xmin, xmax = jnp.minimum(ix1, ix2), jnp.maximum(ix1, ix2)
  ymin, ymax = jnp.minimum(iy1, iy2), jnp.maximum(iy1, iy2)
  # Equals the intersection when the boxes overlap and is negative when they
  # are disjoint, so disjoint boxes still get a gradient pulling them together.
  inter = ix2 * iy2 + xmin * ymin - ix1 * ymax - xmax * iy1
  union = jnp.maximum(area(p) + area(t) - inter + eps, eps)
  x = 1 - inter / union
  return jnp.where(x < smooth_point, 0.5 * x * x / smooth_point, x - 0.5 * smooth_point)


def eiou_loss(pred: ArrayLike, target: ArrayLike, *, smooth_point: float | None = None,
              eps: float = 1e-7, box_format: str = "xyxy", weight=None, where=None,
              reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""Efficient-IoU loss (Zhang et al., Neurocomputing 2022, "Focal and Efficient
  IOU Loss"), or with ``smooth_point`` mmdetection's smooth EIoU.
  https://arxiv.org/abs/2101.08158

  ``smooth_point=None``:

  .. math::
     \ell = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2 + \epsilon}
          + \frac{(w - w_g)^2}{C_w^2 + \epsilon} + \frac{(h - h_g)^2}{C_h^2 + \epsilon}

  with :math:`C_w, C_h` the size of the enclosing box (:math:`c^2 = C_w^2 +
  C_h^2`) and IoU as in :func:`diou_loss`.

  ``smooth_point=s`` (a float > 0): mmdetection's ``eiou_loss`` (Peng et al.
  2021, "Extended-IoU"): with :math:`x = 1 - I / (|A| + |B| - I + \epsilon)`,
  where :math:`I` is the intersection extended to a negative value for
  disjoint boxes, :math:`\ell = x^2 / (2s)` if :math:`x < s` else
  :math:`x - s/2`. It can exceed 1.

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    smooth_point: ``None`` for Zhang et al.'s EIoU, or mmdetection's smooth point (0.1).
    eps: stabiliser of the divisions.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  check_static("smooth_point", smooth_point, "it selects the smooth form's branch")
  if smooth_point is not None and not smooth_point > 0:
    raise ValueError(f"eiou_loss smooth_point must be None or > 0, got {smooth_point!r}.")
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  if smooth_point is not None:
    loss = _smooth_extended_iou(p, t, smooth_point, eps)
  else:
    iou, penalty = diou_terms(p, t, eps)
    cw, ch = box_size(enclosing_box(p, t))
    (w, h), (wg, hg) = box_size(p), box_size(t)
    loss = (1 - iou + penalty + divide_plus_eps(jnp.square(w - wg), cw * cw, eps)
            + divide_plus_eps(jnp.square(h - hg), ch * ch, eps))
  return _reduce(loss, weight, mask, reduction, avg_factor, axis_name)


def _angle_cost(dx: Array, dy: Array) -> Array:
  r"""SIoU's :math:`\Lambda = \cos(2 \arcsin(\sin\alpha) - \pi/2) = \sin 2\alpha`.

  :math:`\alpha` is the smaller angle between the centre line and an axis, so
  :math:`\sin 2\alpha = 2 \sin\alpha \cos\alpha = 2 |\Delta_x \Delta_y| / \sigma^2`
  with :math:`\sigma^2 = \Delta_x^2 + \Delta_y^2`; coincident centres give 0.
  (The same number as mmdetection's arcsin/cos form up to rounding, without its
  square roots and branch, whose gradient made SIoU's backward 3x slower.)
  """
  return safe_divide(2 * jnp.abs(dx * dy), dx * dx + dy * dy)


def _shape_ratio(a: Array, b: Array, eps: float) -> Array:
  """``|a - b| / max(a, b)``, the divisor floored at ``eps`` (inverted boxes)."""
  den = jnp.maximum(jnp.maximum(a, b), eps)
  if static_positive(eps):
    return jnp.abs(a - b) / den
  return safe_divide(jnp.abs(a - b), den)


def siou_loss(pred: ArrayLike, target: ArrayLike, *, neg_gamma: bool = False,
              eps: float = 1e-7, box_format: str = "xyxy", weight=None, where=None,
              reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""SCYLLA-IoU loss (Gevorgyan, 2022), as mmdetection's ``siou_loss`` (from YOLOv6).
  https://arxiv.org/abs/2205.12740

  With :math:`(\Delta_x, \Delta_y)` the centre offset (each :math:`+\epsilon`
  in the angle cost) and :math:`C_w, C_h` the enclosing size:

  .. math::
     \Lambda = \cos(2\arcsin(\sin\alpha) - \pi/2), \quad
     \Delta = \sum_{t \in \{x, y\}} (1 - e^{\gamma \rho_t}), \quad
     \rho_x = (\Delta_x / C_w)^2, \\
     \Omega = \sum_{t \in \{w, h\}} (1 - e^{-\omega_t})^4, \quad
     \omega_w = \frac{|w - w_g|}{\max(w, w_g)}, \quad
     \ell = 1 - \mathrm{clip}(\mathrm{IoU} - (\Delta + \Omega) / 2, -1, 1)

  where :math:`\sin\alpha` is the sine of the smaller angle between the centre
  line and an axis, heights carry :math:`+\epsilon`, :math:`\theta = 4`, and
  :math:`\gamma = \Lambda - 2` (``neg_gamma=True``: the paper's and YOLOv6's
  form) or :math:`2 - \Lambda` (``False``: mmdetection's default, under which
  far-apart boxes reach the clip and get loss 0). :math:`\rho` is clipped at 16
  (valid boxes have :math:`\rho \le 1`) so that inverted boxes stay finite.

  Args:
    pred, target: boxes ``[..., 4]`` in ``box_format``.
    neg_gamma: sign convention of the distance cost (see above).
    eps: stabiliser, placed as mmdetection places it.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  p, t, mask = _prepare(pred, target, where, box_format, eps)
  iou, _ = _iou_with_eps(p, t, eps)
  cw, ch = box_size(enclosing_box(p, t))
  dx0, dy0 = _centre_offset(p, t)
  angle = _angle_cost(dx0 + eps, dy0 + eps)
  gamma = angle - 2 if neg_gamma else 2 - angle
  # rho from the raw offset and enclosing size: (eps / eps)^2 would make the
  # gradient ~1/eps for coincident zero-area boxes; 0/0 is 0 with zero gradient.
  # Squared after the division: dx^2 / cw^2 has a 1 / cw^4 gradient, inf below cw ~ 1e-10.
  rho_x = jnp.minimum(jnp.square(_scaled(dx0, cw)), _MAX_RHO)
  rho_y = jnp.minimum(jnp.square(_scaled(dy0, ch)), _MAX_RHO)
  distance = 2 - jnp.exp(gamma * rho_x) - jnp.exp(gamma * rho_y)
  (w, h), (wg, hg) = box_size(p), box_size(t)
  omega_w = _shape_ratio(w, wg, eps)
  omega_h = _shape_ratio(h + eps, hg + eps, eps)
  shape = (-jnp.expm1(-omega_w)) ** 4 + (-jnp.expm1(-omega_h)) ** 4
  loss = 1 - jnp.clip(iou - 0.5 * (distance + shape), -1.0, 1.0)
  return _reduce(loss, weight, mask, reduction, avg_factor, axis_name)
