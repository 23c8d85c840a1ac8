"""Box geometry: format conversion, areas, IoU and GIoU, point distances.

Boxes are arrays ``[..., 4]``. Formats:

* ``"xyxy"``: corners ``(x1, y1, x2, y2)`` (the default everywhere);
* ``"xywh"``: top-left corner and size ``(x1, y1, w, h)``;
* ``"cxcywh"``: centre and size ``(cx, cy, w, h)``;
* ``"ltrb"``: distances ``(l, t, r, b)`` from a point to the four sides (FCOS).
  They only make boxes together with their points, so :func:`box_convert`
  does not take them; use :func:`distance_to_box` and
  :func:`box_to_distance`. The IoU losses accept ``box_format="ltrb"`` and
  decode both inputs around the same point (IoU does not depend on it).

The area and intersection formulas live here once; :mod:`jaxloss.boxes.iou` uses
them. They take coordinate planes (a tuple of four ``[...]`` arrays, see
:func:`unstack`): boxes are split once where they enter, and their gradient
is stacked once where it leaves. A rectangle whose width or height is not positive (zero-area or
inverted box, disjoint pair) has area exactly 0, with zero gradient.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxloss._src.checks import check_choice, check_range, common_shape
from jaxloss._src.numerics import as_float, safe_divide
from jaxloss._src.typing import Array, ArrayLike

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
LOSS_BOX_FORMATS = (*BOX_FORMATS, "ltrb")


def _check_format(fmt: str, valid: tuple[str, ...], what: str) -> None:
  hint = (" 'ltrb' distances need their points: use distance_to_box / box_to_distance."
          if fmt == "ltrb" else "")
  check_choice(what, fmt, valid, hint)


def check_boxes(boxes: Array, name: str = "boxes") -> None:
  if boxes.ndim == 0 or boxes.shape[-1] != 4:
    raise ValueError(f"`{name}` must have a last axis of size 4 (box coordinates), "
                     f"got shape {boxes.shape}.")


def check_points(points: Array, name: str = "points") -> None:
  if points.ndim == 0 or points.shape[-1] != 2:
    raise ValueError(f"`{name}` must have a last axis of size 2 ((x, y) coordinates), got "
                     f"shape {points.shape}; FCOS points come from jaxloss.fcos_points.")


Planes = tuple[Array, ...]  # the coordinate planes of boxes (4) or points (2)


def unstack(boxes: Array) -> Planes:
  """The coordinate planes ``[...]`` of ``boxes [..., 4]`` (or points ``[..., 2]``).

  One ``lax.unstack``, whose gradient is one stack of the planes' gradients.
  Separate slices ``boxes[..., i]`` have pads of the minor axis as gradients,
  which XLA:CPU fuses into one long non-vectorised loop (the IoU losses'
  backward was 40-100x the forward). A ``moveaxis`` to ``[4, ...]`` first was
  measured 1.1-1.6x slower on CPU (an extra transpose each way).
  """
  if hasattr(lax, "unstack"):
    return tuple(lax.unstack(boxes, axis=-1))
  return tuple(boxes[..., i] for i in range(boxes.shape[-1]))  # jax < 0.8: slower backward


def stack(planes: Planes) -> Array:
  return jnp.stack(planes, axis=-1)


def planes_to_xyxy(planes: Planes, fmt: str) -> Planes:
  _check_format(fmt, LOSS_BOX_FORMATS, "box_format")
  a, b, c, d = planes
  if fmt == "xyxy":
    return planes
  if fmt == "xywh":
    return a, b, a + c, b + d
  if fmt == "cxcywh":
    return a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
  return -a, -b, c, d


def _planes_from_xyxy(planes: Planes, fmt: str) -> Planes:
  x1, y1, x2, y2 = planes
  if fmt == "xyxy":
    return planes
  if fmt == "xywh":
    return x1, y1, x2 - x1, y2 - y1
  return 0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1


def to_xyxy(boxes: ArrayLike, fmt: str) -> Array:
  """Boxes of format ``fmt`` (any of :data:`LOSS_BOX_FORMATS`) as ``xyxy``.

  ``"ltrb"`` distances are decoded around the origin: ``(-l, -t, r, b)``.
  """
  _check_format(fmt, LOSS_BOX_FORMATS, "box_format")
  boxes = jnp.asarray(boxes)
  if fmt == "xyxy":
    return boxes
  return stack(planes_to_xyxy(unstack(boxes), fmt))


def box_convert(boxes: ArrayLike, in_fmt: str, out_fmt: str) -> Array:
  """Converts boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

  As ``torchvision.ops.box_convert``. ``"ltrb"`` raises ``ValueError``: the
  distances need their points (:func:`distance_to_box`).

  Args:
    boxes: ``[..., 4]``.
    in_fmt, out_fmt: formats of :data:`BOX_FORMATS`.

  Returns:
    ``[..., 4]`` in ``out_fmt`` (dtype kept).

  Example:
    >>> import jax.numpy as jnp, jaxloss
    >>> jaxloss.box_convert(jnp.array([10.0, 20.0, 30.0, 60.0]), "xyxy", "cxcywh")
    Array([20., 40., 20., 40.], dtype=float32)
  """
  _check_format(in_fmt, BOX_FORMATS, "in_fmt")
  _check_format(out_fmt, BOX_FORMATS, "out_fmt")
  boxes = jnp.asarray(boxes)
  check_boxes(boxes)
  if in_fmt == out_fmt:
    return boxes
  return stack(_planes_from_xyxy(planes_to_xyxy(unstack(boxes), in_fmt), out_fmt))


def rectangle_area(width: Array, height: Array) -> Array:
  """``width * height`` where both are positive, else exactly 0 (zero gradient).

  The one area formula: box areas, intersections and enclosing boxes all use
  it. Like torchvision's loss intersection, the gradient is 0 where a side is
  0 (touching boxes), not split as a clamp would.
  """
  return jnp.where((width > 0) & (height > 0), width * height, 0)


def area(planes: Planes) -> Array:
  """Area of ``xyxy`` coordinate planes (0 for an inverted box)."""
  x1, y1, x2, y2 = planes
  return rectangle_area(x2 - x1, y2 - y1)


def box_area(boxes: ArrayLike, *, box_format: str = "xyxy") -> Array:
  r"""Area :math:`(x_2 - x_1)(y_2 - y_1)` of boxes ``[..., 4]`` -> ``[...]``.

  Equals ``torchvision.ops.box_area`` for valid boxes; an inverted box
  (``x2 < x1`` or ``y2 < y1``) has area 0, not a negative one.

  Args:
    boxes: ``[..., 4]``.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"`` or ``"ltrb"``.
  """
  boxes = as_float(boxes)
  check_boxes(boxes)
  return area(planes_to_xyxy(unstack(boxes), box_format))


def intersection_area(a: Planes, b: Planes) -> Array:
  """Area of the intersection of aligned ``xyxy`` planes (0 when disjoint)."""
  ax1, ay1, ax2, ay2 = a
  bx1, by1, bx2, by2 = b
  return rectangle_area(jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1),
                        jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1))


def enclosing_box(a: Planes, b: Planes) -> Planes:
  """Planes of the smallest ``xyxy`` box enclosing the aligned boxes ``a`` and ``b``."""
  ax1, ay1, ax2, ay2 = a
  bx1, by1, bx2, by2 = b
  return (jnp.minimum(ax1, bx1), jnp.minimum(ay1, by1),
          jnp.maximum(ax2, bx2), jnp.maximum(ay2, by2))


def intersection_union(a: Planes, b: Planes) -> tuple[Array, Array]:
  """Intersection and union areas of aligned ``xyxy`` planes (union >= 0)."""
  inter = intersection_area(a, b)
  return inter, area(a) + area(b) - inter


def box_pair(a: ArrayLike, b: ArrayLike,
             names: tuple[str, str] = ("a", "b")) -> tuple[Array, Array]:
  """Two box arrays checked and cast to one float dtype."""
  a, b = as_float(a), as_float(b)
  check_boxes(a, names[0])
  check_boxes(b, names[1])
  dtype = jnp.result_type(a, b)
  return a.astype(dtype), b.astype(dtype)


def _pair_planes(a: ArrayLike, b: ArrayLike, box_format: str,
                 eps: float = 0.0) -> tuple[Planes, Planes]:
  """Both box arrays as ``xyxy`` planes of one float dtype (``eps`` checked too)."""
  check_range("eps", eps, 0.0)
  a, b = box_pair(a, b)
  common_shape(("a", "b"), (a.shape, b.shape),
               " Aligned boxes pair a[i] with b[i]; for every box of a [N, 4] with every box "
               "of b [M, 4] ([N, M]) use jaxloss.pairwise_box_iou / "
               "pairwise_generalized_box_iou.", drop=1)
  return (planes_to_xyxy(unstack(a), box_format), planes_to_xyxy(unstack(b), box_format))


def box_iou(a: ArrayLike, b: ArrayLike, *, eps: float = 0.0, box_format: str = "xyxy") -> Array:
  r"""IoU of aligned boxes: :math:`|A \cap B| / (|A \cup B| + \epsilon)`.

  Args:
    a, b: ``[..., 4]``, broadcastable against each other.
    eps: added to the union (>= 0). With ``eps=0`` two zero-area boxes have IoU 0.
    box_format: ``"xyxy"``, ``"xywh"``, ``"cxcywh"``, or ``"ltrb"`` (both
      around the same points).

  Returns:
    ``[...]`` IoU in ``[0, 1]``.
  """
  pa, pb = _pair_planes(a, b, box_format, eps)
  inter, union = intersection_union(pa, pb)
  return safe_divide(inter, union + eps)


def generalized_box_iou(a: ArrayLike, b: ArrayLike, *, eps: float = 0.0,
                        box_format: str = "xyxy") -> Array:
  r"""Generalized IoU of aligned boxes (Rezatofighi et al., CVPR 2019).

  .. math::
     \mathrm{GIoU} = \mathrm{IoU} - \frac{|C| - |A \cup B|}{|C|}

  with :math:`C` the smallest box enclosing both; in ``[-1, 1]``.

  Args:
    a, b: ``[..., 4]``, broadcastable against each other.
    eps: added to the union and to :math:`|C|` (>= 0; 0: torchvision's form).
    box_format: as :func:`box_iou`.

  Returns:
    ``[...]``. https://arxiv.org/abs/1902.09630
  """
  pa, pb = _pair_planes(a, b, box_format, eps)
  inter, union = intersection_union(pa, pb)
  area_c = area(enclosing_box(pa, pb))
  return safe_divide(inter, union + eps) - safe_divide(area_c - union, area_c + eps)


def _pairwise(a: ArrayLike, b: ArrayLike, box_format: str) -> tuple[Array, Array]:
  # ltrb distances of different points make no pair of boxes
  _check_format(box_format, BOX_FORMATS, "box_format")
  fa, fb = box_pair(a, b)
  for name, boxes in (("a", fa), ("b", fb)):
    if boxes.ndim < 2:
      raise ValueError(f"`{name}` must be a set of boxes [..., N, 4], got shape "
                       f"{boxes.shape}; pass a single box as `{name}[None]` ([1, 4]).")
  common_shape(("a", "b"), (fa.shape, fb.shape),
               " Leading batch axes of a [..., N, 4] and b [..., M, 4] must broadcast.", drop=2)
  pa, pb = jnp.broadcast_arrays(fa[..., :, None, :], fb[..., None, :, :])
  return pa, pb


def pairwise_box_iou(a: ArrayLike, b: ArrayLike, *, box_format: str = "xyxy") -> Array:
  """IoU of every box of ``a [..., N, 4]`` with every box of ``b [..., M, 4]``.

  As ``torchvision.ops.box_iou`` (``[N, M]``), with leading batch axes
  broadcast (or use ``jax.vmap``). Pairs of zero-area boxes have IoU 0.
  ``box_format``: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``, of both.
  """
  return box_iou(*_pairwise(a, b, box_format), box_format=box_format)


def pairwise_generalized_box_iou(a: ArrayLike, b: ArrayLike, *,
                                 box_format: str = "xyxy") -> Array:
  """GIoU of every box of ``a [..., N, 4]`` with every box of ``b [..., M, 4]``.
  https://arxiv.org/abs/1902.09630

  As ``torchvision.ops.generalized_box_iou`` (``[N, M]``); used e.g. as the
  matching cost of DETR. ``box_format`` as :func:`pairwise_box_iou`.
  """
  return generalized_box_iou(*_pairwise(a, b, box_format), box_format=box_format)


def _points_and_boxes(points: ArrayLike, boxes: ArrayLike, name: str) -> tuple[Array, Array]:
  """Points ``[..., 2]`` and boxes ``[..., 4]`` (``name``) of one leading shape, as floats."""
  points, boxes = as_float(points), as_float(boxes)
  check_boxes(boxes, name)
  check_points(points)
  common_shape(("points", name), (points.shape, boxes.shape),
               f" Pass one point per box: points [..., 2] and {name} [..., 4] of one leading "
               "shape.", drop=1)
  return points, boxes


def distance_to_box(points: ArrayLike, ltrb: ArrayLike) -> Array:
  """Decodes distances to the sides into ``xyxy`` boxes (FCOS, mmdet ``distance2bbox``).

  Args:
    points: ``[..., 2]`` as ``(x, y)``.
    ltrb: ``[..., 4]`` distances ``(left, top, right, bottom)``.

  Returns:
    ``[..., 4]`` boxes ``(x - l, y - t, x + r, y + b)``.
  """
  points, ltrb = _points_and_boxes(points, ltrb, "ltrb")
  x, y = unstack(points)
  left, top, right, bottom = unstack(ltrb)
  return stack((x - left, y - top, x + right, y + bottom))


def box_to_distance(points: ArrayLike, boxes: ArrayLike) -> Array:
  """Distances from points to the sides of ``xyxy`` boxes (mmdet ``bbox2distance``).

  Args:
    points: ``[..., 2]`` as ``(x, y)``.
    boxes: ``[..., 4]`` ``xyxy``.

  Returns:
    ``[..., 4]`` ``(x - x1, y - y1, x2 - x, y2 - y)``; negative outside the box.
  """
  points, boxes = _points_and_boxes(points, boxes, "boxes")
  x, y = unstack(points)
  x1, y1, x2, y2 = unstack(boxes)
  return stack((x - x1, y - y1, x2 - x, y2 - y))
