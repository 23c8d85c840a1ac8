r"""The RetinaNet loss, anchors assigned inside ``jit`` (mmdetection ``RetinaHead``).

RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002) predicts, for each of the ``A_loc`` anchors
of every location of every pyramid level, ``C`` sigmoid class logits and four
box deltas. The anchors (:func:`jaxloss.anchor_grid`) are assigned to the
padded ground truth by :func:`jaxloss.max_iou_assign`; with :math:`N` the mean
over devices of :math:`\sum_b \max(P_b, 1)` (:math:`P_b` the positive anchors of
image :math:`b`, each image counting at least one, as mmdetection's sampling
results):

.. math::
   L_{cls} = \frac{1}{N} \sum_{a \notin ignored} \sum_c \mathrm{FL}(x_{ac}, [y_a = c]),
   \quad L_{reg} = \frac{1}{N} \sum_{a \in pos} \ell_{box}(a)

with FL the sigmoid focal loss, and :math:`\ell_{box}` the L1 or smooth L1
loss of the predicted deltas against :func:`jaxloss.delta_xywh_encode` of the
assigned box (summed over the four deltas), or ``1 - GIoU`` of the decoded
prediction and the box (mmdetection's ``reg_decoded_bbox=True``).

Same numbers as mmdetection 3.3's ``RetinaHead.loss_by_feat`` (fixture
``tests/fixtures/mmdet_anchor.npz``; mmdetection divides by ``N + 1.2e-7`` and,
without ``reduce_mean`` in ``AnchorHead``, by its own device's :math:`N`: with
``axis_name`` the ``pmean`` of the per-device losses here equals the loss of the
whole batch on one device instead).

Cost (``benchmarks/retinanet_benchmark.py``, XLA:CPU, batch 8, 640x640, 76,725 anchors,
80 classes, ``M = 100``): ``jax.jit(jax.value_and_grad(retinanet_loss))`` takes about 3.1x
a bare ``softplus`` forward and backward over the same logits, of which the assignment
is about 1.3x; its temporaries are 482 MiB, nearly all the assignment's ``[B, M, A]`` IoU
grid (see :mod:`jaxloss.detection.assigners.max_iou`). The class logits are read level
by level, never concatenated (joined, they cost a 196 MiB copy and 10% more time); the
box deltas, 4 per anchor, are joined so that the box loss is compiled once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import classification, regression
from jaxloss._src.checks import check_choice
from jaxloss._src.checks import focal_alpha as check_focal_alpha
from jaxloss._src.numerics import as_float
from jaxloss._src.typing import Array, ArrayLike
from jaxloss.boxes import iou
from jaxloss.detection.anchors import anchor_grid_numpy
from jaxloss.detection.assigners.max_iou import max_iou_assign
from jaxloss.detection.coders import (
  DEFAULT_MEANS,
  DEFAULT_STDS,
  delta_xywh_decode,
  delta_xywh_encode,
)

RETINANET_BOX_LOSSES = ("l1", "smooth_l1", "giou")
# mmdetection's GIoULoss eps
_GIOU_EPS = 1e-6


def _level_hw(x: ArrayLike, name: str) -> tuple[int, int]:
  if jnp.ndim(x) != 4:
    raise ValueError(f"{name} levels must be NHWC maps [B, H, W, channels], got shape "
                     f"{jnp.shape(x)}.")
  return int(jnp.shape(x)[1]), int(jnp.shape(x)[2])


def check_levels(cls_logits: Sequence[ArrayLike], box_preds: Sequence[ArrayLike],
                 strides: Sequence[float], per_location: int, num_classes: int, box_values: int,
                 box_name: str) -> list[tuple[int, int]]:
  """Checks per-level NHWC heads against the strides and the channels (``per_location``
  anchors times ``num_classes`` or ``box_values``); returns the levels' ``(H, W)``."""
  for name, levels in (("cls_logits", cls_logits), (box_name, box_preds)):
    if isinstance(levels, (jax.Array, np.ndarray)) or len(levels) != len(strides):
      raise ValueError(f"{name} must be a list of per-level maps, one per stride "
                       f"({len(strides)} levels); pass the head's outputs level by level.")
  sizes = [_level_hw(x, "cls_logits") for x in cls_logits]
  if [_level_hw(x, box_name) for x in box_preds] != sizes:
    raise ValueError(f"{box_name} levels must have the [H, W] of cls_logits {sizes}.")
  for name, levels, values, what in (("cls_logits", cls_logits, num_classes, "num_classes"),
                                     (box_name, box_preds, box_values, "box values")):
    got = {int(jnp.shape(x)[-1]) for x in levels}
    if got != {per_location * values}:
      raise ValueError(f"{name} have {sorted(got)} channels, expected {per_location * values}"
                       f" = {per_location} anchors per location x {values} {what}; check "
                       "num_classes and the anchor settings (ratios, scales_per_octave).")
  batch = {int(jnp.shape(x)[0]) for x in (*cls_logits, *box_preds)}
  if len(batch) != 1:
    raise ValueError(f"all levels must have one batch size, got {sorted(batch)}.")
  return sizes


