r"""SimOTA assignment (YOLOX) inside ``jit``.

Ge et al., "YOLOX: Exceeding YOLO Series in 2021", https://arxiv.org/abs/2107.08430
(section 2.2, a simplified optimal transport assignment). This is mmdetection 3.3's
``SimOTAAssigner`` number for number, on static shapes:

1. a prior ``(x, y, s_x, s_y)`` is *valid* when it lies strictly inside some real box or
   strictly inside the square of half-side ``center_radius * s`` around some box centre;
   only valid priors take part;
2. the cost of a (box, prior) pair is
   :math:`w_{cls} \sum_c \mathrm{BCE}(p_c, [c = y]) + w_{iou} (-\log(\mathrm{IoU} + 10^{-7}))
   + 10^5 [\text{not inside both the box and its centre square}]` (BCE of probabilities,
   its logarithms clamped at -100 as torch's);
3. each box takes its :math:`k` cheapest valid priors, with the dynamic
   :math:`k = \max(\lfloor \sum \text{top-}\mathtt{candidate\_topk}\ \mathrm{IoU} \rfloor, 1)`
   over valid priors; :math:`k \le` ``candidate_topk``, so a ``top_k`` of that size
   and a rank mask keep shapes static (ties: the lowest prior index);
4. a prior taken by several boxes keeps the one of lowest cost (the first on ties).

Memory grows as ``B x M x A`` (IoU and cost grids; see
:mod:`jaxloss.detection.assigners.task_aligned`): 259 MiB of temporaries at
``B = 16``, ``M = 100``, ``A = 8400`` (``benchmarks/yolo_benchmark.py``). The
classification cost is formed without a ``[B, M, A, C]`` array.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes.geometry import intersection_union, unstack
from jaxloss.detection.assigners.task_aligned import (
  check_assigner_inputs,
  padded_ground_truth,
  stopped_f32,
)

# mmdetection's SimOTAAssigner constants: the outside-centre penalty and the IoU-cost eps,
# BboxOverlaps2D's union floor, and torch's binary_cross_entropy log clamp
_PENALTY = 100000.0
_COST_EPS = 1e-7
_UNION_EPS = 1e-6
_LOG_FLOOR = -100.0


class SimOTAAssignment(NamedTuple):
  """Targets of :func:`simota_assign`.

  Attributes:
    labels: ``[B, A]`` int32 class of each prior's box, ``C`` (background) if none.
    boxes: ``[B, A, 4]`` its box (``xyxy``); zeros for background.
    gt_index: ``[B, A]`` int32 slot of its box in ``gt_boxes``; -1 for background.
    positive: ``[B, A]`` bool, whether the prior is assigned a box.
    ious: ``[B, A]`` float32 IoU of the predicted box with its box; 0 for background.
  """
  labels: Array
  boxes: Array
  gt_index: Array
  positive: Array
  ious: Array


def prior_inputs(scores: ArrayLike, boxes: ArrayLike, priors: ArrayLike, gt_boxes: ArrayLike,
                 gt_labels: ArrayLike, gt_mask: ArrayLike,
                 name: str) -> tuple[Array, Array, Array, Array, Array, Array]:
  """The inputs of a prior-based assigner as arrays (labels canonical); ``priors`` checked to be
  ``[A, 4]`` with ``A`` the predictions' (``name``) prior count."""
  scores, boxes = as_float(scores), as_float(boxes)
  priors, gt_boxes, gt_mask = (jnp.asarray(x) for x in (priors, gt_boxes, gt_mask))
  num_priors = scores.shape[1] if scores.ndim == 3 else -1
  if priors.shape != (num_priors, 4):
    raise ValueError(f"priors must be [A, 4] (x, y, stride_x, stride_y) with A = {num_priors} "
                     f"as {name}, got {priors.shape}.")
  return scores, boxes, priors, gt_boxes, canonical_labels(gt_labels, "gt_labels"), gt_mask


