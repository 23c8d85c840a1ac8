r"""The Generalized Focal Loss detector loss, ATSS inside ``jit`` (mmdetection ``GFLHead``).

GFL (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed
Bounding Boxes for Dense Object Detection", NeurIPS 2020,
https://arxiv.org/abs/2006.04388) predicts per anchor ``C`` sigmoid logits of a
joint class-and-quality score and, per box side, a discrete distribution over
``reg_max + 1`` bins of the distance (in strides) from the anchor centre.
Anchors (:func:`jaxloss.anchor_grid`) are assigned by
:func:`jaxloss.atss_assign`. For a positive anchor :math:`a` of stride
:math:`s` with centre :math:`p_a / s`, the predicted distances
:math:`\hat d = \sum_i i \,\mathrm{softmax}(z)_i` decode to a box
:math:`\hat b_a`, the target box is :math:`b_a / s`, its quality is
:math:`q_a = \mathrm{IoU}(\hat b_a, b_a / s)` (no gradient) and its weight
:math:`w_a = \max_c \sigma(x_{ac})` (no gradient). With :math:`N` the mean over
devices of :math:`\sum_b \max(P_b, 1)` and :math:`W = \max(\text{mean over devices
of } \sum_{a \in pos} w_a, 1)`:

.. math::
   L_{cls} = \frac{1}{N}\sum_a \mathrm{QFL}(x_a, y_a, q_a), \quad
   L_{reg} = \frac{1}{W}\sum_{a \in pos} w_a (1 - \mathrm{GIoU}(\hat b_a, b_a / s)), \quad
   L_{dfl} = \frac{1}{4 W}\sum_{a \in pos} w_a \sum_{k=1}^{4} \mathrm{DFL}(z_{ak}, d_{ak})

with :math:`d_{ak}` the target distances clipped to ``[0, reg_max - 0.01]``.
Each term is multiplied by its weight (mmdetection's ``loss_weight``: 1, 2, 0.25).
Same numbers as mmdetection 3.3's ``GFLHead.loss_by_feat`` (fixture
``tests/fixtures/mmdet_anchor.npz``).

Memory: the assignment keeps ``[B, M, A]`` IoUs, distances and positive pairs
(``A = 8,525`` at 640x640: 27 MB each at batch 8, ``M = 100``); the levels' outputs are
joined into ``[B, A, C]`` and ``[B, A, 4, reg_max + 1]`` (one copy, 22 MB and 19 MB there).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import classification
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import box_iou, box_to_distance, distance_to_box, iou
from jaxloss.detection.anchors import anchor_grid_numpy
from jaxloss.detection.assigners.atss import atss_assign
from jaxloss.detection.losses.retinanet import check_levels, image_positives

# mmdetection's GIoULoss eps and bbox2distance margin below reg_max
_GIOU_EPS = 1e-6
_DFL_MARGIN = 0.01


def gfl_loss(cls_logits: Sequence[ArrayLike], box_preds: Sequence[ArrayLike],
             gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
             num_classes: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
             octave_base_scale: float = 8, scales_per_octave: int = 1,
             ratios: Sequence[float] = (1.0,), topk: int = 9, reg_max: int = 16,
             qfl_beta: float = 2.0, cls_weight: float = 1.0, reg_weight: float = 2.0,
             dfl_weight: float = 0.25, axis_name: Any = None) -> dict[str, Array]:
  r"""The GFL loss, anchors assigned by ATSS inside the function (mmdetection ``GFLHead``).
  https://arxiv.org/abs/2006.04388

  See the module docstring for the formula.

  Args:
    cls_logits: per level ``[B, H_l, W_l, A_loc * num_classes]`` (``A_loc = 1`` with the
      default anchors).
    box_preds: per level ``[B, H_l, W_l, A_loc * 4 * (reg_max + 1)]`` bin logits, per
      anchor the sides ``l, t, r, b`` each with ``reg_max + 1`` bins.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` pixels, padded; padded rows may hold anything.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` bool, True for real boxes.
    num_classes: number of classes.
    strides, octave_base_scale, scales_per_octave, ratios: the anchors.
    topk: ATSS candidates per level and box.
    reg_max: the largest bin (distances in strides).
    qfl_beta: the quality focal loss exponent.
    cls_weight, reg_weight, dfl_weight: multipliers of the three terms.
    axis_name: mapped batch axis over which the normalisers are averaged.

  Returns:
    ``{"loss", "cls_loss", "reg_loss", "dfl_loss", "num_pos"}``, float32 scalars;
    ``num_pos`` is :math:`N`.
  """
  if int(reg_max) < 1:
    raise ValueError(f"reg_max must be >= 1, got {reg_max!r}.")
  if not qfl_beta >= 0:
    raise ValueError(f"qfl_beta must be >= 0, got {qfl_beta!r}.")
  per_location = len(ratios) * int(scales_per_octave)
  sizes = check_levels(cls_logits, box_preds, strides, per_location, int(num_classes),
                       4 * (int(reg_max) + 1), "box_preds")
  return _gfl_loss(
      tuple(cls_logits), tuple(box_preds), gt_boxes, gt_labels, gt_mask, cls_weight,
      reg_weight, dfl_weight, num_classes=int(num_classes), sizes=tuple(sizes),
      strides=tuple(strides), anchor_cfg=(float(octave_base_scale), int(scales_per_octave),
                                          tuple(float(r) for r in ratios)),
      topk=int(topk), reg_max=int(reg_max), qfl_beta=float(qfl_beta), axis_name=axis_name)


def _terms(logits: Array, bins: Array, points: np.ndarray, boxes: Array, labels: Array,
           positive: Array, reg_max: int, beta: float) -> tuple[Array, ...]:
  """``(QFL sum, weighted GIoU sum, weighted DFL sum, weight sum)`` over all anchors, points
  ``[1, A, 2]`` and boxes in strides."""
  distances = jax.nn.softmax(bins, axis=-1) @ np.arange(reg_max + 1, dtype=np.float32)
  decoded = distance_to_box(points, distances)
  quality = jnp.where(positive, box_iou(jax.lax.stop_gradient(decoded), boxes), 0.0)
  cls = classification.quality_focal_loss(logits, labels, quality, beta=beta, reduction="sum")
  weight = jnp.where(positive, jnp.max(jax.nn.sigmoid(jax.lax.stop_gradient(logits)), -1), 0.0)
  reg = iou.giou_loss(decoded, boxes, eps=_GIOU_EPS, weight=weight, where=positive,
                      reduction="sum")
  targets = jnp.clip(box_to_distance(points, boxes), 0.0, reg_max - _DFL_MARGIN)
  dfl = classification.distribution_focal_loss(bins, targets, weight=weight,
                                               where=positive[..., None], reduction="sum")
  return cls, reg, dfl, jnp.sum(weight)


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "sizes", "strides", "anchor_cfg", "topk", "reg_max", "qfl_beta",
    "axis_name"))
def _gfl_loss(cls_logits, box_preds, gt_boxes, gt_labels, gt_mask, cls_weight, reg_weight,
              dfl_weight, *, num_classes, sizes, strides, anchor_cfg, topk, reg_max, qfl_beta,
              axis_name) -> dict[str, Array]:
  base, per_octave, ratios = anchor_cfg
  levels = anchor_grid_numpy(sizes, strides, octave_base_scale=base,
                             scales_per_octave=per_octave, ratios=ratios)
  anchors = np.concatenate(levels)
  targets = atss_assign(anchors, [len(a) for a in levels], gt_boxes, gt_labels, gt_mask,
                        num_classes=num_classes, topk=topk)
  # GFL's heads are small (one anchor per location): the levels are joined, so that each
  # term is compiled once; anchor centres and boxes are in units of their level's stride
  stride = np.concatenate([np.full(len(a), s, np.float32) for a, s in zip(levels, strides,
                                                                           strict=True)])
  points = ((anchors[:, :2] + anchors[:, 2:]) * 0.5 / stride[:, None]).astype(np.float32)[None]
  join = lambda xs, *shape: jnp.concatenate(
      [as_float(x).reshape(x.shape[0], -1, *shape) for x in xs], 1)
  cls, reg, dfl, weight_sum = _terms(
      join(cls_logits, num_classes), join(box_preds, 4, reg_max + 1), points,
      targets.boxes / stride[None, :, None], targets.labels, targets.positive, reg_max, qfl_beta)
  num_pos = image_positives(targets.positive, axis_name)
  if axis_name is not None:
    weight_sum = jax.lax.pmean(weight_sum, axis_name)
  weight_norm = jnp.maximum(weight_sum, 1.0)
  out = {"cls_loss": cls_weight * cls / num_pos, "reg_loss": reg_weight * reg / weight_norm,
         "dfl_loss": dfl_weight * dfl / (4 * weight_norm)}
  return {"loss": out["cls_loss"] + out["reg_loss"] + out["dfl_loss"], **out,
          "num_pos": num_pos}
