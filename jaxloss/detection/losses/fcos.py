r"""The FCOS loss, its targets assigned inside the function (mmdetection's ``FCOSHead``).

Tian et al., FCOS: Fully Convolutional One-Stage Object Detection, ICCV 2019
(https://arxiv.org/abs/1904.01355). mmdetection's "improved" configuration is the default
(center sampling, ``norm_on_bbox``, GIoU); the FCOS guide of the docs gives the differences
from mmdetection, compile time and memory, and a worked Flax example.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss._src import kernels
from jaxloss._src.checks import check_choice, check_static
from jaxloss._src.checks import focal_alpha as check_focal_alpha
from jaxloss._src.kernels.core import forward_mode_hint
from jaxloss._src.kernels.fcos import (
    BOX_EPS,
    box_and_centerness_rows,
    box_ctr_sums,
    focal_sum,
    level_major,
    nhwc,
)
from jaxloss._src.numerics import as_float
from jaxloss._src.reduce import device_mean
from jaxloss._src.tracing import inlined
from jaxloss._src.typing import Array, ArrayLike, AxisName, Reduction
from jaxloss.boxes.iou import giou_loss, iou_loss
from jaxloss.classification.entropy import binary_cross_entropy
from jaxloss.classification.focal import sigmoid_focal_loss
from jaxloss.detection.assigners.fcos import (
    DEFAULT_REGRESS_RANGES,
    assign_points,
    check_radius,
    check_regress_ranges,
    padded_ground_truth,
)
from jaxloss.detection.points import DEFAULT_STRIDES, check_strides, grid_points

__all__ = ["BOX_LOSSES", "centerness_loss", "fcos_loss"]


BOX_LOSSES = ("giou", "iou")



def centerness_loss(logits: ArrayLike, targets: ArrayLike, *, weight=None, where=None,
                    reduction: Reduction = "mean", avg_factor=None, axis_name=None) -> Array:
  r"""FCOS centerness loss: binary cross entropy of a logit against a soft target.
  https://arxiv.org/abs/1904.01355

  .. math::
     \ell(x, c) = -\left[c \log \sigma(x) + (1 - c) \log(1 - \sigma(x))\right]

  (mmdetection's ``CrossEntropyLoss(use_sigmoid=True)`` on the centerness
  branch), via :func:`jaxloss.binary_cross_entropy`.

  Args:
    logits: ``[...]`` centerness logits, or ``[..., 1]`` (a head's one-channel
      output; the channel is dropped).
    targets: ``[...]`` centerness targets in ``[0, 1]``
      (:func:`centerness_targets`).
    weight, where, reduction, avg_factor, axis_name: see :func:`jaxloss.reduce_loss`.

  Returns:
    ``[...]`` for ``reduction="none"``, else a scalar.
  """
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  if logits.ndim == targets.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.shape != targets.shape:
    raise ValueError(
        f"centerness logits {logits.shape} and targets {targets.shape} must have one "
        "shape (a trailing channel of 1 on the logits is allowed).")
  return binary_cross_entropy(
      logits, as_float(targets), weight=weight, where=where, reduction=reduction,
      avg_factor=avg_factor, axis_name=axis_name)


def _check_heads(cls_logits, box_preds, centerness_logits, strides, regress_ranges, num_classes,
                 box_loss, focal_gamma) -> None:
  check_choice("box_loss", box_loss, BOX_LOSSES)
  check_static("focal_gamma", focal_gamma, "an integer exponent is computed by multiplications")
  if not focal_gamma >= 0:
    raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma!r}.")
  for name, levels in (("cls_logits", cls_logits), ("box_preds", box_preds),
                       ("centerness_logits", centerness_logits)):
    if isinstance(levels, (jax.Array, np.ndarray)) or len(levels) != len(strides):
      raise ValueError(
          f"{name} must be a list of per-level maps, one per stride ({len(strides)} "
          "levels); pass the head's outputs level by level.")
  check_regress_ranges(regress_ranges, len(strides))
  check_strides(strides)
  shapes = [tuple(jnp.shape(x)[:3]) for x in cls_logits]
  for name, levels in (("box_preds", box_preds), ("centerness_logits", centerness_logits)):
    if [tuple(jnp.shape(x)[:3]) for x in levels] != shapes:
      raise ValueError(f"{name} levels must have the [B, H, W] of cls_logits {shapes}.")
  if jnp.shape(cls_logits[0])[-1] != num_classes:
    raise ValueError(
        f"cls_logits have {jnp.shape(cls_logits[0])[-1]} channels but num_classes="
        f"{num_classes}; FCOS uses one sigmoid channel per class (no background channel).")


def _check_ground_truth_batch(cls_logits, gt_boxes, gt_labels, gt_mask) -> None:
  batch = jnp.shape(cls_logits[0])[0]
  for name, x in (("gt_boxes", gt_boxes), ("gt_labels", gt_labels), ("gt_mask", gt_mask)):
    if jnp.ndim(x) and jnp.shape(x)[0] != batch:
      raise ValueError(
          f"`{name}` of shape {jnp.shape(x)} has batch {jnp.shape(x)[0]} but the heads' maps "
          f"have batch {batch} (cls_logits[0] {jnp.shape(cls_logits[0])}); pass the ground "
          f"truth of the same images, padded to [B, M, ...].")


def fcos_loss(cls_logits: Sequence[ArrayLike], box_preds: Sequence[ArrayLike],
              centerness_logits: Sequence[ArrayLike], gt_boxes: ArrayLike,
              gt_labels: ArrayLike, gt_mask: ArrayLike, *, num_classes: int,
              strides: Sequence[float] = DEFAULT_STRIDES,
              regress_ranges: Sequence[tuple[float, float]] = DEFAULT_REGRESS_RANGES,
              center_sampling: bool = True, center_sample_radius: float = 1.5,
              norm_on_bbox: bool = True, box_loss: str = "giou", focal_alpha: float = 0.25,
              focal_gamma: float = 2.0, cls_weight: float = 1.0, reg_weight: float = 1.0,
              centerness_weight: float = 1.0, axis_name: AxisName = None) -> dict[str, Array]:
  r"""The FCOS loss, targets assigned inside the function (mmdetection's ``FCOSHead``).
  https://arxiv.org/abs/1904.01355

  Points are assigned by :func:`fcos_targets`. With :math:`N` = max(mean over
  devices of the number of positives, 1) and :math:`S` = max(mean over
  devices of the summed centerness targets :math:`c_p` of the positives,
  1e-6):

  .. math::
     L_{cls} = \frac{1}{N}\sum_{p, k} \mathrm{FL}(x_{pk}, [y_p = k]), \quad
     L_{reg} = \frac{1}{S}\sum_{p \in pos} c_p \, \ell_{box}(\hat d_p, d_p), \quad
     L_{ctr} = \frac{1}{N}\sum_{p \in pos} \mathrm{BCE}(z_p, c_p)

  with FL the sigmoid focal loss (``focal_alpha``, ``focal_gamma``) over all
  points and classes, :math:`\ell_{box}` ``1 - GIoU`` (``"giou"``) or
  ``-log(max(IoU, 1e-6))`` (``"iou"``) of the boxes decoded around the point
  from the predicted and target ``ltrb``. Without positives the regression and
  centerness losses are exactly 0 with zero gradients. Each term is multiplied
  by its ``*_weight`` (mmdetection's ``loss_weight``); ``loss`` is their sum.

  With ``axis_name`` (inside ``shard_map``/``pmap`` over the batch) the two
  normalisers are ``pmean``'d, as mmdetection's ``reduce_mean``: the ``pmean``
  of the per-device losses and gradients equals the whole-batch loss on one
  device.

  Args:
    cls_logits: per level ``[B, H_l, W_l, num_classes]``.
    box_preds: per level ``[B, H_l, W_l, 4]`` distances ``(l, t, r, b)``, in
      strides if ``norm_on_bbox`` else pixels (as the targets).
    centerness_logits: per level ``[B, H_l, W_l, 1]`` (or ``[B, H_l, W_l]``).
    gt_boxes, gt_labels, gt_mask: padded ground truth, see :func:`fcos_targets`.
    num_classes, strides, regress_ranges, center_sampling,
      center_sample_radius, norm_on_bbox: see :func:`fcos_targets`.
    box_loss: ``"giou"`` or ``"iou"``.
    focal_alpha, focal_gamma: of the classification focal loss.
    cls_weight, reg_weight, centerness_weight: multipliers of the three terms.
    axis_name: mapped batch axis over which the normalisers are averaged.

  Returns:
    ``{"loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"}``, scalars in
    the logits' precision (float32, or float64 for float64 logits); ``num_pos`` is
    :math:`N`.
  """
  _check_heads(cls_logits, box_preds, centerness_logits, strides, regress_ranges, num_classes,
               box_loss, focal_gamma)
  _check_ground_truth_batch(cls_logits, gt_boxes, gt_labels, gt_mask)
  check_radius(center_sample_radius)
  return _fcos_loss(
      tuple(cls_logits), tuple(box_preds), tuple(centerness_logits), gt_boxes, gt_labels,
      gt_mask, cls_weight, reg_weight, centerness_weight, num_classes=int(num_classes),
      strides=tuple(strides), regress_ranges=tuple(tuple(r) for r in regress_ranges),
      center_sampling=bool(center_sampling), center_sample_radius=float(center_sample_radius),
      norm_on_bbox=bool(norm_on_bbox), box_loss=box_loss, focal_alpha=focal_alpha,
      focal_gamma=float(focal_gamma), axis_name=axis_name, fused=kernels.fused_enabled())


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "strides", "regress_ranges", "center_sampling", "center_sample_radius",
    "norm_on_bbox", "box_loss", "focal_alpha", "focal_gamma", "axis_name", "fused"))
@inlined
def _fcos_loss(cls_logits, box_preds, centerness_logits, gt_boxes, gt_labels, gt_mask,
               cls_weight, reg_weight, centerness_weight, *, num_classes, strides,
               regress_ranges, center_sampling, center_sample_radius, norm_on_bbox, box_loss,
               focal_alpha, focal_gamma, axis_name, fused) -> dict[str, Array]:
  points = grid_points([jnp.shape(x) for x in cls_logits], strides)
  labels, box_targets, ctr_targets, positive = assign_points(
      points, *padded_ground_truth(gt_boxes, gt_labels, gt_mask), num_classes=num_classes,
      strides=strides, regress_ranges=regress_ranges, center_sampling=center_sampling,
      center_sample_radius=center_sample_radius, norm_on_bbox=norm_on_bbox, level_major=True)
  box_levels = tuple(as_float(nhwc(x, 4, "box_preds")) for x in box_preds)
  ctr_levels = tuple(as_float(nhwc(x, 1, "centerness_logits")) for x in centerness_logits)
  logits = tuple(as_float(nhwc(x, num_classes, "cls_logits")) for x in cls_logits)
  # targets and counts in the heads' precision: float64 heads keep float64 outputs
  box_targets = box_targets.astype(box_levels[0].dtype)
  ctr_targets = ctr_targets.astype(ctr_levels[0].dtype)
  num_pos = jnp.maximum(device_mean(jnp.sum(positive, dtype=logits[0].dtype), axis_name), 1.0)
  ctr_sum = jnp.maximum(device_mean(jnp.sum(ctr_targets), axis_name), 1e-6)
  alpha = check_focal_alpha(focal_alpha, "focal_alpha")
  if fused:
    with forward_mode_hint():
      cls = focal_sum(logits, labels, alpha, focal_gamma)
  else:
    cls = sigmoid_focal_loss(level_major(logits), labels, alpha=alpha, gamma=focal_gamma,
                             reduction="sum")
  cls = jnp.asarray(cls) / num_pos
  box_fn = giou_loss if box_loss == "giou" else iou_loss
  # the normalisers are positive: plain divisions (reduce_loss's avg_factor would guard 0 / 0)
  if fused and box_loss == "giou":
    with forward_mode_hint():
      reg, ctr = box_ctr_sums(box_levels, ctr_levels, box_targets, ctr_targets, positive)
    reg, ctr = reg / ctr_sum, ctr / num_pos
  else:
    rows = box_and_centerness_rows(box_levels, ctr_levels)
    boxes, ctr_logits = rows[:, :4], rows[:, 4]
    reg = box_fn(boxes, box_targets, box_format="ltrb", eps=BOX_EPS, weight=ctr_targets,
                 where=positive, reduction="sum") / ctr_sum
    ctr = centerness_loss(ctr_logits, ctr_targets, where=positive, reduction="sum") / num_pos
  out = {"cls_loss": cls_weight * cls, "reg_loss": reg_weight * reg,
         "centerness_loss": centerness_weight * ctr}
  return {"loss": out["cls_loss"] + out["reg_loss"] + out["centerness_loss"], **out,
          "num_pos": num_pos}
