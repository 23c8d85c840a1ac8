r"""FCOS target assignment inside ``jit`` (mmdetection 3.3's ``FCOSHead.get_targets``).

Tian et al., FCOS: Fully Convolutional One-Stage Object Detection, ICCV 2019
(https://arxiv.org/abs/1904.01355). Ground truth is padded to a static ``[B, M]`` with a
boolean ``gt_mask``; the assignment is masks and a ``min`` over a static grid per image, so
images with different numbers of boxes never retrace, and padding (even NaN) never changes an
output. See the FCOS guide of the docs for the differences from mmdetection, and memory.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._src.checks import check_range, check_targets_mask
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.tracing import is_tracer
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.detection.points import DEFAULT_STRIDES, INF, check_strides

__all__ = ["DEFAULT_REGRESS_RANGES", "assign_points", "centerness_targets", "check_levels",
           "check_radius", "check_regress_ranges", "fcos_targets", "padded_ground_truth"]


DEFAULT_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def centerness_targets(ltrb: ArrayLike) -> Array:
  r"""FCOS centerness of distances ``(l, t, r, b)`` to the box sides.
  https://arxiv.org/abs/1904.01355

  .. math::
     c = \sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}}

  1 at the box centre, 0 on its border. A point not strictly inside its box
  (some distance :math:`\le 0`) gets 0, with zero gradient.

  Args:
    ltrb: ``[..., 4]`` distances.

  Returns:
    ``[...]`` centerness in ``[0, 1]``, at least float32.

  Raises:
    ValueError: the last axis is not 4.
  """
  ltrb = as_float(ltrb)
  if ltrb.ndim == 0 or ltrb.shape[-1] != 4:
    raise ValueError(f"`ltrb` must be [..., 4] distances (l, t, r, b), got shape {ltrb.shape}.")
  return _centerness(*(ltrb[..., k] for k in range(4)))


def _centerness(left: Array, top: Array, right: Array, bottom: Array) -> Array:
  """:func:`centerness_targets` of the four distance planes (elementwise only)."""
  horizontal = (jnp.minimum(left, right), jnp.maximum(left, right))
  vertical = (jnp.minimum(top, bottom), jnp.maximum(top, bottom))
  inside = (horizontal[0] > 0) & (vertical[0] > 0)
  safe = lambda x: jnp.where(inside, x, 1.0)
  ratio = (safe(horizontal[0]) / safe(horizontal[1])) * (safe(vertical[0]) / safe(vertical[1]))
  return jnp.where(inside, jnp.sqrt(ratio), 0.0)


def check_radius(center_sample_radius) -> None:
  check_range("center_sample_radius", center_sample_radius, 0.0,
              hint=" It is the half-side of the centre region, in strides.")


def check_regress_ranges(regress_ranges, num_levels: int) -> None:
  """``ValueError`` unless there is one ``(lo, hi)`` pair of numbers per level."""
  if len(regress_ranges) != num_levels:
    raise ValueError(f"got {len(regress_ranges)} regress ranges for {num_levels} strides; "
                     f"pass one (lo, hi) pair per pyramid level.")
  for i, pair in enumerate(regress_ranges):
    if (isinstance(pair, str) or not isinstance(pair, Sequence | np.ndarray) or len(pair) != 2
        or not all(isinstance(v, numbers.Real) for v in pair)):
      raise ValueError(
          f"regress_ranges[{i}] must be a pair (lo, hi) of numbers, the range of the largest "
          f"distance (pixels) regressed at that level, got {pair!r}; e.g. "
          f"regress_ranges={DEFAULT_REGRESS_RANGES}.")


def check_levels(points, strides, regress_ranges) -> None:
  if isinstance(points, (jax.Array, np.ndarray)):
    raise TypeError(
        "points must be the per-level list returned by fcos_points (one [P_l, 2] array "
        "per level), not one concatenated array: the level decides stride and range.")
  if not len(points) == len(strides) == len(regress_ranges):
    raise ValueError(
        f"got {len(points)} point levels, {len(strides)} strides and "
        f"{len(regress_ranges)} regress ranges; pass one of each per pyramid level.")
  check_regress_ranges(regress_ranges, len(strides))
  check_strides(strides)


def padded_ground_truth(gt_boxes, gt_labels, gt_mask) -> tuple[Array, Array, Array]:
  gt_boxes, gt_labels, gt_mask = (jnp.asarray(gt_boxes), jnp.asarray(gt_labels),
                                  jnp.asarray(gt_mask))
  if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [B, M, 4] (xyxy pixels), got {gt_boxes.shape}.")
  check_targets_mask(gt_labels, gt_mask, gt_boxes.shape[:2])
  return gt_boxes, canonical_labels(gt_labels, "gt_labels"), gt_mask


def _usable(boxes: Array, labels: Array, mask: Array, num_classes: int) -> tuple[Array, Array]:
  """The mask of the boxes that take part, and their areas (0 for the others).

  A box takes part when it is real (``mask``), its label is a class, and its
  coordinates and area are finite: otherwise it is padding everywhere. Only
  ``where`` touches a padded slot's coordinates, so NaN padding forms no NaN.
  """
  mask = mask & (labels >= 0) & (labels < num_classes)
  boxes = jnp.where(mask[..., None], boxes, 0.0)
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  mask = mask & jnp.isfinite(area) & jnp.all(jnp.isfinite(boxes), axis=-1)
  return mask, jnp.where(mask, area, 0.0)


def _sort_by_area(boxes: Array, labels: Array, mask: Array, area: Array) -> tuple[Array, Array]:
  """Each image's boxes ordered by area (real boxes first, ties by index), as ``[B, M, 5]``
  rows ``(x1, y1, x2, y2, label)``, and the sorted mask.

  After this, "the candidate of smallest area" is "the first candidate". The
  labels travel as float32 (exact below 2^24) so that one sort carries them.
  """
  # real areas are finite: padding gets an infinite key, sorted after them (stable, so
  # ties keep their index), and the sorted mask is "key is finite"
  key = jnp.broadcast_to(jnp.where(mask, area, jnp.inf)[..., None], (*mask.shape, 5))
  rows = jnp.concatenate([jnp.where(mask[..., None], boxes, 0.0),
                          labels.astype(boxes.dtype)[..., None]], -1)
  key, rows = jax.lax.sort((key, rows), dimension=1, is_stable=True, num_keys=1)
  return rows, key[..., 0] < jnp.inf


def _index_dtype(num_boxes: int):
  """Smallest unsigned integer type holding ``0..num_boxes``: the candidate-index
  grid is the one ``[B, M, P]`` array XLA materialises, so its width is the memory."""
  for dtype in (jnp.uint8, jnp.uint16):
    if num_boxes <= jnp.iinfo(dtype).max:
      return dtype
  return jnp.int32


def _first_candidate(points: np.ndarray | Array, stride: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     boxes: Array, mask: Array, center_sampling: bool, radius: float) -> Array:
  """``[B, P]``: index of the first candidate box of each point (``M`` if none).

  Works on ``[B, M, P]`` (points on the minor axis, so the reduction over
  boxes vectorises) in one fused loop; ``stride``, ``lo``, ``hi`` are ``[P]``.
  """
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))                # [B, M, 1]
  x, y = points[None, None, :, 0], points[None, None, :, 1]                  # [1, 1, P]
  stride, lo, hi = (np.asarray(v).reshape(1, 1, -1) for v in (stride, lo, hi))
  left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y
  if center_sampling:
    # strictly inside the centre region, as mmdet's min(distances) > 0 (x - a > 0 iff x > a)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, stride * np.float32(radius)
    ok = ((x > jnp.maximum(cx - half, x1)) & (y > jnp.maximum(cy - half, y1))
          & (x < jnp.minimum(cx + half, x2)) & (y < jnp.minimum(cy + half, y2)))
  else:
    ok = (left > 0) & (top > 0) & (right > 0) & (bottom > 0)
  reach = jnp.maximum(jnp.maximum(left, top), jnp.maximum(right, bottom))
  ok = ok & (reach >= lo) & (reach <= hi) & mask[..., None]
  num_boxes = boxes.shape[1]
  dtype = _index_dtype(num_boxes)
  index = jax.lax.broadcasted_iota(dtype, ok.shape, 1)
  return jnp.min(jnp.where(ok, index, num_boxes), axis=1).astype(jnp.int32)


def _per_point(points: Sequence[np.ndarray | Array], values: Sequence[float]) -> np.ndarray:
  """A per-level static value repeated over that level's points: float32 ``[P]``."""
  return np.concatenate([np.full(p.shape[0], v, np.float32)
                         for p, v in zip(points, values, strict=True)])


