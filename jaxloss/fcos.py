r"""FCOS: points, target assignment inside ``jit``, and the FCOS loss.

FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection",
ICCV 2019) predicts, at every feature-map location ("point") of every pyramid
level, class scores, the distances ``(l, t, r, b)`` from the point to the four
sides of its box, and a centerness score. This module follows mmdetection
3.3's ``FCOSHead`` number for number (its "improved" configuration as the
default: center sampling, ``norm_on_bbox``, GIoU), with two differences that
make it a JAX loss:

* ground truth is padded to a static ``[B, M]`` with a boolean ``gt_mask``
  instead of a ragged list, and the assignment of points to boxes is computed
  *inside* the compiled function by masks and an ``argmin`` over a static
  ``[P, M]`` grid per image, so that images with different numbers of boxes
  never retrace. Padded boxes (``gt_mask=False``) may hold any coordinates,
  even NaN; they never change any output or gradient.
* losses over "the positives" are masked sums, not boolean-indexed subsets.

Memory: the assignment compares every point with every padded box, so it
works on ``[B, P, M]`` arrays (``P`` points over all levels, ``M`` padded
boxes per image). XLA fuses the elementwise comparisons into the ``argmin``
reductions, so this is compute rather than storage; the benchmark
(``benchmarks/fcos_benchmark.py``) reports the peak. ``level_chunks=True`` in
:func:`fcos_targets` assigns one pyramid level at a time, bounding the largest
intermediate by ``[B, P_0, M]`` (the finest level) instead of ``[B, P, M]``.

Worked example: a Flax FCOS head's outputs to the loss dict::

  import flax.nnx as nnx
  import jax, jax.numpy as jnp
  import jaxloss

  class Head(nnx.Module):          # shared over levels, as in FCOS
    def __init__(self, c, num_classes, rngs):
      self.cls = nnx.Conv(c, num_classes, (3, 3), rngs=rngs)
      self.box = nnx.Conv(c, 4, (3, 3), rngs=rngs)
      self.ctr = nnx.Conv(c, 1, (3, 3), rngs=rngs)
    def __call__(self, feats):     # feats: per-level [B, H_l, W_l, c]
      return ([self.cls(f) for f in feats],
              [jax.nn.relu(self.box(f)) for f in feats],   # ltrb / stride
              [self.ctr(f) for f in feats])

  # 512x512 images, strides 8..128: levels 64, 32, 16, 8, 4.
  # gt_boxes [B, M, 4] xyxy pixels, gt_labels [B, M] int, gt_mask [B, M] bool
  # (M fixed, e.g. 100; images with fewer boxes are padded, gt_mask False).
  @jax.jit
  def loss_fn(head, feats, gt_boxes, gt_labels, gt_mask):
    cls, box, ctr = head(feats)
    return jaxloss.fcos_loss(cls, box, ctr, gt_boxes, gt_labels, gt_mask,
                             num_classes=80)
  out = loss_fn(head, feats, gt_boxes, gt_labels, gt_mask)
  # {"loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"};
  # differentiate out["loss"] (e.g. nnx.value_and_grad with has_aux).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._reduce import Array, ArrayLike, as_float

INF = math.inf
DEFAULT_STRIDES = (8, 16, 32, 64, 128)
DEFAULT_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def _level_hw(shape: Sequence[int]) -> tuple[int, int]:
  shape = tuple(int(s) for s in shape)
  if len(shape) == 2:
    return shape
  if len(shape) == 4:
    return shape[1], shape[2]
  raise ValueError(
      f"a feature shape must be (H, W) or an NHWC shape (B, H, W, C), got {shape}.")


def fcos_points(feature_shapes: Sequence[Sequence[int]],
                strides: Sequence[float] = DEFAULT_STRIDES) -> list[Array]:
  r"""The points of every pyramid level, as mmdetection's ``MlvlPointGenerator``.

  Point ``(i, j)`` (row, column) of a level of stride :math:`s` is
  :math:`((j + 0.5) s, (i + 0.5) s)` in pixels, ``(x, y)`` order; points of a
  level are row-major, matching ``feature.reshape(B, H * W, C)`` of an NHWC map.

  Args:
    feature_shapes: per level, ``(H, W)`` or the NHWC shape ``(B, H, W, C)``.
    strides: per level, the stride in pixels.

  Returns:
    A list with one float32 ``[H_l * W_l, 2]`` array per level (constants:
    everything is static).
  """
  if len(feature_shapes) != len(strides):
    raise ValueError(
        f"got {len(feature_shapes)} feature shapes but {len(strides)} strides; pass "
        "one stride per pyramid level.")
  points = []
  for shape, s in zip(feature_shapes, strides, strict=True):
    h, w = _level_hw(shape)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
    points.append(jnp.asarray(np.stack([xs.ravel(), ys.ravel()], -1), jnp.float32))
  return points


def centerness_targets(ltrb: ArrayLike) -> Array:
  r"""FCOS centerness of distances ``(l, t, r, b)`` to the box sides.

  .. math::
     c = \sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}}

  1 at the box centre, 0 on its border. A point not strictly inside its box
  (some distance :math:`\le 0`) gets 0, with zero gradient.

  Args:
    ltrb: ``[..., 4]`` distances.

  Returns:
    ``[...]`` centerness in ``[0, 1]``, at least float32.
  """
  ltrb = as_float(ltrb)
  inside = jnp.min(ltrb, axis=-1) > 0
  safe = jnp.where(inside[..., None], ltrb, 1.0)
  horizontal, vertical = safe[..., 0::2], safe[..., 1::2]
  ratio = (jnp.min(horizontal, -1) / jnp.max(horizontal, -1)) * (
      jnp.min(vertical, -1) / jnp.max(vertical, -1))
  return jnp.where(inside, jnp.sqrt(ratio), 0.0)


def _check_levels(points, strides, regress_ranges) -> None:
  if isinstance(points, (jax.Array, np.ndarray)):
    raise TypeError(
        "points must be the per-level list returned by fcos_points (one [P_l, 2] array "
        "per level), not one concatenated array: the level decides stride and range.")
  if not len(points) == len(strides) == len(regress_ranges):
    raise ValueError(
        f"got {len(points)} point levels, {len(strides)} strides and "
        f"{len(regress_ranges)} regress ranges; pass one of each per pyramid level.")


def _check_gt(gt_boxes, gt_labels, gt_mask) -> None:
  if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [B, M, 4] (xyxy pixels), got {gt_boxes.shape}.")
  if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
    raise ValueError(
        f"gt_labels {gt_labels.shape} and gt_mask {gt_mask.shape} must be [B, M] = "
        f"{gt_boxes.shape[:2]}, matching gt_boxes.")
  if gt_mask.dtype != jnp.bool_:
    raise TypeError(f"gt_mask must be boolean (True = real box), got {gt_mask.dtype}.")
  if not jnp.issubdtype(gt_labels.dtype, jnp.integer):
    raise TypeError(f"gt_labels must be integer class indices, got {gt_labels.dtype}.")


def _per_point(points, values) -> np.ndarray:
  """Repeats a per-level static value over that level's points: ``[P, ...]``."""
  return np.concatenate([np.broadcast_to(np.asarray(v, np.float64), (p.shape[0], *np.shape(v)))
                         for p, v in zip(points, values, strict=True)])