def simota_assign(pred_scores: ArrayLike, pred_boxes: ArrayLike, priors: ArrayLike,
                  gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
                  center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                  cls_weight: float = 1.0) -> SimOTAAssignment:
  r"""Assigns priors to ground truth by SimOTA (mmdetection's ``SimOTAAssigner``).
  https://arxiv.org/abs/2107.08430

  See the module docstring for the rules. Everything is computed under
  ``stop_gradient``. Padded boxes (``gt_mask=False``) may hold anything, even NaN:
  they never change an output; any number of real boxes is one compilation.

  Args:
    pred_scores: ``[B, A, C]`` predicted class probabilities (YOLOX: the square root
      of class times objectness probability).
    pred_boxes: ``[B, A, 4]`` decoded ``xyxy`` boxes, in the units of ``gt_boxes``.
    priors: ``[A, 4]`` ``(x, y, stride_x, stride_y)`` (mmdetection's priors with
      strides).
    gt_boxes: ``[B, M, 4]`` ``xyxy`` boxes.
    gt_labels: ``[B, M]`` integer classes in ``[0, C)`` (any integer dtype).
    gt_mask: ``[B, M]`` bool, ``True`` for real boxes.
    center_radius: half-side of the centre square, in strides.
    candidate_topk: IoUs summed for the dynamic k (its upper bound).
    iou_weight, cls_weight: weights of the IoU and classification costs.

  Returns:
    A :class:`SimOTAAssignment`.
  """
  pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask = prior_inputs(
      pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, "pred_scores")
  check_assigner_inputs(pred_scores, pred_boxes, priors[:, :2], gt_boxes, gt_labels, gt_mask,
                pred_scores.shape[-1], 1)
  if not (isinstance(candidate_topk, int) and candidate_topk >= 1):
    raise ValueError(f"candidate_topk must be an int >= 1, got {candidate_topk!r}.")
  return _assign(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                 center_radius=float(center_radius),
                 candidate_topk=min(candidate_topk, priors.shape[0]),
                 iou_weight=float(iou_weight), cls_weight=float(cls_weight))


@functools.partial(jax.jit, static_argnames=("center_radius", "candidate_topk", "iou_weight",
                                             "cls_weight"))
def _assign(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, *, center_radius,
            candidate_topk, iou_weight, cls_weight) -> SimOTAAssignment:
  num_classes = pred_scores.shape[-1]
  scores, pred, priors = (stopped_f32(x) for x in (pred_scores, pred_boxes, priors))
  boxes, labels, gt_mask = padded_ground_truth(gt_boxes, gt_labels, gt_mask)
  in_box, in_centre = _regions(priors, boxes, gt_mask, center_radius)
  valid = jnp.any(in_box | in_centre, axis=1)
  ious = pairwise_prior_iou(boxes, pred)
  cost = _cost(scores, labels, ious, in_box & in_centre, iou_weight, cls_weight)
  return match_dynamic_k(cost, ious, valid, boxes, labels, gt_mask, num_classes, candidate_topk)


def match_dynamic_k(cost: Array, ious: Array, valid: Array, boxes: Array, labels: Array,
                    gt_mask: Array, num_classes: int, candidate_topk: int) -> SimOTAAssignment:
  """The dynamic-k matching shared by SimOTA and the dynamic soft label assigner.

  Each real box takes its ``k`` cheapest ``valid [B, A]`` priors by ``cost [B, M, A]``,
  ``k`` the floor of its summed top-``candidate_topk`` IoUs over valid priors (at least
  1); a prior taken by several boxes keeps the cheapest.
  """
  usable = valid[:, None, :] & gt_mask[..., None]
  cost = jnp.where(usable, cost, jnp.inf)
  matched = _dynamic_k_matching(cost, jnp.where(usable, ious, 0.0), usable, candidate_topk)
  count = jnp.sum(matched, axis=1, dtype=jnp.int32)
  cheapest = jnp.argmin(cost, axis=1)
  gt_index = jnp.where(count > 1, cheapest, jnp.where(count == 1, jnp.argmax(matched, axis=1), -1))
  gt_index = gt_index.astype(jnp.int32)
  positive = gt_index >= 0
  slot = jnp.maximum(gt_index, 0)
  out_labels = jnp.where(positive, jnp.take_along_axis(labels, slot, axis=1), num_classes)
  out_boxes = jnp.where(positive[..., None], jnp.take_along_axis(boxes, slot[..., None], axis=1),
                        0.0)
  own_iou = jnp.take_along_axis(ious, slot[:, None], axis=1)[:, 0]
  return SimOTAAssignment(out_labels.astype(jnp.int32), out_boxes, gt_index, positive,
                          jnp.where(positive, own_iou, 0.0))


