r"""Matching costs of the DETR family: class, L1 and GIoU terms of every (query, target) pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss._src.checks import check_choice
from jaxloss._src.labels import canonical_labels
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import box_convert, pairwise_generalized_box_iou

CLASS_LOSSES = ("softmax", "focal", "varifocal")


def _class_cost(cls_logits: Array, labels: Array, class_loss: str, alpha: float,
                gamma: float) -> Array:
  """``[..., Q, M]`` class cost of each query for each target's label."""
  num_classes = cls_logits.shape[-1]
  if class_loss == "softmax":
    per_class = -jax.nn.softmax(cls_logits, axis=-1)
  else:
    # -log(p) = softplus(-x) and -log(1 - p) = softplus(x): finite for any logit.
    p, q = jax.nn.sigmoid(cls_logits), jax.nn.sigmoid(-cls_logits)
    pos = alpha * q**gamma * jax.nn.softplus(-cls_logits)
    neg = (1 - alpha) * p**gamma * jax.nn.softplus(cls_logits)
    per_class = pos - neg
  known = (labels >= 0) & (labels < num_classes)
  index = jnp.broadcast_to(jnp.where(known, labels, 0)[..., None, :],
                           per_class.shape[:-1] + labels.shape[-1:])
  cost = jnp.take_along_axis(per_class, index, axis=-1)
  return jnp.where(known[..., None, :], cost, 0)


def _check_shapes(cls_logits: Array, box_preds: Array, gt_boxes: Array, gt_labels: Array):
  if cls_logits.ndim < 2 or box_preds.shape != cls_logits.shape[:-1] + (4,):
    raise ValueError(f"`cls_logits` [..., Q, K] and `box_preds` [..., Q, 4] disagree: got "
                     f"{cls_logits.shape} and {box_preds.shape}.")
  if gt_boxes.ndim < 2 or gt_boxes.shape[-1] != 4 or gt_labels.shape != gt_boxes.shape[:-1]:
    raise ValueError(f"`gt_boxes` must be [..., M, 4] and `gt_labels` [..., M], got "
                     f"{gt_boxes.shape} and {gt_labels.shape}.")


def detr_matching_cost(cls_logits: ArrayLike, box_preds: ArrayLike, gt_boxes: ArrayLike,
                       gt_labels: ArrayLike, *, class_loss: str = "softmax",
                       class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
                       focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Array:
  r"""The matching cost of DETR's Hungarian matcher, ``[..., Q, M]``.

  .. math::
     C_{qm} = \lambda_\mathrm{cls} c_\mathrm{cls}(q, y_m)
              + \lambda_\mathrm{L1} \lVert b_q - \hat b_m \rVert_1
              - \lambda_\mathrm{GIoU} \mathrm{GIoU}(b_q, \hat b_m)

  with boxes in normalised ``cxcywh`` (L1 on those coordinates, GIoU on their
  ``xyxy`` corners) and the class cost

  * ``"softmax"`` (DETR, Carion et al. 2020, https://arxiv.org/abs/2005.12872):
    :math:`c = -\mathrm{softmax}(x_q)_{y}`;
  * ``"focal"`` (Deformable-DETR, Zhu et al. 2020, https://arxiv.org/abs/2010.04159):
    :math:`c = \alpha (1 - p)^\gamma (-\log p) - (1 - \alpha) p^\gamma (-\log(1 - p))`
    with :math:`p = \sigma(x_{q,y})` (the logs are softplus, where the peer adds 1e-8);
  * ``"varifocal"``: the same focal cost, as RT-DETR's matcher (Zhao et al. 2023,
    https://arxiv.org/abs/2304.08069) for its varifocal class loss.

  ``class_cost``, ``bbox_cost`` and ``giou_cost`` are DETR's ``set_cost_class``,
  ``set_cost_bbox`` and ``set_cost_giou`` (Deformable-DETR uses ``class_cost=2``).
  Labels outside ``[0, K)`` (padding) get a class cost of 0.

  Args:
    cls_logits: ``[..., Q, K]``.
    box_preds: ``[..., Q, 4]`` normalised ``cxcywh``.
    gt_boxes: ``[..., M, 4]`` normalised ``cxcywh``.
    gt_labels: ``[..., M]`` integer labels.
    class_loss: ``"softmax"``, ``"focal"`` or ``"varifocal"`` (the focal cost).
    class_cost, bbox_cost, giou_cost: weights of the three terms.
    focal_alpha, focal_gamma: of the focal class cost.

  Returns:
    ``[..., Q, M]`` float32 (float64 for float64 input) costs, for
    :func:`jaxloss.hungarian_matching`.
  """
  check_choice("class_loss", class_loss, CLASS_LOSSES)
  cls_logits, box_preds, gt_boxes = (as_float(x) for x in (cls_logits, box_preds, gt_boxes))
  gt_labels = canonical_labels(gt_labels, "gt_labels")
  _check_shapes(cls_logits, box_preds, gt_boxes, gt_labels)
  cost = class_cost * _class_cost(cls_logits, gt_labels, class_loss, focal_alpha, focal_gamma)
  pred, gt = jnp.broadcast_arrays(box_preds[..., :, None, :], gt_boxes[..., None, :, :])
  l1 = jnp.sum(jnp.abs(pred - gt), axis=-1)
  giou = pairwise_generalized_box_iou(box_convert(box_preds, "cxcywh", "xyxy"),
                                      box_convert(gt_boxes, "cxcywh", "xyxy"))
  return cost + bbox_cost * l1 - giou_cost * giou
