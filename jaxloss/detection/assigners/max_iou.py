r"""Max-IoU anchor assignment inside ``jit`` (mmdetection ``MaxIoUAssigner``, RetinaNet).

Each anchor takes the ground-truth box it overlaps most (RetinaNet, Lin et al.,
https://arxiv.org/abs/1708.02002; Faster R-CNN, Ren et al.,
https://arxiv.org/abs/1506.01497), by the IoU :math:`u_{ma}` of box :math:`m`
and anchor :math:`a`, with :math:`u_a = \max_m u_{ma}`:

* positive when :math:`u_a \ge` ``pos_iou_thr`` (box :math:`\arg\max_m u_{ma}`);
* negative (background) when ``0 <= u_a < neg_iou_thr`` (or
  ``lo <= u_a < hi`` for an interval ``neg_iou_thr=(lo, hi)``);
* otherwise ignored (the classification loss skips it);
* low-quality matching (``match_low_quality``): every box whose best IoU
  :math:`\max_a u_{ma} \ge` ``min_pos_iou`` also takes *every* anchor tied at that best
  IoU (``gt_max_assign_all=True``, mmdetection's default; ``False``: the first such
  anchor only), later boxes overwriting earlier ones, as mmdetection's loop over boxes.
  As in mmdetection, with ``min_pos_iou=0`` a real box that overlaps no anchor (e.g.
  zero-area) takes every anchor it does not overlap: pass ``min_pos_iou > 0`` to avoid it.

Ground truth is padded to ``[B, M]`` with a boolean ``gt_mask``; padded boxes
(any coordinates, even NaN) never change an output, and the number of real
boxes never retraces. Memory grows as ``B x M x A``: the IoU grid ``[B, M, A]`` float32
(``4 B M A`` bytes) is kept between the per-anchor and the per-box maxima. Measured with
``benchmarks/retinanet_benchmark.py`` (XLA:CPU, ``B = 8, M = 100, A = 76,725``, RetinaNet
at 640x640): 473 MiB of temporaries, about two such grids, against 196 MiB for the class
logits; no chunked mode is offered (it would trade that for ``M / chunk`` passes).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_targets_mask
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import pairwise_box_iou


class MaxIoUAssignment(NamedTuple):
  """Targets of :func:`max_iou_assign`.

  Attributes:
    labels: ``[B, A]`` int32 class of each anchor's box, ``num_classes`` for background
      and ignored anchors.
    boxes: ``[B, A, 4]`` its box (``xyxy``, float32); zeros where not positive.
    gt_index: ``[B, A]`` int32 slot of its box in ``gt_boxes``; -1 where not positive.
    positive: ``[B, A]`` bool.
    max_overlaps: ``[B, A]`` float32 best IoU of the anchor with any real box (0
      without real boxes).
    ignored: ``[B, A]`` bool, neither positive nor negative: excluded from the
      classification loss.
  """
  labels: Array
  boxes: Array
  gt_index: Array
  positive: Array
  max_overlaps: Array
  ignored: Array


def check_ground_truth(gt_boxes: ArrayLike, gt_labels: ArrayLike,
                       gt_mask: ArrayLike) -> tuple[Array, Array, Array]:
  """Padded ground truth checked: ``gt_boxes`` float32 ``[B, M, 4]`` with padded rows
  zeroed (never NaN), ``gt_labels`` canonical integers, ``gt_mask`` boolean.

  Raises:
    ValueError: shapes do not agree.
    TypeError: ``gt_mask`` is not boolean or ``gt_labels`` not integer.
  """
  gt_boxes, gt_mask = jnp.asarray(gt_boxes), jnp.asarray(gt_mask)
  gt_labels = canonical_labels(gt_labels, "gt_labels")
  if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [B, M, 4] (xyxy pixels), got {gt_boxes.shape}.")
  check_targets_mask(gt_labels, gt_mask, gt_boxes.shape[:2])
  if gt_boxes.shape[1] == 0:  # no slots: one padding slot, never real
    gt_boxes = jnp.zeros((gt_boxes.shape[0], 1, 4), gt_boxes.dtype)
    gt_labels = jnp.zeros(gt_boxes.shape[:2], gt_labels.dtype)
    gt_mask = jnp.zeros(gt_boxes.shape[:2], bool)
  boxes = jax.lax.stop_gradient(as_float(gt_boxes)).astype(jnp.float32)
  return jnp.where(gt_mask[..., None], boxes, 0.0), gt_labels, gt_mask


def check_anchors(anchors: ArrayLike) -> Array:
  """``anchors`` as float32 ``[A, 4]`` constants of the assignment (no gradient)."""
  anchors = jnp.asarray(anchors)
  if anchors.ndim != 2 or anchors.shape[-1] != 4:
    raise ValueError(f"anchors must be [A, 4] (xyxy pixels, e.g. from anchor_grid), got "
                     f"{anchors.shape}.")
  return jax.lax.stop_gradient(as_float(anchors)).astype(jnp.float32)


def gather_targets(gt_index: Array, gt_boxes: Array, gt_labels: Array,
                   num_classes: int) -> tuple[Array, Array, Array]:
  """``(labels [B, A], boxes [B, A, 4], positive [B, A])`` of the slots ``gt_index``
  (-1: background, label ``num_classes`` and a zero box)."""
  positive = gt_index >= 0
  slot = jnp.maximum(gt_index, 0)
  labels = jnp.take_along_axis(gt_labels, slot, axis=1)
  labels = jnp.where(positive, labels, num_classes).astype(jnp.int32)
  boxes = jnp.take_along_axis(gt_boxes, slot[..., None], axis=1)
  return labels, jnp.where(positive[..., None], boxes, 0.0), positive


def _check_thresholds(pos_iou_thr, neg_iou_thr) -> tuple[float, float]:
  if isinstance(neg_iou_thr, (tuple, list)):
    if len(neg_iou_thr) != 2:
      raise ValueError(f"neg_iou_thr must be a number or an interval (lo, hi), got "
                       f"{neg_iou_thr!r}.")
    lo, hi = (float(x) for x in neg_iou_thr)
  else:
    lo, hi = 0.0, float(neg_iou_thr)
  if not 0 <= float(pos_iou_thr) <= 1:
    raise ValueError(f"pos_iou_thr must be in [0, 1], got {pos_iou_thr!r}.")
  return lo, hi


def max_iou_assign(anchors: ArrayLike, gt_boxes: ArrayLike, gt_labels: ArrayLike,
                   gt_mask: ArrayLike, *, num_classes: int, pos_iou_thr: float = 0.5,
                   neg_iou_thr: float | tuple[float, float] = 0.4, min_pos_iou: float = 0.0,
                   match_low_quality: bool = True,
                   gt_max_assign_all: bool = True) -> MaxIoUAssignment:
  r"""Assigns anchors to padded ground-truth boxes by IoU (mmdetection ``MaxIoUAssigner``).
  https://arxiv.org/abs/1506.01497

  See the module docstring for the rules. Same numbers as mmdetection 3.3
  (``tests/fixtures/mmdet_anchor.npz``); ties between boxes at an anchor go to
  the lowest slot.

  Args:
    anchors: ``[A, 4]`` ``xyxy`` (e.g. :func:`jaxloss.anchor_grid`).
    gt_boxes: ``[B, M, 4]`` ``xyxy``; padded rows may hold anything.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` bool, True for real boxes.
    num_classes: number of classes (the background label).
    pos_iou_thr: IoU from which an anchor is positive.
    neg_iou_thr: IoU below which an anchor is negative, or an interval ``(lo, hi)``.
    min_pos_iou: least best-IoU of a box for low-quality matching.
    match_low_quality: give each box its best anchors even below ``pos_iou_thr``.
    gt_max_assign_all: all anchors tied at a box's best IoU (True) or the first.

  Returns:
    A :class:`MaxIoUAssignment`; no gradient flows through it.
  """
  lo, hi = _check_thresholds(pos_iou_thr, neg_iou_thr)
  return _max_iou_assign(anchors, gt_boxes, gt_labels, gt_mask, num_classes=int(num_classes),
                         pos_iou_thr=float(pos_iou_thr), neg_interval=(lo, hi),
                         min_pos_iou=float(min_pos_iou),
                         match_low_quality=bool(match_low_quality),
                         gt_max_assign_all=bool(gt_max_assign_all))


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "pos_iou_thr", "neg_interval", "min_pos_iou", "match_low_quality",
    "gt_max_assign_all"))
def _max_iou_assign(anchors, gt_boxes, gt_labels, gt_mask, *, num_classes, pos_iou_thr,
                    neg_interval, min_pos_iou, match_low_quality,
                    gt_max_assign_all) -> MaxIoUAssignment:
  anchors = check_anchors(anchors)
  boxes, labels, mask = check_ground_truth(gt_boxes, gt_labels, gt_mask)
  # padded boxes are zero boxes (IoU 0 with every anchor): they never raise a maximum, and
  # where they tie at the best IoU 0 that anchor is not positive (pos_iou_thr > 0)
  overlaps = pairwise_box_iou(boxes, anchors[None])  # [B, M, A]
  if pos_iou_thr <= 0:
    overlaps = jnp.where(mask[..., None], overlaps, -1.0)
  any_real = jnp.any(mask, axis=1, keepdims=True)
  max_overlaps = jnp.where(any_real, jnp.max(overlaps, axis=1), 0.0)
  best = jnp.argmax(overlaps, axis=1).astype(jnp.int32)
  lo, hi = neg_interval
  negative = ~any_real | ((max_overlaps >= lo) & (max_overlaps < hi))
  assigned = jnp.where(negative, -1, -2)  # -1 background, -2 ignored, >= 0 a slot
  assigned = jnp.where(any_real & (max_overlaps >= pos_iou_thr), best, assigned)
  if match_low_quality:
    assigned = _low_quality(overlaps, mask, assigned, min_pos_iou, gt_max_assign_all)
  gt_index = jnp.maximum(assigned, -1)
  out_labels, out_boxes, positive = gather_targets(gt_index, boxes, labels, num_classes)
  return MaxIoUAssignment(out_labels, out_boxes, gt_index, positive, max_overlaps,
                          assigned == -2)


def _low_quality(overlaps: Array, mask: Array, assigned: Array, min_pos_iou: float,
                 assign_all: bool) -> Array:
  """Gives each real box with best IoU >= ``min_pos_iou`` its best anchor(s); the last
  box wins an anchor, as mmdetection's loop over boxes."""
  gt_max = jnp.max(overlaps, axis=2, keepdims=True)  # [B, M, 1]
  eligible = mask[..., None] & (gt_max >= min_pos_iou)
  if assign_all:
    hit = overlaps == gt_max
  else:
    first = jnp.argmax(overlaps, axis=2)[..., None]
    hit = jax.lax.broadcasted_iota(jnp.int32, overlaps.shape, 2) == first
  slot = jax.lax.broadcasted_iota(jnp.int32, overlaps.shape, 1)
  last = jnp.max(jnp.where(eligible & hit, slot, -1), axis=1)
  return jnp.where(last >= 0, last, assigned)