def _distances(points: Array, boxes: Array) -> Array:
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x,
                    boxes[..., 3] - y], -1)


def _candidates(points, stride, lo, hi, boxes, mask, center_sampling, radius):
  """``[B, P, M]``: is box m a candidate for point p (inside, in range, real)?"""
  pts = points[None, :, None, :]
  bx = boxes[:, None, :, :]
  ltrb = _distances(pts, bx)
  if center_sampling:
    centre = (bx[..., :2] + bx[..., 2:]) / 2
    half = (stride * radius)[None, :, None, None]
    region = jnp.concatenate([jnp.maximum(centre - half, bx[..., :2]),
                              jnp.minimum(centre + half, bx[..., 2:])], -1)
    inside = jnp.min(_distances(pts, region), -1) > 0
  else:
    inside = jnp.min(ltrb, -1) > 0
  reach = jnp.max(ltrb, -1)
  in_range = (reach >= lo[None, :, None]) & (reach <= hi[None, :, None])
  return inside & in_range & mask[:, None, :]


def _assign(points, stride, lo, hi, boxes, mask, center_sampling, radius):
  """Index ``[B, P]`` of the smallest-area candidate box, and whether one exists."""
  cand = _candidates(points, jnp.asarray(stride, jnp.float32), jnp.asarray(lo, jnp.float32),
                     jnp.asarray(hi, jnp.float32), boxes, mask, center_sampling, radius)
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  cost = jnp.where(cand, area[:, None, :], jnp.inf)
  return jnp.argmin(cost, axis=-1), jnp.any(cand, axis=-1)


