r"""Task-aligned assignment (TOOD; YOLOv8/11, PP-YOLOE) inside ``jit``.

Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021,
https://arxiv.org/abs/2108.07755. This is ultralytics' ``TaskAlignedAssigner``
(``ultralytics/utils/tal.py``, 8.3) number for number, in its classic form (ground
truth boxes are not widened), on static shapes:

1. a prior (anchor point) is a candidate of a real box when it lies strictly inside it
   (every distance to a side ``> 1e-9``);
2. for candidates, the alignment metric :math:`t = s^\alpha u^\beta`, with :math:`s`
   the predicted score of the box's class and :math:`u = \max(\mathrm{CIoU}, 0)` of
   the predicted box with the box; 0 for the other pairs;
3. each box takes the ``topk`` priors of largest :math:`t` (``jax.lax.top_k``: ties
   go to the lowest prior index), kept if they are candidates;
4. a prior taken by several boxes goes to the box of largest :math:`u` among all real
   boxes (the first such box on ties); ultralytics' ``if fg_mask.max() > 1`` branch is
   a mask here;
5. the soft score of a positive prior is :math:`t \cdot \max u / (\max t + \epsilon)`
   on its box's class, the maxima over the box's positive priors.

Memory and compute grow as ``B x M x A``: the metric, the CIoU and the top-k mask
are ``[B, M, A]`` arrays (13 M pairs at ``B = 16``, ``M = 100``, ``A = 8400``:
54 MB per float32 array), fused by XLA into a few passes. Measured there
(``benchmarks/yolo_benchmark.py``, XLA:CPU): 154 MiB of temporaries, and about four
times a ``softplus`` forward and backward pass over the ``[B, A, 80]`` class logits;
so no chunked mode is offered. The arctangents of CIoU's aspect term are taken per
box, not per pair.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_targets_mask
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float, divide_plus_eps, safe_pow
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes.geometry import unstack
from jaxloss.boxes.iou import aspect_gap, box_size, diou_terms

# ultralytics' select_candidates_in_gts margin and bbox_iou eps (fixed there too)
_INSIDE_EPS = 1e-9
_CIOU_EPS = 1e-7


class TaskAlignedAssignment(NamedTuple):
  """Targets of :func:`task_aligned_assign`.

  Attributes:
    labels: ``[B, A]`` int32 class of each prior's box, ``num_classes`` for background.
    boxes: ``[B, A, 4]`` its box (``xyxy``, as ``gt_boxes``); zeros for background.
    gt_index: ``[B, A]`` int32 slot of its box in ``gt_boxes``; -1 for background.
    positive: ``[B, A]`` bool, whether the prior is assigned a box.
    scores: ``[B, A, C]`` float32 soft classification targets: the normalised alignment
      metric on the box's class, 0 elsewhere and on background priors.
  """
  labels: Array
  boxes: Array
  gt_index: Array
  positive: Array
  scores: Array


def check_assigner_inputs(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask,
                  num_classes, topk) -> None:
  if pred_scores.ndim != 3 or pred_scores.shape[-1] != num_classes:
    raise ValueError(f"pred_scores must be [B, A, num_classes={num_classes}] probabilities, got "
                     f"{pred_scores.shape}.")
  batch, priors = pred_scores.shape[:2]
  if pred_boxes.shape != (batch, priors, 4):
    raise ValueError(f"pred_boxes must be [B, A, 4] = {(batch, priors, 4)} (xyxy), got "
                     f"{pred_boxes.shape}.")
  if anchor_points.shape != (priors, 2):
    raise ValueError(f"anchor_points must be [A, 2] = {(priors, 2)} (x, y), got "
                     f"{anchor_points.shape}.")
  if gt_boxes.ndim != 3 or gt_boxes.shape[0] != batch or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [B, M, 4] with B = {batch} (xyxy), got {gt_boxes.shape}.")
  check_targets_mask(gt_labels, gt_mask, gt_boxes.shape[:2])
  if not (isinstance(topk, int) and 1 <= topk <= priors):
    raise ValueError(f"topk must be an int in [1, A = {priors}], got {topk!r}.")


def _angle(width: Array, height: Array) -> Array:
  r""":math:`\arctan(w / h)` of each box, :func:`jaxloss.ciou_loss`'s convention
  (the limit :math:`\pm\pi/2` at ``h = 0``)."""
  return -aspect_gap(width, height, jnp.zeros_like(width), jnp.ones_like(height))


def pairwise_ciou(boxes: Array, priors: Array) -> Array:
  r"""CIoU of every box ``[B, M, 4]`` with every predicted box ``[B, A, 4]`` -> ``[B, M, A]``.

  :math:`\mathrm{IoU} - \rho^2 / (c^2 + \epsilon) - \alpha v` as
  :func:`jaxloss.ciou_loss` (``eps=1e-7``, ultralytics' ``bbox_iou(CIoU=True)``),
  computed directly rather than as ``1 - loss``; the aspect angles are taken per box,
  so the pairwise part has no arctangent.
  """
  a = tuple(x[:, :, None] for x in unstack(boxes))
  b = tuple(x[:, None, :] for x in unstack(priors))
  overlap, penalty = diou_terms(a, b, _CIOU_EPS)
  (w, h), (wp, hp) = box_size(unstack(boxes)), box_size(unstack(priors))
  gap = _angle(w, h)[:, :, None] - _angle(wp, hp)[:, None, :]
  v = (4 / math.pi**2) * gap * gap
  return overlap - penalty - divide_plus_eps(v, 1 - overlap + v, _CIOU_EPS) * v


def task_aligned_assign(pred_scores: ArrayLike, pred_boxes: ArrayLike, anchor_points: ArrayLike,
                        gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
                        num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0,
                        eps: float = 1e-9) -> TaskAlignedAssignment:
  r"""Assigns priors to ground truth by the task-aligned metric (ultralytics' TAL).
  https://arxiv.org/abs/2108.07755

  See the module docstring for the rules. With :math:`t_{ma} = s_{ma}^\alpha
  u_{ma}^\beta` (:math:`s` the score of box :math:`m`'s class at prior :math:`a`,
  :math:`u` the CIoU clamped at 0) the soft score of a positive prior :math:`a`
  of box :math:`m` is

  .. math::
     \hat s_a = t_{ma} \, \frac{\max_{a' \in P_m} u_{ma'}}{\max_{a' \in P_m} t_{ma'} + \epsilon}

  over the positives :math:`P_m` of box :math:`m`. Everything is computed under
  ``stop_gradient``. Padded boxes (``gt_mask=False``) may hold anything, even NaN:
  they never change an output; any number of real boxes is one compilation.

  Args:
    pred_scores: ``[B, A, C]`` predicted class probabilities (after the sigmoid).
    pred_boxes: ``[B, A, 4]`` predicted ``xyxy`` boxes, in the units of ``gt_boxes``.
    anchor_points: ``[A, 2]`` prior centres ``(x, y)``.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` boxes.
    gt_labels: ``[B, M]`` integer classes in ``[0, C)`` (any integer dtype).
    gt_mask: ``[B, M]`` bool, ``True`` for real boxes.
    num_classes: ``C``.
    topk: priors taken per box (ultralytics' ``topk``; ``yolov8_loss`` uses 10).
    alpha, beta: exponents of the score and the CIoU in the metric.
    eps: of the score normalisation.

  Returns:
    A :class:`TaskAlignedAssignment`.
  """
  pred_scores, pred_boxes = as_float(pred_scores), as_float(pred_boxes)
  anchor_points, gt_boxes, gt_mask = (jnp.asarray(x) for x in (anchor_points, gt_boxes, gt_mask))
  gt_labels = canonical_labels(gt_labels, "gt_labels")
  check_assigner_inputs(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask,
                num_classes, topk)
  return _assign(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask,
                 num_classes=int(num_classes), topk=topk, alpha=float(alpha), beta=float(beta),
                 eps=float(eps))


@functools.partial(jax.jit, static_argnames=("num_classes", "topk", "alpha", "beta", "eps"))
def _assign(pred_scores, pred_boxes, anchor_points, gt_boxes, gt_labels, gt_mask, *,
            num_classes, topk, alpha, beta, eps) -> TaskAlignedAssignment:
  scores, priors, points = (stopped_f32(x) for x in (pred_scores, pred_boxes, anchor_points))
  boxes, labels, gt_mask = padded_ground_truth(gt_boxes, gt_labels, gt_mask)
  positive_pairs, metric, overlaps = _positive_pairs(scores, priors, points, boxes, labels,
                                                     gt_mask, topk, alpha, beta)
  gt_index = _assigned_box(positive_pairs, overlaps, gt_mask)
  positive = gt_index >= 0
  slot = jnp.maximum(gt_index, 0)
  out_labels = jnp.where(positive, jnp.take_along_axis(labels, slot, axis=1), num_classes)
  out_labels = out_labels.astype(jnp.int32)
  out_boxes = jnp.take_along_axis(boxes, slot[..., None], axis=1)
  out_boxes = jnp.where(positive[..., None], out_boxes, 0.0)
  norm = _normalised_metric(gt_index, metric, overlaps, eps)
  soft = jax.nn.one_hot(out_labels, num_classes, dtype=jnp.float32) * norm[..., None]
  return TaskAlignedAssignment(out_labels, out_boxes, gt_index, positive, soft)


def stopped_f32(x: ArrayLike) -> Array:
  """``x`` as float32 under ``stop_gradient``: assigners compute targets, not gradients."""
  return jax.lax.stop_gradient(as_float(x)).astype(jnp.float32)


def padded_ground_truth(gt_boxes: Array, gt_labels: Array,
                        gt_mask: Array) -> tuple[Array, Array, Array]:
  """Boxes (float32, padding zeroed, so NaN padding reaches nothing), labels (padding 0)
  and mask; no slots (``M = 0``) become one padding slot."""
  if gt_boxes.shape[1] == 0:
    gt_boxes = jnp.zeros((gt_boxes.shape[0], 1, 4), gt_boxes.dtype)
    gt_labels, gt_mask = (jnp.zeros(gt_boxes.shape[:2], x.dtype) for x in (gt_labels, gt_mask))
  boxes = jnp.where(gt_mask[..., None], stopped_f32(gt_boxes), 0.0)
  return boxes, jnp.where(gt_mask, gt_labels, 0), gt_mask


def _positive_pairs(scores, priors, points, boxes, labels, gt_mask, topk, alpha, beta):
  """``(positive [B, M, A], metric [B, M, A], overlaps [B, M, A])`` before conflicts."""
  x, y = points[None, None, :, 0], points[None, None, :, 1]
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
  margin = jnp.minimum(jnp.minimum(x - x1, y - y1), jnp.minimum(x2 - x, y2 - y))
  candidate = (margin > _INSIDE_EPS) & gt_mask[..., None]
  # the score of each box's class at every prior: a gather over the class axis
  class_scores = jnp.take_along_axis(jnp.swapaxes(scores, 1, 2),
                                     jnp.clip(labels, 0, scores.shape[-1] - 1)[..., None], axis=1)
  overlaps = jnp.where(candidate, jnp.maximum(pairwise_ciou(boxes, priors), 0.0), 0.0)
  metric = jnp.where(candidate, safe_pow(class_scores, alpha) * safe_pow(overlaps, beta), 0.0)
  _, top = jax.lax.top_k(metric, topk)
  batch, num_boxes, _ = metric.shape
  rows = jnp.arange(batch)[:, None, None], jnp.arange(num_boxes)[None, :, None]
  in_top = jnp.zeros(metric.shape, bool).at[rows[0], rows[1], top].set(True)
  return in_top & candidate, metric, overlaps


def _assigned_box(positive_pairs, overlaps, gt_mask):
  """``[B, A]`` int32: the box of each prior, -1 for none; a prior positive for several
  boxes keeps the real box of largest overlap (the first on ties)."""
  count = jnp.sum(positive_pairs, axis=1, dtype=jnp.int32)
  first = jnp.argmax(positive_pairs, axis=1)
  best = jnp.argmax(jnp.where(gt_mask[..., None], overlaps, -1.0), axis=1)
  return jnp.where(count > 1, best, jnp.where(count == 1, first, -1)).astype(jnp.int32)


def _normalised_metric(gt_index, metric, overlaps, eps):
  """``[B, A]``: each positive prior's metric scaled by its box's max overlap over its max
  metric (both over the box's positive priors); 0 for background.

  The maxima are segment maxima over the ``[B, A]`` assigned values, not reductions
  of the ``[B, M, A]`` grid.
  """
  batch, num_boxes, _ = metric.shape
  positive = gt_index >= 0
  slot = jnp.maximum(gt_index, 0)
  take = lambda x: jnp.where(positive, jnp.take_along_axis(x, slot[:, None], axis=1)[:, 0], 0.0)
  own_metric, own_overlap = take(metric), take(overlaps)
  segment = (slot + num_boxes * jnp.arange(batch)[:, None]).ravel()
  box_max = lambda x: jax.ops.segment_max(x.ravel(), segment, batch * num_boxes)[segment]
  norm = own_metric.ravel() * box_max(own_overlap) / (box_max(own_metric) + eps)
  return norm.reshape(own_metric.shape)