def _regions(priors, boxes, gt_mask, radius):
  """``(in_box, in_centre)`` ``[B, M, A]``: the prior strictly inside the box, and inside
  the square of half-side ``radius * stride`` around its centre (mmdetection's order of
  operations)."""
  x, y, sx, sy = (priors[None, None, :, k] for k in range(4))
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
  in_box = jnp.minimum(jnp.minimum(x - x1, y - y1), jnp.minimum(x2 - x, y2 - y)) > 0
  cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
  left, top = x - (cx - radius * sx), y - (cy - radius * sy)
  right, bottom = (cx + radius * sx) - x, (cy + radius * sy) - y
  in_centre = jnp.minimum(jnp.minimum(left, top), jnp.minimum(right, bottom)) > 0
  real = gt_mask[..., None]
  return in_box & real, in_centre & real


def pairwise_prior_iou(boxes, pred):
  """``[B, M, A]`` IoU, the union floored at 1e-6 (mmdetection's ``bbox_overlaps``)."""
  a = tuple(v[:, :, None] for v in unstack(boxes))
  b = tuple(v[:, None, :] for v in unstack(pred))
  inter, union = intersection_union(a, b)
  return inter / jnp.maximum(union, _UNION_EPS)


def _cost(scores, labels, ious, inside_both, iou_weight, cls_weight):
  """``[B, M, A]``: the SimOTA cost of every (box, prior) pair.

  The classification cost, :math:`\\sum_c \\mathrm{BCE}(p_c, [c = y])`, is the all-negative
  sum over classes (``[B, A]``, once per prior) with the box class's term swapped from
  negative to positive, so that no ``[B, M, A, C]`` array is formed.
  """
  log_p = jnp.maximum(jnp.log(scores), _LOG_FLOOR)
  log_not_p = jnp.maximum(jnp.log1p(-scores), _LOG_FLOOR)
  negative = -jnp.sum(log_not_p, axis=-1)
  index = jnp.clip(labels, 0, scores.shape[-1] - 1)[..., None]
  take = lambda x: jnp.take_along_axis(jnp.swapaxes(x, 1, 2), index, axis=1)
  cls_cost = negative[:, None, :] + take(log_not_p) - take(log_p)
  iou_cost = -jnp.log(ious + _COST_EPS)
  return cls_cost * cls_weight + iou_cost * iou_weight + jnp.where(inside_both, 0.0, _PENALTY)


def _dynamic_k_matching(cost, ious, usable, candidate_topk):
  """``[B, M, A]`` bool: each box's ``k`` cheapest usable priors, ``k`` its dynamic k."""
  top_ious, _ = jax.lax.top_k(ious, candidate_topk)
  dynamic_k = jnp.maximum(jnp.sum(top_ious, axis=-1).astype(jnp.int32), 1)
  _, cheapest = jax.lax.top_k(-cost, candidate_topk)
  take = jnp.arange(candidate_topk)[None, None] < dynamic_k[..., None]
  batch, num_boxes, _ = cost.shape
  rows = jnp.arange(batch)[:, None, None], jnp.arange(num_boxes)[None, :, None]
  matched = jnp.zeros(cost.shape, bool).at[rows[0], rows[1], cheapest].set(take)
  return matched & usable