def fcos_targets(points: Sequence[ArrayLike], gt_boxes: ArrayLike, gt_labels: ArrayLike,
                 gt_mask: ArrayLike, *, num_classes: int,
                 strides: Sequence[float] = DEFAULT_STRIDES,
                 regress_ranges: Sequence[tuple[float, float]] = DEFAULT_REGRESS_RANGES,
                 center_sampling: bool = True, center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = True, level_chunks: bool = False
                 ) -> tuple[Array, Array, Array]:
  r"""Assigns every point to a ground-truth box, as mmdetection's ``FCOSHead``.

  Box ``m`` is a candidate for point ``p`` of level ``l`` (stride :math:`s_l`,
  range :math:`[lo_l, hi_l]`) when it is real (``gt_mask``), the point lies
  strictly inside it (with ``center_sampling``: strictly inside the box
  intersected with the square of half-side ``center_sample_radius`` :math:`s_l`
  around the box centre), and :math:`lo_l \le \max(l, t, r, b) \le hi_l`
  (bounds inclusive; full-box distances). The point takes the candidate of
  smallest area (ties: lowest index); without candidates it is background.
  Everything is masks and an ``argmin`` over static ``[B, P, M]``: no host
  round trip, no retrace when the number of real boxes changes.

  Args:
    points: per-level ``[P_l, 2]`` points from :func:`fcos_points`.
    gt_boxes: ``[B, M, 4]`` boxes, ``xyxy`` pixels, padded to ``M``.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` boolean, ``True`` for real boxes. Padded entries may
      hold anything (even NaN) and never change the result.
    num_classes: number of classes; the background label.
    strides: per level, the stride in pixels.
    regress_ranges: per level, ``(lo, hi)`` of the largest distance.
    center_sampling: restrict positives to the centre region.
    center_sample_radius: its half-side, in strides.
    norm_on_bbox: divide box targets by the level's stride.
    level_chunks: assign one level at a time (peak memory ``[B, P_0, M]``
      instead of ``[B, P, M]``); same result.

  Returns:
    ``(labels [B, P] int32, box_targets [B, P, 4] ltrb, centerness [B, P])``
    over all levels concatenated (level-major, then row-major). Background
    points have label ``num_classes``, zero box targets and zero centerness.
    Targets carry no gradient.
  """
  _check_levels(points, strides, regress_ranges)
  points = [as_float(p) for p in points]
  gt_boxes, gt_labels, gt_mask = (jnp.asarray(gt_boxes), jnp.asarray(gt_labels),
                                  jnp.asarray(gt_mask))
  _check_gt(gt_boxes, gt_labels, gt_mask)
  boxes = jnp.where(gt_mask[..., None], jax.lax.stop_gradient(as_float(gt_boxes)), 0.0)
  boxes = boxes.astype(jnp.float32)
  stride = _per_point(points, strides)
  lo, hi = _per_point(points, regress_ranges).T
  all_points = jnp.concatenate(points).astype(jnp.float32)
  if level_chunks:
    bounds = np.cumsum([0] + [p.shape[0] for p in points])
    parts = [_assign(all_points[a:b], stride[a:b], lo[a:b], hi[a:b], boxes, gt_mask,
                     center_sampling, center_sample_radius)
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    index, positive = (jnp.concatenate(x, axis=1) for x in zip(*parts, strict=True))
  else:
    index, positive = _assign(all_points, stride, lo, hi, boxes, gt_mask, center_sampling,
                              center_sample_radius)
  assigned = jnp.take_along_axis(boxes, index[..., None], axis=1)
  ltrb = _distances(all_points[None], assigned)
  if norm_on_bbox:
    ltrb = ltrb / jnp.asarray(stride, jnp.float32)[None, :, None]
  labels = jnp.take_along_axis(gt_labels.astype(jnp.int32), index, axis=1)
  labels = jnp.where(positive, labels, num_classes)
  ltrb = jnp.where(positive[..., None], ltrb, 0.0)
  return labels, ltrb, centerness_targets(ltrb)