def image_positives(positive: Array, axis_name: Any = None) -> Array:
  """mmdetection's ``avg_factor`` of a ``PseudoSampler`` head: the sum over images of
  max(number of positive anchors, 1), float32, averaged over ``axis_name`` if given."""
  count = jnp.sum(jnp.maximum(jnp.sum(positive, axis=1, dtype=jnp.float32), 1.0))
  return count if axis_name is None else jax.lax.pmean(count, axis_name)


def retinanet_loss(cls_logits: Sequence[ArrayLike], box_deltas: Sequence[ArrayLike],
                   gt_boxes: ArrayLike, gt_labels: ArrayLike, gt_mask: ArrayLike, *,
                   num_classes: int, strides: Sequence[float] = (8, 16, 32, 64, 128),
                   octave_base_scale: float = 4, scales_per_octave: int = 3,
                   ratios: Sequence[float] = (0.5, 1.0, 2.0), pos_iou_thr: float = 0.5,
                   neg_iou_thr: float | tuple[float, float] = 0.4, min_pos_iou: float = 0.0,
                   match_low_quality: bool = True, means: Sequence[float] = DEFAULT_MEANS,
                   stds: Sequence[float] = DEFAULT_STDS, box_loss: str = "l1",
                   smooth_l1_beta: float = 1.0, focal_alpha: float = 0.25,
                   focal_gamma: float = 2.0, cls_weight: float = 1.0, reg_weight: float = 1.0,
                   axis_name: Any = None) -> dict[str, Array]:
  r"""The RetinaNet loss, anchors assigned inside the function (mmdetection ``RetinaHead``).
  https://arxiv.org/abs/1708.02002

  See the module docstring for the formula. Anchors are
  :func:`jaxloss.anchor_grid` of the levels' shapes (``strides``,
  ``octave_base_scale``, ``scales_per_octave``, ``ratios``), assigned by
  :func:`jaxloss.max_iou_assign` (``pos_iou_thr``, ``neg_iou_thr``,
  ``min_pos_iou``, ``match_low_quality``); ignored anchors (between the
  thresholds) are left out of the classification loss.

  Args:
    cls_logits: per level ``[B, H_l, W_l, A_loc * num_classes]`` (anchor-major per
      location, as mmdetection's ``[B, A_loc * C, H, W]`` in NHWC).
    box_deltas: per level ``[B, H_l, W_l, A_loc * 4]`` deltas ``(dx, dy, dw, dh)``.
    gt_boxes: ``[B, M, 4]`` ``xyxy`` pixels, padded; padded rows may hold anything.
    gt_labels: ``[B, M]`` integer classes in ``[0, num_classes)``.
    gt_mask: ``[B, M]`` bool, True for real boxes.
    num_classes: number of classes (sigmoid channels, no background channel).
    strides, octave_base_scale, scales_per_octave, ratios: the anchors.
    pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality: the assignment.
    means, stds: the box coder's normalisation (mmdetection's ``target_means/stds``).
    box_loss: ``"l1"`` (mmdetection's RetinaNet), ``"smooth_l1"`` (``smooth_l1_beta``)
      or ``"giou"`` (``1 - GIoU`` of decoded boxes, eps 1e-6).
    focal_alpha, focal_gamma: of the classification focal loss.
    cls_weight, reg_weight: multipliers of the two terms (mmdetection's ``loss_weight``).
    axis_name: mapped batch axis over which the number of positives is averaged.

  Returns:
    ``{"loss", "cls_loss", "reg_loss", "num_pos"}``, float32 scalars; ``num_pos``
    is :math:`N`.
  """
  check_choice("box_loss", box_loss, RETINANET_BOX_LOSSES)
  if not focal_gamma >= 0:
    raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma!r}.")
  per_location = len(ratios) * int(scales_per_octave)
  sizes = check_levels(cls_logits, box_deltas, strides, per_location, int(num_classes), 4,
                       "box_deltas")
  neg_thr = tuple(neg_iou_thr) if isinstance(neg_iou_thr, list) else neg_iou_thr
  return _retinanet_loss(
      tuple(cls_logits), tuple(box_deltas), gt_boxes, gt_labels, gt_mask, cls_weight,
      reg_weight, num_classes=int(num_classes), sizes=tuple(sizes), strides=tuple(strides),
      anchor_cfg=(float(octave_base_scale), int(scales_per_octave),
                  tuple(float(r) for r in ratios)),
      assign_cfg=(("pos_iou_thr", pos_iou_thr), ("neg_iou_thr", neg_thr),
                  ("min_pos_iou", min_pos_iou), ("match_low_quality", bool(match_low_quality))),
      coder_cfg=(tuple(float(m) for m in means), tuple(float(s) for s in stds)),
      box_loss=box_loss, smooth_l1_beta=float(smooth_l1_beta), focal_alpha=focal_alpha,
      focal_gamma=float(focal_gamma), axis_name=axis_name)


