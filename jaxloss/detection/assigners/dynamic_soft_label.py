r"""Dynamic soft label assignment (RTMDet) inside ``jit``.

Lyu et al., "RTMDet: An Empirical Study of Designing Real-Time Object Detectors",
https://arxiv.org/abs/2212.07784 (section 3.2). This is mmdetection 3.3's
``DynamicSoftLabelAssigner`` number for number, on static shapes:

1. a prior ``(x, y, s, s)`` is *valid* when ``(x, y)`` lies strictly inside some real box;
2. the cost of a (box, prior) pair, with :math:`u` their IoU, :math:`\sigma` the
   sigmoid of the predicted logits :math:`x` and :math:`d` the distance from
   ``(x, y)`` to the box centre, is

   .. math::
      \sum_c \mathrm{BCE}(x_c, u [c = y])\,(u [c = y] - \sigma(x_c))^2
      - w_{iou} \log(u + 10^{-7}) + 10^{d / s - r}

   (soft classification cost, IoU cost, soft centre prior of radius ``r``);
3. the dynamic-k matching of SimOTA (:func:`jaxloss.simota_assign`) with ``topk``
   IoUs summed.

Memory grows as ``B x M x A`` (see :mod:`jaxloss.detection.assigners.task_aligned`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxloss._src.numerics import sigmoid_pieces
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.detection.assigners.simota import (
  SimOTAAssignment,
  match_dynamic_k,
  pairwise_prior_iou,
  prior_inputs,
)
from jaxloss.detection.assigners.task_aligned import (
  check_assigner_inputs,
  padded_ground_truth,
  stopped_f32,
)

_COST_EPS = 1e-7


def dynamic_soft_label_assign(pred_logits: ArrayLike, pred_boxes: ArrayLike, priors: ArrayLike,
                              gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
                              soft_center_radius: float = 3.0, topk: int = 13,
                              iou_weight: float = 3.0) -> SimOTAAssignment:
  r"""Assigns priors to ground truth with dynamic soft labels (mmdetection's
  ``DynamicSoftLabelAssigner``, RTMDet).
  https://arxiv.org/abs/2212.07784

  See the module docstring for the rules. Everything is computed under
  ``stop_gradient``; padded boxes (``gt_mask=False``) never change an output, even
  NaN; any number of real boxes is one compilation.

  Args:
    pred_logits: ``[B, A, C]`` predicted class *logits* (mmdetection passes the raw
      classification outputs).
    pred_boxes: ``[B, A, 4]`` decoded ``xyxy`` boxes, in the units of ``gt_boxes``.
    priors: ``[A, 4]`` ``(x, y, stride_x, stride_y)``; the distance is measured in
      ``stride_x`` units, as mmdetection.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` boxes.
    gt_labels: ``[B, M]`` integer classes in ``[0, C)`` (any integer dtype).
    gt_mask: ``[B, M]`` bool, ``True`` for real boxes.
    soft_center_radius: ``r`` of the soft centre prior, in strides.
    topk: IoUs summed for the dynamic k (its upper bound).
    iou_weight: weight of the IoU cost.

  Returns:
    A :class:`jaxloss.SimOTAAssignment` (``ious`` is each positive's IoU with its box).
  """
  pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask = prior_inputs(
      pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, "pred_logits")
  if pred_logits.ndim != 3:
    raise ValueError(f"pred_logits must be [B, A, C], got {pred_logits.shape}.")
  check_assigner_inputs(pred_logits, pred_boxes, priors[:, :2], gt_boxes, gt_labels, gt_mask,
                pred_logits.shape[-1], 1)
  if not (isinstance(topk, int) and topk >= 1):
    raise ValueError(f"topk must be an int >= 1, got {topk!r}.")
  return _assign(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                 soft_center_radius=float(soft_center_radius), topk=min(topk, priors.shape[0]),
                 iou_weight=float(iou_weight))


@functools.partial(jax.jit, static_argnames=("soft_center_radius", "topk", "iou_weight"))
def _assign(pred_logits, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, *,
            soft_center_radius, topk, iou_weight) -> SimOTAAssignment:
  logits, pred, priors = (stopped_f32(x) for x in (pred_logits, pred_boxes, priors))
  boxes, labels, gt_mask = padded_ground_truth(gt_boxes, gt_labels, gt_mask)
  x, y, stride = (priors[None, None, :, k] for k in range(3))
  x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
  inside = jnp.minimum(jnp.minimum(x - x1, y - y1), jnp.minimum(x2 - x, y2 - y)) > 0
  valid = jnp.any(inside & gt_mask[..., None], axis=1)
  ious = pairwise_prior_iou(boxes, pred)
  distance = jnp.sqrt(jnp.square(x - (x1 + x2) / 2.0) + jnp.square(y - (y1 + y2) / 2.0))
  centre_prior = jnp.power(10.0, distance / stride - soft_center_radius)
  cost = (_soft_cls_cost(logits, labels, ious) - jnp.log(ious + _COST_EPS) * iou_weight
          + centre_prior)
  return match_dynamic_k(cost, ious, valid, boxes, labels, gt_mask, logits.shape[-1], topk)


def _soft_cls_cost(logits: Array, labels: Array, ious: Array) -> Array:
  """``[B, M, A]``: :math:`\\sum_c \\mathrm{BCE}(x_c, t_c) (t_c - \\sigma(x_c))^2` with
  :math:`t = u\\,\\mathrm{onehot}(y)`: the all-zero-target sum over classes (``[B, A]``)
  with the box class's term replaced, so that no ``[B, M, A, C]`` array is formed."""
  prob, _, relu, log1p_exp = sigmoid_pieces(logits)
  softplus = relu + log1p_exp
  negative = jnp.sum(softplus * prob * prob, axis=-1)
  index = jnp.clip(labels, 0, logits.shape[-1] - 1)[..., None]
  take = lambda v: jnp.take_along_axis(jnp.swapaxes(v, 1, 2), index, axis=1)
  x, p, sp, r, lg = take(logits), take(prob), take(softplus), take(relu), take(log1p_exp)
  positive = ((r - ious * x) + lg) * jnp.square(ious - p)
  return negative[:, None, :] - sp * p * p + positive