def _rows(x: Array, sizes: Sequence[int]) -> Array:
  """``[B, P, ...]`` (levels concatenated along ``P``) as ``[B * P, ...]`` rows ordered
  level, image, point: the order of :func:`level_major`."""
  bounds = np.cumsum([0, *sizes])
  return jnp.concatenate([x[:, a:b].reshape(-1, *x.shape[2:])
                          for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def assign_points(points: Sequence[np.ndarray | Array], gt_boxes: Array, gt_labels: Array,
                  gt_mask: Array, *, num_classes: int, strides, regress_ranges,
                  center_sampling: bool, center_sample_radius: float, norm_on_bbox: bool,
                  level_major: bool) -> tuple[Array, Array, Array, Array]:
  """:func:`fcos_targets` as rows, ``(labels [N], ltrb [N, 4], centerness [N],
  positive [N])``, ``N = B * P``, ordered image, point (``fcos_targets``'s order
  flattened) or, with ``level_major``, level, image, point (the order of
  :func:`level_major`).

  Only the candidate search runs on the ``[B, M, P]`` grid; its ``[B, P]``
  result is put in row order once, and everything after it is elementwise over
  rows (the assigned box is one gather), so that the loss reorders nothing.
  """
  if gt_boxes.shape[1] == 0:  # no ground-truth slots: one padding slot, never real
    gt_boxes = jnp.zeros((gt_boxes.shape[0], 1, 4), gt_boxes.dtype)
    gt_labels, gt_mask = (jnp.zeros(gt_boxes.shape[:2], x.dtype) for x in (gt_labels, gt_mask))
  batch, num_boxes = gt_boxes.shape[:2]
  # points are usually constants: numpy keeps what is computed from them constant
  xp = jnp if any(is_tracer(p) for p in points) else np
  points = [xp.asarray(p, np.float32) for p in points]
  boxes = jax.lax.stop_gradient(as_float(gt_boxes)).astype(jnp.float32)
  usable, area = _usable(boxes, gt_labels, gt_mask, num_classes)
  rows, mask = _sort_by_area(boxes, gt_labels, usable, area)
  boxes = rows[..., :4]
  stride, lo, hi = (_per_point(points, values) for values in (
      strides, [r[0] for r in regress_ranges], [r[1] for r in regress_ranges]))
  all_points = xp.concatenate(points)
  first = _first_candidate(all_points, stride, lo, hi, boxes, mask, center_sampling,
                           center_sample_radius)
  if level_major:  # rows: per level, its points of every image
    first = _rows(first, [p.shape[0] for p in points])
    blocks = list(zip(points, strides, strict=True))
  else:
    first = first.reshape(-1)
    blocks = [(all_points, stride)]
  positive = first < num_boxes
  image = np.concatenate([np.repeat(np.arange(batch, dtype=np.int32), p.shape[0])
                          for p, _ in blocks])
  index = image * num_boxes + jnp.minimum(first, num_boxes - 1)
  assigned = jnp.take(rows.reshape(-1, 5), index, axis=0)
  labels = jnp.where(positive, assigned[:, 4].astype(jnp.int32), num_classes)
  assigned = assigned[:, :4]
  xyxy = xp.concatenate([xp.tile(p, (batch, 2)) for p, _ in blocks])
  # (x - x1, y - y1, x2 - x, y2 - y), exactly: negation is exact
  ltrb = (xyxy - assigned) * np.array([[1, 1, -1, -1]], np.float32)
  if norm_on_bbox:
    ltrb = ltrb / np.concatenate([np.tile(np.broadcast_to(np.float32(s), p.shape[:1]), batch)
                                  for p, s in blocks])[:, None]
  ltrb = jnp.where(positive[:, None], ltrb, 0.0)
  return labels, ltrb, _centerness(*(ltrb[:, k] for k in range(4))), positive


def fcos_targets(points: Sequence[ArrayLike], gt_boxes: ArrayLike, gt_labels: ArrayLike,
                 gt_mask: ArrayLike, *, num_classes: int,
                 strides: Sequence[float] = DEFAULT_STRIDES,
                 regress_ranges: Sequence[tuple[float, float]] = DEFAULT_REGRESS_RANGES,
                 center_sampling: bool = True, center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = True) -> tuple[Array, Array, Array]:
  r"""Assigns every point to a ground-truth box, as mmdetection's ``FCOSHead``.
  https://arxiv.org/abs/1904.01355

  Box ``m`` is a candidate for point ``p`` of level ``l`` (stride :math:`s_l`,
  range :math:`[lo_l, hi_l]`) when it is real (``gt_mask``), the point lies
  strictly inside it (with ``center_sampling``: strictly inside the box
  intersected with the square of half-side ``center_sample_radius`` :math:`s_l`
  around the box centre), and :math:`lo_l \le \max(l, t, r, b) \le hi_l`
  (bounds inclusive; full-box distances). The point takes the candidate of
  smallest area (ties: lowest index); without candidates it is background.

  Computed with static shapes only: each image's boxes are sorted by area
  once (``[B, M]``), then one fused ``min`` over the ``[B, M, P]`` candidate
  grid finds each point's first candidate. No host round trip, no retrace
  when the number of real boxes changes. Memory: XLA materialises that grid
  as the smallest unsigned integers holding ``M`` (``B * M * P`` bytes for
  ``M < 256``; 4.2 MiB of temporaries at batch 8, 512x512, ``M = 100``).

  Args:
    points: per-level ``[P_l, 2]`` points from :func:`fcos_points`.
    gt_boxes: ``[B, M, 4]`` boxes, ``xyxy`` pixels, padded to ``M``.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)`` (any integer
      dtype). A real box with another label (``-1``, ``num_classes``) is
      treated as padding.
    gt_mask: ``[B, M]`` boolean, ``True`` for real boxes. Padded entries may
      hold anything (even NaN) and never change the result; so may real boxes
      with non-finite coordinates or area (treated as padding).
    num_classes: number of classes; the background label.
    strides: per level, the stride in pixels.
    regress_ranges: per level, ``(lo, hi)`` of the largest distance.
    center_sampling: restrict positives to the centre region.
    center_sample_radius: its half-side, in strides (>= 0).
    norm_on_bbox: divide box targets by the level's stride.

  Returns:
    ``(labels [B, P] int32, box_targets [B, P, 4] ltrb, centerness [B, P])``
    over all levels concatenated (level-major, then row-major). Background
    points have label ``num_classes``, zero box targets and zero centerness.
    Targets carry no gradient.
  """
  check_levels(points, strides, regress_ranges)
  check_radius(center_sample_radius)
  gt_boxes, gt_labels, gt_mask = padded_ground_truth(gt_boxes, gt_labels, gt_mask)
  labels, ltrb, centerness, _ = assign_points(
      [jnp.asarray(p) for p in points], gt_boxes, gt_labels, gt_mask, num_classes=num_classes,
      strides=strides,
      regress_ranges=regress_ranges, center_sampling=center_sampling,
      center_sample_radius=center_sample_radius, norm_on_bbox=norm_on_bbox,
      level_major=False)
  batch = gt_boxes.shape[0]
  return (labels.reshape(batch, -1), ltrb.reshape(batch, -1, 4),
          centerness.reshape(batch, -1))