def _box_term(pred: Array, anchors: np.ndarray, boxes: Array, positive: Array, box_loss: str,
              beta: float, means, stds) -> Array:
  """Sum over the positive anchors of one level of the box loss (``pred [B, A_l, 4]``)."""
  if box_loss == "giou":
    decoded = delta_xywh_decode(anchors, pred, means=means, stds=stds)
    return iou.giou_loss(decoded, boxes, eps=_GIOU_EPS, where=positive, reduction="sum")
  target = delta_xywh_encode(anchors, jnp.where(positive[..., None], boxes, anchors),
                             means=means, stds=stds)
  where = positive[..., None]
  if box_loss == "l1":
    return regression.l1_loss(pred, target, where=where, reduction="sum")
  return regression.smooth_l1_loss(pred, target, beta=beta, where=where, reduction="sum")


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "sizes", "strides", "anchor_cfg", "assign_cfg", "coder_cfg", "box_loss",
    "smooth_l1_beta", "focal_alpha", "focal_gamma", "axis_name"))
def _retinanet_loss(cls_logits, box_deltas, gt_boxes, gt_labels, gt_mask, cls_weight,
                    reg_weight, *, num_classes, sizes, strides, anchor_cfg, assign_cfg,
                    coder_cfg, box_loss, smooth_l1_beta, focal_alpha, focal_gamma,
                    axis_name) -> dict[str, Array]:
  base, per_octave, ratios = anchor_cfg
  levels = anchor_grid_numpy(sizes, strides, octave_base_scale=base,
                             scales_per_octave=per_octave, ratios=ratios)
  anchors = np.concatenate(levels)
  targets = max_iou_assign(anchors, gt_boxes, gt_labels, gt_mask,
                           num_classes=num_classes, **dict(assign_cfg))
  num_pos = image_positives(targets.positive, axis_name)
  alpha = check_focal_alpha(focal_alpha, "focal_alpha")
  bounds = np.cumsum([0] + [len(a) for a in levels])
  cls = jnp.float32(0)
  for logits, a, b in zip(cls_logits, bounds[:-1], bounds[1:], strict=True):
    logits = as_float(logits).reshape(logits.shape[0], -1, num_classes)
    cls = cls + classification.sigmoid_focal_loss(
        logits, targets.labels[:, a:b], alpha=alpha, gamma=focal_gamma,
        where=~targets.ignored[:, a:b], reduction="sum")
  # the box outputs are small (4 per anchor): joined, the box loss is compiled once
  deltas = jnp.concatenate([as_float(x).reshape(x.shape[0], -1, 4) for x in box_deltas], 1)
  reg = _box_term(deltas, anchors, targets.boxes, targets.positive, box_loss,
                  smooth_l1_beta, *coder_cfg)
  out = {"cls_loss": cls_weight * cls / num_pos, "reg_loss": reg_weight * reg / num_pos}
  return {"loss": out["cls_loss"] + out["reg_loss"], **out, "num_pos": num_pos}
